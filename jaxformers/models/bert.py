"""BERT encoder and its task heads.

References: arXiv:1810.04805; HF transformers `models/bert/modeling_bert.py` (5.x). Numerics follow HF: post-LN
blocks, exact erf GELU for `hidden_act="gelu"`, LayerNorm in float32, tied MLM decoder with its own bias.
Position ids default to the count of real tokens (identical to HF for right padding; a left-padded row then gets
the values it has alone).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation
from jaxformers.core.modeling import (
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
from jaxformers.core.sharding import constrain
from jaxformers.convert.rules import Ignore, Rule, SplitAxis, T

ACT_BTD = ("act_batch", "act_seq", "act_embed")


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
    positive_fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size")  # fmt: skip
    nonnegative_fields = ("layer_norm_eps",)

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

    def __call__(self, input_ids, token_type_ids, position_ids):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(position_ids))


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

    def __call__(self, x, key_mask):
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, N, H]
        o = attn.dot_product_attention(q, k, v, key_mask=key_mask, impl=self.impl)
        return self.LayerNorm(self.output(o) + x)


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.attention = Attention(cfg, opts=opts, rngs=rngs)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.output_LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x, key_mask):
        a = self.attention(x, key_mask)
        h = constrain(self.act(self.intermediate(a)), ("act_batch", "act_seq", "act_mlp"))
        return constrain(self.output_LayerNorm(self.output(h) + a), ACT_BTD)


class Encoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: Layer(cfg, opts=opts, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, key_mask, output_hidden_states=False):
        if self.scan:
            x, hs = self.layer.scan(lambda lyr, c, _: (lyr(c, key_mask),) * 2, x, remat=self.remat)
            hs = tuple(hs[i] for i in range(hs.shape[0]))
        else:
            hs = []
            for i in range(self.layer.n):
                x = self.layer.layer(i)(x, key_mask)
                hs.append(x)
        return x, tuple(hs)


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
                 output_hidden_states: bool = False) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, D]` and pooler_output `[B, D]`.

        Ids, token types and positions are range-checked and T may not exceed max_position_embeddings, as in
        transformers (eagerly ValueError; under jit a checkify check, see `core.modeling`)."""
        cfg = self.config
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
        x = constrain(self.embeddings(input_ids, token_type_ids, position_ids), ACT_BTD)
        emb = x
        x, hs = self.encoder(x, attention_mask.astype(bool), output_hidden_states)
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
                 output_hidden_states: bool = False) -> MaskedLMOutput:  # fmt: skip
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states)
        logits = constrain(self.cls(out.last_hidden_state, self.bert.embeddings.word_embeddings), ("act_batch", "act_seq", "act_vocab"))
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class BertForSequenceClassification(_BertHead):
    hf_architecture = "BertForSequenceClassification"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False) -> SequenceClassifierOutput:  # fmt: skip
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states)
        return SequenceClassifierOutput(logits=self.classifier(out.pooler_output), hidden_states=out.hidden_states)


class BertForTokenClassification(_BertHead):
    hf_architecture = "BertForTokenClassification"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False) -> TokenClassifierOutput:  # fmt: skip
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states)
        return TokenClassifierOutput(logits=self.classifier(out.last_hidden_state), hidden_states=out.hidden_states)


class BertForQuestionAnswering(_BertHead):
    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, cfg: BertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.bert = BertModel(cfg, options=options, rngs=rngs, add_pooling_layer=False)
        self.qa_outputs = Dense(  # HF: 2 labels
            cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False) -> QuestionAnsweringOutput:  # fmt: skip
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


TASKS = {
    "base": BertModel,
    "masked-lm": BertForMaskedLM,
    "sequence-classification": BertForSequenceClassification,
    "token-classification": BertForTokenClassification,
    "question-answering": BertForQuestionAnswering,
}

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
for _cls in TASKS.values():
    _cls.hf_weights = HF_WEIGHTS
