"""ModernBERT encoder and its task heads.

References: arXiv:2412.13663; HF transformers `models/modernbert/modeling_modernbert.py` (5.x). Numerics follow HF:
pre-LN blocks (`attn_norm`, `mlp_norm`; layer 0 has no `attn_norm`: its input is the normalised embeddings),
LayerNorms without bias unless `norm_bias`, in float32; a fused `Wqkv` projection split into q/k/v heads on load;
RoPE computed in float32 with one table per layer kind (`rope_parameters["full_attention"]` /
`["sliding_attention"]`, or the 4.x fields `global_rope_theta` / `local_rope_theta`); a GeGLU MLP (`Wi` chunked into
input and gate on load, `act(input) * gate`, `Wo`); `final_norm` after the last layer; the MLM decoder tied to the
token embeddings (`decoder.bias` when `decoder_bias`).

Local attention. Layers of kind "sliding_attention" (every layer but each `global_attn_every_n_layers`-th, or as
`layer_types` says) attend within a SYMMETRIC band: key slot j is visible from query slot i when
`|i - j| <= local_attention // 2` (HF's `sliding_window_bidirectional_overlay`; flash attention's
`window_size=(w, w)` in the original code). The dispatcher's `sliding_window` is one-sided (it keeps
`k > q - W`, the causal convention) and cannot express the upper bound, so the band is built here and passed as a
dense `mask=` (which makes those layers run on the XLA path). The kinds alternate, so under `scan_layers` each
layer's window is scanned data (`core.stack.run_layers(windows=...)`: a global layer gets `NO_WINDOW`), and the
layer kind, which also selects the RoPE table, is read from it.

Layer 0. HF's layer 0 has `attn_norm = Identity` and no such weights, so it cannot share a uniform stack with the
others: the model holds `first_layer` (a stack of one layer without `attn_norm`) and `layers` (HF layers 1..L-1,
one scannable stack), both run by `run_layers`; the weight table maps them with `Rule(layers=(start, stop))`.

Positions. Position ids default to `arange(T)` as in HF (its padded eager/SDPA path). RoPE makes attention depend on
position differences only, so a left-padded row gives the same values (to float rounding) as the row alone, and as
HF's unpadded flash-attention path, which numbers each sequence from 0.

Dropout (training, `deterministic=False`) where HF applies it: after the embedding norm (`embedding_dropout`), on the
attention probabilities and after `attn.Wo` (`attention_dropout`), inside the MLP before `Wo` (`mlp_dropout`), and
after the prediction head of the classifiers (`classifier_dropout`).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout, rope
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation, normal, param, zeros
from jaxformers.core.modeling import Architecture, PreTrainedModel, at_positions, check_index_input, check_input_ids
from jaxformers.core.options import Options
from jaxformers.core.outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTNH, ACT_BTV, constrain
from jaxformers.core.stack import NO_WINDOW, run_layers
from jaxformers.convert.rules import Chunk, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): model level, then within a layer (under its per-layer key).
_EMBED, _LAYERS, _HEAD = 0, 1, 2
_ATTN_PROBS, _ATTN_OUT, _MLP = 0, 1, 2

GLOBAL, LOCAL = "full_attention", "sliding_attention"  # HF's `layer_types` values
_DEFAULT_THETA = {GLOBAL: 160_000.0, LOCAL: 10_000.0}  # HF ModernBertConfig.default_theta
# 4.x config fields that HF 5.x still reads but cannot read as null: written back only when set.
_UNSET_IF_NONE = ("layer_types", "global_attn_every_n_layers", "rope_parameters", "global_rope_theta",
                  "local_rope_theta", "rope_scaling")  # fmt: skip


@config_class
class ModernBertConfig(HFConfig):
    model_type = "modernbert"
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int | None = 50283
    attention_bias: bool = False
    attention_dropout: float = 0.0
    layer_types: list | None = None  # 5.x; else derived from global_attn_every_n_layers (default 3)
    global_attn_every_n_layers: int | None = None
    rope_parameters: dict | None = None  # 5.x: {"full_attention": {...}, "sliding_attention": {...}}
    global_rope_theta: float | None = None  # 4.x
    local_rope_theta: float | None = None  # 4.x
    rope_scaling: dict | None = None  # 4.x, applied to both kinds as HF does
    local_attention: int = 128
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "max_position_embeddings", "global_attn_every_n_layers")  # fmt: skip
    nonnegative_fields = ("norm_eps",)
    rate_fields = ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout")

    def validate(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.json: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"config.json: the head size hidden_size / num_attention_heads = {self.head_dim} must be even for "
                "rotary embeddings (transformers fails on it too); fix hidden_size or num_attention_heads"
            )
        w = self.local_attention
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0:
            # 0 and 1 are valid (each token sees itself only); a negative band would mask every key of a local layer
            raise ValueError(
                f"config.json: local_attention={w!r} must be an integer >= 0 (the local band spans "
                "local_attention // 2 tokens on each side); fix local_attention in config.json"
            )
        if self.layer_types is not None:
            bad = [t for t in self.layer_types if t not in (GLOBAL, LOCAL)]
            if len(self.layer_types) != self.num_hidden_layers or bad:
                raise ValueError(
                    f"config.json: layer_types must list {self.num_hidden_layers} entries (num_hidden_layers), each "
                    f"{GLOBAL!r} or {LOCAL!r}; got {self.layer_types!r}"
                )
        if self.classifier_pooling not in ("cls", "mean"):
            raise ValueError(
                f"config.json: classifier_pooling={self.classifier_pooling!r} must be 'cls' or 'mean' (as in HF)"
            )
        activation(self.hidden_activation)
        activation(self.classifier_activation)
        for kind in set(self.layer_kinds):
            params = self.rope(kind)
            theta = params["rope_theta"]
            if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0:
                raise ValueError(
                    f"config.json: the {kind} rope_theta={theta!r} must be a positive number (HF's default is "
                    f"{_DEFAULT_THETA[kind]}); fix rope_parameters / global_rope_theta / local_rope_theta"
                )
            factor = params.get("factor")
            if params["rope_type"] != "default" and not (isinstance(factor, numbers.Real) and factor > 0):
                raise ValueError(
                    f"config.json: the {kind} rope {params['rope_type']!r} scaling needs a positive factor, got "
                    f"factor={factor!r}; fix rope_parameters / rope_scaling"
                )

    def to_hf(self):
        d = super().to_hf()
        for name in _UNSET_IF_NONE:
            if d.get(name) is None:
                d.pop(name, None)
        return d

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Per layer GLOBAL or LOCAL: `layer_types`, else every `global_attn_every_n_layers`-th layer (from 0) is
        global (HF's rule, default 3)."""
        if self.layer_types is not None:
            return tuple(self.layer_types)
        n = self.global_attn_every_n_layers or 3
        return tuple(LOCAL if i % n else GLOBAL for i in range(self.num_hidden_layers))

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Per layer: the half-width w of the symmetric local band (`|i - j| <= w`), None for global layers."""
        return tuple(self.local_attention // 2 if k == LOCAL else None for k in self.layer_kinds)

    def rope(self, kind: str) -> dict:
        """Normalised RoPE parameters of a layer kind, with HF's precedence: `rope_parameters[kind]`, then the 4.x
        `rope_scaling` (both kinds), then `global_rope_theta` / `local_rope_theta`, then HF's default theta."""
        theta = self.global_rope_theta if kind == GLOBAL else self.local_rope_theta
        per_kind = (self.rope_parameters or {}).get(kind) or {}
        return rope.rope_parameters({
            "rope_parameters": per_kind,
            "rope_scaling": self.rope_scaling,
            "rope_theta": _DEFAULT_THETA[kind] if theta is None else theta,
        })  # fmt: skip


def _rope(x, cos, sin):
    """HF's `apply_rotary_pos_emb` for ModernBERT: rotate in float32, cast back."""
    return rope.apply_rope(x.astype(jnp.float32), cos.astype(jnp.float32), sin.astype(jnp.float32)).astype(x.dtype)


def local_band(t: int, window) -> jax.Array:
    """`[1, 1, T, T]` bool, True where `|i - j| <= window` (window: int, or traced int under scan)."""
    i = jnp.arange(t)
    return (jnp.abs(i[:, None] - i[None, :]) <= window)[None, None]


class Embeddings(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, opts: Options, rngs: nnx.Rngs):
        self.tok_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, opts=opts, rngs=rngs)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, use_bias=cfg.norm_bias, opts=opts, rngs=rngs)
        self.rate = cfg.embedding_dropout

    def __call__(self, input_ids, key=None):
        return dropout.dropout(self.norm(self.tok_embeddings(input_ids)), self.rate, key)


class Attention(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, h, bias = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.attention_bias
        qkv_axes = ("embed", "heads", "head_dim")
        self.query = Dense(d, (n, h), axes=qkv_axes, use_bias=bias, opts=opts, rngs=rngs)
        self.key = Dense(d, (n, h), axes=qkv_axes, use_bias=bias, opts=opts, rngs=rngs)
        self.value = Dense(d, (n, h), axes=qkv_axes, use_bias=bias, opts=opts, rngs=rngs)
        self.Wo = Dense((n, h), d, axes=("heads", "head_dim", "embed"), use_bias=bias, opts=opts, rngs=rngs)
        self.impl = opts.attn_impl
        self.rate = cfg.attention_dropout

    def __call__(self, x, key_mask, cos, sin, window, key=None):
        q, k, v = (constrain(proj(x), ACT_BTNH) for proj in (self.query, self.key, self.value))  # [B, T, N, H]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        o = attn.dot_product_attention(
            q, k, v, key_mask=key_mask, mask=None if window is None else local_band(x.shape[1], window),
            impl=self.impl, dropout_rate=self.rate, dropout_key=dropout.fold(key, _ATTN_PROBS),
        )  # fmt: skip
        return dropout.dropout(self.Wo(o), self.rate, dropout.fold(key, _ATTN_OUT))


class MLP(nnx.Module):
    """GeGLU: HF's fused `Wi` [2F, D] is held as its two halves (input, gate), so tensor parallelism splits each."""

    def __init__(self, cfg: ModernBertConfig, *, opts: Options, rngs: nnx.Rngs):
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.Wi_input = Dense(d, f, axes=("embed", "mlp"), use_bias=bias, opts=opts, rngs=rngs)
        self.Wi_gate = Dense(d, f, axes=("embed", "mlp"), use_bias=bias, opts=opts, rngs=rngs)
        self.Wo = Dense(f, d, axes=("mlp", "embed"), use_bias=bias, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_activation)
        self.rate = cfg.mlp_dropout

    def __call__(self, x, key=None):
        h = constrain(self.act(self.Wi_input(x)) * self.Wi_gate(x), ACT_BTF)
        return self.Wo(dropout.dropout(h, self.rate, key))


class Layer(nnx.Module):
    """One pre-LN block; `attn_norm=False` for HF's layer 0 (its attention reads the normalised embeddings)."""

    def __init__(self, cfg: ModernBertConfig, *, attn_norm: bool, opts: Options, rngs: nnx.Rngs):
        d, eps, bias = cfg.hidden_size, cfg.norm_eps, cfg.norm_bias
        self.attn_norm = LayerNorm(d, eps=eps, use_bias=bias, opts=opts, rngs=rngs) if attn_norm else None
        self.attn = Attention(cfg, opts=opts, rngs=rngs)
        self.mlp_norm = LayerNorm(d, eps=eps, use_bias=bias, opts=opts, rngs=rngs)
        self.mlp = MLP(cfg, opts=opts, rngs=rngs)

    def __call__(self, x, key_mask, cos, sin, window, key=None):
        h = x if self.attn_norm is None else self.attn_norm(x)
        x = x + self.attn(h, key_mask, cos, sin, window, key)
        x = x + self.mlp(self.mlp_norm(x), dropout.fold(key, _MLP))
        return constrain(x, ACT_BTD)


class ModernBertModel(PreTrainedModel):
    config_class = ModernBertConfig
    hf_architecture = "ModernBertModel"
    hf_prefix = "model"

    def __init__(self, cfg: ModernBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Embeddings(cfg, opts=options, rngs=rngs)

        def make(attn_norm: bool):
            return lambda r: Layer(cfg, attn_norm=attn_norm, opts=options, rngs=r)

        self.first_layer = Stacked(make(False), 1, rngs=rngs)  # HF layer 0
        rest = cfg.num_hidden_layers - 1  # HF layers 1..L-1 (none in a 1-layer model)
        self.layers = Stacked(make(True), rest, rngs=rngs) if rest else None
        self.final_norm = LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, use_bias=cfg.norm_bias, opts=options, rngs=rngs)
        self.scan, self.remat = options.scan_layers, options.remat

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """Encode `input_ids [B, T]`; returns last_hidden_state `[B, T, D]` (after `final_norm`).

        Token ids are range-checked as in transformers (eagerly ValueError; under jit a checkify check, see
        `core.modeling`); positions are not bounded (RoPE: transformers accepts any). hidden_states, as HF: the
        embeddings, each layer's output, the last one after `final_norm`. deterministic=False applies dropout with
        the key `dropout_rng` (`core.dropout`)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        t = input_ids.shape[1]
        position_ids = check_index_input(position_ids, input_ids.shape, "position_ids")
        if position_ids is None:
            position_ids = jnp.arange(t, dtype=jnp.int32)[None]  # HF's default, for every row (see module docstring)
        x = emb = constrain(self.embeddings(input_ids, dropout.fold(key, _EMBED)), ACT_BTD)
        tables = {}
        for kind in set(cfg.layer_kinds):
            params = cfg.rope(kind)
            seq_len = jnp.max(position_ids) + 1 if params["rope_type"] == "dynamic" else None
            freq = rope.inv_freq(params, cfg.head_dim, cfg.max_position_embeddings, seq_len)
            tables[kind] = rope.cos_sin(position_ids, freq, x.dtype)
        key_mask = attention_mask.astype(bool)

        def call(layer, h, kv, window, key):
            if window is None or isinstance(window, int):  # unrolled, or every layer of the stack of one kind
                cos, sin = tables[GLOBAL if window is None else LOCAL]
            else:  # scanned layers of both kinds: a global layer's window is NO_WINDOW
                local = window < NO_WINDOW
                cos, sin = (jnp.where(local, a, b) for a, b in zip(tables[LOCAL], tables[GLOBAL]))
            return layer(h, key_mask, cos, sin, window, key), kv

        windows = cfg.windows
        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), cfg.num_hidden_layers)
        run = dict(cache=None, scan=self.scan, remat=self.remat)
        x, hs, _ = run_layers(self.first_layer, x, call, windows=windows[:1], keys=None if keys is None else keys[:1],
                              **run)  # fmt: skip
        if self.layers is not None:
            x, rest, _ = run_layers(self.layers, x, call, windows=windows[1:],
                                    keys=None if keys is None else keys[1:], **run)  # fmt: skip
            hs = hs + rest
        x = self.final_norm(x)
        hidden = (emb, *hs[:-1], x) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden)


class _ModernBertHead(PreTrainedModel):
    config_class = ModernBertConfig
    hf_prefix = "model"
    base_attr = "model"

    def _encode(self, input_ids, attention_mask, position_ids, output_hidden_states, key):
        """The checked int32 ids and 0/1 mask, and the base model's output (dropout under `key`, None: off)."""
        ids, mask = check_input_ids(input_ids, attention_mask, vocab_size=self.config.vocab_size)
        out = self.model(ids, mask, position_ids, output_hidden_states=output_hidden_states,
                         deterministic=key is None, dropout_rng=key)  # fmt: skip
        return mask, out


class PredictionHead(nnx.Module):
    """HF `ModernBertPredictionHead`: dense (bias if `classifier_bias`), `classifier_activation`, norm."""

    def __init__(self, cfg: ModernBertConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.dense = Dense(d, d, axes=("embed", "mlp"), use_bias=cfg.classifier_bias, opts=opts, rngs=rngs)
        self.act = activation(cfg.classifier_activation)
        self.norm = LayerNorm(d, eps=cfg.norm_eps, use_bias=cfg.norm_bias, opts=opts, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.act(self.dense(x)))


class Decoder(nnx.Module):
    """The MLM output projection: the token embeddings (tied) or its own kernel, plus a bias when `decoder_bias`."""

    def __init__(self, cfg: ModernBertConfig, *, opts: Options, rngs: nnx.Rngs):
        d, v, dtype = cfg.hidden_size, cfg.vocab_size, opts.param_dtype
        self.dtype = opts.compute_dtype
        self.kernel = None if cfg.tie_word_embeddings else param(rngs, normal(), (d, v), dtype, ("embed", "vocab"))
        self.bias = param(rngs, zeros, (v,), dtype, ("vocab",)) if cfg.decoder_bias else None

    def __call__(self, h, embeddings: Embed):
        if self.kernel is None:
            logits = embeddings.attend(h)
        else:
            logits = jnp.dot(h.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return logits if self.bias is None else logits + self.bias[...].astype(logits.dtype)


class ModernBertForMaskedLM(_ModernBertHead):
    hf_architecture = "ModernBertForMaskedLM"

    def __init__(self, cfg: ModernBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = ModernBertModel(cfg, options=options, rngs=rngs)
        self.head = PredictionHead(cfg, opts=options, rngs=rngs)
        self.decoder = Decoder(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None, logits_positions=None) -> MaskedLMOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        _, out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, key)
        h = self.head(at_positions(out.last_hidden_state, logits_positions))
        logits = constrain(self.decoder(h, self.model.embeddings.tok_embeddings), ACT_BTV)
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class ModernBertForSequenceClassification(_ModernBertHead):
    hf_architecture = "ModernBertForSequenceClassification"

    def __init__(self, cfg: ModernBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = ModernBertModel(cfg, options=options, rngs=rngs)
        self.head = PredictionHead(cfg, opts=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        """Logits `[B, num_labels]` from the pooled sequence: slot 0 (`classifier_pooling="cls"`, as HF: the first
        slot even in a left-padded row) or the mean over real tokens ("mean")."""
        key = dropout.key_for(deterministic, dropout_rng)
        mask, out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, key)
        x = out.last_hidden_state
        if self.config.classifier_pooling == "cls":
            pooled = x[:, 0]
        else:
            m = mask.astype(x.dtype)[..., None]
            pooled = (x * m).sum(axis=1) / m.sum(axis=1)
        h = dropout.dropout(self.head(pooled), self.config.classifier_dropout, dropout.fold(key, _HEAD))
        return SequenceClassifierOutput(logits=self.classifier(h), hidden_states=out.hidden_states)


class ModernBertForTokenClassification(_ModernBertHead):
    hf_architecture = "ModernBertForTokenClassification"

    def __init__(self, cfg: ModernBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = ModernBertModel(cfg, options=options, rngs=rngs)
        self.head = PredictionHead(cfg, opts=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> TokenClassifierOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        _, out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, key)
        h = self.head(out.last_hidden_state)
        h = dropout.dropout(h, self.config.classifier_dropout, dropout.fold(key, _HEAD))
        return TokenClassifierOutput(logits=self.classifier(h), hidden_states=out.hidden_states)


class ModernBertForQuestionAnswering(_ModernBertHead):
    hf_architecture = "ModernBertForQuestionAnswering"

    def __init__(self, cfg: ModernBertConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        if cfg.num_labels != 2:  # HF splits the classifier output into exactly start and end logits
            raise ValueError(
                f"ModernBertForQuestionAnswering needs num_labels=2 (start and end logits), the config has "
                f"{cfg.num_labels}; load with num_labels=2 or fix id2label / num_labels in config.json"
            )
        self.config = cfg
        self.model = ModernBertModel(cfg, options=options, rngs=rngs)
        self.head = PredictionHead(cfg, opts=options, rngs=rngs)
        self.classifier = Dense(cfg.hidden_size, 2, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        key = dropout.key_for(deterministic, dropout_rng)
        _, out = self._encode(input_ids, attention_mask, position_ids, output_hidden_states, key)
        h = self.head(out.last_hidden_state)
        logits = self.classifier(dropout.dropout(h, self.config.classifier_dropout, dropout.fold(key, _HEAD)))
        return QuestionAnsweringOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], hidden_states=out.hidden_states
        )


_HEADS = "num_attention_heads"
_FIRST, _REST = (0, 1), (1, None)  # HF layer 0 -> `first_layer`, HF layers 1.. -> `layers`


def _per_layer(source: str, target: str, *ops, when: str | None = None, first: bool = True) -> tuple[Rule, ...]:
    """The rules of one per-layer tensor family: HF `layers.0.<source>` into the `first_layer` stack (unless
    `first=False`: layer 0 lacks it) and `layers.{1..}.<source>` into the `layers` stack."""
    rest = Rule("layers.*." + source, "layers.block." + target, *ops, when=when, layers=_REST)
    if not first:
        return (rest,)
    return (Rule("layers.*." + source, "first_layer.block." + target, *ops, when=when, layers=_FIRST), rest)


HF_WEIGHTS = (
    Rule("embeddings.tok_embeddings.weight", "embeddings.tok_embeddings.embedding"),
    Rule("embeddings.norm.weight", "embeddings.norm.scale"),
    Rule("embeddings.norm.bias", "embeddings.norm.bias", when="norm_bias"),
    # Wqkv [3D, D]: q, k, v are its thirds along the output axis (HF: view(..., 3, N, H))
    *_per_layer("attn.Wqkv.weight", "attn.query.kernel", Chunk(0, 3, 0), T(), SplitAxis(-1, _HEADS)),
    *_per_layer("attn.Wqkv.weight", "attn.key.kernel", Chunk(1, 3, 0), T(), SplitAxis(-1, _HEADS)),
    *_per_layer("attn.Wqkv.weight", "attn.value.kernel", Chunk(2, 3, 0), T(), SplitAxis(-1, _HEADS)),
    *_per_layer("attn.Wqkv.bias", "attn.query.bias", Chunk(0, 3, 0), SplitAxis(0, _HEADS), when="attention_bias"),
    *_per_layer("attn.Wqkv.bias", "attn.key.bias", Chunk(1, 3, 0), SplitAxis(0, _HEADS), when="attention_bias"),
    *_per_layer("attn.Wqkv.bias", "attn.value.bias", Chunk(2, 3, 0), SplitAxis(0, _HEADS), when="attention_bias"),
    *_per_layer("attn.Wo.weight", "attn.Wo.kernel", T(), SplitAxis(0, _HEADS)),
    *_per_layer("attn.Wo.bias", "attn.Wo.bias", when="attention_bias"),
    *_per_layer("attn_norm.weight", "attn_norm.scale", first=False),
    *_per_layer("attn_norm.bias", "attn_norm.bias", when="norm_bias", first=False),
    *_per_layer("mlp_norm.weight", "mlp_norm.scale"),
    *_per_layer("mlp_norm.bias", "mlp_norm.bias", when="norm_bias"),
    # Wi [2F, D]: input and gate are its halves (HF: chunk(2, dim=-1) of the output)
    *_per_layer("mlp.Wi.weight", "mlp.Wi_input.kernel", Chunk(0, 2, 0), T()),
    *_per_layer("mlp.Wi.weight", "mlp.Wi_gate.kernel", Chunk(1, 2, 0), T()),
    *_per_layer("mlp.Wi.bias", "mlp.Wi_input.bias", Chunk(0, 2, 0), when="mlp_bias"),
    *_per_layer("mlp.Wi.bias", "mlp.Wi_gate.bias", Chunk(1, 2, 0), when="mlp_bias"),
    *_per_layer("mlp.Wo.weight", "mlp.Wo.kernel", T()),
    *_per_layer("mlp.Wo.bias", "mlp.Wo.bias", when="mlp_bias"),
    Rule("final_norm.weight", "final_norm.scale"),
    Rule("final_norm.bias", "final_norm.bias", when="norm_bias"),
    # heads (full HF keys)
    Rule("head.dense.weight", "head.dense.kernel", T(), head=True),
    Rule("head.dense.bias", "head.dense.bias", when="classifier_bias", head=True),
    Rule("head.norm.weight", "head.norm.scale", head=True),
    Rule("head.norm.bias", "head.norm.bias", when="norm_bias", head=True),
    Rule("decoder.weight", "decoder.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("decoder.bias", "decoder.bias", when="decoder_bias", head=True),
    Rule("classifier.weight", "classifier.kernel", T(), head=True),
    Rule("classifier.bias", "classifier.bias", head=True),
)

ARCHITECTURE = Architecture(
    name="modernbert",
    config_class=ModernBertConfig,
    weights=HF_WEIGHTS,
    classes={
        "modernbert": {
            "base": ModernBertModel,
            "masked-lm": ModernBertForMaskedLM,
            "sequence-classification": ModernBertForSequenceClassification,
            "token-classification": ModernBertForTokenClassification,
            "question-answering": ModernBertForQuestionAnswering,
        }
    },
)
