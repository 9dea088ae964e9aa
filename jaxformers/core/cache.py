"""Static-size KV cache, passed into a decoder's forward and returned updated (never stored on the module).

Writing past the end is refused, never clamped: `lax.dynamic_update_slice` would silently move the write onto the
last slots (overwriting them: wrong logits from then on). `with_tokens`, which every decoder calls before writing a
step, checks `index + T <= max_len`: on the host when `index` is concrete (eager calls; one scalar read per call),
as a `checkify.debug_check` when traced (free unless the program is checkified, so generation's jitted loop, which
sizes its cache itself, pays nothing). See `core.modeling` for the design of input checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import checkify


@struct.dataclass
class KVCache:
    """Keys/values for every layer, `[L, B, S, K, H]` (or, per layer, a tuple of L `[B, S, K, H]` arrays: the layout
    unrolled decoding loops use, so a step updates one small array per layer), plus which slots hold real tokens.

    `mask [B, S]` is True for slots written with a non-padding token; `index` is the next slot to write (the same
    for every row: batches are left-padded, so all rows end at the same slot).
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array

    @classmethod
    def init(
        cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype, per_layer: bool = False
    ) -> KVCache:
        shape = (batch, max_len, kv_heads, head_dim)
        if per_layer:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        else:
            k, v = jnp.zeros((num_layers, *shape), dtype), jnp.zeros((num_layers, *shape), dtype)
        return cls(
            k=k,
            v=v,
            mask=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, tuple)

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def unstacked(self) -> KVCache:
        """The per-layer layout of this cache."""
        if self.per_layer:
            return self
        return self.replace(k=tuple(self.k), v=tuple(self.v))

    def gather_rows(self, rows: jax.Array) -> KVCache:
        """The cache of batch rows `rows [B']` (beam search reorders beams this way)."""
        take = (lambda a: a[rows]) if self.per_layer else (lambda a: a[:, rows])
        k = tuple(map(take, self.k)) if self.per_layer else take(self.k)
        v = tuple(map(take, self.v)) if self.per_layer else take(self.v)
        return self.replace(k=k, v=v, mask=self.mask[rows])

    def with_tokens(self, attention_mask: jax.Array) -> KVCache:
        """Mark the slots `[index, index + T)` as holding the new tokens' `attention_mask [B, T]`.

        Raises ValueError when the batch differs from the cache's or the T tokens do not fit (see the module doc)."""
        b, t = attention_mask.shape
        if b != self.batch:
            raise ValueError(
                f"input batch {b} does not match the KV cache's batch {self.batch}; build the cache for this batch "
                f"with model.init_cache({b}, max_len)"
            )
        fix = "build a larger cache with model.init_cache(batch, max_len) or start a new one"
        if isinstance(self.index, jax.core.Tracer):
            checkify.debug_check(
                self.index + t <= self.max_len,
                f"KV cache overflow: writing {t} token(s) at slot {{index}} needs more than its {self.max_len} slots; "
                + fix,
                index=self.index,
            )
        elif int(self.index) + t > self.max_len:
            raise ValueError(
                f"KV cache overflow: writing {t} token(s) at slot {int(self.index)} needs {int(self.index) + t} slots, "
                f"the cache has max_len={self.max_len} (JAX would clamp the write onto the last slots and continue "
                f"with wrong logits); {fix}"
            )
        mask = jax.lax.dynamic_update_slice(self.mask, attention_mask.astype(bool), (0, self.index))
        return self.replace(mask=mask)


def update_layer(k_cache, v_cache, k, v, index):
    """Write new `k/v [B, T, K, H]` into one layer's cache `[B, S, K, H]` at slot `index`."""
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
    return k_cache, v_cache
