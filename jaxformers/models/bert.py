"""BERT encoder and its task heads.

References: arXiv:1810.04805; HF transformers `models/bert/modeling_bert.py` (5.x). Numerics follow HF: post-LN
blocks, exact erf GELU for `hidden_act="gelu"`, LayerNorm in float32, tied MLM decoder with its own bias.
Position ids default to the count of real tokens (identical to HF for right padding; a left-padded row then gets
the values it has alone). Dropout (training, `deterministic=False`) where HF applies it: after the embedding
LayerNorm and after each attention/FFN output projection (`hidden_dropout_prob`), on the attention probabilities
(`attention_probs_dropout_prob`), and before the sequence/token classifiers (`classifier_dropout`, else
`hidden_dropout_prob`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation
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
from jaxformers.convert.rules import Ignore, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): model level, then within a layer (under its per-layer key).
_EMBED, _LAYERS, _HEAD = 0, 1, 2
_ATTN_PROBS, _ATTN_OUT, _FFN_OUT = 0, 1, 2


@config_class
class BertConfig(HFConfig):
    model_type = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    positive_fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size")  # fmt: skip
    nonnegative_fields = ("layer_norm_eps",)
    rate_fields = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

    def validate(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not supported (absolute only)")
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def classifier_rate(self) -> float:
        """HF's classifier dropout: `classifier_dropout`, else `hidden_dropout_prob`."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.word_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, opts=opts, rngs=rngs)
        self.position_embeddings = Embed(
            cfg.max_position_embeddings, cfg.hidden_size, axes=("pos", "embed"), opts=opts, rngs=rngs
        )
        self.token_type_embeddings = Embed(
            cfg.type_vocab_size, cfg.hidden_size, axes=("type_vocab", "embed"), opts=opts, rngs=rngs
        )
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, position_ids, key=None):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return dropout.dropout(self.LayerNorm(x + self.position_embeddings(position_ids)), self.rate, key)


class Attention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        qkv_axes = ("embed", "heads", "head_dim")
        self.query = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.key = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.value = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.output = Dense((n, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.impl = opts.attn_impl
        self.probs_rate, self.rate = cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob

    def __call__(self, x, key_mask, key=None, rows=None):
        """rows: compute only the first `rows` positions' outputs (`core.stack.run_layers`' `last_rows`)."""
        xq = x if rows is None else x[:, :rows]
        q, k, v = self.query(xq), self.key(x), self.value(x)  # [B, T, N, H]
        o = attn.dot_product_attention(
            q, k, v, key_mask=key_mask, impl=self.impl, dropout_rate=self.probs_rate,
            dropout_key=dropout.fold(key, _ATTN_PROBS), dropout_queries=None if rows is None else x.shape[1],
        )  # fmt: skip
        o = dropout.dropout(self.output(o), self.rate, dropout.fold(key, _ATTN_OUT), full_shape=x.shape)
        return self.LayerNorm(o + xq)


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.attention = Attention(cfg, opts=opts, rngs=rngs)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.output_LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, key_mask, key=None, rows=None):
        a = self.attention(x, key_mask, key, rows)
        h = constrain(self.act(self.intermediate(a)), ACT_BTF)
        h = dropout.dropout(self.output(h), self.rate, dropout.fold(key, _FFN_OUT), full_shape=x.shape)
        return constrain(self.output_LayerNorm(h + a), ACT_BTD)


class Encoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: Layer(cfg, opts=opts, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, key_mask, keys=None, last_rows=None):
        """Run the layers (`keys`: per-layer dropout keys or None); returns `(x, per-layer outputs)`.
        last_rows: the last layer computes only the first `last_rows` positions (`core.stack.run_layers`)."""

        def call(layer, h, kv, window, key, rows=None):
            return layer(h, key_mask, key, rows), kv

        x, hs, _ = run_layers(self.layer, x, call, cache=None, scan=self.scan, remat=self.remat, keys=keys,
                              last_rows=last_rows)  # fmt: skip
        return x, hs


class BertModel(PreTrainedModel):
    config_class = BertConfig
    hf_architecture = "BertModel"
    hf_prefix = "bert"
    init_if_missing = ("pooler.",)  # masked-LM checkpoints have no pooler; HF initialises it too

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs, add_pooling_layer=True):
        self.config = cfg
        self.embeddings = Embeddings(cfg, opts=options, rngs=rngs)
        self.encoder = Encoder(cfg, opts=options, rngs=rngs)
        d = cfg.hidden_size
        self.pooler = Dense(d, d, axes=("embed", "mlp"), opts=options, rngs=rngs) if add_pooling_layer else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None, last_rows: int | None = None) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, D]` and pooler_output `[B, D]`.

        last_rows (a jaxformers extension for heads that read only the first token): the last layer computes only
        the first `last_rows` positions, so last_hidden_state is `[B, last_rows, D]`, with the values the whole
        forward has there (the sequence-classification head passes 1).

        Ids, token types and positions are range-checked and T may not exceed max_position_embeddings, as in
        transformers (eagerly ValueError; under jit a checkify check, see `core.modeling`).
        deterministic=False applies dropout with the key `dropout_rng` (`core.dropout`)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        check_seq_len(input_ids.shape[1], cfg.max_position_embeddings)
        token_type_ids = check_index_input(token_type_ids, input_ids.shape, "token_type_ids", size=cfg.type_vocab_size,
                                           fix="token types are 0 for a single text, 0 and 1 for a pair")  # fmt: skip
        position_ids = check_index_input(position_ids, input_ids.shape, "position_ids",
                                         size=cfg.max_position_embeddings)  # fmt: skip
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        x = constrain(self.embeddings(input_ids, token_type_ids, position_ids, dropout.fold(key, _EMBED)), ACT_BTD)
        emb = x
        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), cfg.num_hidden_layers)
        x, hs = self.encoder(x, attention_mask.astype(bool), keys, last_rows)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return BaseModelOutput(
            last_hidden_state=x, pooler_output=pooled, hidden_states=(emb, *hs) if output_hidden_states else None
        )


class _BertHead(PreTrainedModel):
    config_class = BertConfig
    hf_prefix = "bert"
    base_attr = "bert"
    init_if_missing = ("pooler.",)


class LMPredictionHead(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.transform_dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)  # D -> D: output as mlp
        self.transform_LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        untied = not cfg.tie_word_embeddings
        self.decoder = Dense(d, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False, opts=opts, rngs=rngs) if untied else None
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), opts.param_dtype), axes=("vocab",))

    def __call__(self, x, embeddings: Embed):
        h = self.transform_LayerNorm(self.act(self.transform_dense(x)))
        logits = embeddings.attend(h) if self.decoder is None else self.decoder(h)
        return logits + self.bias[...].astype(logits.dtype)


class BertForMaskedLM(_BertHead):
    hf_architecture = "BertForMaskedLM"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.cls = LMPredictionHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, dropout_rng=None,
                 logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states,
                        deterministic=key is None, dropout_rng=key)  # fmt: skip
        h = at_positions(out.last_hidden_state, logits_positions)
        logits = constrain(self.cls(h, self.bert.embeddings.word_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class BertForSequenceClassification(_BertHead):
    hf_architecture = "BertForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)
        self.rate = cfg.classifier_rate

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        # the pooler reads the first token only: the last layer computes just that row (unless all are returned)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states,
                        deterministic=key is None, dropout_rng=key,
                        last_rows=None if output_hidden_states else 1)  # fmt: skip
        pooled = dropout.dropout(out.pooler_output, self.rate, dropout.fold(key, _HEAD))
        return SequenceClassifierOutput(logits=self.classifier(pooled), hidden_states=out.hidden_states)


class BertForTokenClassification(_BertHead):
    hf_architecture = "BertForTokenClassification"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)
        self.rate = cfg.classifier_rate

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states,
                        deterministic=key is None, dropout_rng=key)  # fmt: skip
        x = dropout.dropout(out.last_hidden_state, self.rate, dropout.fold(key, _HEAD))
        return TokenClassifierOutput(logits=self.classifier(x), hidden_states=out.hidden_states)


class BertForQuestionAnswering(_BertHead):
    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.qa_outputs = Dense(  # HF: 2 labels
            cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states,
                        deterministic=key is None, dropout_rng=key)  # fmt: skip
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


_L = "encoder.layer.*."
_B = "encoder.layer.block."
HF_WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings.LayerNorm.scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings.LayerNorm.bias"),
    Rule(_L + "attention.self.query.weight", _B + "attention.query.kernel", T(), SplitAxis(-1, "num_attention_heads")),
    Rule(_L + "attention.self.query.bias", _B + "attention.query.bias", SplitAxis(0, "num_attention_heads")),
    Rule(_L + "attention.self.key.weight", _B + "attention.key.kernel", T(), SplitAxis(-1, "num_attention_heads")),
    Rule(_L + "attention.self.key.bias", _B + "attention.key.bias", SplitAxis(0, "num_attention_heads")),
    Rule(_L + "attention.self.value.weight", _B + "attention.value.kernel", T(), SplitAxis(-1, "num_attention_heads")),
    Rule(_L + "attention.self.value.bias", _B + "attention.value.bias", SplitAxis(0, "num_attention_heads")),
    Rule(_L + "attention.output.dense.weight", _B + "attention.output.kernel", T(), SplitAxis(0, "num_attention_heads")),
    Rule(_L + "attention.output.dense.bias", _B + "attention.output.bias"),
    Rule(_L + "attention.output.LayerNorm.weight", _B + "attention.LayerNorm.scale"),
    Rule(_L + "attention.output.LayerNorm.bias", _B + "attention.LayerNorm.bias"),
    Rule(_L + "intermediate.dense.weight", _B + "intermediate.kernel", T()),
    Rule(_L + "intermediate.dense.bias", _B + "intermediate.bias"),
    Rule(_L + "output.dense.weight", _B + "output.kernel", T()),
    Rule(_L + "output.dense.bias", _B + "output.bias"),
    Rule(_L + "output.LayerNorm.weight", _B + "output_LayerNorm.scale"),
    Rule(_L + "output.LayerNorm.bias", _B + "output_LayerNorm.bias"),
    Rule("pooler.dense.weight", "pooler.kernel", T()),
    Rule("pooler.dense.bias", "pooler.bias"),
    Ignore("embeddings.position_ids"),
    # heads (full HF keys)
    Rule("cls.predictions.transform.dense.weight", "cls.transform_dense.kernel", T(), head=True),
    Rule("cls.predictions.transform.dense.bias", "cls.transform_dense.bias", head=True),
    Rule("cls.predictions.transform.LayerNorm.weight", "cls.transform_LayerNorm.scale", head=True),
    Rule("cls.predictions.transform.LayerNorm.bias", "cls.transform_LayerNorm.bias", head=True),
    Rule("cls.predictions.bias", "cls.bias", head=True),
    Rule("cls.predictions.decoder.weight", "cls.decoder.kernel", T(), unless="tie_word_embeddings", head=True),
    Ignore("cls.predictions.decoder.bias"),  # HF ties it to cls.predictions.bias
    Ignore("cls.seq_relationship.*"),  # next-sentence head of pretraining checkpoints
    Rule("classifier.weight", "classifier.kernel", T(), head=True),
    Rule("classifier.bias", "classifier.bias", head=True),
    Rule("qa_outputs.weight", "qa_outputs.kernel", T(), head=True),
    Rule("qa_outputs.bias", "qa_outputs.bias", head=True),
)

ARCHITECTURE = Architecture(
    name="bert",
    config_class=BertConfig,
    weights=HF_WEIGHTS,
    classes={
        "bert": {
            "base": BertModel,
            "masked-lm": BertForMaskedLM,
            "sequence-classification": BertForSequenceClassification,
            "token-classification": BertForTokenClassification,
            "question-answering": BertForQuestionAnswering,
        }
    },
)
