"""BART, mBART and Marian encoder-decoders and their heads: one code path, one HF weight table, three model types.

References: arXiv:1910.13461 (BART), arXiv:2001.08210 (mBART), Junczys-Dowmunt et al. 2018 (Marian); HF transformers
`models/{bart,mbart,marian}/modeling_*.py` (5.x). What differs between the three is declared on the config subclasses
(class attributes, not config.json fields, since transformers 5 fixes them per model type and ignores the old
`normalize_before` / `add_final_layer_norm` keys some config.json files still carry):

                            BART                  mBART                         Marian
  layers                    post-LN               pre-LN                        post-LN
  layernorm_embedding       yes                   yes                           no
  final `layer_norm`        no                    encoder and decoder           no
  positions                 learned, row = slot + 2 (`max_position_embeddings + 2` rows)   sinusoidal, fixed (not a
                                                                                parameter: computed as HF computes it)
  labels -> decoder inputs  prepend decoder_start shift_tokens_right wrapping  as BART (decoder_start is the pad id)
                                                  each row's last non-pad
                                                  token (its language id)
  no decoder inputs at all  shift input_ids       shift input_ids (mBART way)   ValueError (HF has no fallback)

Numerics follow HF: LayerNorm (eps 1e-5) in float32, `activation_function` in the feed-forward, attention scaled by
`head_dim ** -0.5`, token embeddings times sqrt(d_model) when `scale_embedding`, tied LM head plus the
`final_logits_bias` buffer. Positions are slots (0, 1, ... from the first token, padding included, as HF counts them),
in the encoder as in the decoder.

Embedding tables, as transformers 5.24 builds and saves them: with `tie_word_embeddings` (the default) the encoder and
decoder read `shared` and the LM head is `shared` transposed, so only `shared.weight` is saved; untied, `shared`,
`encoder.embed_tokens`, `decoder.embed_tokens` and `lm_head` are four tables (HF keeps `shared` though nothing reads
it). Marian with `share_encoder_decoder_embeddings=False` has no `shared`: the encoder table has `vocab_size` rows, the
decoder's (and the LM head, tied to it) `decoder_vocab_size`.

Dropout (training, `deterministic=False`, `core.dropout`) as HF: `dropout` after the embeddings and after each attention
and feed-forward output, `attention_dropout` on the attention probabilities, `activation_dropout` after the
feed-forward activation, `classifier_dropout` around the classification head's dense layer, and LayerDrop
(`encoder_layerdrop` / `decoder_layerdrop`: a whole layer skipped with that probability).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from jaxformers.core import attention as attn
from jaxformers.core import dropout
from jaxformers.core import seq2seq
from jaxformers.core.cache import KVCache, update_layer
from jaxformers.core.config import HFConfig, config_class, num_labels_from
from jaxformers.core.layers import Dense, Embed, LayerNorm, Stacked, activation
from jaxformers.core.modeling import Architecture, PreTrainedModel, check_input_ids, check_seq_len, is_traced
from jaxformers.core.options import Options
from jaxformers.core.outputs import (
    BaseModelOutput,
    QuestionAnsweringOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
)
from jaxformers.core.seq2seq import Seq2SeqCache, cross_kv, require_decoder_inputs
from jaxformers.core.sharding import ACT_BTD, ACT_BTF, ACT_BTKH, ACT_BTNH, ACT_BTV, constrain
from jaxformers.core.stack import run_layers
from jaxformers.convert.rules import Ignore, Op, Rule, SplitAxis, T

# Dropout sites (`core.dropout.fold`): fixed numbers, so a site's mask never depends on which others ran.
_ENCODER, _DECODER, _HEAD = 0, 1, 2  # under the model key
_EMBED, _LAYERS = 0, 1  # under the encoder's / decoder's key
_SELF_PROBS, _SELF_OUT, _CROSS_PROBS, _CROSS_OUT, _ACT, _FFN_OUT, _LAYERDROP = range(7)  # under a layer's key
_HEAD_IN, _HEAD_MID = 0, 1  # classification head: before dense, before out_proj
_LN_EPS = 1e-5  # HF builds every norm as nn.LayerNorm(d_model): the torch default eps
_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding: row = position + 2 (fairseq's padding offset)


@config_class
class BartConfig(HFConfig):
    """HF `BartConfig` fields (names and defaults of transformers 5.24) and the family's behaviour flags."""

    model_type = "bart"
    # What the model type decides (class attributes: config.json does not choose them; see the module docstring).
    pre_layer_norm = False  # mBART: LayerNorm before attention / feed-forward instead of after the residual add
    embedding_layer_norm = True  # `layernorm_embedding` after token + position embeddings
    stack_final_layer_norm = False  # mBART: `layer_norm` after the last encoder and decoder layer
    sinusoidal_positions = False  # Marian: fixed sinusoidal table instead of BART's learned, offset one
    shift_language_id = False  # mBART: labels -> decoder inputs wrap each row's last non-pad token to the front
    shift_input_ids = True  # no decoder inputs and no labels: shift input_ids (BART, mBART) or refuse (Marian)
    default_num_labels = 3  # BartConfig's num_labels when config.json has neither id2label nor num_labels

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    activation_function: str = "gelu"
    d_model: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    classifier_dropout: float | None = 0.0
    scale_embedding: bool = False
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 2
    is_decoder: bool = False
    tie_word_embeddings: bool = True
    positive_fields = ("vocab_size", "max_position_embeddings", "encoder_layers", "encoder_ffn_dim",
                       "encoder_attention_heads", "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads",
                       "d_model")  # fmt: skip
    rate_fields = ("dropout", "attention_dropout", "activation_dropout", "classifier_dropout", "encoder_layerdrop",
                   "decoder_layerdrop")  # fmt: skip

    def validate(self):
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ValueError(
                    f"config.json: d_model ({self.d_model}) must be divisible by {side}_attention_heads ({heads}); "
                    "fix config.json"
                )
        if self.is_decoder:
            raise ValueError(
                f"config.json has is_decoder=true (HF's {type(self).__name__[:-6]}ForCausalLM, the decoder alone): "
                f"jaxformers implements {self.model_type} as an encoder-decoder only; load a seq2seq checkpoint, or "
                "set is_decoder to false if this one really is an encoder-decoder"
            )
        # pad_token_id is not range-checked here (transformers' config only warns): it is used only by the label
        # shift, whose output goes through the decoder's token-id check like any decoder input.
        activation(self.activation_function)

    @property
    def num_labels(self) -> int:
        """HF's rule (`len(id2label)`, else `num_labels`), with the model type's default (BART: 3, others: 2)."""
        return num_labels_from({"num_labels": self.default_num_labels, **self.extra})

    @property
    def has_shared(self) -> bool:
        """The model has the `shared` table (BART/mBART always; Marian when it shares its vocabularies)."""
        return True

    @property
    def embeds_tied(self) -> bool:
        """Encoder and decoder read `shared` (else each reads its own `embed_tokens`)."""
        return self.has_shared and self.tie_word_embeddings

    @property
    def decoder_token_rows(self) -> int:
        """Rows of the decoder's token table (the decoder input ids' range)."""
        return self.vocab_size

    @property
    def target_vocab_size(self) -> int:
        """Rows of the LM head and `final_logits_bias` (HF: vocab_size, or Marian's decoder_vocab_size if unshared)."""
        return self.vocab_size

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model) if self.scale_embedding else 1.0

    def shift_tokens_right(self, ids):
        """Labels (or input_ids) -> decoder inputs, as this model type's HF `shift_tokens_right`."""
        if self.shift_language_id:
            return mbart_shift_tokens_right(ids, self.pad_token_id)
        return seq2seq.shift_tokens_right(ids, self.pad_token_id, self.decoder_start_token_id)


@config_class
class MBartConfig(BartConfig):
    model_type = "mbart"
    pre_layer_norm = True
    stack_final_layer_norm = True
    shift_language_id = True
    default_num_labels = 2
    decoder_start_token_id: int | None = None  # mBART starts from each row's language id (shift_tokens_right)


@config_class
class MarianConfig(BartConfig):
    model_type = "marian"
    embedding_layer_norm = False
    sinusoidal_positions = True
    shift_input_ids = False
    default_num_labels = 2
    vocab_size: int = 58101
    decoder_vocab_size: int | None = None  # None: vocab_size (HF fills it in)
    share_encoder_decoder_embeddings: bool = True
    pad_token_id: int | None = 58100
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 0
    decoder_start_token_id: int | None = 58100
    positive_fields = BartConfig.positive_fields + ("decoder_vocab_size",)

    @property
    def has_shared(self) -> bool:
        return self.share_encoder_decoder_embeddings

    @property
    def decoder_token_rows(self) -> int:
        return self.vocab_size if self.embeds_tied else (self.decoder_vocab_size or self.vocab_size)

    @property
    def target_vocab_size(self) -> int:
        shared = self.share_encoder_decoder_embeddings
        return self.vocab_size if shared else (self.decoder_vocab_size or self.vocab_size)


def mbart_shift_tokens_right(ids, pad_token_id: int | None):
    """HF mBART `shift_tokens_right`: -100 -> pad, then prepend each row's token at index (non-pad count - 1), its
    language id when right-padded, and drop the last token. numpy in, numpy out; jax arrays stay jax arrays."""
    if pad_token_id is None:
        raise ValueError(
            "shifting labels into decoder inputs needs config.pad_token_id; set it in config.json or pass "
            "decoder_input_ids yourself"
        )
    xp = jnp if isinstance(ids, jax.Array) else np
    ids = xp.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"labels must be 2-D [batch, target_len], got shape {tuple(ids.shape)}")
    ids = xp.where(ids == -100, xp.asarray(pad_token_id, ids.dtype), ids)
    last = (ids != pad_token_id).sum(axis=1) - 1
    if not is_traced(last) and int(np.min(np.asarray(last))) < 0:
        raise ValueError(
            "mBART shifts each row's last non-pad token (its language id) to the front, but a row of labels / "
            "input_ids holds only padding; drop the empty row or pass decoder_input_ids yourself"
        )
    start = xp.take_along_axis(ids, last[:, None], axis=1)
    return xp.concatenate([start, ids[:, :-1]], axis=1)


@functools.lru_cache(maxsize=8)
def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """HF `MarianSinusoidalPositionalEmbedding.create_weight`, bit for bit: angles in float64 (the same numpy calls on
    the same array layout), sin in the first ceil(dim / 2) columns, cos in the rest, cast to float32."""
    denominators = np.array([np.power(10000, 2 * (j // 2) / dim) for j in range(dim)])  # HF's scalar calls
    position_enc = np.arange(n_pos, dtype=np.float64)[:, None] / denominators[None, :]
    out = np.empty((n_pos, dim), np.float32)
    sentinel = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out[:, :sentinel] = np.sin(position_enc[:, 0::2])
    out[:, sentinel:] = np.cos(position_enc[:, 1::2])
    out.setflags(write=False)
    return out


class Attention(nnx.Module):
    """HF `BartAttention`: q/k/v/out projections with biases; softmax scale `head_dim ** -0.5`."""

    def __init__(self, d: int, heads: int, *, rate: float, opts: Options, rngs: nnx.Rngs):
        h = d // heads
        self.q_proj = Dense(d, (heads, h), axes=("embed", "heads", "head_dim"), opts=opts, rngs=rngs)
        self.k_proj = Dense(d, (heads, h), axes=("embed", "kv_heads", "head_dim"), opts=opts, rngs=rngs)
        self.v_proj = Dense(d, (heads, h), axes=("embed", "kv_heads", "head_dim"), opts=opts, rngs=rngs)
        self.out_proj = Dense((heads, h), d, axes=("heads", "head_dim", "embed"), opts=opts, rngs=rngs)
        self.impl, self.rate = opts.attn_impl, rate

    def kv(self, x):
        """Keys and values `[B, S, K, H]` of `x` (for cross-attention: the encoder output, once per sequence)."""
        return constrain(self.k_proj(x), ACT_BTKH), constrain(self.v_proj(x), ACT_BTKH)

    def __call__(self, x, k, v, *, key_mask, causal=False, q_offset=0, key=None):
        q = constrain(self.q_proj(x), ACT_BTNH)
        o = attn.dot_product_attention(q, k, v, causal=causal, q_offset=q_offset, key_mask=key_mask, impl=self.impl,
                                       dropout_rate=self.rate, dropout_key=key)  # fmt: skip
        return self.out_proj(o)


class _Layer(nnx.Module):
    """What encoder and decoder layers share: the feed-forward block and the pre-/post-LN residual rule."""

    def _init_ffn(self, cfg: BartConfig, ffn_dim: int, opts: Options, rngs: nnx.Rngs):
        d = cfg.d_model
        self.fc1 = Dense(d, ffn_dim, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.fc2 = Dense(ffn_dim, d, axes=("mlp", "embed"), opts=opts, rngs=rngs)
        self.final_layer_norm = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs)
        self.act = activation(cfg.activation_function)
        self.pre = cfg.pre_layer_norm
        self.rate, self.act_rate = cfg.dropout, cfg.activation_dropout

    def _residual(self, x, norm: LayerNorm, block, key, site: int):
        """`x + dropout(block(x'))` with x' = norm(x) (pre-LN), or norm of that sum (post-LN)."""
        y = dropout.dropout(block(norm(x) if self.pre else x), self.rate, dropout.fold(key, site))
        return x + y if self.pre else norm(x + y)

    def _ffn(self, x, key):
        def block(h):
            h = constrain(self.act(self.fc1(h)), ACT_BTF)
            return self.fc2(dropout.dropout(h, self.act_rate, dropout.fold(key, _ACT)))

        return constrain(self._residual(x, self.final_layer_norm, block, key, _FFN_OUT), ACT_BTD)


class EncoderLayer(_Layer):
    def __init__(self, cfg: BartConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.encoder_attention_heads, rate=cfg.attention_dropout, opts=opts, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs)
        self._init_ffn(cfg, cfg.encoder_ffn_dim, opts, rngs)

    def __call__(self, x, key_mask, key):
        def block(h):
            k, v = self.self_attn.kv(h)
            return self.self_attn(h, k, v, key_mask=key_mask, key=dropout.fold(key, _SELF_PROBS))

        return self._ffn(self._residual(x, self.self_attn_layer_norm, block, key, _SELF_OUT), key)


class DecoderLayer(_Layer):
    def __init__(self, cfg: BartConfig, *, opts: Options, rngs: nnx.Rngs):
        d, n, rate = cfg.d_model, cfg.decoder_attention_heads, cfg.attention_dropout
        self.self_attn = Attention(d, n, rate=rate, opts=opts, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs)
        self.encoder_attn = Attention(d, n, rate=rate, opts=opts, rngs=rngs)
        self.encoder_attn_layer_norm = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs)
        self._init_ffn(cfg, cfg.decoder_ffn_dim, opts, rngs)

    def __call__(self, x, self_mask, q_offset, kv, cross, encoder_mask, key):
        """kv: this layer's self-attention cache `(k, v)` or None; cross: its cross-attention `(k, v)`."""
        new_kv = []

        def self_block(h):
            k, v = self.self_attn.kv(h)
            if kv is not None:  # write the new tokens at their slots, attend over the whole cache
                k, v = update_layer(kv[0], kv[1], k, v, q_offset)
                new_kv.append((k, v))
            return self.self_attn(h, k, v, key_mask=self_mask, causal=True, q_offset=q_offset,
                                  key=dropout.fold(key, _SELF_PROBS))  # fmt: skip

        def cross_block(h):
            return self.encoder_attn(h, *cross, key_mask=encoder_mask, key=dropout.fold(key, _CROSS_PROBS))

        x = self._residual(x, self.self_attn_layer_norm, self_block, key, _SELF_OUT)
        x = self._residual(x, self.encoder_attn_layer_norm, cross_block, key, _CROSS_OUT)
        return self._ffn(x, key), (new_kv[0] if new_kv else None)


def _layerdrop(x, y, rate: float, key):
    """HF LayerDrop in training: the layer's output `y` is replaced by its input `x` with probability `rate`."""
    if key is None or not rate:
        return y
    return jnp.where(jax.random.uniform(dropout.fold(key, _LAYERDROP)) < rate, x, y)


class _Stack(nnx.Module):
    """Embeddings (own token table when untied, positions, `layernorm_embedding`), layers and the final norm of the
    encoder or the decoder, named as HF's `BartEncoder` / `BartDecoder`."""

    def _init_stack(self, cfg: BartConfig, layer_cls, n_layers: int, token_rows: int, opts: Options, rngs):
        d = cfg.d_model
        self.embed_tokens = None if cfg.embeds_tied else Embed(token_rows, d, opts=opts, rngs=rngs)
        self.embed_positions = None if cfg.sinusoidal_positions else Embed(
            cfg.max_position_embeddings + _POSITION_OFFSET, d, axes=("pos", "embed"), opts=opts, rngs=rngs
        )
        self.layernorm_embedding = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs) if cfg.embedding_layer_norm else None
        self.layers = Stacked(lambda r: layer_cls(cfg, opts=opts, rngs=r), n_layers, rngs=rngs)
        self.layer_norm = LayerNorm(d, eps=_LN_EPS, opts=opts, rngs=rngs) if cfg.stack_final_layer_norm else None
        self.scan, self.remat, self.dtype = opts.scan_layers, opts.remat, opts.compute_dtype
        self.embed_scale, self.rate = cfg.embed_scale, cfg.dropout
        self.n_positions = cfg.max_position_embeddings

    def embed(self, ids, positions, tokens: Embed, key):
        x = tokens(ids)
        if self.embed_scale != 1.0:
            x = x * jnp.asarray(self.embed_scale, x.dtype)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + _POSITION_OFFSET)
        else:
            table = jnp.asarray(sinusoidal_table(self.n_positions, x.shape[-1]), x.dtype)
            x = x + jnp.take(table, positions, axis=0)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return constrain(dropout.dropout(x, self.rate, key), ACT_BTD)

    def finish(self, x):
        return x if self.layer_norm is None else self.layer_norm(x)


class Encoder(_Stack):
    def __init__(self, cfg: BartConfig, *, opts: Options, rngs: nnx.Rngs):
        self._init_stack(cfg, EncoderLayer, cfg.encoder_layers, cfg.vocab_size, opts, rngs)
        self.layerdrop = cfg.encoder_layerdrop

    def __call__(self, ids, mask, tokens: Embed, key):
        """Returns (embedding output, last hidden state, per-layer outputs)."""
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)  # HF: slots
        emb = self.embed(ids, positions, tokens, dropout.fold(key, _EMBED))
        key_mask = mask.astype(bool)

        def call(layer, h, kv, window, layer_key):
            return _layerdrop(h, layer(h, key_mask, layer_key), self.layerdrop, layer_key), kv

        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), self.layers.n)
        x, hs, _ = run_layers(self.layers, emb, call, cache=None, scan=self.scan, remat=self.remat, keys=keys)
        return emb, self.finish(x), hs


class Decoder(_Stack):
    def __init__(self, cfg: BartConfig, *, opts: Options, rngs: nnx.Rngs):
        self._init_stack(cfg, DecoderLayer, cfg.decoder_layers, cfg.decoder_token_rows, opts, rngs)
        self.layerdrop = cfg.decoder_layerdrop

    def cross_kv(self, encoder_hidden_states):
        """Every layer's cross-attention K/V, stacked `[L, B, S, K, H]` (scanned or per layer, as the layers run)."""
        return cross_kv(self.layers, encoder_hidden_states, lambda layer, h: layer.encoder_attn.kv(h), scan=self.scan)

    def __call__(self, inp: seq2seq.DecoderInputs, tokens: Embed, cross, encoder_mask, key):
        """Returns (embedding output, last hidden state, per-layer outputs, self-attention KVCache or None)."""
        emb = self.embed(inp.input_ids, inp.position_ids, tokens, dropout.fold(key, _EMBED))

        def call(layer, h, kv, window, layer_key, xs):
            y, kv = layer(h, inp.key_mask, inp.q_offset, kv, xs, encoder_mask, layer_key)
            return _layerdrop(h, y, self.layerdrop, layer_key), kv

        keys = dropout.layer_keys(dropout.fold(key, _LAYERS), self.layers.n)
        self_cache = None if inp.cache is None else inp.cache.self_attn
        x, hs, self_cache = run_layers(self.layers, emb, call, cache=self_cache, scan=self.scan, remat=self.remat,
                                       keys=keys, xs=cross)  # fmt: skip
        return emb, self.finish(x), hs, self_cache


def _hidden_states(emb, hs, last):
    """HF's tuple: the embedding output, each layer's output, the last one replaced by the final (normed) state."""
    return (emb, *hs[:-1], last)


def _encoder_mask(mask, encoder_hidden_states) -> jax.Array:
    """The encoder's padding mask `[B, S]` as bool (all True when None), checked against its output `[B, S, D]`."""
    b, s = encoder_hidden_states.shape[:2]
    if mask is None:
        return jnp.ones((b, s), bool)
    m = mask if isinstance(mask, jax.Array) else np.asarray(mask)
    if tuple(m.shape) != (b, s):
        raise ValueError(
            f"encoder_attention_mask shape {tuple(m.shape)} must be [batch, source_len] = {(b, s)}, the encoder "
            "output's; pass the attention_mask the source was encoded with"
        )
    return jnp.asarray(m) != 0


def _encoder_states(x, d_model: int, batch: int | None = None) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 3 or x.shape[-1] != d_model or (batch is not None and x.shape[0] != batch):
        want = f"[{batch if batch is not None else 'batch'}, source_len, d_model={d_model}]"
        raise ValueError(
            f"encoder_hidden_states must be {want}, got shape {tuple(x.shape)}; pass "
            "model.encode(input_ids, attention_mask).last_hidden_state"
        )
    return x


class BartModel(PreTrainedModel):
    """The encoder-decoder (HF `BartModel`): `shared` token table (when the model has one), `encoder`, `decoder`.
    Offers the seq2seq contract of `core.seq2seq`: `encode`, `init_cache`, `decode`, `__call__`."""

    config_class = BartConfig
    hf_architecture = "BartModel"
    hf_prefix = "model"
    is_encoder_decoder = True
    # Loading: an untied checkpoint lacking encoder/decoder.embed_tokens gets them initialised (with a warning), as
    # transformers does; in a tied model the copies older checkpoints carry have no target and are reported unused.
    init_if_missing = ("encoder.embed_tokens.", "decoder.embed_tokens.")

    def __init__(self, cfg: BartConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, opts=options, rngs=rngs) if cfg.has_shared else None
        self.encoder = Encoder(cfg, opts=options, rngs=rngs)
        self.decoder = Decoder(cfg, opts=options, rngs=rngs)
        self.dtype = options.compute_dtype

    def get_encoder(self) -> nnx.Module:
        """The encoder (as transformers' `get_encoder()`)."""
        return self.encoder

    def decoder_tokens(self) -> Embed:
        """The decoder's token table (also the tied LM head's)."""
        return self.shared if self.decoder.embed_tokens is None else self.decoder.embed_tokens

    def encode(self, input_ids, attention_mask=None, *, output_hidden_states: bool = False,
               deterministic: bool = True, dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """The encoder's last_hidden_state `[B, S, D]` (and hidden_states: embeddings + each layer) for `input_ids`.

        At most `max_position_embeddings` tokens (transformers refuses more too); ids are range-checked against the
        vocabulary (see `core.modeling` for eager vs jit)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        ids, mask = check_input_ids(input_ids, attention_mask, vocab_size=cfg.vocab_size)
        check_seq_len(ids.shape[1], cfg.max_position_embeddings)
        tokens = self.shared if self.encoder.embed_tokens is None else self.encoder.embed_tokens
        emb, x, hs = self.encoder(ids, mask, tokens, key)
        return BaseModelOutput(last_hidden_state=x, hidden_states=_hidden_states(emb, hs, x) if output_hidden_states
                               else None)  # fmt: skip

    def init_cache(self, batch: int, max_len: int, encoder_hidden_states, encoder_attention_mask=None,
                   dtype=None) -> Seq2SeqCache:  # fmt: skip
        """An empty decoder self-attention cache of `max_len` slots for `batch` rows, plus every decoder layer's
        cross-attention K/V computed here, once, from `encoder_hidden_states [batch, S, D]` (and the encoder's mask,
        which every later `decode` step applies). dtype: the cache's (default: the compute dtype)."""
        cfg = self.config
        enc = _encoder_states(encoder_hidden_states, cfg.d_model, batch)
        mask = _encoder_mask(encoder_attention_mask, enc)
        dtype = dtype or self.dtype
        k, v = self.decoder.cross_kv(enc)
        heads = cfg.decoder_attention_heads
        self_attn = KVCache.init(cfg.decoder_layers, batch, max_len, heads, cfg.d_model // heads, dtype)
        return Seq2SeqCache(self_attn=self_attn, cross_k=k.astype(dtype), cross_v=v.astype(dtype), encoder_mask=mask)

    def decode(self, decoder_input_ids, decoder_attention_mask=None, *, encoder_hidden_states=None,
               encoder_attention_mask=None, cache: Seq2SeqCache | None = None, output_hidden_states: bool = False,
               deterministic: bool = True, dropout_rng=None) -> Seq2SeqModelOutput:  # fmt: skip
        """Run the decoder over `decoder_input_ids [B, T]` (right-padded or unpadded; positions are slots).

        With `cache` (from `init_cache`): the tokens are appended at `cache.index`, cross-attention reads the cached
        K/V and encoder mask (`encoder_hidden_states` is not needed), and the returned cache is advanced by T. Without:
        the whole decoder sequence at once, cross K/V computed from `encoder_hidden_states` (and its mask)."""
        cfg = self.config
        key = dropout.key_for(deterministic, dropout_rng)
        inp = seq2seq.decoder_inputs(decoder_input_ids, decoder_attention_mask, cache,
                                     vocab_size=cfg.decoder_token_rows,
                                     max_positions=cfg.max_position_embeddings)  # fmt: skip
        if cache is not None:
            cross, encoder_mask = (cache.cross_k, cache.cross_v), cache.encoder_mask
        elif encoder_hidden_states is None:
            raise ValueError(
                "decode needs the encoder's output: pass encoder_hidden_states=model.encode(input_ids, "
                "attention_mask).last_hidden_state (and encoder_attention_mask), or cache=model.init_cache(...)"
            )
        else:
            enc = _encoder_states(encoder_hidden_states, cfg.d_model, inp.input_ids.shape[0])
            cross, encoder_mask = self.decoder.cross_kv(enc), _encoder_mask(encoder_attention_mask, enc)
        emb, x, hs, self_cache = self.decoder(inp, self.decoder_tokens(), cross, encoder_mask, key)
        if cache is not None:
            cache = inp.cache.replace(self_attn=self_cache).advance(inp.input_ids.shape[1])
        hidden = _hidden_states(emb, hs, x) if output_hidden_states else None
        return Seq2SeqModelOutput(last_hidden_state=x, cache=cache, decoder_hidden_states=hidden)

    def decoder_input_ids_for(self, input_ids, decoder_input_ids, labels):
        """Decoder inputs as HF chooses them: given ones; else labels shifted right; else (BART, mBART) input_ids
        shifted right, or (Marian) an error, since transformers has no fallback there."""
        if decoder_input_ids is not None:
            return decoder_input_ids
        if labels is not None:
            return self.config.shift_tokens_right(labels)
        if not self.config.shift_input_ids:
            require_decoder_inputs(None, None, type(self).__name__)
        if input_ids is None:
            raise ValueError(
                "with neither decoder_input_ids nor labels, the decoder inputs are input_ids shifted right (as "
                "transformers does), so input_ids cannot be None; pass input_ids or decoder_input_ids"
            )
        return self.config.shift_tokens_right(input_ids)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 labels=None, encoder_outputs=None, cache: Seq2SeqCache | None = None,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> Seq2SeqModelOutput:  # fmt: skip
        """Encode `input_ids [B, S]` (unless `encoder_outputs` is given) and decode; last_hidden_state `[B, T, D]`
        (the decoder's) and encoder_last_hidden_state `[B, S, D]`.

        Decoder inputs: `decoder_input_ids`, else `labels` shifted right (this model type's HF shift_tokens_right;
        transformers' base model has no labels argument, accepted here so every seq2seq class has the same call; no
        loss is computed yet), else as HF: BART/mBART shift input_ids, Marian raises. deterministic=False applies
        dropout with the key `dropout_rng` (`core.dropout`)."""
        key = dropout.key_for(deterministic, dropout_rng)
        decoder_input_ids = self.decoder_input_ids_for(input_ids, decoder_input_ids, labels)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("input_ids is required (or pass encoder_outputs=model.encode(...))")
            enc = self.encode(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                              deterministic=key is None, dropout_rng=dropout.fold(key, _ENCODER))  # fmt: skip
        elif isinstance(encoder_outputs, BaseModelOutput):
            enc = encoder_outputs
        else:  # HF also accepts a tuple whose first entry is the last hidden state
            states = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else encoder_outputs
            enc = BaseModelOutput(last_hidden_state=states)
        dec = self.decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states=enc.last_hidden_state,
                          encoder_attention_mask=attention_mask, cache=cache,
                          output_hidden_states=output_hidden_states, deterministic=key is None,
                          dropout_rng=dropout.fold(key, _DECODER))  # fmt: skip
        return Seq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, encoder_last_hidden_state=enc.last_hidden_state,
            cache=dec.cache, decoder_hidden_states=dec.decoder_hidden_states,
            encoder_hidden_states=enc.hidden_states,
        )  # fmt: skip


class _Head(PreTrainedModel):
    """A head over `model` (the base model): the seq2seq contract's `encode` / `init_cache` / `decode` are the base
    model's (heads other than the LM read the decoder states in `__call__`)."""

    config_class = BartConfig
    hf_prefix = "model"
    base_attr = "model"
    is_encoder_decoder = True
    init_if_missing = BartModel.init_if_missing
    base_class = BartModel

    def get_encoder(self) -> nnx.Module:
        """`BartModel.get_encoder`."""
        return self.model.encoder

    def encode(self, input_ids, attention_mask=None, *, output_hidden_states: bool = False,
               deterministic: bool = True, dropout_rng=None) -> BaseModelOutput:  # fmt: skip
        """`BartModel.encode`."""
        return self.model.encode(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                                 deterministic=deterministic, dropout_rng=dropout_rng)  # fmt: skip

    def init_cache(self, batch: int, max_len: int, encoder_hidden_states, encoder_attention_mask=None,
                   dtype=None) -> Seq2SeqCache:  # fmt: skip
        """`BartModel.init_cache`."""
        return self.model.init_cache(batch, max_len, encoder_hidden_states, encoder_attention_mask, dtype)

    def decode(self, decoder_input_ids, decoder_attention_mask=None, *, encoder_hidden_states=None,
               encoder_attention_mask=None, cache: Seq2SeqCache | None = None, output_hidden_states: bool = False,
               deterministic: bool = True, dropout_rng=None) -> Seq2SeqModelOutput:  # fmt: skip
        """`BartModel.decode` (the decoder's hidden states)."""
        return self.model.decode(decoder_input_ids, decoder_attention_mask,
                                 encoder_hidden_states=encoder_hidden_states,
                                 encoder_attention_mask=encoder_attention_mask, cache=cache,
                                 output_hidden_states=output_hidden_states, deterministic=deterministic,
                                 dropout_rng=dropout_rng)  # fmt: skip

    def _run(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
             output_hidden_states, deterministic, dropout_rng, labels=None, cache=None):  # fmt: skip
        """The base model's output and the head's own dropout key (None when deterministic)."""
        key = dropout.key_for(deterministic, dropout_rng)
        out = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels=labels,
                         encoder_outputs=encoder_outputs, cache=cache, output_hidden_states=output_hidden_states,
                         deterministic=key is None, dropout_rng=key)  # fmt: skip
        return out, dropout.fold(key, _HEAD)


class _Squeeze0(Op):
    """HF's `[1, V]` buffer (`final_logits_bias`) <-> a `[V]` parameter (its vocabulary axis shards like the logits)."""

    def forward(self, x, cfg):
        if x.ndim != 2 or x.shape[0] != 1:
            raise ValueError(f"expected a [1, V] tensor, got shape {tuple(x.shape)}")
        return x.reshape(x.shape[1:])

    def inverse(self, x, cfg):
        return x.reshape((1,) + x.shape)


_SQUEEZE0 = _Squeeze0()


class BartForConditionalGeneration(_Head):
    """HF `BartForConditionalGeneration`: decoder states -> tied (or own) `lm_head` + `final_logits_bias`."""

    hf_architecture = "BartForConditionalGeneration"
    can_generate = True

    def __init__(self, cfg: BartConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = self.base_class(cfg, options=options, rngs=rngs)
        v = cfg.target_vocab_size
        self.final_logits_bias = nnx.Param(jnp.zeros((v,), options.param_dtype), axes=("vocab",))
        self.lm_head = None if cfg.tie_word_embeddings else Dense(
            cfg.d_model, v, axes=("embed", "vocab"), use_bias=False, opts=options, rngs=rngs
        )

    def _logits(self, x, logits_to_keep: int):
        x = x[:, -logits_to_keep:] if logits_to_keep else x
        logits = self.model.decoder_tokens().attend(x) if self.lm_head is None else self.lm_head(x)
        return constrain(logits + self.final_logits_bias[...].astype(logits.dtype), ACT_BTV)

    def decode(self, decoder_input_ids, decoder_attention_mask=None, *, encoder_hidden_states=None,
               encoder_attention_mask=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
               output_hidden_states: bool = False, deterministic: bool = True,
               dropout_rng=None) -> Seq2SeqLMOutput:  # fmt: skip
        """`BartModel.decode`, then next-token logits `[B, T, V]` (only the last `logits_to_keep` positions when > 0)
        and the advanced cache (generation's prefill and step)."""
        out = super().decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states=encoder_hidden_states,
                             encoder_attention_mask=encoder_attention_mask, cache=cache,
                             output_hidden_states=output_hidden_states, deterministic=deterministic,
                             dropout_rng=dropout_rng)  # fmt: skip
        return Seq2SeqLMOutput(logits=self._logits(out.last_hidden_state, logits_to_keep), cache=out.cache,
                               decoder_hidden_states=out.decoder_hidden_states)  # fmt: skip

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 labels=None, encoder_outputs=None, cache: Seq2SeqCache | None = None, logits_to_keep: int = 0,
                 output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> Seq2SeqLMOutput:  # fmt: skip
        """Encode + decode (`BartModel.__call__`): logits `[B, T, V]` (the last `logits_to_keep` when > 0).

        labels: shifted right into the decoder inputs when decoder_input_ids is None, as transformers does (no loss
        is computed yet: the training issue adds losses)."""
        out, _ = self._run(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                           output_hidden_states, deterministic, dropout_rng, labels=labels, cache=cache)  # fmt: skip
        return Seq2SeqLMOutput(
            logits=self._logits(out.last_hidden_state, logits_to_keep),
            encoder_last_hidden_state=out.encoder_last_hidden_state, cache=out.cache,
            decoder_hidden_states=out.decoder_hidden_states, encoder_hidden_states=out.encoder_hidden_states,
        )  # fmt: skip


class ClassificationHead(nnx.Module):
    """HF `BartClassificationHead`: dropout -> dense -> tanh -> dropout -> out_proj (`classifier_dropout`)."""

    def __init__(self, cfg: BartConfig, *, opts: Options, rngs: nnx.Rngs):
        d = cfg.d_model
        self.dense = Dense(d, d, axes=("embed", "mlp"), opts=opts, rngs=rngs)
        self.out_proj = Dense(d, cfg.num_labels, axes=("mlp", "labels"), opts=opts, rngs=rngs)
        self.rate = cfg.classifier_dropout or 0.0

    def __call__(self, x, key):
        h = dropout.dropout(x, self.rate, dropout.fold(key, _HEAD_IN))
        h = dropout.dropout(jnp.tanh(self.dense(h)), self.rate, dropout.fold(key, _HEAD_MID))
        return self.out_proj(h)


def last_eos_index(input_ids: jax.Array, eos_token_id) -> jax.Array:
    """Each row's last `eos_token_id` position `[B]`, with HF's rules: every row holds the same number of eos tokens,
    at least one (ValueError eagerly; a `checkify.debug_check` under jit, see `core.modeling`)."""
    if not isinstance(eos_token_id, int) or isinstance(eos_token_id, bool):
        raise ValueError(
            f"sequence classification pools the decoder state at the last eos token, so config.eos_token_id must be "
            f"one token id, got {eos_token_id!r}; set eos_token_id in config.json"
        )
    is_eos = input_ids == eos_token_id
    counts = is_eos.sum(axis=1)
    same = "All examples must have the same number of <eos> tokens"
    one = "Each example must contain at least one <eos> token"
    fix = f"end every row of input_ids with eos_token_id={eos_token_id} (the tokenizer does), and only there"
    if is_traced(counts):
        checkify.debug_check(jnp.all(counts == counts[0]), f"{same} (found {{lo}} to {{hi}}): {fix}",
                             lo=jnp.min(counts), hi=jnp.max(counts))  # fmt: skip
        checkify.debug_check(jnp.all(counts > 0), f"{one}: {fix}")
    else:
        found = sorted(set(np.asarray(counts).tolist()))
        if len(found) > 1:
            raise ValueError(f"{same} (transformers raises this too), found counts {found}: {fix}")
        if found and found[0] == 0:
            raise ValueError(f"{one} (transformers raises this too): {fix}")
    return jnp.argmax(jnp.where(is_eos, jnp.arange(input_ids.shape[1]), -1), axis=1)


class BartForSequenceClassification(_Head):
    """HF `BartForSequenceClassification`: the decoder state at each row's last eos token of `input_ids` (so the
    decoder inputs must be as long as the source: the default shifted input_ids are) -> `classification_head`."""

    hf_architecture = "BartForSequenceClassification"

    def __init__(self, cfg: BartConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = self.base_class(cfg, options=options, rngs=rngs)
        self.classification_head = ClassificationHead(cfg, opts=options, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 encoder_outputs=None, output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> SequenceClassifierOutput:  # fmt: skip
        """Logits `[B, num_labels]`. input_ids is required (it locates the eos tokens), as in transformers."""
        ids, _ = check_input_ids(input_ids, attention_mask, vocab_size=self.config.vocab_size)
        last_eos = last_eos_index(ids, self.config.eos_token_id)  # HF's checks, before running the model
        out, key = self._run(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                             output_hidden_states, deterministic, dropout_rng)  # fmt: skip
        h = out.last_hidden_state
        if h.shape[1] != ids.shape[1]:
            raise ValueError(
                f"sequence classification reads the decoder state at input_ids' last eos token, so the decoder "
                f"inputs must be as long as input_ids ({ids.shape[1]}), got {h.shape[1]}; leave decoder_input_ids "
                "unset (input_ids shifted right, as transformers does)"
            )
        pooled = h[jnp.arange(h.shape[0]), last_eos]
        hidden = out.decoder_hidden_states
        return SequenceClassifierOutput(logits=self.classification_head(pooled, key), hidden_states=hidden)


class BartForQuestionAnswering(_Head):
    """HF `BartForQuestionAnswering`: start/end logits from the decoder states (`qa_outputs`, 2 outputs: HF sets
    num_labels = 2 whatever the config says)."""

    hf_architecture = "BartForQuestionAnswering"

    def __init__(self, cfg: BartConfig, *, options: Options = Options(), rngs: nnx.Rngs):
        self.config = cfg
        self.model = self.base_class(cfg, options=options, rngs=rngs)
        self.qa_outputs = Dense(cfg.d_model, 2, axes=("embed", "labels"), opts=options, rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 encoder_outputs=None, output_hidden_states: bool = False, deterministic: bool = True,
                 dropout_rng=None) -> QuestionAnsweringOutput:  # fmt: skip
        out, _ = self._run(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                           output_hidden_states, deterministic, dropout_rng)  # fmt: skip
        logits = self.qa_outputs(out.last_hidden_state)  # [B, T, 2]
        return QuestionAnsweringOutput(start_logits=logits[..., 0], end_logits=logits[..., 1],
                                       hidden_states=out.decoder_hidden_states)  # fmt: skip


# mBART: the same classes over MBartConfig (pre-LN, final norms, the language-id shift).
class MBartModel(BartModel):
    config_class = MBartConfig
    hf_architecture = "MBartModel"


class _MBartHead(_Head):
    config_class = MBartConfig
    base_class = MBartModel


class MBartForConditionalGeneration(_MBartHead, BartForConditionalGeneration):
    hf_architecture = "MBartForConditionalGeneration"


class MBartForSequenceClassification(_MBartHead, BartForSequenceClassification):
    hf_architecture = "MBartForSequenceClassification"


class MBartForQuestionAnswering(_MBartHead, BartForQuestionAnswering):
    hf_architecture = "MBartForQuestionAnswering"


# Marian: sinusoidal positions (computed, not parameters: a checkpoint's copies are reported unused), no embedding
# norm, shared or separate vocabularies (a `shared.weight` that transformers 4 kept in unshared checkpoints is unused).
_MARIAN_OPTIONAL = BartModel.init_if_missing + ("shared.", "encoder.embed_positions.", "decoder.embed_positions.")


class MarianModel(BartModel):
    config_class = MarianConfig
    hf_architecture = "MarianModel"
    init_if_missing = _MARIAN_OPTIONAL

    def save_pretrained(self, directory) -> None:
        """HF layout, plus the two sinusoidal tables that transformers' `MarianModel.save_pretrained` writes
        (`MarianMTModel` does not: its `_keys_to_ignore_on_save`), so transformers loads the export without missing
        keys. They are computed exactly as HF computes them, in the parameters' dtype."""
        from safetensors.numpy import load_file

        from jaxformers.convert.safetensors_io import SAFE_SINGLE, save_safetensors

        super().save_pretrained(directory)
        path = Path(directory) / SAFE_SINGLE
        tensors = load_file(str(path))
        cfg = self.config
        dtype = np.dtype(self.decoder_tokens().embedding[...].dtype)
        table = sinusoidal_table(cfg.max_position_embeddings, cfg.d_model).astype(dtype)
        for side in ("encoder", "decoder"):
            tensors[f"{side}.embed_positions.weight"] = table
        save_safetensors(tensors, path)


class _MarianHead(_Head):
    config_class = MarianConfig
    base_class = MarianModel
    init_if_missing = _MARIAN_OPTIONAL


class MarianMTModel(_MarianHead, BartForConditionalGeneration):
    hf_architecture = "MarianMTModel"


_E = "encoder.layers.*."
_EB = "encoder.layers.block."
_D = "decoder.layers.*."
_DB = "decoder.layers.block."


def _attention_rules(src: str, dst: str, heads: str) -> tuple[Rule, ...]:
    """HF q/k/v/out_proj (torch `[out, in]` Linear) <-> head-shaped `Dense` kernels `[D, N, H]` / `[N, H, D]`."""
    split, split_in = SplitAxis(-1, heads), SplitAxis(0, heads)
    rules = []
    for proj in ("q_proj", "k_proj", "v_proj"):
        rules.append(Rule(f"{src}.{proj}.weight", f"{dst}.{proj}.kernel", T(), split))
        rules.append(Rule(f"{src}.{proj}.bias", f"{dst}.{proj}.bias", split_in))
    rules.append(Rule(f"{src}.out_proj.weight", f"{dst}.out_proj.kernel", T(), split_in))
    rules.append(Rule(f"{src}.out_proj.bias", f"{dst}.out_proj.bias"))
    return tuple(rules)


def _norm_rules(src: str, dst: str) -> tuple[Rule, ...]:
    return (Rule(f"{src}.weight", f"{dst}.scale"), Rule(f"{src}.bias", f"{dst}.bias"))


def _ffn_rules(src: str, dst: str) -> tuple[Rule, ...]:
    return (
        Rule(f"{src}fc1.weight", f"{dst}fc1.kernel", T()),
        Rule(f"{src}fc1.bias", f"{dst}fc1.bias"),
        Rule(f"{src}fc2.weight", f"{dst}fc2.kernel", T()),
        Rule(f"{src}fc2.bias", f"{dst}fc2.bias"),
        *_norm_rules(src + "final_layer_norm", dst + "final_layer_norm"),
    )


# Every rule applies to all three model types; a tensor whose parameter a model type does not build (Marian's
# embed_positions, a tied model's embed_tokens copies) is left unused through `init_if_missing`, see the classes.
HF_WEIGHTS = (
    Rule("shared.weight", "shared.embedding"),
    *(r for side in ("encoder", "decoder") for r in (
        Rule(f"{side}.embed_tokens.weight", f"{side}.embed_tokens.embedding"),
        Rule(f"{side}.embed_positions.weight", f"{side}.embed_positions.embedding"),
        *_norm_rules(f"{side}.layernorm_embedding", f"{side}.layernorm_embedding"),
        *_norm_rules(f"{side}.layer_norm", f"{side}.layer_norm"),
    )),
    *_attention_rules(_E + "self_attn", _EB + "self_attn", "encoder_attention_heads"),
    *_norm_rules(_E + "self_attn_layer_norm", _EB + "self_attn_layer_norm"),
    *_ffn_rules(_E, _EB),
    *_attention_rules(_D + "self_attn", _DB + "self_attn", "decoder_attention_heads"),
    *_norm_rules(_D + "self_attn_layer_norm", _DB + "self_attn_layer_norm"),
    *_attention_rules(_D + "encoder_attn", _DB + "encoder_attn", "decoder_attention_heads"),
    *_norm_rules(_D + "encoder_attn_layer_norm", _DB + "encoder_attn_layer_norm"),
    *_ffn_rules(_D, _DB),
    Ignore("encoder.version"),  # fairseq leftovers HF skips too (`_keys_to_ignore_on_load_unexpected`)
    Ignore("decoder.version"),
    # heads (full HF keys)
    Rule("final_logits_bias", "final_logits_bias", _SQUEEZE0, head=True),
    Rule("lm_head.weight", "lm_head.kernel", T(), unless="tie_word_embeddings", head=True),
    Rule("classification_head.dense.weight", "classification_head.dense.kernel", T(), head=True),
    Rule("classification_head.dense.bias", "classification_head.dense.bias", head=True),
    Rule("classification_head.out_proj.weight", "classification_head.out_proj.kernel", T(), head=True),
    Rule("classification_head.out_proj.bias", "classification_head.out_proj.bias", head=True),
    Rule("qa_outputs.weight", "qa_outputs.kernel", T(), head=True),
    Rule("qa_outputs.bias", "qa_outputs.bias", head=True),
)  # fmt: skip

ARCHITECTURE = Architecture(
    name="bart",
    config_class=BartConfig,
    weights=HF_WEIGHTS,
    classes={
        "bart": {
            "base": BartModel,
            "seq2seq-lm": BartForConditionalGeneration,
            "sequence-classification": BartForSequenceClassification,
            "question-answering": BartForQuestionAnswering,
        },
        "mbart": {
            "base": MBartModel,
            "seq2seq-lm": MBartForConditionalGeneration,
            "sequence-classification": MBartForSequenceClassification,
            "question-answering": MBartForQuestionAnswering,
        },
        "marian": {"base": MarianModel, "seq2seq-lm": MarianMTModel},
    },
)
