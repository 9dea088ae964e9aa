"""ELECTRA encoder and its task heads (discriminator and generator checkpoints alike).

References: arXiv:2003.10555; HF transformers `models/electra/modeling_electra.py` (5.x). The encoder is BERT's
(post-LN blocks, LayerNorm in float32, exact erf GELU for `hidden_act="gelu"`, absolute positions, token types) with
embeddings of width `embedding_size`, projected to `hidden_size` by `embeddings_project` when the two differ (the
small checkpoints: 128 -> 256), and no pooler. Heads, as HF:
- ElectraForPreTraining (the discriminator): `discriminator_predictions.dense` -> hidden_act ->
  `dense_prediction`, one replaced-token logit per token `[B, T]`;
- ElectraForMaskedLM (the generator): `generator_predictions.dense` (hidden -> embedding_size) -> GELU ->
  `LayerNorm` -> `generator_lm_head` (tied to the word embeddings when `tie_word_embeddings`, own bias);
- ForSequenceClassification: `classifier.dense` -> GELU -> `classifier.out_proj` on token 0;
- ForTokenClassification (`classifier`), ForQuestionAnswering (`qa_outputs`).
Decoder use (`is_decoder` / `add_cross_attention`, HF's ElectraForCausalLM) is not implemented and refused.

Position ids default to the count of real tokens (`core.modeling.positions_from_mask`, as in `bert.py`): identical
to HF's `arange(T)` for right padding; a left-padded row then gets the values it has alone.

Dropout (`core.dropout`): `hidden_dropout_prob` after the embedding LayerNorm (before the projection, as HF) and
after each block's attention output and FFN output projections, `attention_probs_dropout_prob` on the attention
probabilities; heads: `classifier_dropout` (default: `hidden_dropout_prob`) before and after the sequence
classifier's dense layer and before the token classifier; none in the pretraining, MLM and QA heads (as HF).

Sharding: the embedding width `embedding_size` is named `embed` in the embedding tables (it is their feature
axis); `embeddings_project [E, D]` names its input `mlp` (a kernel cannot use `embed` twice) and its output `embed`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

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
    ModelOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTV, constrain
from jaxformers.core.stack import run_layers


@config_class
class ElectraConfig(HFConfig):
    model_type = "electra"
    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size")  # fmt: skip
    nonnegative_fields = ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

    def validate(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.json: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); fix one of them"
            )
        if self.is_decoder or self.add_cross_attention:
            raise ValueError(
                f"config.json: is_decoder={self.is_decoder}, add_cross_attention={self.add_cross_attention}: "
                "ELECTRA as a causal decoder (HF ElectraForCausalLM) is not implemented in jaxformers, which runs "
                "ELECTRA as a bidirectional encoder only; set both to false for encoder checkpoints"
            )
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def project_embeddings(self) -> bool:
        """HF builds `embeddings_project` exactly when the embedding and hidden widths differ."""
        return self.embedding_size != self.hidden_size

    @property
    def classifier_rate(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout


@struct.dataclass
class ElectraForPreTrainingOutput(ModelOutput):
    """Discriminator output: `logits [B, T]`, one replaced-token logit per token (as HF)."""

    logits: jax.Array
    hidden_states: tuple | None = None


class Embeddings(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        e = cfg.embedding_size
        self.word_embeddings = Embed(cfg.vocab_size, e, opts=opts, rngs=rngs)
        self.position_embeddings = Embed(cfg.max_position_embeddings, e, axes=("pos", "embed"), opts=opts, rngs=rngs)
        self.token_type_embeddings = Embed(cfg.type_vocab_size, e, axes=("type_vocab", "embed"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(e, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, position_ids, key):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = self.LayerNorm(x + self.position_embeddings(position_ids))
        return dropout.dropout(x, self.rate, key)


class Attention(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        qkv_axes = ("embed", "heads", "head_dim")
        self.query = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.key = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.value = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.output = Dense((n, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.impl = opts.attn_impl
        self.probs_rate, self.rate = cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob

    def __call__(self, x, key_mask, key, rows=None):
        """rows: compute only the first `rows` positions' outputs (`core.stack.run_layers`' `last_rows`)."""
        xq = x if rows is None else x[:, :rows]
        q, k, v = self.query(xq), self.key(x), self.value(x)  # [B, T, N, H]
        o = attn.dot_product_attention(q, k, v, key_mask=key_mask, impl=self.impl, dropout_rate=self.probs_rate,
                                       dropout_key=dropout.fold(key, 0),
                                       dropout_queries=None if rows is None else x.shape[1])  # fmt: skip
        o = dropout.dropout(self.output(o), self.rate, dropout.fold(key, 1), full_shape=x.shape)
        return self.LayerNorm(o + xq)


class Layer(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        self.attention = Attention(cfg, opts=opts, rngs=rngs)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.output_LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act, self.rate = activation(cfg.hidden_act), cfg.hidden_dropout_prob

    def __call__(self, x, key_mask, key, rows=None):
        a = self.attention(x, key_mask, key, rows)  # attention sites 0 and 1
        h = constrain(self.act(self.intermediate(a)), ACT_BTF)
        out = dropout.dropout(self.output(h), self.rate, dropout.fold(key, 2), full_shape=x.shape)
        return constrain(self.output_LayerNorm(out + a), ACT_BTD)


class Encoder(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: Layer(cfg, opts=opts, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, key_mask, key, last_rows=None):
        def call(layer, h, kv, window, k, rows=None):
            return layer(h, key_mask, k, rows), kv

        keys = dropout.layer_keys(key, self.layer.n)
        x, hs, _ = run_layers(self.layer, x, call, cache=None, scan=self.scan, remat=self.remat, keys=keys,
                              last_rows=last_rows)  # fmt: skip
        return x, hs


class ElectraModel(PreTrainedModel):
    config_class = ElectraConfig
    hf_architecture = "ElectraModel"
    hf_prefix = "electra"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Embeddings(cfg, opts=options, rngs=rngs)
        self.embeddings_project = (
            Dense(cfg.embedding_size, cfg.hidden_size, axes=("mlp", "embed"), opts=options, rngs=rngs)
            if cfg.project_embeddings else None
        )  # fmt: skip
        self.encoder = Encoder(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None, last_rows: int | None = None) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, hidden_size]` (ELECTRA has no pooler).

        last_rows (a jaxformers extension for heads that read only the first token): the last layer computes only
        the first `last_rows` positions, so last_hidden_state is `[B, last_rows, D]`, with the values the whole
        forward has there (the sequence-classification head passes 1).

        Ids, token types and positions are range-checked and T may not exceed max_position_embeddings, as in
        transformers (eagerly ValueError; under jit a checkify check, see `core.modeling`). hidden_states (with
        `output_hidden_states`) starts with the embedding output after `embeddings_project`, as HF's."""
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
        x = self.embeddings(input_ids, token_type_ids, position_ids, dropout.fold(key, 0))
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        emb = constrain(x, ACT_BTD)
        x, hs = self.encoder(emb, attention_mask.astype(bool), dropout.fold(key, 1), last_rows)
        return BaseModelOutput(last_hidden_state=x, hidden_states=(emb, *hs) if output_hidden_states else None)


class _ElectraHead(PreTrainedModel):
    config_class = ElectraConfig
    hf_prefix = "electra"
    base_attr = "electra"

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, deterministic,
                key, last_rows=None):  # fmt: skip
        """The base model's output, with the base's dropout key (site 0 of the head's key)."""
        return self.electra(input_ids, attention_mask, token_type_ids, position_ids,
                            output_hidden_states=output_hidden_states, deterministic=deterministic,
                            dropout_rng=dropout.fold(key, 0), last_rows=last_rows)  # fmt: skip


class DiscriminatorPredictions(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)  # D -> D: output as mlp
        self.dense_prediction = Dense(d, 1, axes=("mlp", "labels"), opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.dense_prediction(self.act(self.dense(x)))[..., 0]  # [B, T]


class ElectraForPreTraining(_ElectraHead):
    hf_architecture = "ElectraForPreTraining"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.electra = ElectraModel(cfg, options=options, rngs=rngs)
        self.discriminator_predictions = DiscriminatorPredictions(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> ElectraForPreTrainingOutput:  # fmt: skip
        """Replaced-token detection: `logits [B, T]` (> 0: the token looks replaced)."""
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           deterministic, key)  # fmt: skip
        logits = self.discriminator_predictions(out.last_hidden_state)
        return ElectraForPreTrainingOutput(logits=logits, hidden_states=out.hidden_states)


class GeneratorPredictions(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        self.dense = Dense(cfg.hidden_size, cfg.embedding_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation("gelu")  # HF hard-codes GELU here, whatever hidden_act says

    def __call__(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class GeneratorLMHead(nnx.Module):
    """`generator_lm_head`: logits against the word embeddings (tied) or its own `[E, V]` kernel, plus a bias."""

    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        shape = (cfg.embedding_size, cfg.vocab_size)
        self.kernel = (
            None if cfg.tie_word_embeddings else param(rngs, normal(0.02), shape, opts.param_dtype, ("embed", "vocab"))
        )
        self.bias = param(rngs, zeros, (cfg.vocab_size,), opts.param_dtype, ("vocab",))
        self.dtype = opts.compute_dtype

    def __call__(self, x, embeddings: Embed):
        if self.kernel is None:
            logits = embeddings.attend(x)
        else:
            logits = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return logits + self.bias[...].astype(logits.dtype)


class ElectraForMaskedLM(_ElectraHead):
    hf_architecture = "ElectraForMaskedLM"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.electra = ElectraModel(cfg, options=options, rngs=rngs)
        self.generator_predictions = GeneratorPredictions(cfg, opts=options, rngs=rngs)
        self.generator_lm_head = GeneratorLMHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, dropout_rng=None,
                 logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           deterministic, key)  # fmt: skip
        h = self.generator_predictions(at_positions(out.last_hidden_state, logits_positions))
        logits = constrain(self.generator_lm_head(h, self.electra.embeddings.word_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class ClassificationHead(nnx.Module):
    def __init__(self, cfg: ElectraConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.out_proj = Dense(d, cfg.num_labels, axes=("mlp", "labels"), opts=opts, rngs=rngs)
        self.act = activation("gelu")  # HF: GELU here (BERT's pooler would use tanh)
        self.rate = cfg.classifier_rate

    def __call__(self, x, key):
        h = dropout.dropout(x[:, 0], self.rate, dropout.fold(key, 0))  # token 0 (<s> / [CLS])
        h = dropout.dropout(self.act(self.dense(h)), self.rate, dropout.fold(key, 1))
        return self.out_proj(h)


class ElectraForSequenceClassification(_ElectraHead):
    hf_architecture = "ElectraForSequenceClassification"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.electra = ElectraModel(cfg, options=options, rngs=rngs)
        self.classifier = ClassificationHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        # the head reads token 0 only: the last layer computes just that row (unless all are returned)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           deterministic, key, None if output_hidden_states else 1)  # fmt: skip
        logits = self.classifier(out.last_hidden_state, dropout.fold(key, 1))
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


class ElectraForTokenClassification(_ElectraHead):
    hf_architecture = "ElectraForTokenClassification"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.electra = ElectraModel(cfg, options=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           deterministic, key)  # fmt: skip
        h = dropout.dropout(out.last_hidden_state, self.config.classifier_rate, dropout.fold(key, 1))
        return TokenClassifierOutput(logits=self.classifier(h), hidden_states=out.hidden_states)


class ElectraForQuestionAnswering(_ElectraHead):
    hf_architecture = "ElectraForQuestionAnswering"

    def __init__(self, cfg: ElectraConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        if cfg.num_labels != 2:  # HF builds num_labels outputs but its forward splits them into exactly two
            raise ValueError(
                f"ElectraForQuestionAnswering needs num_labels=2 (start and end logits), but the config has "
                f"num_labels={cfg.num_labels}; set num_labels to 2 (and drop id2label) in config.json"
            )
        self.config = cfg
        self.electra = ElectraModel(cfg, options=options, rngs=rngs)
        self.qa_outputs = Dense(cfg.hidden_size, 2, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           deterministic, key)  # fmt: skip
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


_L = "encoder.layer.*."
_B = "encoder.layer.block."
_HEADS = "num_attention_heads"
_DP = "discriminator_predictions."
HF_WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings.LayerNorm.scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings.LayerNorm.bias"),
    Rule("embeddings_project.weight", "embeddings_project.kernel", T(), when="project_embeddings"),
    Rule("embeddings_project.bias", "embeddings_project.bias", when="project_embeddings"),
    Rule(_L + "attention.self.query.weight", _B + "attention.query.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.self.query.bias", _B + "attention.query.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.self.key.weight", _B + "attention.key.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.self.key.bias", _B + "attention.key.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.self.value.weight", _B + "attention.value.kernel", T(), SplitAxis(-1, _HEADS)),
    Rule(_L + "attention.self.value.bias", _B + "attention.value.bias", SplitAxis(0, _HEADS)),
    Rule(_L + "attention.output.dense.weight", _B + "attention.output.kernel", T(), SplitAxis(0, _HEADS)),
    Rule(_L + "attention.output.dense.bias", _B + "attention.output.bias"),
    Rule(_L + "attention.output.LayerNorm.weight", _B + "attention.LayerNorm.scale"),
    Rule(_L + "attention.output.LayerNorm.bias", _B + "attention.LayerNorm.bias"),
    Rule(_L + "intermediate.dense.weight", _B + "intermediate.kernel", T()),
    Rule(_L + "intermediate.dense.bias", _B + "intermediate.bias"),
    Rule(_L + "output.dense.weight", _B + "output.kernel", T()),
    Rule(_L + "output.dense.bias", _B + "output.bias"),
    Rule(_L + "output.LayerNorm.weight", _B + "output_LayerNorm.scale"),
    Rule(_L + "output.LayerNorm.bias", _B + "output_LayerNorm.bias"),
    Ignore("embeddings.position_ids"),  # buffers older checkpoints saved
    Ignore("embeddings.token_type_ids"),
    # heads (full HF keys)
    Rule(_DP + "dense.weight", _DP + "dense.kernel", T(), head=True),
    Rule(_DP + "dense.bias", _DP + "dense.bias", head=True),
    Rule(_DP + "dense_prediction.weight", _DP + "dense_prediction.kernel", T(), head=True),
    Rule(_DP + "dense_prediction.bias", _DP + "dense_prediction.bias", head=True),
    Rule("generator_predictions.dense.weight", "generator_predictions.dense.kernel", T(), head=True),
    Rule("generator_predictions.dense.bias", "generator_predictions.dense.bias", head=True),
    Rule("generator_predictions.LayerNorm.weight", "generator_predictions.LayerNorm.scale", head=True),
    Rule("generator_predictions.LayerNorm.bias", "generator_predictions.LayerNorm.bias", head=True),
    Rule("generator_lm_head.weight", "generator_lm_head.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("generator_lm_head.bias", "generator_lm_head.bias", head=True),
    Rule("classifier.dense.weight", "classifier.dense.kernel", T(), head=True),
    Rule("classifier.dense.bias", "classifier.dense.bias", head=True),
    Rule("classifier.out_proj.weight", "classifier.out_proj.kernel", T(), head=True),
    Rule("classifier.out_proj.bias", "classifier.out_proj.bias", head=True),
    Rule("classifier.weight", "classifier.kernel", T(), head=True),
    Rule("classifier.bias", "classifier.bias", head=True),
    Rule("qa_outputs.weight", "qa_outputs.kernel", T(), head=True),
    Rule("qa_outputs.bias", "qa_outputs.bias", head=True),
)

ARCHITECTURE = Architecture(
    name="electra",
    config_class=ElectraConfig,
    weights=HF_WEIGHTS,
    classes={
        "electra": {
            "base": ElectraModel,
            "pretraining": ElectraForPreTraining,
            "masked-lm": ElectraForMaskedLM,
            "sequence-classification": ElectraForSequenceClassification,
            "token-classification": ElectraForTokenClassification,
            "question-answering": ElectraForQuestionAnswering,
        }
    },
)
