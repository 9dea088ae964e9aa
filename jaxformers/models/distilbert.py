"""DistilBERT encoder and its task heads.

References: arXiv:1910.01108; HF transformers `models/distilbert/modeling_distilbert.py` (5.x). Numerics follow HF:
post-LN blocks (`sa_layer_norm`, `output_layer_norm`, eps fixed at 1e-12 as HF hard-codes it), LayerNorm in float32,
exact erf GELU for `activation="gelu"`, no token types, no pooler. The MLM head is `vocab_transform` -> activation ->
`vocab_layer_norm` -> `vocab_projector` (tied to the word embeddings unless `tie_word_embeddings` is false, with its
own bias); sequence classification is `pre_classifier` -> ReLU -> `classifier` on token 0.

`sinusoidal_pos_embds=true`: transformers 5.x fills the position table with sinusoids only when it initialises a
model from scratch; `save_pretrained` stores the table as an ordinary weight and `from_pretrained` loads it as
stored. So the table is read from the checkpoint here too, whatever the flag says (a checkpoint without it is
refused as incomplete rather than silently given a table the checkpoint never had).

Position ids default to the count of real tokens (`core.modeling.positions_from_mask`, as in `bert.py`): identical
to HF's `arange(T)` for right padding; a left-padded row then gets the values it has alone.

Dropout (`core.dropout`, rates from the HF config): `dropout` after the embedding LayerNorm and after `ffn.lin2`,
`attention_dropout` on the attention probabilities (no dropout after `out_lin`, as HF); heads: `seq_classif_dropout`
after the pre-classifier ReLU, `qa_dropout` before `qa_outputs`, `dropout` before the token classifier.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxformers.convert.rules import Ignore, Rule, SplitAxis, T
from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation, normal, param, zeros
from jaxformers.core.modeling import (
    Architecture,
    at_positions,
    PreTrainedModel,
    check_index_input,
    check_input_ids,
    check_seq_len,
    positions_from_mask,
)
from jaxformers.core.options import Options
from jaxformers.core.outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTV, constrain
from jaxformers.core.stack import run_layers

LN_EPS = 1e-12  # HF DistilBERT hard-codes it (no config field)


@config_class
class DistilBertConfig(HFConfig):
    model_type = "distilbert"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "max_position_embeddings", "n_layers", "n_heads", "dim", "hidden_dim")
    nonnegative_fields = ("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout")

    def validate(self):
        if self.dim % self.n_heads:
            raise ValueError(
                f"config.json: dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); fix one of them"
            )
        activation(self.activation)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Embeddings(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.word_embeddings = Embed(cfg.vocab_size, cfg.dim, opts=opts, rngs=rngs)
        self.position_embeddings = Embed(cfg.max_position_embeddings, cfg.dim, axes=("pos", "embed"), opts=opts,
                                         rngs=rngs)  # fmt: skip
        self.LayerNorm = LayerNorm(cfg.dim, eps=LN_EPS, opts=opts, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, input_ids, position_ids, key):
        x = self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))
        return dropout.dropout(x, self.rate, key)


class MultiHeadSelfAttention(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.dim, cfg.n_heads, cfg.head_dim
        qkv_axes = ("embed", "heads", "head_dim")
        self.q_lin = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.k_lin = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.v_lin = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.out_lin = Dense((n, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.impl, self.rate = opts.attn_impl, cfg.attention_dropout

    def __call__(self, x, key_mask, key, rows=None):
        """rows: compute only the first `rows` positions' outputs (`core.stack.run_layers`' `last_rows`)."""
        q, k, v = self.q_lin(x if rows is None else x[:, :rows]), self.k_lin(x), self.v_lin(x)  # [B, T, N, H]
        o = attn.dot_product_attention(q, k, v, key_mask=key_mask, impl=self.impl, dropout_rate=self.rate,
                                       dropout_key=key,
                                       dropout_queries=None if rows is None else x.shape[1])  # fmt: skip
        return self.out_lin(o)


class FFN(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.lin1 = Dense(cfg.dim, cfg.hidden_dim, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.lin2 = Dense(cfg.hidden_dim, cfg.dim, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.act, self.rate = activation(cfg.activation), cfg.dropout

    def __call__(self, x, key, full_shape=None):
        h = constrain(self.act(self.lin1(x)), ACT_BTF)
        return dropout.dropout(self.lin2(h), self.rate, key, full_shape=full_shape)


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.attention = MultiHeadSelfAttention(cfg, opts=opts, rngs=rngs)
        self.sa_layer_norm = LayerNorm(cfg.dim, eps=LN_EPS, opts=opts, rngs=rngs)
        self.ffn = FFN(cfg, opts=opts, rngs=rngs)
        self.output_layer_norm = LayerNorm(cfg.dim, eps=LN_EPS, opts=opts, rngs=rngs)

    def __call__(self, x, key_mask, key, rows=None):
        xq = x if rows is None else x[:, :rows]
        a = self.sa_layer_norm(self.attention(x, key_mask, dropout.fold(key, 0), rows) + xq)
        return constrain(self.output_layer_norm(self.ffn(a, dropout.fold(key, 1), x.shape) + a), ACT_BTD)


class Transformer(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: TransformerBlock(cfg, opts=opts, rngs=r), cfg.n_layers, rngs=rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, key_mask, key, last_rows=None):
        def call(layer, h, kv, window, k, rows=None):
            return layer(h, key_mask, k, rows), kv

        keys = dropout.layer_keys(key, self.layer.n)
        x, hs, _ = run_layers(self.layer, x, call, cache=None, scan=self.scan, remat=self.remat, keys=keys,
                              last_rows=last_rows)  # fmt: skip
        return x, hs


class DistilBertModel(PreTrainedModel):
    config_class = DistilBertConfig
    hf_architecture = "DistilBertModel"
    hf_prefix = "distilbert"

    def __init__(self, cfg: DistilBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Embeddings(cfg, opts=options, rngs=rngs)
        self.transformer = Transformer(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None, last_rows: int | None = None) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, D]` (DistilBERT has no pooler).

        last_rows (a jaxformers extension for heads that read only the first token): the last layer computes only
        the first `last_rows` positions, so last_hidden_state is `[B, last_rows, D]`, with the values the whole
        forward has there (the sequence-classification head passes 1).

        Ids and positions are range-checked and T may not exceed max_position_embeddings, as in transformers
        (eagerly ValueError; under jit a checkify check, see `core.modeling`). DistilBERT has no token types:
        `token_type_ids` is accepted and ignored, as transformers does, so BERT-style batches and callers that pass
        `(input_ids, attention_mask, token_type_ids)` positionally work unchanged."""
        del token_type_ids  # no token type table: ignored, as transformers does
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        check_seq_len(input_ids.shape[1], cfg.max_position_embeddings)
        position_ids = check_index_input(position_ids, input_ids.shape, "position_ids",
                                         size=cfg.max_position_embeddings)  # fmt: skip
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        emb = constrain(self.embeddings(input_ids, position_ids, dropout.fold(key, 0)), ACT_BTD)
        x, hs = self.transformer(emb, attention_mask.astype(bool), dropout.fold(key, 1), last_rows)
        return BaseModelOutput(last_hidden_state=x, hidden_states=(emb, *hs) if output_hidden_states else None)


class _DistilBertHead(PreTrainedModel):
    config_class = DistilBertConfig
    hf_prefix = "distilbert"
    base_attr = "distilbert"

    def _encode(self, input_ids, attention_mask, position_ids, output_hidden_states, deterministic, key,
                last_rows=None):  # fmt: skip
        """The base model's output, with the base's dropout key (site 0 of the head's key)."""
        return self.distilbert(input_ids, attention_mask, position_ids=position_ids,
                               output_hidden_states=output_hidden_states, deterministic=deterministic,
                               dropout_rng=dropout.fold(key, 0), last_rows=last_rows)  # fmt: skip


class VocabProjector(nnx.Module):
    """`vocab_projector`: logits against the word embeddings (tied) or its own `[D, V]` kernel, plus a bias."""

    def __init__(self, cfg: DistilBertConfig, *, opts: Options, rngs: nnx.Rngs):
        tied = cfg.tie_word_embeddings
        shape = (cfg.dim, cfg.vocab_size)
        self.kernel = None if tied else param(rngs, normal(0.02), shape, opts.param_dtype, ("embed", "vocab"))
        self.bias = param(rngs, zeros, (cfg.vocab_size,), opts.param_dtype, ("vocab",))
        self.dtype = opts.compute_dtype

    def __call__(self, x, embeddings: Embed):
        if self.kernel is None:
            logits = embeddings.attend(x)
        else:
            logits = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return logits + self.bias[...].astype(logits.dtype)


class DistilBertForMaskedLM(_DistilBertHead):
    hf_architecture = "DistilBertForMaskedLM"

    def __init__(self, cfg: DistilBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.distilbert = DistilBertModel(cfg, options=options, rngs=rngs)
        self.vocab_transform = Dense(cfg.dim, cfg.dim, axes=("embed", "mlp"), opts=options, rngs=rngs)
        self.vocab_layer_norm = LayerNorm(cfg.dim, eps=LN_EPS, opts=options, rngs=rngs)
        self.vocab_projector = VocabProjector(cfg, opts=options, rngs=rngs)
        self.act = activation(cfg.activation)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, dropout_rng=None,
                 logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, deterministic, key)
        h = at_positions(out.last_hidden_state, logits_positions)
        h = self.vocab_layer_norm(self.act(self.vocab_transform(h)))
        logits = constrain(self.vocab_projector(h, self.distilbert.embeddings.word_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class DistilBertForSequenceClassification(_DistilBertHead):
    hf_architecture = "DistilBertForSequenceClassification"

    def __init__(self, cfg: DistilBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.distilbert = DistilBertModel(cfg, options=options, rngs=rngs)
        self.pre_classifier = Dense(cfg.dim, cfg.dim, axes=("embed", "mlp"), opts=options, rngs=rngs)
        self.classifier = Dense(cfg.dim, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        # the head reads token 0 only: the last layer computes just that row (unless all are returned)
        out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, deterministic, key,
                           None if output_hidden_states else 1)  # fmt: skip
        pooled = jnp.maximum(self.pre_classifier(out.last_hidden_state[:, 0]), 0)  # token 0, ReLU (HF)
        pooled = dropout.dropout(pooled, self.config.seq_classif_dropout, dropout.fold(key, 1))
        return SequenceClassifierOutput(logits=self.classifier(pooled), hidden_states=out.hidden_states)


class DistilBertForTokenClassification(_DistilBertHead):
    hf_architecture = "DistilBertForTokenClassification"

    def __init__(self, cfg: DistilBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.distilbert = DistilBertModel(cfg, options=options, rngs=rngs)
        self.classifier = Dense(cfg.dim, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, deterministic, key)
        h = dropout.dropout(out.last_hidden_state, self.config.dropout, dropout.fold(key, 1))
        return TokenClassifierOutput(logits=self.classifier(h), hidden_states=out.hidden_states)


class DistilBertForQuestionAnswering(_DistilBertHead):
    hf_architecture = "DistilBertForQuestionAnswering"

    def __init__(self, cfg: DistilBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        if cfg.num_labels != 2:  # transformers raises the same (start and end logits)
            raise ValueError(
                f"DistilBertForQuestionAnswering needs num_labels=2 (start and end logits), but the config has "
                f"num_labels={cfg.num_labels}; set num_labels to 2 (and drop id2label) in config.json"
            )
        self.config = cfg
        self.distilbert = DistilBertModel(cfg, options=options, rngs=rngs)
        self.qa_outputs = Dense(cfg.dim, 2, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, deterministic, key)
        h = dropout.dropout(out.last_hidden_state, self.config.qa_dropout, dropout.fold(key, 1))
        logits = self.qa_outputs(h)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


_L = "transformer.layer.*."
_B = "transformer.layer.block."
_HEADS = "n_heads"
HF_WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings.LayerNorm.scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings.LayerNorm.bias"),
    Rule(_L + "attention.q_lin.weight", _B + "attention.q_lin.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.q_lin.bias", _B + "attention.q_lin.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.k_lin.weight", _B + "attention.k_lin.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.k_lin.bias", _B + "attention.k_lin.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.v_lin.weight", _B + "attention.v_lin.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.v_lin.bias", _B + "attention.v_lin.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.out_lin.weight", _B + "attention.out_lin.kernel", T(), SplitAxis(0, _HEADS)),
    Rule(_L + "attention.out_lin.bias", _B + "attention.out_lin.bias"),
    Rule(_L + "sa_layer_norm.weight", _B + "sa_layer_norm.scale"),
    Rule(_L + "sa_layer_norm.bias", _B + "sa_layer_norm.bias"),
    Rule(_L + "ffn.lin1.weight", _B + "ffn.lin1.kernel", T()),
    Rule(_L + "ffn.lin1.bias", _B + "ffn.lin1.bias"),
    Rule(_L + "ffn.lin2.weight", _B + "ffn.lin2.kernel", T()),
    Rule(_L + "ffn.lin2.bias", _B + "ffn.lin2.bias"),
    Rule(_L + "output_layer_norm.weight", _B + "output_layer_norm.scale"),
    Rule(_L + "output_layer_norm.bias", _B + "output_layer_norm.bias"),
    Ignore("embeddings.position_ids"),  # a buffer older checkpoints saved
    # heads (full HF keys)
    Rule("vocab_transform.weight", "vocab_transform.kernel", T(), head=True),
    Rule("vocab_transform.bias", "vocab_transform.bias", head=True),
    Rule("vocab_layer_norm.weight", "vocab_layer_norm.scale", head=True),
    Rule("vocab_layer_norm.bias", "vocab_layer_norm.bias", head=True),
    Rule("vocab_projector.weight", "vocab_projector.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("vocab_projector.bias", "vocab_projector.bias", head=True),
    Rule("pre_classifier.weight", "pre_classifier.kernel", T(), head=True),
    Rule("pre_classifier.bias", "pre_classifier.bias", head=True),
    Rule("classifier.weight", "classifier.kernel", T(), head=True),
    Rule("classifier.bias", "classifier.bias", head=True),
    Rule("qa_outputs.weight", "qa_outputs.kernel", T(), head=True),
    Rule("qa_outputs.bias", "qa_outputs.bias", head=True),
)

ARCHITECTURE = Architecture(
    name="distilbert",
    config_class=DistilBertConfig,
    weights=HF_WEIGHTS,
    classes={
        "distilbert": {
            "base": DistilBertModel,
            "masked-lm": DistilBertForMaskedLM,
            "sequence-classification": DistilBertForSequenceClassification,
            "token-classification": DistilBertForTokenClassification,
            "question-answering": DistilBertForQuestionAnswering,
        }
    },
)
