"""What encoder-decoder architectures (T5, BART, mBART, Marian) share: the seq2seq cache, label shifting, the
decoder preamble, and the contract generation and tasks rely on.

The contract of a seq2seq class (declared `is_encoder_decoder = True`; the LM heads also `can_generate = True`):

    enc = model.encode(input_ids, attention_mask)              # BaseModelOutput, last_hidden_state [B, S, D]
    cache = model.init_cache(batch, max_len, enc.last_hidden_state, attention_mask)
                                                               # Seq2SeqCache: empty decoder self-attention cache of
                                                               # max_len slots + every decoder layer's cross-attention
                                                               # K/V, computed here once from the encoder output
    out = model.decode(decoder_input_ids, decoder_attention_mask, cache=cache, logits_to_keep=1)
                                                               # appends the tokens at cache.index; out.logits (LM
                                                               # heads) or out.last_hidden_state, and out.cache
    out = model.decode(decoder_input_ids, decoder_attention_mask, encoder_hidden_states=h,
                       encoder_attention_mask=m)               # no cache: the whole decoder sequence at once
    out = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)   # encode + decode
    out = model(input_ids, attention_mask, labels=labels)      # decoder inputs = shift_tokens_right(labels), as HF
    model.get_encoder()                                        # the encoder module (generation keeps its kernels'
                                                               # order: it runs once per call, on many rows)

Decoder positions are slots (`cache.index + arange(T)`, as transformers' BART and T5 count them), not derived from
the decoder mask: decoder inputs are right-padded (or unpadded) and start with `decoder_start_token_id`. The
encoder's inputs may be right- or left-padded: its mask is carried into the cache (`encoder_mask`) and masks every
cross-attention.

Cross-attention K/V are read-only after `init_cache`, so they live in the cache stacked `[L, B, S, K, H]` in both
layouts (a decode loop over per-layer weights slices layer `i` with a static index); only the self-attention part
becomes per-layer under `unstacked()`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxformers.core.cache import KVCache
from jaxformers.core.modeling import check_input_ids, check_seq_len


@struct.dataclass
class Seq2SeqCache:
    """Decoder state of a seq2seq model: the self-attention `KVCache` plus the cross-attention K/V of every decoder
    layer (`[L, B, S_enc, K, H]`, computed once from the encoder output) and the encoder's mask `[B, S_enc]` (bool).

    Offers the `KVCache` interface that generation's loops use (`per_layer`, `max_len`, `batch`, `index`,
    `unstacked`, `gather_rows`, `with_tokens`)."""

    self_attn: KVCache
    cross_k: jax.Array
    cross_v: jax.Array
    encoder_mask: jax.Array

    @property
    def per_layer(self) -> bool:
        return self.self_attn.per_layer

    @property
    def max_len(self) -> int:
        return self.self_attn.max_len

    @property
    def batch(self) -> int:
        return self.self_attn.batch

    @property
    def index(self) -> jax.Array:
        return self.self_attn.index

    @property
    def mask(self) -> jax.Array:
        return self.self_attn.mask

    def unstacked(self) -> Seq2SeqCache:
        """Per-layer self-attention arrays (the cross K/V stay stacked: they are only read)."""
        return self.replace(self_attn=self.self_attn.unstacked())

    def gather_rows(self, rows: jax.Array) -> Seq2SeqCache:
        """The cache of batch rows `rows [B']` (beam search expands and reorders beams this way)."""
        return self.replace(
            self_attn=self.self_attn.gather_rows(rows),
            cross_k=self.cross_k[:, rows],
            cross_v=self.cross_v[:, rows],
            encoder_mask=self.encoder_mask[rows],
        )

    def with_tokens(self, attention_mask: jax.Array) -> Seq2SeqCache:
        return self.replace(self_attn=self.self_attn.with_tokens(attention_mask))

    def advance(self, t: int) -> Seq2SeqCache:
        """The cache after a call that appended `t` decoder tokens."""
        return self.replace(self_attn=self.self_attn.replace(index=self.self_attn.index + t))


def cross_kv(layers, encoder_hidden_states, project: Callable, *, scan: bool):
    """Every decoder layer's cross-attention `(k, v)` from the encoder output, stacked `[L, B, S, K, H]`.

    project(layer, encoder_hidden_states) -> (k, v), each `[B, S, K, H]`. `layers` is the decoder's `Stacked` (or
    `Unstacked`) container; scanned when `scan` (compile time flat in depth), else a loop over `layer(i)`."""
    if scan:
        def body(layer, carry, _):
            return carry, project(layer, encoder_hidden_states)

        _, (k, v) = layers.scan(body, None)
        return k, v
    kvs = [project(layers.layer(i), encoder_hidden_states) for i in range(layers.n)]
    return jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs])


def shift_tokens_right(labels, pad_token_id: int | None, decoder_start_token_id: int | None):
    """Decoder inputs from labels, as transformers: prepend `decoder_start_token_id`, drop the last label, and
    replace the ignore index -100 by `pad_token_id`. numpy in, numpy out; jax arrays stay jax arrays."""
    if decoder_start_token_id is None:
        raise ValueError(
            "shifting labels into decoder inputs needs config.decoder_start_token_id; set it in config.json or pass "
            "decoder_input_ids yourself"
        )
    if pad_token_id is None:
        raise ValueError(
            "shifting labels into decoder inputs needs config.pad_token_id (labels' -100 entries become pad); set it "
            "in config.json or pass decoder_input_ids yourself"
        )
    xp = jnp if isinstance(labels, jax.Array) else np
    labels = xp.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [batch, target_len], got shape {tuple(labels.shape)}")
    start = xp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype)
    shifted = xp.concatenate([start, labels[:, :-1]], axis=1)
    return xp.where(shifted == -100, xp.asarray(pad_token_id, labels.dtype), shifted)


class DecoderInputs(struct.PyTreeNode):
    """The checked inputs of one seq2seq decoder call. input_ids/attention_mask `[B, T]` int32; key_mask `[B, S]`
    bool over the self-attention keys (S = T without a cache); q_offset: slot of the first new token; position_ids
    `[B, T]` = slots; cache: with this call's mask written in (index not yet advanced), or None."""

    input_ids: jax.Array
    attention_mask: jax.Array
    key_mask: jax.Array
    q_offset: jax.Array | int
    position_ids: jax.Array
    cache: Seq2SeqCache | None


def decoder_inputs(decoder_input_ids, decoder_attention_mask, cache: Seq2SeqCache | None, *, vocab_size: int,
                   max_positions: int | None = None,
                   positions_name: str = "max_position_embeddings") -> DecoderInputs:  # fmt: skip
    """Check a seq2seq decoder's inputs and give its key mask, first slot and positions (slots).

    max_positions: rows of a learned decoder position table (BART/mBART/Marian; None for T5's relative buckets):
    the slots written must stay below it, checked on the host when the cache index is concrete."""
    ids, mask = check_input_ids(decoder_input_ids, decoder_attention_mask, "decoder_input_ids", vocab_size=vocab_size)
    b, t = ids.shape
    if cache is None:
        if max_positions is not None:
            check_seq_len(t, max_positions, positions_name)
        key_mask, q_offset = mask.astype(bool), 0
    else:
        cache = cache.with_tokens(mask)  # checks the batch and that the tokens fit
        key_mask, q_offset = cache.mask, cache.index
        if max_positions is not None and not isinstance(q_offset, jax.core.Tracer):
            check_seq_len(int(q_offset) + t, max_positions, positions_name)
    positions = jnp.broadcast_to(q_offset + jnp.arange(t, dtype=jnp.int32), (b, t))
    return DecoderInputs(ids, mask, key_mask, q_offset, positions, cache)


def require_decoder_inputs(decoder_input_ids, labels, model_name: str) -> None:
    """The error for a seq2seq forward given neither decoder inputs nor labels (where HF has no fallback)."""
    if decoder_input_ids is None and labels is None:
        raise ValueError(
            f"{model_name} is an encoder-decoder: its forward needs decoder_input_ids (or labels, which are shifted "
            "right into decoder inputs as transformers does). Pass decoder_input_ids=..., or use "
            "jf.generate(model, input_ids, attention_mask=...) to generate"
        )
