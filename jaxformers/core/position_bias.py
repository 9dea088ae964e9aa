"""Relative position biases: T5's bucketed relative attention bias (also used by mT5, UMT5-style and LongT5 models).

T5 adds to every attention logit a learned per-head scalar that depends only on the bucket of the distance
`key_position - query_position` (Raffel et al. 2020, sec. 2.1; mesh-tensorflow `_relative_position_bucket`). Half
of the buckets hold exact small distances, the other half logarithmically wider ranges up to `max_distance`, beyond
which every distance shares the last bucket. Bidirectional (encoder) attention spends half the buckets on each
sign; causal (decoder) attention only sees keys at or before the query, so all buckets go to past distances.

The bucket arithmetic follows transformers' `T5Attention._relative_position_bucket` operation for operation (the
logarithm in float32, truncation toward zero), so the buckets are identical, not just close: a bucket off by one
picks another learned scalar and moves the logits far beyond any tolerance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:  # fmt: skip
    """Bucket index in `[0, num_buckets)` of each `relative_position = key_position - query_position` (int array).

    bidirectional: the encoder's rule (half the buckets for keys after the query); otherwise keys after the query
    (positive distances) share bucket 0 with distance 0, as in transformers (a causal mask hides them anyway).
    The caller guarantees a sane configuration: `max_distance > max_exact >= 1` (see `check_bucket_config`)."""
    rel = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # The large branch is only selected for rel >= max_exact; clamping its input keeps log() finite elsewhere (the
    # float -> int cast of -inf is undefined), without changing any selected value.
    scaled = jnp.log(jnp.maximum(rel, max_exact).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, rel, large)


def check_bucket_config(num_buckets: int, max_distance: int, *, where: str = "config.json") -> None:
    """Refuse bucket settings whose arithmetic breaks: transformers then computes negative (or int64-minimum) bucket
    indices and fails with an IndexError inside the embedding lookup; JAX would silently read NaN."""
    if num_buckets < 4:
        raise ValueError(
            f"{where}: relative_attention_num_buckets={num_buckets} must be at least 4 (the bidirectional encoder "
            "splits them by sign and keeps half of each side for exact distances); use the checkpoint's value (32 "
            "for released T5 models)"
        )
    if max_distance <= num_buckets // 2:
        raise ValueError(
            f"{where}: relative_attention_max_distance={max_distance} must exceed relative_attention_num_buckets // 2 "
            f"= {num_buckets // 2} (the exact-distance buckets of causal attention); otherwise the logarithmic "
            "buckets get negative indices. Use the checkpoint's value (128 for released T5 models)"
        )


def relative_position_bias(table: jax.Array, q_len: int, k_len: int, *, bidirectional: bool, max_distance: int,
                           q_offset: jax.Array | int = 0) -> jax.Array:  # fmt: skip
    """The additive attention bias `[1, N, T, S]` (float32) of `T` queries at positions `q_offset + arange(T)`
    against `S` keys at positions `arange(S)`, read from the learned `table [num_buckets, N]`.

    q_offset: position of the first query (a decoder step against a KV cache: the cache index, possibly traced).
    Computed once per forward and shared by every layer of a stack, as T5 does (only its first layer owns the
    table)."""
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + jnp.asarray(q_offset, jnp.int32)
    k_pos = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    buckets = relative_position_bucket(
        k_pos - q_pos, bidirectional=bidirectional, num_buckets=table.shape[0], max_distance=max_distance
    )  # [T, S]
    values = jnp.take(table, buckets, axis=0).astype(jnp.float32)  # [T, S, N]
    return jnp.transpose(values, (2, 0, 1))[None]
