"""Decode attention for GPU (Pallas lowered through Triton): a few new queries against a KV cache, split-K.

Algorithm: Flash-Decoding [1]. All T * G queries that share a kv head are stacked as the rows of one tile (so K/V
are read once per kv head, whatever the GQA ratio); the cache is cut into `num_splits` contiguous chunks processed by
independent programs (grid `(B, K, splits)`), each running the online softmax of FlashAttention over its live blocks
only (blocks past `lengths[b]` or before the sliding window are never read); the per-split outputs and base-2
log-sum-exps are merged in XLA. This keeps the GPU busy when `B * K` is small, the usual case in generation.

Semantics: keys at slots `[0, lengths[b])` are valid. The T new queries occupy the last T valid slots, query `i` at
slot `lengths[b] - T + i`, and attend causally (slots `<= ` their own), optionally restricted by `key_mask [B, S]`
(e.g. left padding) and a sliding window (`slot > q_slot - W`).

[1] T. Dao, D. Haziza, F. Massa, G. Sizov, "Flash-Decoding for long-context inference", PyTorch blog, 2023.
[2] jax/experimental/pallas/ops/gpu/decode_attention.py (jax 0.10.2): the split-K structure.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxformers.kernels import _common
from jaxformers.kernels._common import DEAD_ROW_MAX, MASK_VALUE

LOG2E = math.log2(math.e)
MIN_BLOCK = 16
_NT = (((1,), (1,)), ((), ()))
_NN = (((1,), (0,)), ((), ()))
# Programs aimed at when choosing `num_splits`: four waves of an H100/H200 (132 SMs). Measured with
# scripts/tune_attention.py on an H200 (bf16, N=32, K=8, H=128, S in {4096, 32768}, B in {1, 8}): 1.57x faster
# (geometric mean) than one wave, which leaves each SM one program and too few loads in flight.
_TARGET_PROGRAMS = 4 * 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Cache tile `block_k` (power of two >= 16), number of splits (None: about four waves of SMs' programs)."""

    block_k: int = 64
    num_splits: int | None = None
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def default_for(cls, s: int, h: int, dtype) -> BlockSizes:
        del s
        return cls(block_k=32 if jnp.dtype(dtype).itemsize > 2 or h > 128 else 64)


@dataclasses.dataclass(frozen=True)
class _Config:
    block_k: int
    num_blocks: int
    blocks_per_split: int
    num_splits: int
    t: int
    scale: float
    softcap: float | None
    window: int | None
    num_warps: int
    num_stages: int
    interpret: bool


def _dot(a, b, dims):
    return lax.dot_general(a, b, dims, precision=_common.dot_precision(a.dtype), preferred_element_type=jnp.float32)


def _decode_kernel(*refs, cfg: _Config, has_key_mask: bool):
    """One (batch, kv head, split): online softmax of all query rows over the split's live cache blocks."""
    if has_key_mask:
        len_ref, off_ref, q_ref, k_ref, v_ref, km_ref, o_ref, lse_ref = refs
    else:
        (len_ref, off_ref, q_ref, k_ref, v_ref, o_ref, lse_ref), km_ref = refs, None
    bk, rows = cfg.block_k, q_ref.shape[0]
    split = pl.program_id(2)
    length = len_ref[...]
    q = q_ref[...]  # [R, H]
    q_pos = length + off_ref[...][:, None]  # [R, 1]
    lo = split * cfg.blocks_per_split
    if cfg.window is not None:  # the first query's window starts at slot length - T - W + 1
        lo = jnp.maximum(lo, lax.div(jnp.maximum(length - cfg.t - cfg.window + 1, 0), bk))
    hi = jnp.minimum(jnp.minimum((split + 1) * cfg.blocks_per_split, lax.div(length + bk - 1, bk)), cfg.num_blocks)

    def body(ki, carry):
        acc, m, l = carry
        kv_slice = pl.ds(ki * bk, bk)
        s = _dot(q, k_ref[kv_slice, :], _NT) * cfg.scale  # [R, bk]
        if cfg.softcap is not None:
            s = cfg.softcap * jnp.tanh(s / cfg.softcap)
        k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (rows, bk), 1)
        mask = k_pos <= q_pos
        if cfg.window is not None:
            mask = jnp.logical_and(mask, k_pos > q_pos - cfg.window)
        if has_key_mask:
            mask = jnp.logical_and(mask, km_ref[kv_slice][None, :] != 0)
        s = jnp.where(mask, s * LOG2E, MASK_VALUE)
        m_next = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_next)
        p = jnp.exp2(s - m_next[:, None])
        v = v_ref[kv_slice, :]
        return acc * alpha[:, None] + _dot(p.astype(v.dtype), v, _NN), m_next, l * alpha + jnp.sum(p, axis=1)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    # No live key in this split (no block visited, or masked entries only): output 0 and weight 0 in the merge.
    empty = jnp.logical_or(l == 0.0, m <= DEAD_ROW_MAX)
    inv_l = jnp.where(empty, 0.0, 1.0 / jnp.where(l == 0.0, 1.0, l))
    o_ref[...] = acc * inv_l[:, None]
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))


def _decode_call(lengths, offsets, qr, k, v, key_mask, cfg: _Config):
    """qr `[B, K, R, Hp]`, k/v `[B, Sp, K, Hp]` -> per-split o `[B, K, P, R, Hp]`, base-2 lse `[B, K, P, R]`."""
    b, kh, rows, h = qr.shape
    s_pad, splits = k.shape[1], cfg.num_splits
    kv_spec = pl.BlockSpec((None, s_pad, None, h), lambda bi, kh_, p: (bi, 0, kh_, 0))
    in_specs = [
        pl.BlockSpec((None,), lambda bi, kh_, p: (bi,)),
        pl.BlockSpec((rows,), lambda bi, kh_, p: (0,)),
        pl.BlockSpec((None, None, rows, h), lambda bi, kh_, p: (bi, kh_, 0, 0)),
        kv_spec,
        kv_spec,
    ]
    args = [lengths, offsets, qr, k, v]
    if key_mask is not None:
        in_specs.append(pl.BlockSpec((None, s_pad), lambda bi, kh_, p: (bi, 0)))
        args.append(key_mask)
    return pl.pallas_call(
        functools.partial(_decode_kernel, cfg=cfg, has_key_mask=key_mask is not None),
        out_shape=[
            jax.ShapeDtypeStruct((b, kh, splits, rows, h), jnp.float32),
            jax.ShapeDtypeStruct((b, kh, splits, rows), jnp.float32),
        ],
        grid=(b, kh, splits),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, None, rows, h), lambda bi, kh_, p: (bi, kh_, p, 0, 0)),
            pl.BlockSpec((None, None, None, rows), lambda bi, kh_, p: (bi, kh_, p, 0)),
        ],
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name="jaxformers_decode_gpu",
    )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _decode(q, k, v, lengths, key_mask, cfg: _Config):
    _, t, n, h = q.shape
    kh = k.shape[2]
    rows = max(MIN_BLOCK, 1 << math.ceil(math.log2(t * (n // kh))))
    h_pad = max(MIN_BLOCK, 1 << math.ceil(math.log2(h)))
    s_pad = cfg.block_k * cfg.num_blocks  # a block multiple only: padding copies the whole cache, every step

    def pad(x, length):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, h_pad - h)))

    qr = jnp.pad(_common.decode_rows(q, kh, rows), ((0, 0),) * 3 + ((0, h_pad - h),))  # [B, K, R, Hp]
    offsets = jnp.asarray(_common.decode_row_offsets(t, n // kh, rows))
    if key_mask is not None:
        key_mask = jnp.pad(key_mask.astype(jnp.int32), ((0, 0), (0, s_pad - key_mask.shape[1])))
    o, lse = _decode_call(lengths.astype(jnp.int32), offsets, qr, pad(k, s_pad), pad(v, s_pad), key_mask, cfg)
    return _common.combine_splits(o, lse, t, n, h, base2=True).astype(q.dtype)


def _decode_fwd(q, k, v, lengths, key_mask, cfg: _Config):
    return _decode(q, k, v, lengths, key_mask, cfg), (q, k, v, lengths, key_mask)


def _decode_bwd(cfg: _Config, res, do):
    """Gradients (rarely needed at decode time) from the dense reference: O(T * S) memory, which is small here."""
    q, k, v, lengths, key_mask = res
    ref = functools.partial(
        reference, lengths=lengths, key_mask=key_mask, sliding_window=cfg.window, scale=cfg.scale, softcap=cfg.softcap
    )
    return (*jax.vjp(ref, q, k, v)[1](do), None, None)


_decode.defvjp(_decode_fwd, _decode_bwd)


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Decode attention on GPU; see `jaxformers.kernels.decode_attention` for the contract.

    Args:
      q: `[B, T, N, H]`, T small (1 for plain decoding). k_cache, v_cache: `[B, S, K, H]`.
      lengths: `[B]` int, number of valid cache slots (the new queries' own keys included).
      key_mask: optional `[B, S]`, nonzero where a slot holds a real token. sliding_window, scale, softcap: as flash.
      interpret: run in the Pallas interpreter (CPU). block_sizes: `BlockSizes`; default by shape.
    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    b, t, s, _, kh, h = _common.check_qkv(q, k_cache, v_cache)
    bs = block_sizes or BlockSizes.default_for(s, h, q.dtype)
    block_k = min(bs.block_k, max(MIN_BLOCK, 1 << math.ceil(math.log2(s))))
    n_blocks = _common.cdiv(s, block_k)
    splits = bs.num_splits or max(1, min(n_blocks, _common.cdiv(_TARGET_PROGRAMS, b * kh)))
    per_split = _common.cdiv(n_blocks, splits)
    splits = _common.cdiv(n_blocks, per_split)
    scale = h**-0.5 if scale is None else float(scale)
    cfg = _Config(
        block_k, n_blocks, per_split, splits, t, scale, softcap, sliding_window, bs.num_warps, bs.num_stages,
        bool(interpret),
    )
    return _decode(q, k_cache, v_cache, lengths, key_mask, cfg)


def reference(q, k_cache, v_cache, lengths, *, key_mask=None, sliding_window=None, scale=None, softcap=None):
    """Pure-JAX dense reference with this kernel's semantics (float32 math)."""
    return _common.decode_reference(
        q, k_cache, v_cache, lengths, key_mask=key_mask, sliding_window=sliding_window, scale=scale, softcap=softcap
    )
