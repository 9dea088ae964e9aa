"""Decode attention for TPU (Pallas + Mosaic): a few new queries against a KV cache with per-row valid lengths.

Algorithm: Flash-Decoding [1] in TPU form. All T * G queries sharing a kv head are the rows of one VMEM tile, so K/V
are streamed once per kv head whatever the GQA ratio. The grid is `(B, K, splits, blocks per split)`; the lengths
are scalar-prefetched into SMEM so that the kv index maps clamp to the live blocks of each row (blocks past
`lengths[b]` or before the sliding window are never copied from HBM) and dead steps are skipped with `pl.when`.
Running max/sum live in lane-replicated `[R, 128]` scratch as in jax's TPU flash attention [2]. Split results are
merged in XLA; one split (the default) suits TPUs, whose grid runs sequentially per core.

Semantics are those of `decode_attention_gpu` (keys at slots `[0, lengths[b])` are valid; query `i` sits at slot
`lengths[b] - T + i`; optional `key_mask [B, S]` and sliding window). With H a multiple of 128 the cache is read
in place through a free `[B, S, K * H]` view; other head sizes need a head-major copy of the cache per call.

[1] T. Dao, D. Haziza, F. Massa, G. Sizov, "Flash-Decoding for long-context inference", PyTorch blog, 2023.
[2] jax/experimental/pallas/ops/tpu/flash_attention.py (jax 0.10.2).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxformers.kernels import _common
from jaxformers.kernels._common import DEAD_ROW_MAX, MASK_VALUE

NUM_LANES = 128
NUM_SUBLANES = 8
_NT = (((1,), (1,)), ((), ()))
_NN = (((1,), (0,)), ((), ()))


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Cache tile `block_k` (a multiple of 128) and the number of split-K chunks."""

    block_k: int = 512
    num_splits: int = 1

    def __post_init__(self):
        if self.block_k % NUM_LANES:
            raise ValueError(f"TPU decode block_k={self.block_k} must be a multiple of {NUM_LANES}")

    @classmethod
    def default_for(cls, s: int, h: int, dtype) -> BlockSizes:
        del h, dtype
        return cls(block_k=min(512, _common.round_up(s, NUM_LANES)))


@dataclasses.dataclass(frozen=True)
class _Config:
    block_k: int
    blocks_per_split: int
    num_splits: int
    t: int
    head_dim: int
    merged: bool
    scale: float
    softcap: float | None
    window: int | None
    interpret: Any


def _live_blocks(length, split, cfg: _Config):
    """Half-open range of cache blocks that split `split` must read for a row with `length` valid slots."""
    lo = split * cfg.blocks_per_split
    if cfg.window is not None:
        lo = jnp.maximum(lo, lax.div(jnp.maximum(length - cfg.t - cfg.window + 1, 0), cfg.block_k))
    hi = jnp.minimum((split + 1) * cfg.blocks_per_split, lax.div(length + cfg.block_k - 1, cfg.block_k))
    return lo, hi


def _dot(a, b, dims):
    return lax.dot_general(a, b, dims, precision=_common.dot_precision(a.dtype), preferred_element_type=jnp.float32)


def _lanes(x, width: int):
    if width <= NUM_LANES:
        return x[:, :width]
    return jnp.tile(x, (1, _common.cdiv(width, NUM_LANES)))[:, :width]


def _decode_kernel(*refs, cfg: _Config, has_key_mask: bool):
    """One (batch, kv head, split, block step) of the online softmax over the cache."""
    if has_key_mask:
        len_ref, off_ref, q_ref, k_ref, v_ref, km_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    else:
        (len_ref, off_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr), km_ref = refs, None
    bi, split, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    bk, rows, h = cfg.block_k, q_ref.shape[0], cfg.head_dim
    length = len_ref[bi]
    lo, hi = _live_blocks(length, split, cfg)
    ki = split * cfg.blocks_per_split + j

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(jnp.logical_and(ki >= lo, ki < hi))
    def _step():
        s = _dot(q_ref[...], k_ref[...], _NT) * cfg.scale  # [R, bk]
        if cfg.softcap is not None:
            s = cfg.softcap * jnp.tanh(s / cfg.softcap)
        q_pos = length + _lanes(off_ref[...], bk)
        k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (rows, bk), 1)
        mask = k_pos <= q_pos
        if cfg.window is not None:
            mask = jnp.logical_and(mask, k_pos > q_pos - cfg.window)
        if has_key_mask:
            mask = jnp.logical_and(mask, km_ref[:1, :] != 0)
        s = jnp.where(mask, s, MASK_VALUE)
        m_prev, l_prev = m_scr[...], l_scr[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - _lanes(m_next, bk))
        alpha = jnp.exp(m_prev - m_next)
        m_scr[...] = m_next
        l_scr[...] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
        v = v_ref[...]
        acc_scr[...] = acc_scr[...] * _lanes(alpha, h) + _dot(p.astype(v.dtype), v, _NN)

    @pl.when(j == cfg.blocks_per_split - 1)
    def _finish():
        l, m = l_scr[...], m_scr[...]
        # No live key in this split (no block visited, or masked entries only): output 0 and weight 0 in the merge.
        empty = jnp.logical_or(l == 0.0, m <= DEAD_ROW_MAX)
        inv_l = jnp.where(empty, 0.0, 1.0 / jnp.where(l == 0.0, 1.0, l))
        o_ref[...] = acc_scr[...] * _lanes(inv_l, h)
        lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _decode_call(lengths, offsets, qr, k, v, key_mask, cfg: _Config):
    """qr `[B, K, R, H]`, cache in kernel layout -> per-split o `[B, K, P, R, H]`, lse `[B, K, P, R]` (float32)."""
    b, kh, rows, h = qr.shape
    splits, bk = cfg.num_splits, cfg.block_k

    def block(bi, split, j, len_ref):  # clamped to the live range: dead steps keep the resident block
        lo, hi = _live_blocks(len_ref[bi], split, cfg)
        return jnp.maximum(jnp.minimum(jnp.maximum(split * cfg.blocks_per_split + j, lo), hi - 1), 0)

    if cfg.merged:
        kv_spec = pl.BlockSpec((None, bk, h), lambda bi, kh_, p, j, lens: (bi, block(bi, p, j, lens), kh_))
    else:
        kv_spec = pl.BlockSpec((None, None, bk, h), lambda bi, kh_, p, j, lens: (bi, kh_, block(bi, p, j, lens), 0))
    in_specs = [
        pl.BlockSpec((rows, NUM_LANES), lambda bi, kh_, p, j, lens: (0, 0)),
        pl.BlockSpec((None, None, rows, h), lambda bi, kh_, p, j, lens: (bi, kh_, 0, 0)),
        kv_spec,
        kv_spec,
    ]
    args = [jnp.broadcast_to(offsets[:, None], (rows, NUM_LANES)), qr, k, v]
    if key_mask is not None:
        in_specs.append(
            pl.BlockSpec((None, NUM_SUBLANES, bk), lambda bi, kh_, p, j, lens: (bi, 0, block(bi, p, j, lens)))
        )
        args.append(jnp.broadcast_to(key_mask[:, None, :], (b, NUM_SUBLANES, key_mask.shape[1])))
    o, lse = pl.pallas_call(
        functools.partial(_decode_kernel, cfg=cfg, has_key_mask=key_mask is not None),
        out_shape=[
            jax.ShapeDtypeStruct((b, kh, splits, rows, h), jnp.float32),
            jax.ShapeDtypeStruct((b, kh, splits, rows, NUM_LANES), jnp.float32),
        ],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, kh, splits, cfg.blocks_per_split),
            in_specs=in_specs,
            out_specs=[
                pl.BlockSpec((None, None, None, rows, h), lambda bi, kh_, p, j, lens: (bi, kh_, p, 0, 0)),
                pl.BlockSpec((None, None, None, rows, NUM_LANES), lambda bi, kh_, p, j, lens: (bi, kh_, p, 0, 0)),
            ],
            scratch_shapes=[pltpu.VMEM((rows, NUM_LANES), jnp.float32)] * 2 + [pltpu.VMEM((rows, h), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="jaxformers_decode_tpu",
    )(lengths, *args)
    return o, lse[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _decode(q, k, v, lengths, key_mask, cfg: _Config):
    b, t, n, h = q.shape
    kh = k.shape[2]
    rows = _common.round_up(t * (n // kh), NUM_SUBLANES)
    s_pad = cfg.block_k * cfg.blocks_per_split * cfg.num_splits
    qr = _common.decode_rows(q, kh, rows)  # [B, K, R, H]
    offsets = jnp.asarray(_common.decode_row_offsets(t, n // kh, rows))

    def layout(x):  # [B, Sp, K * H] view when H is lane-aligned, else a head-major [B, K, Sp, H] copy
        x = jnp.pad(x, ((0, 0), (0, s_pad - x.shape[1]), (0, 0), (0, 0)))
        return x.reshape(b, s_pad, kh * h) if cfg.merged else x.transpose(0, 2, 1, 3)

    if key_mask is not None:
        key_mask = jnp.pad(key_mask.astype(jnp.int32), ((0, 0), (0, s_pad - key_mask.shape[1])))
    o, lse = _decode_call(lengths.astype(jnp.int32), offsets, qr, layout(k), layout(v), key_mask, cfg)
    return _common.combine_splits(o, lse, t, n, h, base2=False).astype(q.dtype)


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
    interpret: Any = False,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Decode attention on TPU; see `jaxformers.kernels.decode_attention` for the contract.

    Args:
      q: `[B, T, N, H]`, T small. k_cache, v_cache: `[B, S, K, H]`. lengths: `[B]` valid slots per row. float32
        or bfloat16 (float16 is computed in float32: TPUs have no float16 vector unit).
      key_mask: optional `[B, S]`, nonzero for real tokens. sliding_window, scale, softcap: as flash attention.
      interpret: True runs the TPU interpreter (`pltpu.InterpretParams()`) on CPU. block_sizes: `BlockSizes`.
    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    _, t, s, _, _, h = _common.check_qkv(q, k_cache, v_cache)
    if q.dtype == jnp.float16:  # Mosaic has no float16 vectors on TPU (v5e rejects the loads): compute in float32
        opts = {"key_mask": key_mask, "sliding_window": sliding_window, "scale": scale, "softcap": softcap}
        wide = (x.astype(jnp.float32) for x in (q, k_cache, v_cache))
        return decode_attention(*wide, lengths, interpret=interpret, block_sizes=block_sizes, **opts).astype(q.dtype)
    bs = block_sizes or BlockSizes.default_for(s, h, q.dtype)
    block_k = min(bs.block_k, _common.round_up(s, NUM_LANES))
    n_blocks = _common.cdiv(s, block_k)
    per_split = _common.cdiv(n_blocks, min(bs.num_splits, n_blocks))
    splits = _common.cdiv(n_blocks, per_split)
    scale = h**-0.5 if scale is None else float(scale)
    interpret = pltpu.InterpretParams() if interpret is True else interpret
    merged = h % NUM_LANES == 0
    cfg = _Config(block_k, per_split, splits, t, h, merged, scale, softcap, sliding_window, interpret)
    return _decode(q, k_cache, v_cache, lengths, key_mask, cfg)


def reference(q, k_cache, v_cache, lengths, *, key_mask=None, sliding_window=None, scale=None, softcap=None):
    """Pure-JAX dense reference with this kernel's semantics (float32 math)."""
    return _common.decode_reference(
        q, k_cache, v_cache, lengths, key_mask=key_mask, sliding_window=sliding_window, scale=scale, softcap=softcap
    )
