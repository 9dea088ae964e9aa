"""GPT-2 decoder and its heads.

References: Radford et al. 2019; HF transformers `models/gpt2/modeling_gpt2.py` (5.x). Numerics follow HF: pre-LN
blocks, `gelu_new` (tanh) MLP, attention scaled by `1/sqrt(head_dim)`, LayerNorm in float32, lm_head tied to `wte`.
HF stores the fused `c_attn` Conv1D as `[D, 3D]` (already in->out): the table chunks it into q/k/v and splits heads,
and re-fuses on export. Position ids default to "slot minus the row's first real slot" (left padding safe).
Dropout (training, `deterministic=False`) as HF: `embd_pdrop` on the embeddings, `attn_pdrop` on the attention
probabilities, `resid_pdrop` after the attention and MLP output projections.
"""

from __future__ import annotations

from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core.cache import KVCache, update_layer
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.decoder import advance_cache, decoder_inputs, run_layers
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation
from jaxformers.core.modeling import Architecture, PreTrainedModel, check_input_ids, last_token
from jaxformers.core.options import Options
from jaxformers.core.outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTKH, ACT_BTNH, ACT_BTV, constrain
from jaxformers.convert.rules import Chunk, Ignore, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): model level, then within a layer (under its per-layer key).
_EMBED, _LAYERS = 0, 1
_ATTN_PROBS, _ATTN_OUT, _MLP_OUT = 0, 1, 2


@config_class
class GPT2Config(HFConfig):
    model_type = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    positive_fields = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner")  # n_inner: None ok
    nonnegative_fields = ("layer_norm_epsilon",)
    rate_fields = ("resid_pdrop", "embd_pdrop", "attn_pdrop")

    def validate(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.scale_attn_by_inverse_layer_idx:
            raise ValueError("scale_attn_by_inverse_layer_idx=True is not supported")
        activation(self.activation_function)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions


class Attention(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.n_embd, cfg.n_head, cfg.head_dim
        self.q_proj = Dense(d, (n, h), axes=("embed", "heads", "head_dim"), opts=opts, rngs=rngs)
        self.k_proj = Dense(d, (n, h), axes=("embed", "kv_heads", "head_dim"), opts=opts, rngs=rngs)
        self.v_proj = Dense(d, (n, h), axes=("embed", "kv_heads", "head_dim"), opts=opts, rngs=rngs)
        self.c_proj = Dense((n, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.scale = h**-0.5 if cfg.scale_attn_weights else 1.0
        self.impl = opts.attn_impl
        self.probs_rate, self.rate = cfg.attn_pdrop, cfg.resid_pdrop

    def __call__(self, x, key_mask, q_offset, kv, key=None, segment_ids=None):
        q = constrain(self.q_proj(x), ACT_BTNH)
        k = constrain(self.k_proj(x), ACT_BTKH)
        v = constrain(self.v_proj(x), ACT_BTKH)  # [B, T, N, H]
        if kv is not None:
            kv = update_layer(kv[0], kv[1], k, v, q_offset)
            k, v = kv
        o = attn.dot_product_attention(
            q, k, v, causal=True, q_offset=q_offset, key_mask=key_mask, segment_ids=segment_ids, scale=self.scale,
            impl=self.impl, dropout_rate=self.probs_rate, dropout_key=dropout.fold(key, _ATTN_PROBS),
        )  # fmt: skip
        return dropout.dropout(self.c_proj(o), self.rate, dropout.fold(key, _ATTN_OUT)), kv


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, opts: Options, rngs: nnx.Rngs):
        self.c_fc = Dense(cfg.n_embd, cfg.inner, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.c_proj = Dense(cfg.inner, cfg.n_embd, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.act = activation(cfg.activation_function)
        self.rate = cfg.resid_pdrop

    def __call__(self, x, key=None):
        return dropout.dropout(self.c_proj(constrain(self.act(self.c_fc(x)), ACT_BTF)), self.rate, key)


class Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, opts: Options, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, opts=opts, rngs=rngs)
        self.attn = Attention(cfg, opts=opts, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, opts=opts, rngs=rngs)
        self.mlp = MLP(cfg, opts=opts, rngs=rngs)

    def __call__(self, x, key_mask, q_offset, kv, key=None, segment_ids=None):
        a, kv = self.attn(self.ln_1(x), key_mask, q_offset, kv, key, segment_ids)
        x = x + a
        return constrain(x + self.mlp(self.ln_2(x), dropout.fold(key, _MLP_OUT)), ACT_BTD), kv


class GPT2Model(PreTrainedModel):
    config_class = GPT2Config
    hf_architecture = "GPT2Model"
    hf_prefix = "transformer"
    is_decoder = True

    def __init__(self, cfg: GPT2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, opts=options, rngs=rngs)
        self.wpe = Embed(cfg.n_positions, cfg.n_embd, axes=("pos", "embed"), opts=options, rngs=rngs)
        self.h = Stacked(lambda r: Block(cfg, opts=options, rngs=r), cfg.n_layer, rngs=rngs)
        self.ln_f = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, opts=options, rngs=rngs)
        self.scan, self.remat = options.scan_layers, options.remat
        self.dtype = options.compute_dtype

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        cfg = self.config
        return KVCache.init(cfg.n_layer, batch, max_len, cfg.n_head, cfg.head_dim, dtype or self.dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None, *,
                 segment_ids=None, output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """Decode `input_ids [B, T]` (appended at `cache.index` when a cache is given); last_hidden_state `[B, T, D]`.

        Ids and positions are range-checked against the vocabulary and the n_positions table (without a cache T may
        not exceed n_positions, as in transformers); see `core.modeling` for eager vs jit. segment_ids `[B, T]` (no
        cache): packed documents, 1, 2, ... per document and 0 for padding; each attends only to itself and its
        positions restart at 0 (`core.decoder`).
        deterministic=False applies dropout with the key `dropout_rng` (`core.dropout`)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        inp = decoder_inputs(input_ids, attention_mask, position_ids, cache, vocab_size=cfg.vocab_size,
                             max_positions=cfg.n_positions, positions_name="n_positions",
                             segment_ids=segment_ids)  # fmt: skip
        x = self.wte(inp.input_ids) + self.wpe(inp.position_ids)
        x = emb = constrain(dropout.dropout(x, cfg.embd_pdrop, dropout.fold(key, _EMBED)), ACT_BTD)

        def call(layer, h, kv, window, layer_key):
            return layer(h, inp.key_mask, inp.q_offset, kv, layer_key, inp.segment_ids)

        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), cfg.n_layer)
        x, hs, cache = run_layers(self.h, x, call, cache=inp.cache, scan=self.scan, remat=self.remat, keys=keys)
        cache = advance_cache(cache, inp.input_ids.shape[1])
        x = self.ln_f(x)
        hidden = (emb, *hs[:-1], x) if output_hidden_states else None  # HF: the last entry is after ln_f
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden, cache=cache)


class _GPT2Head(PreTrainedModel):
    config_class = GPT2Config
    hf_prefix = "transformer"
    base_attr = "transformer"


class GPT2LMHeadModel(_GPT2Head):
    hf_architecture = "GPT2LMHeadModel"
    is_decoder = True
    can_generate = True

    def __init__(self, cfg: GPT2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.transformer = GPT2Model(cfg, options=options, rngs=rngs)
        tied = cfg.tie_word_embeddings
        self.lm_head = None if tied else Dense(
            cfg.n_embd, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False, opts=options, rngs=rngs
        )

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""
        return self.transformer.init_cache(batch, max_len, dtype)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None, *,
                 segment_ids=None, logits_to_keep: int = 0, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> CausalLMOutput:  # fmt: skip
        """Next-token logits `[B, T, V]` (only the last `logits_to_keep` positions if > 0) and the updated cache.
        segment_ids: packed documents (see `GPT2Model`)."""
        out = self.transformer(input_ids, attention_mask, position_ids, cache, segment_ids=segment_ids,
                               deterministic=deterministic, dropout_rng=dropout_rng,
                               output_hidden_states=output_hidden_states)  # fmt: skip
        x = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        logits = self.transformer.wte.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = constrain(logits, ACT_BTV)
        return CausalLMOutput(logits=logits, cache=out.cache, hidden_states=out.hidden_states)


class GPT2ForSequenceClassification(_GPT2Head):
    hf_architecture = "GPT2ForSequenceClassification"

    def __init__(self, cfg: GPT2Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.transformer = GPT2Model(cfg, options=options, rngs=rngs)
        self.score = Dense(
            cfg.n_embd, cfg.num_labels, axes=("embed", "labels"), use_bias=False, opts=options, rngs=rngs
        )

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        """Logits `[B, num_labels]` read at each row's last non-padding token (HF's rule; no classifier dropout)."""
        ids, mask = check_input_ids(input_ids, attention_mask, vocab_size=self.config.vocab_size)  # before int32
        out = self.transformer(ids, mask, position_ids, output_hidden_states=output_hidden_states,
                               deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip
        logits = self.score(out.last_hidden_state)  # [B, T, num_labels]
        logits = last_token(logits, ids, mask, self.config.pad_token_id)
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


_L = "h.*."
_B = "h.block."
_HEADS = SplitAxis(-1, "n_head")
HF_WEIGHTS = (
    Rule("wte.weight", "wte.embedding"),
    Rule("wpe.weight", "wpe.embedding"),
    Rule(_L + "ln_1.weight", _B + "ln_1.scale"),
    Rule(_L + "ln_1.bias", _B + "ln_1.bias"),
    Rule(_L + "attn.c_attn.weight", _B + "attn.q_proj.kernel", Chunk(0, 3, -1), _HEADS),
    Rule(_L + "attn.c_attn.weight", _B + "attn.k_proj.kernel", Chunk(1, 3, -1), _HEADS),
    Rule(_L + "attn.c_attn.weight", _B + "attn.v_proj.kernel", Chunk(2, 3, -1), _HEADS),
    Rule(_L + "attn.c_attn.bias", _B + "attn.q_proj.bias", Chunk(0, 3, 0), SplitAxis(0, "n_head")),
    Rule(_L + "attn.c_attn.bias", _B + "attn.k_proj.bias", Chunk(1, 3, 0), SplitAxis(0, "n_head")),
    Rule(_L + "attn.c_attn.bias", _B + "attn.v_proj.bias", Chunk(2, 3, 0), SplitAxis(0, "n_head")),
    Rule(_L + "attn.c_proj.weight", _B + "attn.c_proj.kernel", SplitAxis(0, "n_head")),
    Rule(_L + "attn.c_proj.bias", _B + "attn.c_proj.bias"),
    Rule(_L + "ln_2.weight", _B + "ln_2.scale"),
    Rule(_L + "ln_2.bias", _B + "ln_2.bias"),
    Rule(_L + "mlp.c_fc.weight", _B + "mlp.c_fc.kernel"),
    Rule(_L + "mlp.c_fc.bias", _B + "mlp.c_fc.bias"),
    Rule(_L + "mlp.c_proj.weight", _B + "mlp.c_proj.kernel"),
    Rule(_L + "mlp.c_proj.bias", _B + "mlp.c_proj.bias"),
    Rule("ln_f.weight", "ln_f.scale"),
    Rule("ln_f.bias", "ln_f.bias"),
    Ignore("h.*.attn.bias"),  # old checkpoints store the causal-mask buffer
    Ignore("h.*.attn.masked_bias"),
    Rule("lm_head.weight", "lm_head.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("score.weight", "score.kernel", T(), head=True),
)

ARCHITECTURE = Architecture(
    name="gpt2",
    config_class=GPT2Config,
    weights=HF_WEIGHTS,
    classes={
        "gpt2": {
            "base": GPT2Model,
            "causal-lm": GPT2LMHeadModel,
            "sequence-classification": GPT2ForSequenceClassification,
        }
    },
)
