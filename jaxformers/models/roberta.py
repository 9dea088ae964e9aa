"""RoBERTa and XLM-RoBERTa encoders and their task heads (one code path; XLM-R differs only in its model_type).

References: arXiv:1907.11692 (RoBERTa), arXiv:1911.02116 (XLM-R); HF transformers `models/roberta/modeling_roberta.py`
and `models/xlm_roberta/modeling_xlm_roberta.py` (5.x, the same code). Numerics follow HF: BERT's post-LN blocks,
LayerNorm in float32, `hidden_act` in the layers but always exact erf GELU in the masked-LM head.

Positions (fairseq's `make_positions`, HF `create_position_ids_from_input_ids`): a real token's position is
`pad_token_id + 1 + (number of real tokens up to it)` and a pad token's is `pad_token_id`, where "real" means
`input_ids != pad_token_id` (not the attention mask). So a left-padded row gets exactly the positions it has alone,
and `max_position_embeddings` (514 for base) holds `max_position_embeddings - pad_token_id - 1` tokens (512).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation
from jaxformers.core.modeling import (Architecture, PreTrainedModel, at_positions, check_index_input, check_input_ids,
                                      check_seq_len)
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

# Dropout sites (`dropout.fold(key, site)`): fixed numbers, so a site's mask never depends on which others ran.
_EMBED_SITE, _LAYERS_SITE, _HEAD_SITE = 0, 1, 2  # under the model key
_ATTN_PROBS_SITE, _ATTN_OUT_SITE, _MLP_OUT_SITE = 0, 1, 2  # under a layer's key
_HEAD_IN_SITE, _HEAD_MID_SITE = 0, 1  # under the head key (classification head: before dense, before out_proj)


@config_class
class RobertaConfig(HFConfig):
    model_type = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 1
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size")  # fmt: skip
    nonnegative_fields = ("layer_norm_eps",)
    rate_fields = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

    def validate(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); fix config.json"
            )
        if self.is_decoder or self.add_cross_attention:
            # HF then runs causal (RobertaForCausalLM) or adds cross-attention layers; as an encoder the outputs
            # would silently differ, so refuse rather than drop the flag.
            raise ValueError(
                f"config.json has is_decoder={self.is_decoder}, add_cross_attention={self.add_cross_attention}: "
                f"jaxformers implements {self.model_type} as an encoder only (no RobertaForCausalLM or cross-attention)"
                "; use an encoder checkpoint, or set both to false if the checkpoint really is an encoder"
            )
        pad = self.pad_token_id
        if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.max_position_embeddings - 1:
            raise ValueError(
                f"config.json: pad_token_id={pad!r} must be an integer in [0, max_position_embeddings - 1 = "
                f"{self.max_position_embeddings - 1}): {self.model_type} counts positions from the pad id (a real "
                "token's position is pad_token_id + 1 + its index); set pad_token_id to the tokenizer's pad id (1 for "
                "released checkpoints)"
            )
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self) -> int:
        """Tokens per sequence the position table holds: positions start at pad_token_id + 1."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def head_dropout(self) -> float:
        """HF's classifier dropout: `classifier_dropout`, else `hidden_dropout_prob`."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout


@config_class
class XLMRobertaConfig(RobertaConfig):
    model_type = "xlm-roberta"
    vocab_size: int = 30522  # HF's XLMRobertaConfig default (released checkpoints say 250002)


def roberta_position_ids(input_ids: jnp.ndarray, padding_idx: int) -> jnp.ndarray:
    """HF `create_position_ids_from_input_ids`: real tokens count up from `padding_idx + 1`, pads get `padding_idx`."""
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + padding_idx


class Embeddings(nnx.Module):
    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
        self.word_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, opts=opts, rngs=rngs)
        self.position_embeddings = Embed(
            cfg.max_position_embeddings, cfg.hidden_size, axes=("pos", "embed"), opts=opts, rngs=rngs
        )
        self.token_type_embeddings = Embed(
            cfg.type_vocab_size, cfg.hidden_size, axes=("type_vocab", "embed"), opts=opts, rngs=rngs
        )
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, position_ids, key):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return dropout.dropout(self.LayerNorm(x + self.position_embeddings(position_ids)), self.rate, key)


class Attention(nnx.Module):
    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
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
                                       dropout_key=dropout.fold(key, _ATTN_PROBS_SITE),
                                       dropout_queries=None if rows is None else x.shape[1])  # fmt: skip
        o = dropout.dropout(self.output(o), self.rate, dropout.fold(key, _ATTN_OUT_SITE), full_shape=x.shape)
        return self.LayerNorm(o + xq)


class Layer(nnx.Module):
    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
        self.attention = Attention(cfg, opts=opts, rngs=rngs)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.output_LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, key_mask, key, rows=None):
        a = self.attention(x, key_mask, key, rows)
        h = constrain(self.act(self.intermediate(a)), ACT_BTF)
        y = dropout.dropout(self.output(h), self.rate, dropout.fold(key, _MLP_OUT_SITE), full_shape=x.shape)
        return constrain(self.output_LayerNorm(y + a), ACT_BTD)


class Encoder(nnx.Module):
    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: Layer(cfg, opts=opts, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, key_mask, keys, last_rows=None):
        def call(layer, h, kv, window, key, rows=None):
            return layer(h, key_mask, key, rows), kv  # an encoder: no KV cache, no sliding window

        x, hs, _ = run_layers(self.layer, x, call, cache=None, scan=self.scan, remat=self.remat, keys=keys,
                              last_rows=last_rows)  # fmt: skip
        return x, hs


class RobertaModel(PreTrainedModel):
    config_class = RobertaConfig
    hf_architecture = "RobertaModel"
    hf_prefix = "roberta"
    init_if_missing = ("pooler.",)  # head checkpoints have no pooler; HF initialises it too

    def __init__(self, cfg: RobertaConfig, *, options: Options = Options(), rngs: nnx.Rngs, add_pooling_layer=True):
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

        Default positions follow the pad tokens in `input_ids` (module docstring), so at most
        `max_position_embeddings - pad_token_id - 1` tokens fit; explicit `position_ids` index the table directly.
        Ids, token types and positions are range-checked as in transformers (eagerly ValueError; under jit a
        checkify check, see `core.modeling`)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        token_type_ids = check_index_input(
            token_type_ids, input_ids.shape, "token_type_ids", size=cfg.type_vocab_size,
            fix="released RoBERTa / XLM-R checkpoints have a single token type: leave token_type_ids unset",
        )  # fmt: skip
        position_ids = check_index_input(position_ids, input_ids.shape, "position_ids",
                                         size=cfg.max_position_embeddings)  # fmt: skip
        if position_ids is None:
            # the largest default position is pad_token_id + T: a shape check keeps it inside the table
            usable = "usable positions (max_position_embeddings - pad_token_id - 1)"
            check_seq_len(input_ids.shape[1], cfg.max_tokens, usable)
            position_ids = roberta_position_ids(input_ids, cfg.pad_token_id)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        emb = constrain(
            self.embeddings(input_ids, token_type_ids, position_ids, dropout.fold(key, _EMBED_SITE)), ACT_BTD
        )
        keys = dropout.layer_keys(dropout.fold(key, _LAYERS_SITE), self.encoder.layer.n)
        x, hs = self.encoder(emb, attention_mask.astype(bool), keys, last_rows)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return BaseModelOutput(
            last_hidden_state=x, pooler_output=pooled, hidden_states=(emb, *hs) if output_hidden_states else None
        )


class _RobertaHead(PreTrainedModel):
    config_class = RobertaConfig
    hf_prefix = "roberta"
    base_attr = "roberta"
    init_if_missing = ("pooler.",)

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, deterministic,
                dropout_rng, last_rows=None):  # fmt: skip
        """The base model's output and the head's own dropout key (None when deterministic)."""
        key = dropout.key_for(deterministic, dropout_rng)
        out = self.roberta(input_ids, attention_mask, token_type_ids, position_ids,
                           output_hidden_states=output_hidden_states, deterministic=deterministic,
                           dropout_rng=key, last_rows=last_rows)  # fmt: skip
        return out, dropout.fold(key, _HEAD_SITE)


class LMHead(nnx.Module):
    """HF `RobertaLMHead`: dense -> exact GELU -> LayerNorm -> decoder. Tied (the default): the decoder is the word
    embedding and its bias is `lm_head.bias`. Untied: HF's decoder has its own bias, and `lm_head.bias` is kept (and
    saved) but unused, exactly as transformers does."""

    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)  # D -> D: output as mlp
        self.layer_norm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        untied = not cfg.tie_word_embeddings
        self.decoder = Dense(d, cfg.vocab_size, axes=("embed", "vocab"), opts=opts, rngs=rngs) if untied else None
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), opts.param_dtype), axes=("vocab",))
        self.act = activation("gelu")  # HF hard-codes exact GELU here, whatever hidden_act says

    def __call__(self, x, embeddings: Embed):
        h = self.layer_norm(self.act(self.dense(x)))
        if self.decoder is not None:
            return self.decoder(h)
        logits = embeddings.attend(h)
        return logits + self.bias[...].astype(logits.dtype)


class ClassificationHead(nnx.Module):
    """HF `RobertaClassificationHead`: the <s> token -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, cfg: RobertaConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.out_proj = Dense(d, cfg.num_labels, axes=("mlp", "labels"), opts=opts, rngs=rngs)
        self.rate = cfg.head_dropout

    def __call__(self, x, key):
        h = dropout.dropout(x[:, 0], self.rate, dropout.fold(key, _HEAD_IN_SITE))
        h = dropout.dropout(jnp.tanh(self.dense(h)), self.rate, dropout.fold(key, _HEAD_MID_SITE))
        return self.out_proj(h)


class RobertaForMaskedLM(_RobertaHead):
    hf_architecture = "RobertaForMaskedLM"

    def __init__(self, cfg: RobertaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.roberta = RobertaModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.lm_head = LMHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, dropout_rng=None,
                 logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        out, _ = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                              deterministic, dropout_rng)  # fmt: skip
        h = at_positions(out.last_hidden_state, logits_positions)
        logits = constrain(self.lm_head(h, self.roberta.embeddings.word_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class RobertaForSequenceClassification(_RobertaHead):
    hf_architecture = "RobertaForSequenceClassification"

    def __init__(self, cfg: RobertaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.roberta = RobertaModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.classifier = ClassificationHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        # the head reads the <s> token only: the last layer computes just that row (unless all are returned)
        out, key = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                                deterministic, dropout_rng, None if output_hidden_states else 1)  # fmt: skip
        return SequenceClassifierOutput(logits=self.classifier(out.last_hidden_state, key),
                                        hidden_states=out.hidden_states)  # fmt: skip


class RobertaForTokenClassification(_RobertaHead):
    hf_architecture = "RobertaForTokenClassification"

    def __init__(self, cfg: RobertaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.roberta = RobertaModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)
        self.rate = cfg.head_dropout

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        out, key = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                                deterministic, dropout_rng)  # fmt: skip
        h = dropout.dropout(out.last_hidden_state, self.rate, dropout.fold(key, _HEAD_IN_SITE))
        return TokenClassifierOutput(logits=self.classifier(h), hidden_states=out.hidden_states)


class RobertaForQuestionAnswering(_RobertaHead):
    hf_architecture = "RobertaForQuestionAnswering"

    def __init__(self, cfg: RobertaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.roberta = RobertaModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.qa_outputs = Dense(  # HF: num_labels outputs, of which the first two are start and end
            cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        out, _ = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                              deterministic, dropout_rng)  # fmt: skip
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


# XLM-RoBERTa: HF's classes are copies of RoBERTa's; only the names and the config's model_type differ.
class XLMRobertaModel(RobertaModel):
    config_class = XLMRobertaConfig
    hf_architecture = "XLMRobertaModel"


class XLMRobertaForMaskedLM(RobertaForMaskedLM):
    config_class = XLMRobertaConfig
    hf_architecture = "XLMRobertaForMaskedLM"


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    config_class = XLMRobertaConfig
    hf_architecture = "XLMRobertaForSequenceClassification"


class XLMRobertaForTokenClassification(RobertaForTokenClassification):
    config_class = XLMRobertaConfig
    hf_architecture = "XLMRobertaForTokenClassification"


class XLMRobertaForQuestionAnswering(RobertaForQuestionAnswering):
    config_class = XLMRobertaConfig
    hf_architecture = "XLMRobertaForQuestionAnswering"


_L = "encoder.layer.*."
_B = "encoder.layer.block."
_HEADS = SplitAxis(-1, "num_attention_heads")  # torch [out, in] transposed: split the output width into heads
_HEADS_IN = SplitAxis(0, "num_attention_heads")  # the attention output projection: split its input width
HF_WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings.LayerNorm.scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings.LayerNorm.bias"),
    Rule(_L + "attention.self.query.weight", _B + "attention.query.kernel", T(), _HEADS),
    Rule(_L + "attention.self.query.bias", _B + "attention.query.bias", _HEADS),
    Rule(_L + "attention.self.key.weight", _B + "attention.key.kernel", T(), _HEADS),
    Rule(_L + "attention.self.key.bias", _B + "attention.key.bias", _HEADS),
    Rule(_L + "attention.self.value.weight", _B + "attention.value.kernel", T(), _HEADS),
    Rule(_L + "attention.self.value.bias", _B + "attention.value.bias", _HEADS),
    Rule(_L + "attention.output.dense.weight", _B + "attention.output.kernel", T(), _HEADS_IN),
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
    Ignore("embeddings.position_ids"),  # buffers some older checkpoints saved
    Ignore("embeddings.token_type_ids"),
    # heads (full HF keys)
    Rule("lm_head.dense.weight", "lm_head.dense.kernel", T(), head=True),
    Rule("lm_head.dense.bias", "lm_head.dense.bias", head=True),
    Rule("lm_head.layer_norm.weight", "lm_head.layer_norm.scale", head=True),
    Rule("lm_head.layer_norm.bias", "lm_head.layer_norm.bias", head=True),
    Rule("lm_head.bias", "lm_head.bias", head=True),
    # tied (the default): the decoder is the word embedding and its bias is lm_head.bias, so transformers 5 saves
    # neither; older checkpoints that still carry the copies load with them unused.
    Rule("lm_head.decoder.weight", "lm_head.decoder.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("lm_head.decoder.bias", "lm_head.decoder.bias", unless="tie_word_embeddings", head=True),
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
    name="roberta",
    config_class=RobertaConfig,
    weights=HF_WEIGHTS,
    classes={
        "roberta": {
            "base": RobertaModel,
            "masked-lm": RobertaForMaskedLM,
            "sequence-classification": RobertaForSequenceClassification,
            "token-classification": RobertaForTokenClassification,
            "question-answering": RobertaForQuestionAnswering,
        },
        "xlm-roberta": {
            "base": XLMRobertaModel,
            "masked-lm": XLMRobertaForMaskedLM,
            "sequence-classification": XLMRobertaForSequenceClassification,
            "token-classification": XLMRobertaForTokenClassification,
            "question-answering": XLMRobertaForQuestionAnswering,
        },
    },
)
