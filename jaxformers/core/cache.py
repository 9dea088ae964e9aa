"""Static-size KV cache, passed into a decoder's forward and returned updated (never stored on the module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """Keys/values for every layer, `[L, B, S, K, H]`, plus which slots hold real tokens.

    `mask [B, S]` is True for slots written with a non-padding token; `index` is the next slot to write (the same
    for every row: batches are left-padded, so all rows end at the same slot).
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype) -> "KVCache":
        shape = (num_layers, batch, max_len, kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            mask=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def with_tokens(self, attention_mask: jax.Array) -> "KVCache":
        """Mark the slots `[index, index + T)` as holding the new tokens' `attention_mask [B, T]`."""
        mask = jax.lax.dynamic_update_slice(self.mask, attention_mask.astype(bool), (0, self.index))
        return self.replace(mask=mask)


def update_layer(k_cache, v_cache, k, v, index):
    """Write new `k/v [B, T, K, H]` into one layer's cache `[B, S, K, H]` at slot `index`."""
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
    return k_cache, v_cache
