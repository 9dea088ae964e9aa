"""The one attention entry point every model calls: `dot_product_attention`.

Layouts: q `[B, T, N, H]`, k/v `[B, S, K, H]` with N a multiple of K (GQA/MQA without repeating K/V). Masks are
described structurally (causal with a query offset, key padding, segment ids, sliding window) so kernels can use
them without a dense `[T, S]` matrix; the XLA implementation materialises them. Numerics follow HF eager attention:
logits and softmax in float32, probabilities cast back to the value dtype before the weighted sum.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Impl = Literal["auto", "xla", "cudnn", "pallas"]

# A large finite negative instead of -inf: fully masked rows (left-padding queries) stay finite in the forward pass
# and in gradients; HF uses finfo(dtype).min the same way.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_mask(
    t: int,
    s: int,
    *,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    key_mask: jax.Array | None = None,
    segment_ids=None,
    sliding_window: int | None = None,
    mask: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask broadcastable to `[B, 1, T, S]` (True = attend) from structural descriptions.

    `q_offset` is the key-slot index of query 0 (scalar or `[B]`), so a decode step against a cache is causal in
    slot space; `sliding_window=W` keeps keys with `q_slot - W < k_slot <= q_slot` (HF's convention).
    """
    parts = []
    if causal or sliding_window is not None:
        q_pos = jnp.arange(t)[None, :, None] + jnp.reshape(jnp.asarray(q_offset), (-1, 1, 1))  # [B|1, T, 1]
        k_pos = jnp.arange(s)[None, None, :]
        if causal:
            parts.append(k_pos <= q_pos)
        if sliding_window is not None:
            parts.append(k_pos > q_pos - sliding_window)
    if key_mask is not None:
        parts.append(key_mask.astype(bool)[:, None, :])
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        parts.append(q_seg[:, :, None] == kv_seg[:, None, :])
    if mask is not None:
        m = mask.astype(bool)
        parts.append(m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m)
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = jnp.logical_and(out, p)
    return out[:, None] if out.ndim == 3 else out  # [B, 1, T, S] or [B, N, T, S]


def xla_attention(q, k, v, *, mask=None, bias=None, scale=None, softcap=None):
    """Reference attention in plain XLA. mask: bool broadcastable to [B, N, T, S]; bias: additive, same shape."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    scale = h**-0.5 if scale is None else scale
    qg = q.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = logits.reshape(b, n, t, -1)  # [B, N, T, S]
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, kh, n // kh, t, -1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    key_mask: jax.Array | None = None,
    segment_ids=None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    impl: Impl = "auto",
) -> jax.Array:
    """Attention over q `[B, T, N, H]`, k/v `[B, S, K, H]` -> `[B, T, N, H]`.

    Args:
      mask: optional dense boolean mask broadcastable to `[B, N, T, S]`, True where attention is allowed.
      bias: optional additive float bias (e.g. relative position bias) broadcastable to `[B, N, T, S]`.
      causal: query i (at key slot `q_offset + i`) sees keys at slots `<= q_offset + i`.
      key_mask: `[B, S]` key padding, True/1 for real tokens.
      segment_ids: `[B, T]` (self-attention) or a pair `([B, T], [B, S])`; attend only within equal ids.
      sliding_window: keep only the last `sliding_window` key slots up to the query's slot.
      scale: softmax scale, default `H ** -0.5`. softcap: Gemma-2 style `c * tanh(logits / c)`.
      impl: "xla" (always available), "cudnn", "pallas", or "auto" (choose per backend and shape).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q [B,T,N,H], k/v [B,S,K,H]; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if impl not in ("auto", "xla", "cudnn", "pallas"):
        raise ValueError(f"unknown attention impl {impl!r}; choose 'auto', 'xla', 'cudnn' or 'pallas'")
    full_mask = make_mask(
        q.shape[1],
        k.shape[1],
        causal=causal,
        q_offset=q_offset,
        key_mask=key_mask,
        segment_ids=segment_ids,
        sliding_window=sliding_window,
        mask=mask,
    )
    return xla_attention(q, k, v, mask=full_mask, bias=bias, scale=scale, softcap=softcap)
