"""Pieces shared by the attention kernels of every backend: mask geometry, padding, argument checks, references.

The mask semantics are those of `jaxformers.core.attention.make_mask` with the query offset fixed at zero: query `i`
and key `j` are positions in their own sequences, `causal` keeps `j <= i`, `sliding_window=W` keeps `j > i - W`, and
segment ids keep `q_ids[i] == kv_ids[j]`. Kernels pad sequences to block multiples; keys at positions `>= kv_len`
(the real key length) are padding and always masked.

Masked logits are replaced by the large finite `MASK_VALUE` rather than `-inf` (as the XLA path does), so a query
row whose keys are all masked gets finite outputs and finite gradients. Which value it gets (an average of the values
the kernel visited) is not specified: callers must not rely on fully masked rows. The decode kernels, whose split
merge needs empty splits to weigh nothing, define such rows as zeros (forward and gradient), as `decode_reference`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# A running row max at or below this saw masked entries only (real logits are never this negative).
DEAD_ROW_MAX = 0.5 * MASK_VALUE


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def _div(a, b: int):
    """Floor division of a non-negative int (Python or traced scalar) by a static positive int."""
    return a // b if isinstance(a, int) else lax.div(a, jnp.int32(b))


def _cdiv(a, b: int):
    return _div(a + b - 1, b)


def _max(a, b):
    return max(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.maximum(a, b)


def _min(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.minimum(a, b)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static mask structure over blocked, padded sequences: which (q block, kv block) pairs can hold a live entry.

    Only the position structure (causal, sliding window, key padding) decides block liveness; segment ids are data
    and are applied inside live blocks. The two ranges are exact inverses of each other: kv block `ki` is in
    `kv_range(qi)` iff q block `qi` is in `q_range(ki)`, so forward and backward visit the same block pairs.
    """

    causal: bool
    window: int | None
    kv_len: int
    block_q: int
    block_k: int
    num_q_blocks: int
    num_kv_blocks: int

    def kv_range(self, qi):
        """Half-open range `[lo, hi)` of kv blocks that q block `qi` (int or traced) must visit."""
        lo, hi = 0, self.num_kv_blocks
        if self.window is not None:
            lo = _div(_max(qi * self.block_q - self.window + 1, 0), self.block_k)
        if self.causal:
            hi = _min(_div(qi * self.block_q + self.block_q - 1, self.block_k) + 1, hi)
        return lo, hi

    def q_range(self, ki):
        """Half-open range `[lo, hi)` of q blocks that visit kv block `ki` (int or traced)."""
        lo, hi = 0, self.num_q_blocks
        if self.causal:
            lo = _div(ki * self.block_k, self.block_q)
        if self.window is not None:
            hi = _min(_div(ki * self.block_k + self.block_k + self.window - 2, self.block_q) + 1, hi)
        return lo, hi

    def kv_full_range(self, qi, has_ids: bool):
        """Sub-range `[lo, hi)` of `kv_range(qi)` whose blocks are entirely unmasked, so mask code can be skipped."""
        lo, hi = self.kv_range(qi)
        if has_ids:
            return hi, hi
        f_lo, f_hi = lo, hi
        if self.window is not None:  # first key of the block inside the window of the last query
            f_lo = _cdiv(_max(qi * self.block_q + self.block_q - self.window, 0), self.block_k)
        if self.causal:  # last key of the block at or before the first query
            f_hi = _div(qi * self.block_q + 1, self.block_k)
        if self.padded:
            f_hi = _min(f_hi, self.kv_len // self.block_k)
        f_lo = _min(_max(f_lo, lo), hi)
        return f_lo, _max(_min(f_hi, hi), f_lo)

    def q_full_range(self, ki, has_ids: bool):
        """Sub-range `[lo, hi)` of `q_range(ki)` whose blocks are entirely unmasked."""
        lo, hi = self.q_range(ki)
        if has_ids:
            return hi, hi
        f_lo, f_hi = lo, hi
        if self.causal:  # first query of the block at or after the last key
            f_lo = _cdiv(ki * self.block_k + self.block_k - 1, self.block_q)
        if self.window is not None:  # last query of the block still sees the first key
            f_hi = _div(_max(ki * self.block_k + self.window, 0), self.block_q)
        f_lo = _min(_max(f_lo, lo), hi)
        f_hi = _max(_min(f_hi, hi), f_lo)
        if self.padded:  # a kv block holding padding is never fully unmasked (integer select: Triton-friendly)
            f_hi = f_lo + (f_hi - f_lo) * _min(_max(self.kv_len // self.block_k - ki, 0), 1)
        return f_lo, f_hi

    @property
    def padded(self) -> bool:
        return self.kv_len < self.block_k * self.num_kv_blocks

    @property
    def kv_steps(self) -> int:
        """Largest number of kv blocks any q block visits: the static extent of a kv grid axis or loop."""
        return max(1, max(_span(*self.kv_range(i)) for i in range(self.num_q_blocks)))

    @property
    def q_steps(self) -> int:
        """Largest number of q blocks visiting any kv block."""
        return max(1, max(_span(*self.q_range(j)) for j in range(self.num_kv_blocks)))

    def mask(self, q_pos, k_pos, q_ids=None, kv_ids=None):
        """Boolean keep-mask from broadcastable positions (and optional segment ids); None if nothing is masked."""
        parts = []
        if self.padded:
            parts.append(k_pos < self.kv_len)
        if self.causal:
            parts.append(k_pos <= q_pos)
        if self.window is not None:
            parts.append(k_pos > q_pos - self.window)
        if q_ids is not None:
            parts.append(q_ids == kv_ids)
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = jnp.logical_and(out, p)
        return out


def _span(lo: int, hi: int) -> int:
    return max(hi - lo, 0)


def padded_length(n: int, blocks: tuple[int, ...], align: int, pow2: bool = False) -> tuple[int, tuple[int, ...]]:
    """Length `n` padded so that every block divides it, and the blocks clamped to it.

    Blocks are powers of two. If `n` rounded up to `align` (to a power of two when `pow2`, as Triton needs) fits in
    the smallest block, the sequence is a single block of that length; otherwise it is padded to a multiple of the
    largest block that is still useful.
    """
    n_al = max(align, 1 << math.ceil(math.log2(n))) if pow2 else round_up(n, align)
    if n_al <= min(blocks):
        return n_al, tuple(n_al for _ in blocks)
    clamped = tuple(min(b, 1 << math.ceil(math.log2(n_al))) for b in blocks)
    return round_up(n, max(clamped)), clamped


def normalize_segment_ids(segment_ids, t: int, s: int):
    """`None`, one `[B, T]` array (T == S) or a `(q [B, T], kv [B, S])` pair -> `None` or an int32 pair."""
    if segment_ids is None:
        return None
    if isinstance(segment_ids, (tuple, list)):
        q_ids, kv_ids = segment_ids
    else:
        if t != s:
            raise ValueError(f"a single segment_ids array needs T == S (self-attention); got T={t}, S={s}")
        q_ids = kv_ids = segment_ids
    if q_ids.shape[-1] != t or kv_ids.shape[-1] != s:
        raise ValueError(f"segment ids must be [B, T={t}] and [B, S={s}]; got {q_ids.shape}, {kv_ids.shape}")
    return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)


def check_qkv(q, k, v):
    """Validate `q [B, T, N, H]`, `k/v [B, S, K, H]`; return `(B, T, S, N, K, H)`."""
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"expected q [B,T,N,H] and k, v [B,S,K,H]; got {q.shape}, {k.shape}, {v.shape}")
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.shape[0] != b or k.shape[3] != h or n % kh:
        raise ValueError(f"incompatible q {q.shape} and k/v {k.shape} (N must be a multiple of K)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    return b, t, s, n, kh, h


def dot_precision(dtype):
    """Full float32 matmuls for float32 inputs (no TF32 / bf16 passes); native MXU/tensor-core inputs otherwise."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def soft_cap(logits, softcap: float | None):
    """Gemma-2 logit soft-capping `c * tanh(x / c)`; identity without a cap."""
    return logits if softcap is None else softcap * jnp.tanh(logits / softcap)


def attention_reference(q, k, v, *, causal=False, segment_ids=None, sliding_window=None, scale=None, softcap=None):
    """Dense O(T*S) attention with the kernels' exact semantics, computed in float32 from the given inputs."""
    b, t, s, n, kh, h = check_qkv(q, k, v)
    scale = h**-0.5 if scale is None else scale
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    qg = qf.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, kf, precision=lax.Precision.HIGHEST) * scale
    logits = soft_cap(logits, softcap)
    geom = Geometry(causal, sliding_window, s, 1, 1, t, s)
    ids = normalize_segment_ids(segment_ids, t, s)
    q_ids, kv_ids = (None, None) if ids is None else (ids[0][:, :, None], ids[1][:, None, :])
    mask = geom.mask(jnp.arange(t)[:, None], jnp.arange(s)[None, :], q_ids, kv_ids)  # [B|1, T, S]
    if mask is not None:
        logits = jnp.where(jnp.broadcast_to(mask, (b, t, s))[:, None, None], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, vf, precision=lax.Precision.HIGHEST)
    return out.reshape(b, t, n, h).astype(q.dtype)


def decode_rows(q, kv_heads: int, rows: int):
    """q `[B, T, N, H]` -> `[B, K, rows, H]`: the T * G queries sharing a kv head as rows (`r = t * G + g`)."""
    b, t, n, h = q.shape
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 1, 3, 4)  # [B, K, T, G, H]
    qr = qg.reshape(b, kv_heads, t * (n // kv_heads), h)
    return jnp.pad(qr, ((0, 0), (0, 0), (0, rows - qr.shape[2]), (0, 0)))


def decode_row_offsets(t: int, groups: int, rows: int) -> np.ndarray:
    """`[rows]` int32: slot of row r's query relative to `lengths`, i.e. `t_r - T` (padding rows copy the last)."""
    t_of_row = np.minimum(np.arange(rows) // groups, t - 1)
    return (t_of_row - t).astype(np.int32)


def combine_splits(o, lse, t: int, n: int, h: int, base2: bool):
    """Merge split-K partial results: o `[B, K, P, R, H']` (each normalised), lse `[B, K, P, R]` -> `[B, T, N, H]`.

    Splits that saw no live key have `lse = -inf` and weight zero; a row with no live key at all gives zeros.
    """
    b, kh = o.shape[:2]
    m = jnp.max(lse, axis=2, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp2(lse - m) if base2 else jnp.exp(lse - m)  # [B, K, P, R]
    total = jnp.sum(w, axis=2)
    out = jnp.einsum("BKPR,BKPRH->BKRH", w, o) / jnp.where(total == 0.0, 1.0, total)[..., None]
    out = out[:, :, : t * (n // kh), :h].reshape(b, kh, t, n // kh, h).transpose(0, 2, 1, 3, 4)  # [B, T, K, G, H]
    return out.reshape(b, t, n, h)


def decode_positions(lengths, t: int):
    """Key slot of each of the `t` new queries: the last `t` valid slots, `lengths[b] - t + i`. -> `[B, T]`."""
    return lengths.astype(jnp.int32)[:, None] - t + jnp.arange(t, dtype=jnp.int32)[None, :]


def decode_mask(lengths, t: int, s: int, key_mask=None, sliding_window=None):
    """`[B, T, S]` keep-mask of decode attention: query `i` at slot `lengths - T + i` sees slots `<=` its own,
    optionally restricted by `key_mask [B, S]` and a sliding window."""
    q_pos = decode_positions(lengths, t)[:, :, None]  # [B, T, 1]
    k_pos = jnp.arange(s)[None, None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    if key_mask is not None:
        mask &= key_mask.astype(bool)[:, None, :]
    return mask


def decode_reference(q, k_cache, v_cache, lengths, *, key_mask=None, sliding_window=None, scale=None, softcap=None):
    """Dense float32 reference for decode attention (mask: `decode_mask`); rows with no visible key are zero."""
    b, t, s, n, kh, h = check_qkv(q, k_cache, v_cache)
    scale = h**-0.5 if scale is None else scale
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k_cache, v_cache))
    qg = qf.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, kf, precision=lax.Precision.HIGHEST) * scale
    logits = soft_cap(logits, softcap)
    mask = decode_mask(lengths, t, s, key_mask, sliding_window)  # [B, T, S]
    logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, vf, precision=lax.Precision.HIGHEST)
    live = jnp.any(mask, axis=-1)[:, :, None, None, None]  # [B, T, 1, 1, 1]
    return jnp.where(live, out, 0.0).reshape(b, t, n, h).astype(q.dtype)
