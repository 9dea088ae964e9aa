"""DeBERTa-v2 / v3 encoder (HF model type "deberta-v2") and its task heads.

References: arXiv:2006.03654 (DeBERTa), arXiv:2111.09543 (v3); HF transformers
`models/deberta_v2/modeling_deberta_v2.py` (5.x), whose numerics this file follows: post-LN blocks, LayerNorm in
float32, exact erf GELU for `hidden_act="gelu"`.

Disentangled attention. Beside content-to-content `q . k`, each head adds content-to-position (`c2p`: the query
against a projected relative-position embedding) and position-to-content (`p2c`: the key against one) terms, for the
types listed in `pos_att_type`; every term is divided by `sqrt(head_dim * (1 + len(pos_att_type)))`. Relative
positions `i - j` are log-bucketed when `position_buckets > 0` (`make_log_bucket_position`) and index a table of
`2 * att_span` rows (`att_span` = position_buckets, else max_relative_positions, else max_position_embeddings),
LayerNorm-ed when `norm_rel_ebd` says "layer_norm", projected by the layer's own key/query projections when
`share_att_key`, else by `pos_key_proj` / `pos_query_proj`. The position indices depend only on the sequence length,
so they are host (numpy) constants, computed with the same float32 operations as transformers.

The c2p/p2c terms reach `core.attention.dot_product_attention` as an additive `bias [B, N, T, S]`, which forces the
XLA path whatever `attn_impl` says: unlike ALiBi or a T5 bucket bias, the bias depends on the content of every query
and key (a gather of `q . pos_k` by relative position), so a fused kernel would have to compute and gather the
position projections inside each tile, which none of ours does; HF materialises the same `[B, N, T, S]` scores.
The attention mask is HF's pairwise one (query and key both real): a padding query row sees no key and, as in HF,
attends uniformly, so even padded positions match transformers.

Embeddings: word (+ absolute positions when `position_biased_input`) (+ token types when `type_vocab_size > 0`),
then `embed_proj` when `embedding_size != hidden_size`, LayerNorm, and zeroed at padding (HF multiplies by the
mask; any nonzero mask entry counts as 1 here, see `core.modeling`). Position ids default to the count of real tokens
(identical to HF for right padding; a left-padded row gets the values it has alone); relative positions count slots,
which a shift of the row does not change. Without `position_biased_input` the model has no length limit, as in HF.
`token_type_ids` are ignored when `type_vocab_size` is 0 (v3 tokenizers still emit them), as in HF.

ConvLayer (`conv_kernel_size > 0`, v2-xlarge/xxlarge): after layer 0, `LayerNorm(layer_0 + act(conv(embeddings)))`
masked; the conv depends only on the embeddings, so it is computed before the stack, and the post-step is selected
for layer 0 by per-layer data (`run_layers(xs=...)`), scanned and unrolled alike.

Masked LM: `legacy=true` (HF's default) is the `cls.predictions` head (transform to embedding_size, decoder tied to
the word embeddings, or untied with its own bias); `legacy=false` is the `lm_predictions.lm_head` head of the
original v3 checkpoints (hidden_size transform, logits against the word embeddings plus a bias). The replaced-token
detection head of v3 checkpoints (`mask_predictions.*`) is ignored, as HF does.

Dropout (training, `deterministic=False`) where HF applies it: after the embedding LayerNorm, on the relative
position table in each layer and after each attention/FFN output projection (`hidden_dropout_prob`), on the
attention probabilities (`attention_probs_dropout_prob`), inside the ConvLayer, before the pooler dense
(`pooler_dropout`), before the sequence classifier (`cls_dropout`, else `hidden_dropout_prob`) and the token
classifier (`hidden_dropout_prob`).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
from jaxformers.convert.rules import Ignore, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): model level, then within a layer (under its per-layer key).
_EMBED, _LAYERS, _CONV, _POOLER, _CLASSIFIER = 0, 1, 2, 3, 4
_ATTN_PROBS, _ATTN_OUT, _FFN_OUT, _POS = 0, 1, 2, 3

ATT_TYPES = ("c2p", "p2c")  # the `pos_att_type` entries transformers implements
REL_NORMS = ("none", "layer_norm")  # the `norm_rel_ebd` entries
_ACT_BNTS = ("act_batch", "act_heads", None, None)


def _split_bar(value) -> list[str]:
    """HF's reading of `pos_att_type` / `norm_rel_ebd`: a list, or a string of `|`-separated lower-cased entries."""
    if value is None:
        return []
    if isinstance(value, str):
        return [x.strip() for x in value.lower().split("|")]
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return list(value)
    raise TypeError(f"expected a string such as 'p2c|c2p' or a list of strings, got {value!r}")


@config_class
class DebertaV2Config(HFConfig):
    """HF `DebertaV2Config` fields, plus those transformers reads with `getattr` defaults (position_buckets,
    share_att_key, norm_rel_ebd, conv_*, embedding_size, attention_head_size, cls_dropout)."""

    model_type = "deberta-v2"
    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pad_token_id: int | None = 0
    position_biased_input: bool = True
    pos_att_type: str | list | None = None
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    pooler_hidden_size: int | None = None  # HF: hidden_size
    cls_dropout: float | None = None  # HF: hidden_dropout_prob
    embedding_size: int | None = None  # HF: hidden_size
    attention_head_size: int | None = None  # HF: hidden_size // num_attention_heads
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    legacy: bool = True
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "conv_groups", "pooler_hidden_size", "embedding_size",
                       "attention_head_size")  # fmt: skip
    nonnegative_fields = ("layer_norm_eps",)
    rate_fields = ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout")
    # derived `when=` flags of the weight table -> the config.json fields behind them, for load errors, which read
    # "checkpoint has X but the config builds no such parameter ([...]=false?)"
    flag_fields: ClassVar[dict[str, str]] = {
        "has_token_types": "[type_vocab_size > 0]",
        "has_embed_proj": "[embedding_size != hidden_size]",
        "rel_layer_norm": "['layer_norm' in norm_rel_ebd]",
        "has_pos_key_proj": "[relative_attention and 'c2p' in pos_att_type and not share_att_key]",
        "has_pos_query_proj": "[relative_attention and 'p2c' in pos_att_type and not share_att_key]",
        "has_conv": "[conv_kernel_size > 0]",
        "legacy_untied": "[legacy and not tie_word_embeddings]",
    }
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("pooler_hidden_size", "embedding_size", "attention_head_size")

    def validate(self):
        if self.hidden_size % self.num_attention_heads:  # transformers checks it even with attention_head_size
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); fix one of them in config.json"
            )
        if self.attention_head_size not in (None, self.hidden_size // self.num_attention_heads):
            raise ValueError(  # HF's attention output projection is hidden_size x hidden_size
                f"config.json: attention_head_size={self.attention_head_size} times num_attention_heads "
                f"({self.num_attention_heads}) must equal hidden_size ({self.hidden_size}), as transformers' output "
                "projection requires; remove attention_head_size or fix it"
            )
        self.att_types  # noqa: B018 (raises on unknown entries)
        self.rel_norms  # noqa: B018
        activation(self.hidden_act)
        for name in ("type_vocab_size", "conv_kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"config.json: {name}={value!r} must be an integer >= 0 (0: none); fix {name}")
        for name in ("position_buckets", "max_relative_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"config.json: {name}={value!r} must be an integer (-1: unset); fix {name}")
        if self.position_buckets == 1:  # transformers divides by position_buckets // 2
            raise ValueError(
                "config.json: position_buckets=1 is not a valid bucket count (transformers divides by "
                "position_buckets // 2 = 0); use position_buckets >= 2, or -1 for no buckets"
            )
        if self.pooler_hidden_size not in (None, self.hidden_size):
            raise ValueError(
                f"config.json: pooler_hidden_size={self.pooler_hidden_size} must equal hidden_size "
                f"({self.hidden_size}): the pooler applies a pooler_hidden_size layer to a hidden_size vector and "
                "transformers' classifier reads hidden_size outputs; remove pooler_hidden_size or set it to hidden_size"
            )
        if self.has_conv:
            if self.conv_kernel_size % 2 == 0:
                raise ValueError(
                    f"config.json: conv_kernel_size={self.conv_kernel_size} must be odd: the ConvLayer pads "
                    "(kernel - 1) // 2 per side, so an even kernel shortens the sequence (transformers fails on it)"
                )
            if self.hidden_size % self.conv_groups:
                raise ValueError(
                    f"config.json: conv_groups={self.conv_groups} must divide hidden_size ({self.hidden_size})"
                )
            activation(self.conv_act)

    def to_hf(self) -> dict:
        d = super().to_hf()
        for name in self._OMIT_IF_NONE:  # transformers reads these with getattr defaults; null would break it
            if d.get(name) is None:
                d.pop(name, None)
        return d

    @property
    def att_types(self) -> tuple[str, ...]:
        """`pos_att_type` as a tuple of "c2p" / "p2c" (HF accepts "p2c|c2p" or a list); unknown entries refused."""
        try:
            types = _split_bar(self.pos_att_type)
        except TypeError as e:
            raise ValueError(f"config.json: pos_att_type: {e}") from None
        bad = [t for t in types if t not in ATT_TYPES]
        if bad:
            raise ValueError(
                f"config.json: pos_att_type={self.pos_att_type!r} has unknown entries {bad}; the allowed values are "
                f"{list(ATT_TYPES)} (any subset, as a list or a 'p2c|c2p' string; [] or null for none)"
            )
        return tuple(dict.fromkeys(types))

    @property
    def rel_norms(self) -> tuple[str, ...]:
        try:
            norms = _split_bar(self.norm_rel_ebd)
        except TypeError as e:
            raise ValueError(f"config.json: norm_rel_ebd: {e}") from None
        bad = [t for t in norms if t not in REL_NORMS]
        if bad:
            raise ValueError(
                f"config.json: norm_rel_ebd={self.norm_rel_ebd!r} has unknown entries {bad}; the allowed values are "
                f"{list(REL_NORMS)} ('|'-separated)"
            )
        return tuple(norms)

    @property
    def emb_size(self) -> int:
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def head_dim(self) -> int:
        if self.attention_head_size is not None:
            return self.attention_head_size
        return self.hidden_size // self.num_attention_heads

    @property
    def rel_max(self) -> int:
        """HF's effective max_relative_positions (max_position_embeddings when unset)."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def att_span(self) -> int:
        """Half the rows of the relative embedding table: position_buckets when bucketed, else rel_max."""
        return self.position_buckets if self.position_buckets > 0 else self.rel_max

    @property
    def scale_factor(self) -> int:
        return 1 + len(self.att_types)

    @property
    def uses_rel_bias(self) -> bool:
        return self.relative_attention and bool(self.att_types)

    @property
    def has_token_types(self) -> bool:
        return self.type_vocab_size > 0

    @property
    def has_embed_proj(self) -> bool:
        return self.emb_size != self.hidden_size

    @property
    def rel_layer_norm(self) -> bool:
        return "layer_norm" in self.rel_norms  # HF builds it whether or not relative_attention is on

    @property
    def has_pos_key_proj(self) -> bool:
        return self.relative_attention and not self.share_att_key and "c2p" in self.att_types

    @property
    def has_pos_query_proj(self) -> bool:
        return self.relative_attention and not self.share_att_key and "p2c" in self.att_types

    @property
    def has_conv(self) -> bool:
        return self.conv_kernel_size > 0

    @property
    def legacy_untied(self) -> bool:
        return self.legacy and not self.tie_word_embeddings

    @property
    def classifier_rate(self) -> float:
        """HF's sequence-classifier dropout: `cls_dropout`, else `hidden_dropout_prob`."""
        return self.hidden_dropout_prob if self.cls_dropout is None else self.cls_dropout


def make_log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """HF's log buckets of relative positions, with the same float32 operations (log, divide, ceil) as torch so that
    the integer buckets agree exactly: positions within `bucket_size // 2` keep their value, farther ones share
    logarithmically wider buckets up to `max_position`."""
    rel = np.asarray(relative_pos, np.int64)
    sign = np.sign(rel)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) in slots the `where` below discards
        ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
        log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
        bucket = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign.astype(np.float32))
        return bucket.astype(np.int64)


def relative_positions(t: int, bucket_size: int, max_position: int) -> np.ndarray:
    """`[T, T]` relative positions `i - j` of query slot i and key slot j, log-bucketed when `bucket_size > 0`
    (HF `build_relative_position`)."""
    ids = np.arange(t, dtype=np.int64)
    rel = ids[:, None] - ids[None, :]
    if bucket_size > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, bucket_size, max_position)
    return rel


@functools.lru_cache(maxsize=64)
def _position_indices(t: int, bucket_size: int, max_position: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the relative table each (query, key) pair reads: c2p `[T, S]` (indexed by query, key) and p2c `[S, T]`
    (indexed by key, query; HF gathers p2c per key and transposes), both clamped to `[0, 2 * span)`."""
    rel = relative_positions(t, bucket_size, max_position)
    c2p = np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)
    p2c = np.clip(-rel + span, 0, 2 * span - 1).astype(np.int32)  # [key j, query i]: -bucket(j - i) = bucket(i - j)
    c2p.flags.writeable = p2c.flags.writeable = False
    return c2p, p2c


def _gather_last(scores, index):
    """`scores [B, N, X, R]` gathered along R by a constant `index [X, Y]` -> `[B, N, X, Y]`."""
    index = jnp.broadcast_to(jnp.asarray(index), scores.shape[:-1] + (index.shape[-1],))
    return jnp.take_along_axis(scores, index, axis=-1, mode="promise_in_bounds")


class Embeddings(nnx.Module):
    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        e, d = cfg.emb_size, cfg.hidden_size
        self.word_embeddings = Embed(cfg.vocab_size, e, opts=opts, rngs=rngs)
        self.position_embeddings = (
            Embed(cfg.max_position_embeddings, e, axes=("pos", "embed"), opts=opts, rngs=rngs)
            if cfg.position_biased_input
            else None
        )
        self.token_type_embeddings = (
            Embed(cfg.type_vocab_size, e, axes=("type_vocab", "embed"), opts=opts, rngs=rngs)
            if cfg.has_token_types
            else None
        )
        self.embed_proj = (
            Dense(e, d, axes=("embed", "mlp"), use_bias=False, opts=opts, rngs=rngs) if cfg.has_embed_proj else None
        )
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids, position_ids, mask, key=None):
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * mask[..., None].astype(x.dtype)  # HF zeroes padding slots here
        return dropout.dropout(x, self.rate, key)


class Attention(nnx.Module):
    """Disentangled self-attention + output projection, residual and LayerNorm (HF `DebertaV2Attention`)."""

    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        qkv_axes = ("embed", "heads", "head_dim")
        self.query = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.key = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.value = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs)
        self.pos_key = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs) if cfg.has_pos_key_proj else None
        self.pos_query = Dense(d, (n, h), axes=qkv_axes, opts=opts, rngs=rngs) if cfg.has_pos_query_proj else None
        self.output = Dense((n, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.impl = opts.attn_impl
        self.c2p = cfg.uses_rel_bias and "c2p" in cfg.att_types
        self.p2c = cfg.uses_rel_bias and "p2c" in cfg.att_types
        self.share_att_key = cfg.share_att_key
        # HF divides every score term by sqrt(head_dim * scale_factor), computed in float32
        self.denom = float(np.sqrt(np.float32(h) * np.float32(cfg.scale_factor)))
        self.probs_rate, self.rate = cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob

    def position_bias(self, q, k, rel, index, key):
        """c2p + p2c scores `[B, N, T, S]` (float32, already divided like the content scores), or None."""
        if not (self.c2p or self.p2c):
            return None
        c2p_index, p2c_index = index
        rel = dropout.dropout(rel, self.rate, dropout.fold(key, _POS))  # HF's pos_dropout, per layer
        bias = None
        if self.c2p:  # query i against the (key-projected) embedding of relative position i - j, per query row
            pos_k = (self.key if self.share_att_key else self.pos_key)(rel)  # [2A, N, H]
            s = jnp.einsum("btnh,rnh->bntr", q, pos_k, preferred_element_type=jnp.float32)
            bias = _gather_last(s, c2p_index) / self.denom
        if self.p2c:  # key j against the query-projected embedding of i - j: gathered per key row, transposed
            pos_q = (self.query if self.share_att_key else self.pos_query)(rel)
            s = jnp.einsum("bsnh,rnh->bnsr", k, pos_q, preferred_element_type=jnp.float32)
            p2c = jnp.swapaxes(_gather_last(s, p2c_index), -1, -2) / self.denom
            bias = p2c if bias is None else bias + p2c
        return constrain(bias, _ACT_BNTS)

    def __call__(self, x, pair_mask, rel, index, key=None):
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, N, H]
        bias = self.position_bias(q, k, rel, index, key)
        o = attn.dot_product_attention(
            q, k, v, mask=pair_mask, bias=bias, scale=1.0 / self.denom, impl=self.impl,
            dropout_rate=self.probs_rate, dropout_key=dropout.fold(key, _ATTN_PROBS),
        )  # fmt: skip
        o = dropout.dropout(self.output(o), self.rate, dropout.fold(key, _ATTN_OUT))
        return self.LayerNorm(o + x)


class Layer(nnx.Module):
    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        self.attention = Attention(cfg, opts=opts, rngs=rngs)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.output_LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, pair_mask, rel, index, key=None):
        a = self.attention(x, pair_mask, rel, index, key)
        h = constrain(self.act(self.intermediate(a)), ACT_BTF)
        h = dropout.dropout(self.output(h), self.rate, dropout.fold(key, _FFN_OUT))
        return constrain(self.output_LayerNorm(h + a), ACT_BTD)


class ConvLayer(nnx.Module):
    """HF's ConvLayer (v2-xlarge/xxlarge): a 1-D convolution of the embeddings added to layer 0's output."""

    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        d, k, g = cfg.hidden_size, cfg.conv_kernel_size, cfg.conv_groups
        # [kernel, in / groups, out] (torch Conv1d stores [out, in / groups, kernel]): lax's "WIO" layout
        self.kernel = param(rngs, normal(0.02), (k, d // g, d), opts.param_dtype, (None, "embed", "mlp"))
        self.bias = param(rngs, zeros, (d,), opts.param_dtype, ("mlp",))
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.conv_act)
        self.groups, self.pad = g, (k - 1) // 2
        self.dtype = opts.compute_dtype
        self.rate = cfg.hidden_dropout_prob

    def conv(self, x, mask, key=None):
        """`act(dropout(conv(x)))` with padding slots zeroed before the activation, `[B, T, D]`."""
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=(1,),
            padding=((self.pad, self.pad),), dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )  # fmt: skip
        y = jnp.where(mask[..., None], y + self.bias[...].astype(self.dtype), jnp.zeros((), self.dtype))
        return self.act(dropout.dropout(y, self.rate, key))

    def combine(self, layer_out, conv_out, mask):
        return self.LayerNorm(layer_out + conv_out) * mask[..., None].astype(layer_out.dtype)


class Encoder(nnx.Module):
    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        self.layer = Stacked(lambda r: Layer(cfg, opts=opts, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        d = cfg.hidden_size
        self.rel_embeddings = (
            Embed(2 * cfg.att_span, d, axes=("pos", "embed"), opts=opts, rngs=rngs) if cfg.relative_attention else None
        )
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs) if cfg.rel_layer_norm else None
        self.conv = ConvLayer(cfg, opts=opts, rngs=rngs) if cfg.has_conv else None
        self.buckets, self.rel_max, self.span = cfg.position_buckets, cfg.rel_max, cfg.att_span
        self.dtype = opts.compute_dtype
        self.scan, self.remat = opts.scan_layers, opts.remat

    def __call__(self, x, mask, keys=None, conv_key=None):
        """Run the layers on the embeddings `x [B, T, D]` (`mask [B, T]` 0/1; `keys`: per-layer dropout keys or
        None); returns `(x, per-layer outputs)`."""
        m = mask.astype(bool)
        pair_mask = (m[:, :, None] & m[:, None, :])[:, None]  # [B, 1, T, S]: HF's query-and-key mask
        rel = index = None
        if self.rel_embeddings is not None:
            rel = self.rel_embeddings.embedding[...].astype(self.dtype)  # [2A, D]
            if self.LayerNorm is not None:
                rel = self.LayerNorm(rel)
            index = _position_indices(x.shape[1], self.buckets, self.rel_max, self.span)
        conv_out = None if self.conv is None else self.conv.conv(x, m, conv_key)

        def call(layer, h, kv, window, key, xs=None):
            y = layer(h, pair_mask, rel, index, key)
            if conv_out is not None:  # xs: True for layer 0, the one the ConvLayer follows
                y = jnp.where(xs, self.conv.combine(y, conv_out, m), y)
            return y, kv

        first = None if self.conv is None else jnp.arange(self.layer.n) == 0
        x, hs, _ = run_layers(
            self.layer, x, call, cache=None, scan=self.scan, remat=self.remat, keys=keys, xs=first
        )  # fmt: skip
        return x, hs


class DebertaV2Model(PreTrainedModel):
    config_class = DebertaV2Config
    hf_architecture = "DebertaV2Model"
    hf_prefix = "deberta"
    # Absolute position embeddings: transformers initialises them when a checkpoint lacks them and ignores them when
    # `position_biased_input` is false (its `_keys_to_ignore_on_load_unexpected`); both directions behave the same
    # here (a warning / an info line), so one config.json flag never makes a checkpoint unloadable.
    init_if_missing = ("embeddings.position_embeddings",)

    def __init__(self, cfg: DebertaV2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Embeddings(cfg, opts=options, rngs=rngs)
        self.encoder = Encoder(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, D]` (no pooler: HF's DebertaV2Model has none).

        Ids (and token types / positions where the model has their tables) are range-checked as in transformers
        (eagerly ValueError; under jit a checkify check, see `core.modeling`); with absolute positions T may not
        exceed max_position_embeddings. deterministic=False applies dropout with the key `dropout_rng`."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        shape = input_ids.shape
        if cfg.has_token_types:
            fix = "token types are 0 for a single text, 0 and 1 for a pair"
            size = cfg.type_vocab_size
            token_type_ids = check_index_input(token_type_ids, shape, "token_type_ids", size=size, fix=fix)
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
        else:  # type_vocab_size=0 (v3): no table; transformers ignores them, and v3 tokenizers still emit them
            check_index_input(token_type_ids, shape, "token_type_ids")
            token_type_ids = None
        if cfg.position_biased_input:
            check_seq_len(shape[1], cfg.max_position_embeddings)
            position_ids = check_index_input(position_ids, shape, "position_ids", size=cfg.max_position_embeddings)
            if position_ids is None:
                position_ids = positions_from_mask(attention_mask)
        else:  # relative positions only: transformers ignores position_ids
            check_index_input(position_ids, shape, "position_ids")
            position_ids = None
        x = self.embeddings(input_ids, token_type_ids, position_ids, attention_mask, dropout.fold(key, _EMBED))
        x = constrain(x, ACT_BTD)
        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), cfg.num_hidden_layers)
        emb = x
        x, hs = self.encoder(x, attention_mask, keys, dropout.fold(key, _CONV))
        return BaseModelOutput(last_hidden_state=x, hidden_states=(emb, *hs) if output_hidden_states else None)


class _DebertaV2Head(PreTrainedModel):
    config_class = DebertaV2Config
    hf_prefix = "deberta"
    base_attr = "deberta"
    init_if_missing = DebertaV2Model.init_if_missing

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, key):
        return self.deberta(input_ids, attention_mask, token_type_ids, position_ids,
                            output_hidden_states=output_hidden_states, deterministic=key is None,
                            dropout_rng=key)  # fmt: skip


class LegacyLMHead(nnx.Module):
    """HF `cls.predictions` (legacy=true): dense to embedding_size, act, LayerNorm, then the decoder: tied to the
    word embeddings plus `bias`, or (tie_word_embeddings=false) its own weight and bias, `bias` then unused."""

    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        e = cfg.emb_size
        self.transform_dense = Dense(cfg.hidden_size, e, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.transform_LayerNorm = LayerNorm(e, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.decoder = (
            Dense(e, cfg.vocab_size, axes=("embed", "vocab"), opts=opts, rngs=rngs) if cfg.legacy_untied else None
        )
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), opts.param_dtype), axes=("vocab",))

    def __call__(self, x, embeddings: Embed):
        h = self.transform_LayerNorm(self.act(self.transform_dense(x)))
        if self.decoder is not None:
            return self.decoder(h)
        logits = embeddings.attend(h)
        return logits + self.bias[...].astype(logits.dtype)


class LMHead(nnx.Module):
    """HF `lm_predictions.lm_head` (legacy=false, the original v3 layout): dense, act, LayerNorm, then logits
    against the word embeddings plus `bias`."""

    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.LayerNorm = LayerNorm(d, eps=cfg.layer_norm_eps, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), opts.param_dtype), axes=("vocab",))

    def __call__(self, x, embeddings: Embed):
        logits = embeddings.attend(self.LayerNorm(self.act(self.dense(x))))
        return logits + self.bias[...].astype(logits.dtype)


class DebertaV2ForMaskedLM(_DebertaV2Head):
    hf_architecture = "DebertaV2ForMaskedLM"

    def __init__(self, cfg: DebertaV2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        if not cfg.legacy and cfg.has_embed_proj:
            raise ValueError(
                f"legacy=false (the lm_predictions head) multiplies hidden_size ({cfg.hidden_size}) vectors by the "
                f"word embeddings of embedding_size ({cfg.emb_size}); transformers fails on this config too. Set "
                "legacy=true for the cls.predictions head, or use embedding_size=hidden_size"
            )
        self.config = cfg
        self.deberta = DebertaV2Model(cfg, options=options, rngs=rngs)
        self.cls = LegacyLMHead(cfg, opts=options, rngs=rngs) if cfg.legacy else None
        self.lm_predictions = LMHead(cfg, opts=options, rngs=rngs) if not cfg.legacy else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True, dropout_rng=None,
                 logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, key)
        head = self.cls if self.cls is not None else self.lm_predictions
        h = at_positions(out.last_hidden_state, logits_positions)
        logits = constrain(head(h, self.deberta.embeddings.word_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class ContextPooler(nnx.Module):
    """HF ContextPooler: the first token, dropout (`pooler_dropout`), dense, `pooler_hidden_act`."""

    def __init__(self, cfg: DebertaV2Config, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.act = activation(cfg.pooler_hidden_act)
        self.rate = cfg.pooler_dropout

    def __call__(self, x, key=None):
        return self.act(self.dense(dropout.dropout(x[:, 0], self.rate, key)))


class DebertaV2ForSequenceClassification(_DebertaV2Head):
    hf_architecture = "DebertaV2ForSequenceClassification"

    def __init__(self, cfg: DebertaV2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.deberta = DebertaV2Model(cfg, options=options, rngs=rngs)
        self.pooler = ContextPooler(cfg, opts=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)
        self.rate = cfg.classifier_rate

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, key)
        pooled = self.pooler(out.last_hidden_state, dropout.fold(key, _POOLER))
        pooled = dropout.dropout(pooled, self.rate, dropout.fold(key, _CLASSIFIER))
        return SequenceClassifierOutput(logits=self.classifier(pooled), hidden_states=out.hidden_states)


class DebertaV2ForTokenClassification(_DebertaV2Head):
    hf_architecture = "DebertaV2ForTokenClassification"

    def __init__(self, cfg: DebertaV2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.deberta = DebertaV2Model(cfg, options=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, key)
        x = dropout.dropout(out.last_hidden_state, self.rate, dropout.fold(key, _CLASSIFIER))
        return TokenClassifierOutput(logits=self.classifier(x), hidden_states=out.hidden_states)


class DebertaV2ForQuestionAnswering(_DebertaV2Head):
    hf_architecture = "DebertaV2ForQuestionAnswering"

    def __init__(self, cfg: DebertaV2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.deberta = DebertaV2Model(cfg, options=options, rngs=rngs)
        self.qa_outputs = Dense(  # HF: 2 labels
            cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, key)
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


_L = "encoder.layer.*."
_A = "encoder.layer.*.attention.self."
_B = "encoder.layer.block."
_H = "num_attention_heads"
HF_WEIGHTS = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),  # init_if_missing
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.embedding",
         when="has_token_types"),  # fmt: skip
    Rule("embeddings.embed_proj.weight", "embeddings.embed_proj.kernel", T(), when="has_embed_proj"),
    Rule("embeddings.LayerNorm.weight", "embeddings.LayerNorm.scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings.LayerNorm.bias"),
    Ignore("embeddings.position_ids"),
    Rule("encoder.rel_embeddings.weight", "encoder.rel_embeddings.embedding", when="relative_attention"),
    Rule("encoder.LayerNorm.weight", "encoder.LayerNorm.scale", when="rel_layer_norm"),
    Rule("encoder.LayerNorm.bias", "encoder.LayerNorm.bias", when="rel_layer_norm"),
    Rule("encoder.conv.conv.weight", "encoder.conv.kernel", T((2, 1, 0)), when="has_conv"),
    Rule("encoder.conv.conv.bias", "encoder.conv.bias", when="has_conv"),
    Rule("encoder.conv.LayerNorm.weight", "encoder.conv.LayerNorm.scale", when="has_conv"),
    Rule("encoder.conv.LayerNorm.bias", "encoder.conv.LayerNorm.bias", when="has_conv"),
    Rule(_A + "query_proj.weight", _B + "attention.query.kernel", T(), SplitAxis(-1, _H)),
    Rule(_A + "query_proj.bias", _B + "attention.query.bias", SplitAxis(0, _H)),
    Rule(_A + "key_proj.weight", _B + "attention.key.kernel", T(), SplitAxis(-1, _H)),
    Rule(_A + "key_proj.bias", _B + "attention.key.bias", SplitAxis(0, _H)),
    Rule(_A + "value_proj.weight", _B + "attention.value.kernel", T(), SplitAxis(-1, _H)),
    Rule(_A + "value_proj.bias", _B + "attention.value.bias", SplitAxis(0, _H)),
    Rule(_A + "pos_key_proj.weight", _B + "attention.pos_key.kernel", T(), SplitAxis(-1, _H), when="has_pos_key_proj"),
    Rule(_A + "pos_key_proj.bias", _B + "attention.pos_key.bias", SplitAxis(0, _H), when="has_pos_key_proj"),
    Rule(_A + "pos_query_proj.weight", _B + "attention.pos_query.kernel", T(), SplitAxis(-1, _H),
         when="has_pos_query_proj"),  # fmt: skip
    Rule(_A + "pos_query_proj.bias", _B + "attention.pos_query.bias", SplitAxis(0, _H), when="has_pos_query_proj"),
    Rule(_L + "attention.output.dense.weight", _B + "attention.output.kernel", T(), SplitAxis(0, _H)),
    Rule(_L + "attention.output.dense.bias", _B + "attention.output.bias"),
    Rule(_L + "attention.output.LayerNorm.weight", _B + "attention.LayerNorm.scale"),
    Rule(_L + "attention.output.LayerNorm.bias", _B + "attention.LayerNorm.bias"),
    Rule(_L + "intermediate.dense.weight", _B + "intermediate.kernel", T()),
    Rule(_L + "intermediate.dense.bias", _B + "intermediate.bias"),
    Rule(_L + "output.dense.weight", _B + "output.kernel", T()),
    Rule(_L + "output.dense.bias", _B + "output.bias"),
    Rule(_L + "output.LayerNorm.weight", _B + "output_LayerNorm.scale"),
    Rule(_L + "output.LayerNorm.bias", _B + "output_LayerNorm.bias"),
    # heads (full HF keys)
    Rule("cls.predictions.transform.dense.weight", "cls.transform_dense.kernel", T(), when="legacy", head=True),
    Rule("cls.predictions.transform.dense.bias", "cls.transform_dense.bias", when="legacy", head=True),
    Rule("cls.predictions.transform.LayerNorm.weight", "cls.transform_LayerNorm.scale", when="legacy", head=True),
    Rule("cls.predictions.transform.LayerNorm.bias", "cls.transform_LayerNorm.bias", when="legacy", head=True),
    Rule("cls.predictions.bias", "cls.bias", when="legacy", head=True),
    # tied (HF's default): the decoder is the word embeddings and `cls.predictions.bias`, not saved by transformers
    Rule("cls.predictions.decoder.weight", "cls.decoder.kernel", T(), when="legacy_untied", head=True),
    Rule("cls.predictions.decoder.bias", "cls.decoder.bias", when="legacy_untied", head=True),
    Rule("lm_predictions.lm_head.dense.weight", "lm_predictions.dense.kernel", T(), unless="legacy", head=True),
    Rule("lm_predictions.lm_head.dense.bias", "lm_predictions.dense.bias", unless="legacy", head=True),
    Rule("lm_predictions.lm_head.LayerNorm.weight", "lm_predictions.LayerNorm.scale", unless="legacy", head=True),
    Rule("lm_predictions.lm_head.LayerNorm.bias", "lm_predictions.LayerNorm.bias", unless="legacy", head=True),
    Rule("lm_predictions.lm_head.bias", "lm_predictions.bias", unless="legacy", head=True),
    Ignore("mask_predictions.*"),  # v3's replaced-token-detection head (pretraining only; HF ignores it too)
    Ignore("mask_predictions.*.*"),
    Rule("pooler.dense.weight", "pooler.dense.kernel", T(), head=True),
    Rule("pooler.dense.bias", "pooler.dense.bias", head=True),
    Rule("classifier.weight", "classifier.kernel", T(), head=True),
    Rule("classifier.bias", "classifier.bias", head=True),
    Rule("qa_outputs.weight", "qa_outputs.kernel", T(), head=True),
    Rule("qa_outputs.bias", "qa_outputs.bias", head=True),
)

ARCHITECTURE = Architecture(
    name="deberta_v2",
    config_class=DebertaV2Config,
    weights=HF_WEIGHTS,
    classes={
        "deberta-v2": {
            "base": DebertaV2Model,
            "masked-lm": DebertaV2ForMaskedLM,
            "sequence-classification": DebertaV2ForSequenceClassification,
            "token-classification": DebertaV2ForTokenClassification,
            "question-answering": DebertaV2ForQuestionAnswering,
        }
    },
)
