"""The Llama family: Llama 1-3, Mistral, Qwen2 and Gemma (1) as one decoder with per-family switches.

References: arXiv:2302.13971, 2310.06825, 2407.10671, 2403.08295; HF transformers `models/{llama,mistral,qwen2,
gemma}/modeling_*.py` (5.x). Numerics follow HF: rotate-half RoPE with float32 angles, RMSNorm in float32 (Llama
casts before the weight multiply, Gemma multiplies `(1 + w)` in float32), Gemma scales embeddings by
`sqrt(hidden_size)` rounded to the activation dtype. Family differences are data on the config:
  llama   attention_bias / mlp_bias flags, rope_type default | linear | dynamic | llama3, tied or untied lm_head
  mistral sliding_window on every layer            qwen2  q/k/v bias, o without; per-layer `layer_types`
  gemma   embedding scale, (1 + w) RMSNorm, GeLU-tanh MLP, explicit head_dim, tied embeddings
The decoder takes and returns a `KVCache`; position ids default to "slot minus the row's first real token", so
left-padded rows get exactly the values they have alone. Dropout (training, `deterministic=False`) as HF: only on
the attention probabilities, at `attention_dropout` (0 in every released config). Each family has its own HF-named
classes (`MistralForCausalLM(LlamaForCausalLM)`, ...), listed in the `ARCHITECTURE` record at the bottom with the
weight table and the GGUF tensor names (`GGUF_NAMES`, read by `jaxformers.convert.gguf`).
"""

from __future__ import annotations

import numbers
from typing import ClassVar

import jax.numpy as jnp
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout, rope
from jaxformers.core.cache import KVCache, update_layer
from jaxformers.core.config import HFConfig, check_positive_int, config_class
from jaxformers.core.decoder import advance_cache, decoder_inputs, run_layers
from jaxformers.core.layers import Dense, Embed, RMSNorm, Stacked, activation
from jaxformers.core.modeling import Architecture, PreTrainedModel, check_input_ids, last_token
from jaxformers.core.options import Options
from jaxformers.core.outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTKH, ACT_BTNH, ACT_BTV, constrain
from jaxformers.convert.rules import Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): the layer stack at model level, the attention probabilities within a layer.
_LAYERS = 0
_ATTN_PROBS = 0


@config_class
class LlamaConfig(HFConfig):
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float | None = None
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None
    sliding_window: int | None = None
    use_sliding_window: bool | None = None
    layer_types: list | None = None
    pad_token_id: int | None = None
    bos_token_id: int | list | None = None
    eos_token_id: int | list | None = None
    attention_dropout: float = 0.0
    flag_fields: ClassVar[dict[str, str]] = {"qkv_bias": "attention_bias"}  # derived flag -> config.json field
    positive_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "max_position_embeddings")  # fmt: skip
    nonnegative_fields = ("rms_norm_eps",)
    rate_fields = ("attention_dropout",)

    @classmethod
    def from_hf(cls, d):
        d = dict(d)
        if d.get("model_type") == "gemma":  # older Gemma configs name the MLP activation hidden_activation
            d["hidden_act"] = d.get("hidden_activation") or d.get("hidden_act", "gelu_pytorch_tanh")
            if d["hidden_act"] == "gelu":  # HF forces the tanh approximation for Gemma's "gelu"
                d["hidden_act"] = "gelu_pytorch_tanh"
            d.setdefault("tie_word_embeddings", True)
        return super().from_hf(d)

    def validate(self):
        if self.model_type not in ("llama", "mistral", "qwen2", "gemma"):
            raise ValueError(f"LlamaConfig does not cover model_type {self.model_type!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); set head_dim explicitly in config.json"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.kv_heads})"
            )
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        for window in self.windows:  # only where a layer uses it: configs keep sliding_window with the feature off
            check_positive_int("sliding_window", window)
        activation(self.hidden_act)
        params = self.rope
        theta = params["rope_theta"]
        if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0:
            raise ValueError(f"config.json: rope_theta={theta!r} must be a positive number (HF's default is 10000.0)")
        factor = params.get("factor")
        if params["rope_type"] != "default" and not (isinstance(factor, numbers.Real) and factor > 0):
            raise ValueError(
                f"config.json: rope {params['rope_type']!r} scaling needs a positive factor, got factor={factor!r}; "
                "fix rope_scaling / rope_parameters in config.json"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def rope(self) -> dict:
        params = rope.rope_parameters(self.to_hf())
        if params["rope_theta"] is None:  # config.json without rope_theta anywhere: HF's LlamaConfig default
            params["rope_theta"] = 10000.0
        return params

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Sliding window of each layer (None = full attention), following HF's per-family rules."""
        n = self.num_hidden_layers
        if self.model_type == "mistral":
            return (self.sliding_window,) * n
        if self.model_type == "qwen2":
            if self.layer_types is not None:
                return tuple(self.sliding_window if t == "sliding_attention" else None for t in self.layer_types)
            return (self.sliding_window if self.use_sliding_window else None,) * n
        return (None,) * n


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads, cfg.dim
        self.q_proj = Dense(d, (n, h), axes=("embed", "heads", "head_dim"), use_bias=cfg.qkv_bias, opts=opts, rngs=rngs)
        self.k_proj = Dense(d, (k, h), axes=("embed", "kv_heads", "head_dim"), use_bias=cfg.qkv_bias, opts=opts, rngs=rngs)
        self.v_proj = Dense(d, (k, h), axes=("embed", "kv_heads", "head_dim"), use_bias=cfg.qkv_bias, opts=opts, rngs=rngs)
        self.o_proj = Dense((n, h), d, axes=("heads", "head_dim", "embed"), use_bias=cfg.attention_bias, opts=opts, rngs=rngs)
        self.impl = opts.attn_impl
        self.probs_rate = cfg.attention_dropout

    def __call__(self, x, cos, sin, key_mask, q_offset, kv, window, key=None, segment_ids=None):
        q = constrain(rope.apply_rope(self.q_proj(x), cos, sin), ACT_BTNH)
        k = constrain(rope.apply_rope(self.k_proj(x), cos, sin), ACT_BTKH)
        v = constrain(self.v_proj(x), ACT_BTKH)  # [B, T, K, H]
        if kv is not None:  # attend over the whole cache after writing this step's keys/values
            kv = update_layer(kv[0], kv[1], k, v, q_offset)
            k, v = kv
        o = attn.dot_product_attention(
            q, k, v, causal=True, q_offset=q_offset, key_mask=key_mask, segment_ids=segment_ids,
            sliding_window=window, impl=self.impl, dropout_rate=self.probs_rate,
            dropout_key=dropout.fold(key, _ATTN_PROBS),
        )  # fmt: skip
        return self.o_proj(o), kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, opts: Options, rngs: nnx.Rngs):
        d, f, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Dense(d, f, axes=("embed", "mlp"), use_bias=b, opts=opts, rngs=rngs)
        self.up_proj = Dense(d, f, axes=("embed", "mlp"), use_bias=b, opts=opts, rngs=rngs)
        self.down_proj = Dense(f, d, axes=("mlp", "embed"), use_bias=b, opts=opts, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        h = constrain(self.act(self.gate_proj(x)) * self.up_proj(x), ACT_BTF)
        return self.down_proj(h)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, opts: Options, rngs: nnx.Rngs):
        gemma = cfg.model_type == "gemma"
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, unit_offset=gemma, opts=opts, rngs=rngs)
        self.self_attn = Attention(cfg, opts=opts, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, unit_offset=gemma, opts=opts, rngs=rngs
        )
        self.mlp = MLP(cfg, opts=opts, rngs=rngs)

    def __call__(self, x, cos, sin, key_mask, q_offset, kv, window, key=None, segment_ids=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, q_offset, kv, window, key, segment_ids)
        x = x + a
        x = constrain(x + self.mlp(self.post_attention_layernorm(x)), ACT_BTD)
        return x, kv


class LlamaModel(PreTrainedModel):
    config_class = LlamaConfig
    hf_architecture = "LlamaModel"
    hf_prefix = "model"
    is_decoder = True

    def __init__(self, cfg: LlamaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, opts=options, rngs=rngs)
        self.layers = Stacked(lambda r: DecoderLayer(cfg, opts=options, rngs=r), cfg.num_hidden_layers, rngs=rngs)
        gemma = cfg.model_type == "gemma"
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, unit_offset=gemma, opts=options, rngs=rngs)
        self.scan, self.remat = options.scan_layers, options.remat
        self.dtype = options.compute_dtype

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        cfg = self.config
        return KVCache.init(cfg.num_hidden_layers, batch, max_len, cfg.kv_heads, cfg.dim, dtype or self.dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None, *,
                 segment_ids=None, output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """Decode `input_ids [B, T]`; with `cache`, the tokens are appended at `cache.index` and the updated cache is
        returned in `out.cache`. Returns last_hidden_state `[B, T, D]`.

        Token ids must lie in [0, vocab_size) and a cache write must fit (see `core.modeling`); positions are not
        bounded (RoPE: transformers accepts any). segment_ids `[B, T]` (no cache): packed documents, 1, 2, ... per
        document and 0 for padding; each attends only to itself and its positions restart at 0 (`core.decoder`;
        "dynamic" RoPE scales by the longest position of the whole batch, not per document).
        deterministic=False applies attention dropout with the key `dropout_rng` (`core.dropout`)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        input_ids, _, key_mask, q_offset, position_ids, cache, segment_ids = decoder_inputs(
            input_ids, attention_mask, position_ids, cache, vocab_size=cfg.vocab_size, segment_ids=segment_ids
        )
        x = self.embed_tokens(input_ids)
        if cfg.model_type == "gemma":
            x = x * jnp.asarray(cfg.hidden_size**0.5, x.dtype)
        x = emb = constrain(x, ACT_BTD)
        seq_len = jnp.max(position_ids) + 1 if cfg.rope["rope_type"] == "dynamic" else None
        freq = rope.inv_freq(cfg.rope, cfg.dim, cfg.max_position_embeddings, seq_len)
        cos, sin = rope.cos_sin(position_ids, freq, x.dtype)

        def call(layer, h, kv, window, layer_key):
            return layer(h, cos, sin, key_mask, q_offset, kv, window, layer_key, segment_ids)

        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), cfg.num_hidden_layers)
        x, hs, cache = run_layers(
            self.layers, x, call, cache=cache, scan=self.scan, remat=self.remat, windows=cfg.windows, keys=keys
        )
        cache = advance_cache(cache, input_ids.shape[1])
        x = self.norm(x)
        hidden = (emb, *hs[:-1], x) if output_hidden_states else None  # HF: the last entry is after the final norm
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden, cache=cache)


class _LlamaHead(PreTrainedModel):
    config_class = LlamaConfig
    hf_prefix = "model"
    base_attr = "model"


class LlamaForCausalLM(_LlamaHead):
    hf_architecture = "LlamaForCausalLM"
    is_decoder = True
    can_generate = True

    def __init__(self, cfg: LlamaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, options=options, rngs=rngs)
        tied = cfg.tie_word_embeddings
        self.lm_head = None if tied else Dense(
            cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False, opts=options, rngs=rngs
        )

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        return self.model.init_cache(batch, max_len, dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None, *,
                 segment_ids=None, logits_to_keep: int = 0, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> CausalLMOutput:  # fmt: skip
        """Next-token logits `[B, T, V]` (only the last `logits_to_keep` positions if > 0) and the updated cache.
        segment_ids: packed documents (see `LlamaModel`)."""
        out = self.model(input_ids, attention_mask, position_ids, cache, segment_ids=segment_ids,
                         output_hidden_states=output_hidden_states, deterministic=deterministic,
                         dropout_rng=dropout_rng)  # fmt: skip
        x = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        logits = self.model.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = constrain(logits, ACT_BTV)
        return CausalLMOutput(logits=logits, cache=out.cache, hidden_states=out.hidden_states)


class LlamaForSequenceClassification(_LlamaHead):
    hf_architecture = "LlamaForSequenceClassification"

    def __init__(self, cfg: LlamaConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = LlamaModel(cfg, options=options, rngs=rngs)
        self.score = Dense(
            cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), use_bias=False, opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        """Logits `[B, num_labels]` read at each row's last non-padding token (HF's rule)."""
        ids, mask = check_input_ids(input_ids, attention_mask, vocab_size=self.config.vocab_size)  # before int32
        out = self.model(ids, mask, position_ids, output_hidden_states=output_hidden_states,
                         deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip
        logits = self.score(out.last_hidden_state)  # [B, T, num_labels]
        return SequenceClassifierOutput(logits=last_token(logits, ids, mask, self.config.pad_token_id),
                                        hidden_states=out.hidden_states)  # fmt: skip


# One class per HF architecture name, so that loading picks them from config.json's `architectures` and saving
# writes them back; the code is Llama's (the family differences are data on the config).
class MistralModel(LlamaModel):
    hf_architecture = "MistralModel"


class MistralForCausalLM(LlamaForCausalLM):
    hf_architecture = "MistralForCausalLM"


class MistralForSequenceClassification(LlamaForSequenceClassification):
    hf_architecture = "MistralForSequenceClassification"


class Qwen2Model(LlamaModel):
    hf_architecture = "Qwen2Model"


class Qwen2ForCausalLM(LlamaForCausalLM):
    hf_architecture = "Qwen2ForCausalLM"


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    hf_architecture = "Qwen2ForSequenceClassification"


class GemmaModel(LlamaModel):
    hf_architecture = "GemmaModel"


class GemmaForCausalLM(LlamaForCausalLM):
    hf_architecture = "GemmaForCausalLM"


class GemmaForSequenceClassification(LlamaForSequenceClassification):
    hf_architecture = "GemmaForSequenceClassification"


_L = "layers.*."
_B = "layers.block."
_HEADS = SplitAxis(-1, "num_attention_heads")
_KV = SplitAxis(-1, "kv_heads")
_HEADS_0 = SplitAxis(0, "num_attention_heads")
HF_WEIGHTS = (
    Rule("embed_tokens.weight", "embed_tokens.embedding"),
    Rule(_L + "self_attn.q_proj.weight", _B + "self_attn.q_proj.kernel", T(), _HEADS),
    Rule(_L + "self_attn.q_proj.bias", _B + "self_attn.q_proj.bias", _HEADS_0, when="qkv_bias"),
    Rule(_L + "self_attn.k_proj.weight", _B + "self_attn.k_proj.kernel", T(), _KV),
    Rule(_L + "self_attn.k_proj.bias", _B + "self_attn.k_proj.bias", SplitAxis(0, "kv_heads"), when="qkv_bias"),
    Rule(_L + "self_attn.v_proj.weight", _B + "self_attn.v_proj.kernel", T(), _KV),
    Rule(_L + "self_attn.v_proj.bias", _B + "self_attn.v_proj.bias", SplitAxis(0, "kv_heads"), when="qkv_bias"),
    Rule(_L + "self_attn.o_proj.weight", _B + "self_attn.o_proj.kernel", T(), _HEADS_0),
    Rule(_L + "self_attn.o_proj.bias", _B + "self_attn.o_proj.bias", when="attention_bias"),
    Rule(_L + "mlp.gate_proj.weight", _B + "mlp.gate_proj.kernel", T()),
    Rule(_L + "mlp.gate_proj.bias", _B + "mlp.gate_proj.bias", when="mlp_bias"),
    Rule(_L + "mlp.up_proj.weight", _B + "mlp.up_proj.kernel", T()),
    Rule(_L + "mlp.up_proj.bias", _B + "mlp.up_proj.bias", when="mlp_bias"),
    Rule(_L + "mlp.down_proj.weight", _B + "mlp.down_proj.kernel", T()),
    Rule(_L + "mlp.down_proj.bias", _B + "mlp.down_proj.bias", when="mlp_bias"),
    Rule(_L + "input_layernorm.weight", _B + "input_layernorm.scale"),
    Rule(_L + "post_attention_layernorm.weight", _B + "post_attention_layernorm.scale"),
    Rule("norm.weight", "norm.scale"),
    Rule("lm_head.weight", "lm_head.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("score.weight", "score.kernel", T(), head=True),
)

# GGUF (llama.cpp) tensor names and per-architecture facts, read by `jaxformers.convert.gguf` (the format of this
# table is described there). llama.cpp writes "llama" for Llama, Mistral and SmolLM files.
GGUF_NAMES = {
    "architectures": {
        # permuted_qk: llama.cpp interleaves the two rotary halves of every q/k head (undone when read);
        # bias_flags: config.json states head_dim, attention_bias and mlp_bias (Qwen2's q/k/v always carry a bias)
        "llama": {"model_type": "llama", "architecture": "LlamaForCausalLM", "permuted_qk": True, "bias_flags": True},
        "qwen2": {"model_type": "qwen2", "architecture": "Qwen2ForCausalLM", "permuted_qk": False, "bias_flags": False},
    },
    "global": {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"},
    "block_prefix": "model.layers",
    "block": {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    "rotary": {"q": "self_attn.q_proj", "k": "self_attn.k_proj"},  # the projections `permuted_qk` applies to
    # Precomputed llama3 rope frequency factors: derived data with no HF parameter (transformers skips it too).
    "ignored": ("rope_freqs.weight",),
}

ARCHITECTURE = Architecture(
    name="llama",
    config_class=LlamaConfig,
    weights=HF_WEIGHTS,
    classes={
        "llama": {
            "base": LlamaModel,
            "causal-lm": LlamaForCausalLM,
            "sequence-classification": LlamaForSequenceClassification,
        },
        "mistral": {
            "base": MistralModel,
            "causal-lm": MistralForCausalLM,
            "sequence-classification": MistralForSequenceClassification,
        },
        "qwen2": {
            "base": Qwen2Model,
            "causal-lm": Qwen2ForCausalLM,
            "sequence-classification": Qwen2ForSequenceClassification,
        },
        "gemma": {
            "base": GemmaModel,
            "causal-lm": GemmaForCausalLM,
            "sequence-classification": GemmaForSequenceClassification,
        },
    },
    gguf_names=GGUF_NAMES,
)
