"""T5, T5 v1.1 / Flan-T5 and mT5: encoder-decoder transformers with relative position buckets.

References: Raffel et al. 2020 (arXiv:1910.10683), Xue et al. 2021 (mT5, arXiv:2010.11934); HF transformers
`models/t5/modeling_t5.py` and `models/mt5/modeling_mt5.py` (5.24). Numerics follow HF: pre-norm blocks with
`T5LayerNorm` (RMS, no mean, no bias, variance in float32), no biases anywhere, attention logits NOT scaled by
`1/sqrt(d_kv)` (T5 folds the scale into its initialisation), one relative position bias per stack (bidirectional
buckets in the encoder, causal ones in the decoder) computed once per forward and added in every layer's
self-attention (HF keeps the table in layer 0 only; here it lives at the stack level:
`encoder.relative_attention_bias`), cross-attention without any bias. Feed-forward: `relu` (original T5) or gated
(`gated-gelu`: v1.1, Flan-T5, mT5; HF's `gelu_new` of `wi_0` times `wi_1`). `d_kv * num_heads` need not equal
`d_model`.

The LM head and the `d_model ** -0.5` scaling of the decoder output, as transformers 5.24 decides them:
- logits are scaled for T5 when `scale_decoder_outputs` (written by transformers 5) is true, or, in configs without
  it, when `tie_word_embeddings` is not false (original T5: tied and scaled; v1.1 / Flan-T5: untied, unscaled).
  transformers 5.24's mT5 never scales.
- the head is a separate `lm_head.weight` exactly when the logits are unscaled or `tie_word_embeddings` is false
  (every released checkpoint: original T5 is tied; v1.1, Flan-T5, mT5 are untied), else it is `shared.weight`.
  transformers 5 forces `tie_word_embeddings=true` into every config it writes and unties at load time when the
  checkpoint holds a distinct `lm_head.weight`; jaxformers reads only config.json before loading, so it relies on
  the rule above. The one case it cannot read from config.json: a v1.1-style model created from scratch in
  transformers 5 (its head is tied, unscaled, and saved without `lm_head.weight`): loading it reports
  `lm_head.kernel` missing.

Decoder positions are slots (`core.seq2seq`): the relative bias of a query at slot `i` against a key at slot `j`
uses `j - i`, with or without a KV cache. The encoder's inputs may be right- or left-padded (positions are slots
there too, as in HF: a left-padded row's buckets differ from the unpadded row's, exactly as in transformers).
Dropout (training, `deterministic=False`) as HF: `dropout_rate` on the embeddings, the attention probabilities,
inside the feed-forward (after the activation), after every sublayer and after each stack's final norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core.cache import KVCache, update_layer
from jaxformers.core.config import HFConfig, config_class
from jaxformers.core.layers import ACTIVATIONS, Dense, Embed, RMSNorm, Stacked, activation
from jaxformers.core.modeling import Architecture, PreTrainedModel, check_input_ids
from jaxformers.core.options import Options
from jaxformers.core.outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from jaxformers.core.position_bias import check_bucket_config, relative_position_bias
from jaxformers.core.seq2seq import (
    DecoderInputs,
    Seq2SeqCache,
    cross_kv,
    decoder_inputs,
    require_decoder_inputs,
    shift_tokens_right,
)
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTKH, ACT_BTNH, ACT_BTV, constrain
from jaxformers.core.stack import run_layers
from jaxformers.convert.rules import Ignore, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): fixed numbers, so a site's mask never depends on which others ran.
_ENCODER, _DECODER = 0, 1  # under the model key
_EMBED, _LAYERS, _FINAL = 0, 1, 2  # under a stack's key
_SA_PROBS, _SA_OUT, _CA_PROBS, _CA_OUT, _FF_MID, _FF_OUT = 0, 1, 2, 3, 4, 5  # under a layer's key


@config_class
class T5Config(HFConfig):
    """HF `T5Config` field names. `num_decoder_layers` None means `num_layers` (HF's default). `is_gated_act`,
    `dense_act_fn` and `scale_decoder_outputs` are what transformers derives (from `feed_forward_proj` and
    `tie_word_embeddings`) and writes into config.json; when present they win, as in transformers."""

    model_type = "t5"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    decoder_start_token_id: int | None = 0
    is_gated_act: bool | None = None
    dense_act_fn: str | None = None
    scale_decoder_outputs: bool | None = None
    positive_fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                       "relative_attention_num_buckets", "relative_attention_max_distance")  # fmt: skip
    nonnegative_fields = ("layer_norm_epsilon",)
    rate_fields = ("dropout_rate",)
    flag_fields = {"gated_act": "is_gated_act"}  # the config.json field behind a rule flag (error hints)
    _derived = ("is_gated_act", "dense_act_fn", "scale_decoder_outputs")  # written back only when config.json had them

    def validate(self):
        proj = self.feed_forward_proj
        parts = proj.split("-") if isinstance(proj, str) else []
        if not parts or (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
            raise ValueError(
                f"config.json: feed_forward_proj={proj!r} is not a valid feed-forward type: use '{{ACT}}' or "
                "'gated-{ACT}', e.g. 'relu' (original T5) or 'gated-gelu' (T5 v1.1, Flan-T5, mT5)"
            )
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"config.json: feed_forward_proj={proj!r} (dense_act_fn={self.act_fn!r}) names an activation "
                f"jaxformers does not implement; supported: {sorted(ACTIVATIONS)}. Fix feed_forward_proj (and "
                "dense_act_fn if present) in config.json"
            )
        check_bucket_config(self.relative_attention_num_buckets, self.relative_attention_max_distance)

    def to_hf(self):
        d = super().to_hf()
        for name in self._derived:
            if d.get(name) is None:
                d.pop(name, None)  # transformers derives them; an explicit null would override its derivation
        return d

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def gated_act(self) -> bool:
        if self.is_gated_act is not None:
            return bool(self.is_gated_act)
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def act_fn(self) -> str:
        if self.dense_act_fn is not None:
            return self.dense_act_fn
        # transformers: "gated-gelu" means the tanh approximation (`gelu_new`), kept for old checkpoints
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def scale_logits(self) -> bool:
        """Whether the decoder output is multiplied by `d_model ** -0.5` before the LM head (module docstring)."""
        if self.scale_decoder_outputs is not None:
            return bool(self.scale_decoder_outputs)
        return self.tie_word_embeddings is not False

    @property
    def untied_head(self) -> bool:
        """Whether the LM head is its own `lm_head.weight` rather than `shared.weight` (module docstring)."""
        return self.tie_word_embeddings is False or not self.scale_logits

    # HF's attribute_map names, for code that reads the common ones
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def head_dim(self) -> int:
        return self.d_kv


@config_class
class MT5Config(T5Config):
    """HF `MT5Config`: T5's fields with mT5's defaults; transformers 5.24's mT5 never scales the decoder output."""

    model_type = "mt5"
    vocab_size: int = 250112
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    feed_forward_proj: str = "gated-gelu"

    @property
    def scale_logits(self) -> bool:
        return False


class Attention(nnx.Module):
    """HF `T5Attention`: q/k/v/o without biases and without the `1/sqrt(d_kv)` scale. Keys and values are
    projected by the caller (`kv`): from the same states (self-attention) or once from the encoder output (cross)."""

    def __init__(self, cfg: T5Config, *, opts: Options, rngs: nnx.Rngs):
        d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
        self.q = Dense(d, (n, h), axes=("embed", "heads", "head_dim"), use_bias=False, opts=opts, rngs=rngs)
        self.k = Dense(d, (n, h), axes=("embed", "kv_heads", "head_dim"), use_bias=False, opts=opts, rngs=rngs)
        self.v = Dense(d, (n, h), axes=("embed", "kv_heads", "head_dim"), use_bias=False, opts=opts, rngs=rngs)
        self.o = Dense((n, h), d, axes=("heads", "head_dim", "embed"), use_bias=False, opts=opts, rngs=rngs)
        self.impl, self.rate = opts.attn_impl, cfg.dropout_rate

    def kv(self, h):
        """Keys and values `[B, S, N, H]` of the states `h [B, S, D]`."""
        return constrain(self.k(h), ACT_BTKH), constrain(self.v(h), ACT_BTKH)

    def __call__(self, x, k, v, *, bias, key_mask, causal=False, q_offset=0, key=None):
        q = constrain(self.q(x), ACT_BTNH)
        o = attn.dot_product_attention(
            q, k, v, bias=bias, causal=causal, q_offset=q_offset, key_mask=key_mask, scale=1.0, impl=self.impl,
            dropout_rate=self.rate, dropout_key=key,
        )  # fmt: skip
        return self.o(o)


class DenseReluDense(nnx.Module):
    """HF `T5DenseActDense` (`wi` -> act -> `wo`) or, gated, `T5DenseGatedActDense` (act(`wi_0`) * `wi_1` -> `wo`);
    dropout after the activation (or the product)."""

    def __init__(self, cfg: T5Config, *, opts: Options, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        gated = cfg.gated_act

        def dense():
            return Dense(d, f, axes=("embed", "mlp"), use_bias=False, opts=opts, rngs=rngs)

        self.wi = None if gated else dense()
        self.wi_0 = dense() if gated else None
        self.wi_1 = dense() if gated else None
        self.wo = Dense(f, d, axes=("mlp", "embed"), use_bias=False, opts=opts, rngs=rngs)
        self.act, self.rate = activation(cfg.act_fn), cfg.dropout_rate

    def __call__(self, x, key):
        h = self.act(self.wi(x)) if self.wi is not None else self.act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(dropout.dropout(constrain(h, ACT_BTF), self.rate, key))


def _norm(cfg: T5Config, opts: Options, rngs: nnx.Rngs) -> RMSNorm:
    # T5LayerNorm is an RMS norm (float32 variance, no mean, no bias); in float32 it equals core RMSNorm bit for bit
    return RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, opts=opts, rngs=rngs)


class EncoderLayer(nnx.Module):
    """HF `T5Block` of the encoder: pre-norm self-attention, then pre-norm feed-forward, each added back."""

    def __init__(self, cfg: T5Config, *, opts: Options, rngs: nnx.Rngs):
        self.self_attn_norm = _norm(cfg, opts, rngs)
        self.SelfAttention = Attention(cfg, opts=opts, rngs=rngs)
        self.ff_norm = _norm(cfg, opts, rngs)
        self.DenseReluDense = DenseReluDense(cfg, opts=opts, rngs=rngs)
        self.rate = cfg.dropout_rate

    def __call__(self, x, bias, key_mask, key):
        h = self.self_attn_norm(x)
        k, v = self.SelfAttention.kv(h)
        a = self.SelfAttention(h, k, v, bias=bias, key_mask=key_mask, key=dropout.fold(key, _SA_PROBS))
        x = x + dropout.dropout(a, self.rate, dropout.fold(key, _SA_OUT))
        f = self.DenseReluDense(self.ff_norm(x), dropout.fold(key, _FF_MID))
        return constrain(x + dropout.dropout(f, self.rate, dropout.fold(key, _FF_OUT)), ACT_BTD)


class DecoderLayer(nnx.Module):
    """HF `T5Block` of the decoder: causal self-attention (KV cache), cross-attention over the encoder output
    (keys/values precomputed per layer, `core.seq2seq.cross_kv`), feed-forward; all pre-norm and residual."""

    def __init__(self, cfg: T5Config, *, opts: Options, rngs: nnx.Rngs):
        self.self_attn_norm = _norm(cfg, opts, rngs)
        self.SelfAttention = Attention(cfg, opts=opts, rngs=rngs)
        self.cross_attn_norm = _norm(cfg, opts, rngs)
        self.EncDecAttention = Attention(cfg, opts=opts, rngs=rngs)
        self.ff_norm = _norm(cfg, opts, rngs)
        self.DenseReluDense = DenseReluDense(cfg, opts=opts, rngs=rngs)
        self.rate = cfg.dropout_rate

    def __call__(self, x, bias, key_mask, q_offset, kv, cross_k, cross_v, encoder_mask, key):
        h = self.self_attn_norm(x)
        k, v = self.SelfAttention.kv(h)
        if kv is not None:
            kv = update_layer(kv[0], kv[1], k, v, q_offset)
            k, v = kv
        a = self.SelfAttention(h, k, v, bias=bias, key_mask=key_mask, causal=True, q_offset=q_offset,
                               key=dropout.fold(key, _SA_PROBS))  # fmt: skip
        x = x + dropout.dropout(a, self.rate, dropout.fold(key, _SA_OUT))
        c = self.EncDecAttention(self.cross_attn_norm(x), cross_k, cross_v, bias=None, key_mask=encoder_mask,
                                 key=dropout.fold(key, _CA_PROBS))  # fmt: skip
        x = x + dropout.dropout(c, self.rate, dropout.fold(key, _CA_OUT))
        f = self.DenseReluDense(self.ff_norm(x), dropout.fold(key, _FF_MID))
        return constrain(x + dropout.dropout(f, self.rate, dropout.fold(key, _FF_OUT)), ACT_BTD), kv


class Stack(nnx.Module):
    """HF `T5Stack` without its embedding (the model's `shared` table feeds both stacks): the relative attention
    bias table (`[num_buckets, num_heads]`, HF's layer-0 `relative_attention_bias`), the layers, the final norm."""

    def __init__(self, cfg: T5Config, *, decoder: bool, opts: Options, rngs: nnx.Rngs):
        self.relative_attention_bias = Embed(
            cfg.relative_attention_num_buckets, cfg.num_heads, axes=("rel_pos", "heads"), opts=opts, rngs=rngs
        )
        layer_cls, n = (DecoderLayer, cfg.decoder_layers) if decoder else (EncoderLayer, cfg.num_layers)
        self.block = Stacked(lambda r: layer_cls(cfg, opts=opts, rngs=r), n, rngs=rngs)
        self.final_layer_norm = _norm(cfg, opts, rngs)
        self.scan, self.remat = opts.scan_layers, opts.remat
        self.decoder, self.max_distance, self.rate = decoder, cfg.relative_attention_max_distance, cfg.dropout_rate

    def bias(self, q_len: int, k_len: int, q_offset=0):
        """The relative position bias `[1, N, T, S]` of this stack, computed once per forward for all layers."""
        return relative_position_bias(self.relative_attention_bias.embedding[...], q_len, k_len,
                                      bidirectional=not self.decoder, max_distance=self.max_distance,
                                      q_offset=q_offset)  # fmt: skip

    def __call__(self, emb, call, bias, *, cache=None, xs=None, key=None):
        """Run the layers on `emb [B, T, D]` (`call(layer, h, kv, bias, key, **xs)` per layer); returns the final
        normed states, the hidden-state tuple HF reports (input of every layer, then the final states) and the
        self-attention cache."""
        x = constrain(dropout.dropout(emb, self.rate, dropout.fold(key, _EMBED)), ACT_BTD)
        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), self.block.n)

        def body(layer, h, kv, window, layer_key, **more):
            return call(layer, h, kv, bias, layer_key, **more)

        out, hs, cache = run_layers(self.block, x, body, cache=cache, scan=self.scan, remat=self.remat, keys=keys,
                                    xs=xs)  # fmt: skip
        out = dropout.dropout(self.final_layer_norm(out), self.rate, dropout.fold(key, _FINAL))
        return out, (x, *hs[:-1], out), cache


def _encoder_call(key_mask):
    def call(layer, h, kv, bias, key):
        return layer(h, bias, key_mask, key), kv

    return call


def _encoder_output(encoder_outputs):
    """`last_hidden_state` of `encoder_outputs`: a `BaseModelOutput`, a tuple/list (HF style) or an array."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs.last_hidden_state
    if isinstance(encoder_outputs, (tuple, list)):
        return encoder_outputs[0]
    return encoder_outputs


def _encoder_mask(encoder_hidden_states, encoder_attention_mask):
    """Bool `[B, S]` mask of the encoder output (all True by default), shape-checked against it."""
    h = encoder_hidden_states
    if h.ndim != 3:
        raise ValueError(f"encoder_hidden_states must be [batch, src_len, d_model], got shape {tuple(h.shape)}")
    if encoder_attention_mask is None:
        return jnp.ones(h.shape[:2], bool)
    m = encoder_attention_mask if isinstance(encoder_attention_mask, jax.Array) else np.asarray(encoder_attention_mask)
    if tuple(m.shape) != tuple(h.shape[:2]):
        raise ValueError(
            f"encoder attention_mask shape {tuple(m.shape)} must be [batch, src_len] = {tuple(h.shape[:2])} of the "
            "encoder output; pass the attention_mask the encoder ran with"
        )
    return jnp.asarray(m) != 0  # any nonzero entry attends, as in transformers


class _T5Common(PreTrainedModel):
    """What every T5 class shares: the `shared` embedding and the encoder (HF keys have no base-model prefix)."""

    config_class = T5Config
    hf_prefix = "transformer"  # HF's base_model_prefix (T5ForSequenceClassification); T5's own keys have none

    def _embed(self, ids):
        return self.shared(ids)

    def get_encoder(self) -> nnx.Module:
        """The encoder stack (as transformers' `get_encoder()`)."""
        return self.encoder

    def encode(self, input_ids, attention_mask=None, *, output_hidden_states: bool = False,
               deterministic: bool = True, dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """Run the encoder on `input_ids [B, S]` (right- or left-padded); last_hidden_state `[B, S, D]`.

        Token ids are range-checked against the vocabulary (`core.modeling`)."""
        key = dropout.fold(dropout.key_for(deterministic, dropout_rng), _ENCODER)
        ids, mask = check_input_ids(input_ids, attention_mask, vocab_size=self.config.vocab_size)
        key_mask = mask.astype(bool)
        t = ids.shape[1]
        x, hs, _ = self.encoder(self._embed(ids), _encoder_call(key_mask), self.encoder.bias(t, t), key=key)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hs if output_hidden_states else None)


class _T5Seq2Seq(_T5Common):
    """The encoder-decoder contract of `core.seq2seq`: `encode`, `init_cache`, `decode`, `__call__`."""

    is_encoder_decoder = True

    def _build(self, cfg: T5Config, options: Options, rngs: nnx.Rngs):
        self.config = cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, opts=options, rngs=rngs)
        self.encoder = Stack(cfg, decoder=False, opts=options, rngs=rngs)
        self.decoder = Stack(cfg, decoder=True, opts=options, rngs=rngs)
        self.dtype = options.compute_dtype

    def _cross_kv(self, encoder_hidden_states):
        def project(layer, h):
            return layer.EncDecAttention.kv(h)

        return cross_kv(self.decoder.block, encoder_hidden_states, project, scan=self.decoder.scan)

    def init_cache(self, batch: int, max_len: int, encoder_hidden_states, encoder_attention_mask=None,
                   dtype=None) -> Seq2SeqCache:  # fmt: skip
        """An empty decoder self-attention cache of `max_len` slots for `batch` rows, plus every decoder layer's
        cross-attention K/V computed once from `encoder_hidden_states [B, S, D]` (masked by
        `encoder_attention_mask [B, S]`, all ones by default)."""
        cfg = self.config
        enc_mask = _encoder_mask(encoder_hidden_states, encoder_attention_mask)
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"init_cache(batch={batch}) got encoder_hidden_states for {encoder_hidden_states.shape[0]} rows; "
                "build the cache for the encoder output's batch"
            )
        dtype = dtype or self.dtype
        ck, cv = self._cross_kv(encoder_hidden_states)
        self_attn = KVCache.init(cfg.decoder_layers, batch, max_len, cfg.num_heads, cfg.d_kv, dtype)
        return Seq2SeqCache(self_attn=self_attn, cross_k=ck.astype(dtype), cross_v=cv.astype(dtype),
                            encoder_mask=enc_mask)  # fmt: skip

    def _decode(self, decoder_input_ids, decoder_attention_mask, encoder_hidden_states, encoder_attention_mask,
                cache, output_hidden_states, deterministic, dropout_rng):  # fmt: skip
        """The decoder's final states `[B, T, D]`, hidden-state tuple (or None) and advanced cache (or None)."""
        cfg = self.config
        key = dropout.fold(dropout.key_for(deterministic, dropout_rng), _DECODER)
        inp: DecoderInputs = decoder_inputs(decoder_input_ids, decoder_attention_mask, cache,
                                            vocab_size=cfg.vocab_size)  # fmt: skip
        if inp.cache is None:
            if encoder_hidden_states is None:
                raise ValueError(
                    "decode() needs encoder_hidden_states (the encoder output: model.encode(...).last_hidden_state) "
                    "or a cache from model.init_cache(batch, max_len, encoder_hidden_states, encoder_attention_mask)"
                )
            enc_mask = _encoder_mask(encoder_hidden_states, encoder_attention_mask)
            if encoder_hidden_states.shape[0] != inp.input_ids.shape[0]:
                raise ValueError(
                    f"decoder_input_ids has {inp.input_ids.shape[0]} rows but encoder_hidden_states has "
                    f"{encoder_hidden_states.shape[0]}; pass the encoder output of the same batch"
                )
            ck, cv = self._cross_kv(encoder_hidden_states)
            self_cache = None
        else:  # the cross K/V were computed once by init_cache; encoder_hidden_states is not needed
            ck, cv, enc_mask = inp.cache.cross_k, inp.cache.cross_v, inp.cache.encoder_mask
            self_cache = inp.cache.self_attn
        t, s = inp.input_ids.shape[1], inp.key_mask.shape[1]

        def call(layer, h, kv, bias, layer_key, xs):
            return layer(h, bias, inp.key_mask, inp.q_offset, kv, xs[0], xs[1], enc_mask, layer_key)

        x, hs, self_cache = self.decoder(self._embed(inp.input_ids), call, self.decoder.bias(t, s, inp.q_offset),
                                         cache=self_cache, xs=(ck, cv), key=key)  # fmt: skip
        new_cache = None if inp.cache is None else inp.cache.replace(self_attn=self_cache).advance(t)
        return x, (hs if output_hidden_states else None), new_cache

    def _encoder_states(self, input_ids, attention_mask, encoder_outputs, output_hidden_states, deterministic,
                        dropout_rng):  # fmt: skip
        """`(BaseModelOutput, attention_mask)` of the encoder: run here, or given as `encoder_outputs`."""
        if encoder_outputs is None:
            enc = self.encode(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                              deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip
        elif isinstance(encoder_outputs, BaseModelOutput):
            enc = encoder_outputs
        else:
            enc = BaseModelOutput(last_hidden_state=jnp.asarray(_encoder_output(encoder_outputs)))
        return enc, attention_mask  # shape-checked against the encoder output by `_encoder_mask`

    def _decoder_ids(self, decoder_input_ids, decoder_attention_mask, labels):
        """The decoder inputs of a forward (`labels` shifted right as HF's `_shift_right` when no ids are given),
        checked before the encoder runs so that a bad decoder input fails fast (`decode` checks them again: free
        under jit, a min/max per input when eager)."""
        require_decoder_inputs(decoder_input_ids, labels, type(self).__name__)
        cfg = self.config
        if decoder_input_ids is None:  # start token first, -100 -> pad_token_id
            decoder_input_ids = shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
        check_input_ids(decoder_input_ids, decoder_attention_mask, "decoder_input_ids", vocab_size=cfg.vocab_size)
        return decoder_input_ids


class T5Model(_T5Seq2Seq):
    """HF `T5Model`: encoder + decoder hidden states (no LM head)."""

    hf_architecture = "T5Model"

    def __init__(self, cfg: T5Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self._build(cfg, options, rngs)

    def decode(self, decoder_input_ids, decoder_attention_mask=None, *, encoder_hidden_states=None,
               encoder_attention_mask=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
               output_hidden_states: bool = False, deterministic: bool = True,
               dropout_rng=None) -> Seq2SeqModelOutput:  # fmt: skip
        """The decoder's last_hidden_state `[B, T, D]` for `decoder_input_ids [B, T]`: appended at `cache.index`
        (the cache's cross K/V are used) or, without a cache, the whole sequence against `encoder_hidden_states`.
        logits_to_keep: kept for the contract's signature (a base model has no logits; the states are all kept)."""
        x, hs, cache = self._decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states,
                                    encoder_attention_mask, cache, output_hidden_states, deterministic,
                                    dropout_rng)  # fmt: skip
        return Seq2SeqModelOutput(last_hidden_state=x, cache=cache, decoder_hidden_states=hs)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 labels=None, encoder_outputs=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> Seq2SeqModelOutput:  # fmt: skip
        """Encode `input_ids [B, S]` (unless `encoder_outputs` is given) and decode `decoder_input_ids [B, T]`
        (or `labels` shifted right, as HF's `_shift_right`); decoder inputs are required, as in transformers."""
        dec_ids = self._decoder_ids(decoder_input_ids, decoder_attention_mask, labels)
        enc, mask = self._encoder_states(input_ids, attention_mask, encoder_outputs, output_hidden_states,
                                         deterministic, dropout_rng)  # fmt: skip
        out = self.decode(dec_ids, decoder_attention_mask, encoder_hidden_states=enc.last_hidden_state,
                          encoder_attention_mask=mask, cache=cache, output_hidden_states=output_hidden_states,
                          deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip
        return out.replace(encoder_last_hidden_state=enc.last_hidden_state, encoder_hidden_states=enc.hidden_states)


class T5ForConditionalGeneration(_T5Seq2Seq):
    """HF `T5ForConditionalGeneration`: the decoder output (scaled by `d_model ** -0.5` when `config.scale_logits`)
    times the LM head (`shared` when tied, `lm_head` otherwise; see the module docstring)."""

    hf_architecture = "T5ForConditionalGeneration"
    can_generate = True

    def __init__(self, cfg: T5Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self._build(cfg, options, rngs)
        self.lm_head = Dense(
            cfg.d_model, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False, opts=options, rngs=rngs
        ) if cfg.untied_head else None  # fmt: skip
        self.logit_scale = cfg.d_model**-0.5 if cfg.scale_logits else None

    def _logits(self, x, logits_to_keep: int):
        x = x[:, -logits_to_keep:] if logits_to_keep else x
        if self.logit_scale is not None:
            x = x * jnp.asarray(self.logit_scale, x.dtype)
        logits = self.shared.attend(x) if self.lm_head is None else self.lm_head(x)
        return constrain(logits, ACT_BTV)

    def decode(self, decoder_input_ids, decoder_attention_mask=None, *, encoder_hidden_states=None,
               encoder_attention_mask=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
               output_hidden_states: bool = False, deterministic: bool = True,
               dropout_rng=None) -> Seq2SeqLMOutput:  # fmt: skip
        """Next-token logits `[B, T, V]` (the last `logits_to_keep` positions when > 0) for `decoder_input_ids
        [B, T]`: appended at `cache.index` using the cache's cross K/V (the returned cache is advanced by T), or,
        without a cache, the whole decoder sequence against `encoder_hidden_states` (masked by
        `encoder_attention_mask`)."""
        x, hs, cache = self._decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states,
                                    encoder_attention_mask, cache, output_hidden_states, deterministic,
                                    dropout_rng)  # fmt: skip
        return Seq2SeqLMOutput(logits=self._logits(x, logits_to_keep), cache=cache, decoder_hidden_states=hs)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 labels=None, encoder_outputs=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> Seq2SeqLMOutput:  # fmt: skip
        """Encode `input_ids [B, S]` (unless `encoder_outputs` is given) and return the decoder's logits.

        labels `[B, T]`: when `decoder_input_ids` is None they are shifted right into decoder inputs exactly as
        HF's `_shift_right` (`decoder_start_token_id` first, -100 -> `pad_token_id`); no loss is computed here (the
        training code computes losses from the logits). Without decoder inputs or labels this raises, as
        transformers does."""
        dec_ids = self._decoder_ids(decoder_input_ids, decoder_attention_mask, labels)
        enc, mask = self._encoder_states(input_ids, attention_mask, encoder_outputs, output_hidden_states,
                                         deterministic, dropout_rng)  # fmt: skip
        out = self.decode(dec_ids, decoder_attention_mask, encoder_hidden_states=enc.last_hidden_state,
                          encoder_attention_mask=mask, cache=cache, logits_to_keep=logits_to_keep,
                          output_hidden_states=output_hidden_states, deterministic=deterministic,
                          dropout_rng=dropout_rng)  # fmt: skip
        return out.replace(encoder_last_hidden_state=enc.last_hidden_state, encoder_hidden_states=enc.hidden_states)


class T5EncoderModel(_T5Common):
    """HF `T5EncoderModel`: the encoder alone (sentence embeddings, T5 text encoders of diffusion models). An
    encoder: no decoder inputs, no cache."""

    hf_architecture = "T5EncoderModel"

    def __init__(self, cfg: T5Config, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, opts=options, rngs=rngs)
        self.encoder = Stack(cfg, decoder=False, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, *, output_hidden_states: bool = False,
                 deterministic: bool = True, dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """The encoder's last_hidden_state `[B, S, D]` (after the final norm) for `input_ids [B, S]`."""
        return self.encode(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                           deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip


class MT5Model(T5Model):
    config_class = MT5Config
    hf_architecture = "MT5Model"


class MT5ForConditionalGeneration(T5ForConditionalGeneration):
    config_class = MT5Config
    hf_architecture = "MT5ForConditionalGeneration"


class MT5EncoderModel(T5EncoderModel):
    config_class = MT5Config
    hf_architecture = "MT5EncoderModel"


_HEADS = SplitAxis(-1, "num_heads")  # torch [N*H, D] transposed: split the output width into heads
_HEADS_IN = SplitAxis(0, "num_heads")  # the output projection: split its input width


def _stack_rules(side: str, decoder: bool) -> tuple:
    """The rules of one stack. The decoder's are `head=True` (full keys, optional for T5EncoderModel, whose
    checkpoints may still hold them: HF's T5EncoderModel ignores `decoder.*` too)."""
    src, dst = f"{side}.block.*.layer.", f"{side}.block.block."
    ff = f"{src}2." if decoder else f"{src}1."
    kw = {"head": decoder}

    def attention(hf: str, ours: str, index: int) -> list:
        a = f"{src}{index}.{hf}."
        return [Rule(a + "q.weight", f"{dst}{ours}.q.kernel", T(), _HEADS, **kw),
                Rule(a + "k.weight", f"{dst}{ours}.k.kernel", T(), _HEADS, **kw),
                Rule(a + "v.weight", f"{dst}{ours}.v.kernel", T(), _HEADS, **kw),
                Rule(a + "o.weight", f"{dst}{ours}.o.kernel", T(), _HEADS_IN, **kw)]  # fmt: skip

    rules = [
        Rule(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             f"{side}.relative_attention_bias.embedding", **kw),  # fmt: skip
        *attention("SelfAttention", "SelfAttention", 0),
        Rule(f"{src}0.layer_norm.weight", f"{dst}self_attn_norm.scale", **kw),
    ]
    if decoder:
        rules += [*attention("EncDecAttention", "EncDecAttention", 1),
                  Rule(f"{src}1.layer_norm.weight", f"{dst}cross_attn_norm.scale", **kw)]  # fmt: skip
    rules += [
        Rule(ff + "DenseReluDense.wi.weight", f"{dst}DenseReluDense.wi.kernel", T(), unless="gated_act", **kw),
        Rule(ff + "DenseReluDense.wi_0.weight", f"{dst}DenseReluDense.wi_0.kernel", T(), when="gated_act", **kw),
        Rule(ff + "DenseReluDense.wi_1.weight", f"{dst}DenseReluDense.wi_1.kernel", T(), when="gated_act", **kw),
        Rule(ff + "DenseReluDense.wo.weight", f"{dst}DenseReluDense.wo.kernel", T(), **kw),
        Rule(ff + "layer_norm.weight", f"{dst}ff_norm.scale", **kw),
        Rule(f"{side}.final_layer_norm.weight", f"{side}.final_layer_norm.scale", **kw),
    ]
    return tuple(rules)


HF_WEIGHTS = (
    Rule("shared.weight", "shared.embedding"),
    *_stack_rules("encoder", decoder=False),
    *_stack_rules("decoder", decoder=True),
    # untied (v1.1, Flan-T5, mT5): the head's own matrix; tied, transformers 5 writes none (older files may hold a
    # copy of shared.weight, loaded unused)
    Rule("lm_head.weight", "lm_head.kernel", T(), when="untied_head", head=True),
    # copies of shared.weight that older transformers versions saved (transformers 5 writes only shared.weight)
    Ignore("encoder.embed_tokens.weight"),
    Ignore("decoder.embed_tokens.weight"),
    # an unused table some old checkpoints carry (HF's _keys_to_ignore_on_load_unexpected)
    Ignore("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"),
)

ARCHITECTURE = Architecture(
    name="t5",
    config_class=T5Config,
    weights=HF_WEIGHTS,
    classes={
        "t5": {"base": T5Model, "seq2seq-lm": T5ForConditionalGeneration, "encoder": T5EncoderModel},
        "mt5": {"base": MT5Model, "seq2seq-lm": MT5ForConditionalGeneration, "encoder": MT5EncoderModel},
    },
)
