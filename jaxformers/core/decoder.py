"""What decoder-only architectures share around their layer stack (the stack itself is `core.stack.run_layers`).

`decoder_inputs` is the preamble every decoder runs before its embeddings: the input checks of `core.modeling`, the
cache-or-not split into a key mask and the slot of the first new query, and the default position ids. Learned
position tables (GPT-2) pass their size and get the length and range checks; RoPE models pass None and accept any
position, as transformers does. `advance_cache` is the matching epilogue.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxformers.core.cache import KVCache
from jaxformers.core.modeling import (
    check_index_input,
    check_input_ids,
    check_learned_positions,
    check_seq_len,
    positions_from_mask,
)
from jaxformers.core.stack import NO_WINDOW, run_layers  # noqa: F401  (re-exported for decoder files)


class DecoderInputs(NamedTuple):
    """The checked inputs of one decoder call.

    input_ids: int32 `[B, T]`. attention_mask: int32 0/1 `[B, T]` (the new tokens only). key_mask: bool `[B, S]`
    over every key slot (S = T without a cache, the cache length with one). q_offset: key slot of the first new
    token (0, or the traced `cache.index`). position_ids: int32 `[B, T]`. cache: the cache with this call's mask
    written in (its index not yet advanced: the layers write k/v at `q_offset`), or None. segment_ids: int32
    `[B, T]` document ids of packed rows (pass them to the attention), or None.
    """

    input_ids: jax.Array
    attention_mask: jax.Array
    key_mask: jax.Array
    q_offset: jax.Array | int
    position_ids: jax.Array
    cache: KVCache | None
    segment_ids: jax.Array | None = None


def decoder_inputs(input_ids, attention_mask, position_ids, cache: KVCache | None, *, vocab_size: int,
                   max_positions: int | None = None, positions_name: str = "max_position_embeddings",
                   segment_ids=None) -> DecoderInputs:  # fmt: skip
    """Check and complete a decoder's inputs (see `DecoderInputs`).

    vocab_size: token ids must lie in `[0, vocab_size)`. max_positions: rows of a learned position table (None for
    RoPE): without a cache at most that many tokens, and explicit or default positions within the table;
    positions_name: its config field, for the messages (GPT-2: "n_positions"). segment_ids: packed documents (see
    the module docstring); refused with a cache.
    """
    input_ids, attention_mask = check_input_ids(input_ids, attention_mask, vocab_size=vocab_size)
    segment_ids = check_segment_ids(segment_ids, input_ids.shape, cache)
    t = input_ids.shape[1]
    if cache is None:
        if max_positions is not None:
            check_seq_len(t, max_positions, positions_name)
        key_mask, q_offset = attention_mask.astype(bool), 0
    else:
        cache = cache.with_tokens(attention_mask)  # checks the batch and that the tokens fit
        key_mask, q_offset = cache.mask, cache.index
    position_ids = check_index_input(position_ids, input_ids.shape, "position_ids", size=max_positions)
    if position_ids is None and segment_ids is not None:
        position_ids = segment_positions(segment_ids)
    elif position_ids is None:
        position_ids = decoder_positions(key_mask, q_offset, t)
        if max_positions is not None:
            check_learned_positions(position_ids, max_positions, q_offset=q_offset, name=positions_name)
    return DecoderInputs(input_ids, attention_mask, key_mask, q_offset, position_ids, cache, segment_ids)


def check_segment_ids(segment_ids, ids_shape: tuple[int, int], cache: KVCache | None) -> jax.Array | None:
    """Validate packed-sequence `segment_ids` (integers, `[B, T]` or `[1, T]`); int32 `[B, T]`, or None."""
    if segment_ids is None:
        return None
    if cache is not None:
        raise ValueError(
            "segment_ids (packed sequences) work without a KV cache only (training, scoring, prefill): a cache "
            "holds one sequence per row. Generate from each document in its own row, or drop segment_ids"
        )
    seg = check_index_input(segment_ids, ids_shape, "segment_ids")
    return jnp.broadcast_to(seg, ids_shape)


def advance_cache(cache: KVCache | None, t: int) -> KVCache | None:
    """The cache after a call that appended `t` tokens (None stays None)."""
    return None if cache is None else cache.replace(index=cache.index + t)


def decoder_positions(key_mask, q_offset, t: int):
    """Position ids of the `t` new tokens: slot minus the row's first real slot (left padding gets 0, 1, ...)."""
    all_pos = positions_from_mask(key_mask)  # [B, S]
    if isinstance(q_offset, int) and q_offset == 0 and key_mask.shape[1] == t:
        return all_pos
    return jax.lax.dynamic_slice_in_dim(all_pos, q_offset, t, axis=1)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position ids of packed rows: slot minus the first slot of the token's run of equal segment ids."""
    t = segment_ids.shape[1]
    slots = jnp.arange(t, dtype=jnp.int32)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    first = jax.lax.cummax(jnp.where(starts, slots, 0), axis=1)  # [B, T] first slot of each token's run
    return slots - first
