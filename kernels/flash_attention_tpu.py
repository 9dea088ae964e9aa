"""Flash attention for TPU (Pallas + Mosaic): forward and backward kernels with O(T) memory.

Algorithm: FlashAttention-2 [1]. In the forward pass (algorithm 1) the grid runs over (batch, query head, q block) in
parallel and over kv blocks sequentially; a running row max `m`, row sum `l` and an unnormalised float32 accumulator
live in VMEM scratch and are rescaled as each kv block arrives; the log-sum-exp `lse = m + log l` is saved. The
backward pass (algorithm 2) recomputes probabilities `p = exp(s - lse)` block by block in two kernels: dQ (grid over
q blocks, kv blocks sequential) and dK/dV (grid over kv blocks, then query heads of the group and q blocks
sequential, in the transposed orientation `s^T = k q^T` so that both products are plain matmuls), with
`delta = rowsum(dO * O)` precomputed.

Layout and TPU specifics, following jax's TPU kernels [2, 3]: q/k/v are transposed to head-major `[B, N, T, H]`
inside (the public boundary is the model's `[B, T, N, H]`); running max/sum and lse are lane-replicated
`[block, 128]` tiles (or sublane-replicated `[8, block]` rows in the transposed kernel) so no relayout is needed;
segment ids are broadcast the same way. Blocks along the key axis are multiples of 128 (lanes).

What differs from upstream: GQA/MQA through the kv index map (`head // G`; K/V are never repeated, and dK/dV sum the
G query heads inside the kernel); the kv (resp. q) grid axis only spans the blocks that can be live for some q (resp.
kv) block, so a sliding window costs O(T * W) and causal skips the upper triangle, with index maps clamped so dead
steps fetch nothing new; Gemma-2 logit soft-capping; any sequence length (padding to block multiples, padded keys
masked); float32 inputs use full-precision matmuls.

[1] T. Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", arXiv:2307.08691.
[2] jax/experimental/pallas/ops/tpu/flash_attention.py (jax 0.10.2).
[3] jax/experimental/pallas/ops/tpu/splash_attention/splash_attention_kernel.py (jax 0.10.2).
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
from jaxformers.kernels._common import MASK_VALUE, Geometry

NUM_LANES = 128
NUM_SUBLANES = 8
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two, multiples of 128): forward `block_q x block_k`, both backward kernels
    `block_q_bwd x block_k_bwd`. They change speed, not numerics."""

    block_q: int = 512
    block_k: int = 512
    block_q_bwd: int = 256
    block_k_bwd: int = 256

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if value < NUM_LANES or value & (value - 1):
                raise ValueError(f"TPU {name}={value} must be a power of two >= {NUM_LANES}")

    @classmethod
    def default_for(cls, t: int, s: int, h: int, dtype) -> BlockSizes:
        """Defaults by shape: 512-wide forward tiles (MaxText's choice on v4/v5), smaller for float32 or wide heads."""
        del t, s
        wide = jnp.dtype(dtype).itemsize > 2 or h > 128
        return cls(256, 256, 256, 256) if wide else cls()


@dataclasses.dataclass(frozen=True)
class _Config:
    fwd: Geometry
    bwd: Geometry
    heads: int
    kv_heads: int
    head_dim: int
    merged: bool  # heads merged into the last axis (`[B, L, heads * H]`, a free view) rather than head-major
    scale: float
    softcap: float | None
    interpret: Any

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


def _seq_spec(cfg: _Config, rows: int, h: int, index_map):
    """BlockSpec of one `[rows, H]` tile; `index_map(*grid) -> (batch, head, block)`.

    With H a multiple of 128 the kernels read `[B, L, heads * H]` views (no transpose: the tile's last two dims are
    `(rows, H)`, legal for Mosaic); otherwise they read head-major `[B, heads, L, H]` copies.
    """

    def merged(*grid):
        b, n, i = index_map(*grid)
        return b, i, n

    def head_major(*grid):
        b, n, i = index_map(*grid)
        return b, n, i, 0

    if cfg.merged:
        return pl.BlockSpec((None, rows, h), merged)
    return pl.BlockSpec((None, None, rows, h), head_major)


def _to_kernel_layout(x, merged: bool):
    b, length, heads, h = x.shape
    return x.reshape(b, length, heads * h) if merged else x.transpose(0, 2, 1, 3)


def _from_kernel_layout(x, merged: bool, h: int):
    if merged:
        return x.reshape(*x.shape[:2], -1, h)
    return x.transpose(0, 2, 1, 3)


def _lanes(x, width: int):
    """A lane-replicated `[rows, 128]` tile widened (or narrowed) to `[rows, width]`."""
    if width <= NUM_LANES:
        return x[:, :width]
    return jnp.tile(x, (1, _common.cdiv(width, NUM_LANES)))[:, :width]


def _dot(a, b, dims):
    return lax.dot_general(a, b, dims, precision=_common.dot_precision(a.dtype), preferred_element_type=jnp.float32)


def _capped(s, softcap):
    """Soft-capped logits and the factor `d capped / d s` (None without a cap)."""
    if softcap is None:
        return s, None
    t = jnp.tanh(s / softcap)
    return softcap * t, 1.0 - t * t


def _fwd_kernel(*refs, cfg: _Config, has_ids: bool):
    """One (batch, head, q block, kv step) of FlashAttention-2 algorithm 1."""
    if has_ids:
        q_ref, k_ref, v_ref, qid_ref, kvid_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    else:
        (q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr), qid_ref, kvid_ref = refs, None, None
    geom = cfg.fwd
    bq, bk, h = geom.block_q, geom.block_k, q_ref.shape[-1]
    i, j = pl.program_id(2), pl.program_id(3)
    lo, hi = geom.kv_range(i)
    ki = lo + j

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(ki < hi)
    def _step():
        s, _ = _capped(_dot(q_ref[...], k_ref[...], _NT) * cfg.scale, cfg.softcap)  # [bq, bk]
        q_pos = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        ids = (_lanes(qid_ref[...], bk), kvid_ref[:1, :]) if has_ids else (None, None)
        mask = geom.mask(q_pos, k_pos, *ids)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        m_prev, l_prev = m_scr[...], l_scr[...]  # [bq, 128] each, lane-replicated
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - _lanes(m_next, bk))  # [bq, bk]
        alpha = jnp.exp(m_prev - m_next)
        m_scr[...] = m_next
        l_scr[...] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
        v = v_ref[...]
        acc_scr[...] = acc_scr[...] * _lanes(alpha, h) + _dot(p.astype(v.dtype), v, _NN)

    @pl.when(j == geom.kv_steps - 1)
    def _finish():
        l = l_scr[...]
        l_safe = jnp.where(l == 0.0, 1.0, l)  # a q block with no live kv block (only possible with a window)
        o_ref[...] = (acc_scr[...] * _lanes(1.0 / l_safe, h)).astype(o_ref.dtype)
        lse_ref[...] = m_scr[...] + jnp.log(l_safe)


def _dq_kernel(*refs, cfg: _Config, has_ids: bool):
    """dQ for one (batch, head, q block), kv blocks sequential: dQ = scale * sum_j dS_ij K_j."""
    if has_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, dq_ref, dq_scr = refs
    else:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_scr), qid_ref, kvid_ref = refs, None, None
    geom = cfg.bwd
    bq, bk = geom.block_q, geom.block_k
    i, j = pl.program_id(2), pl.program_id(3)
    lo, hi = geom.kv_range(i)
    ki = lo + j

    @pl.when(j == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

    @pl.when(ki < hi)
    def _step():
        k, v = k_ref[...], v_ref[...]
        s, dcap = _capped(_dot(q_ref[...], k, _NT) * cfg.scale, cfg.softcap)  # [bq, bk]
        q_pos = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        ids = (_lanes(qid_ref[...], bk), kvid_ref[:1, :]) if has_ids else (None, None)
        mask = geom.mask(q_pos, k_pos, *ids)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        p = jnp.exp(s - _lanes(lse_ref[...], bk))
        dp = _dot(do_ref[...], v, _NT)  # [bq, bk]
        ds = p * (dp - _lanes(delta_ref[...], bk))
        if dcap is not None:
            ds = ds * dcap
        if mask is not None:
            ds = jnp.where(mask, ds, 0.0)
        dq_scr[...] += _dot(ds.astype(k.dtype), k, _NN)

    @pl.when(j == geom.kv_steps - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: _Config, has_ids: bool):
    """dK, dV for one (batch, kv head, kv block); the G query heads and the q blocks run sequentially.

    Transposed orientation (keys on sublanes, queries on lanes): dV = P^T dO and dK = scale * dS^T Q are plain
    matmuls, and lse/delta/q ids arrive as sublane-replicated rows.
    """
    if has_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
        qid_ref = kvid_ref = None
    geom = cfg.bwd
    bq, bk = geom.block_q, geom.block_k
    ki, g, j = pl.program_id(2), pl.program_id(3), pl.program_id(4)
    lo, hi = geom.q_range(ki)
    qi = lo + j

    @pl.when(jnp.logical_and(g == 0, j == 0))
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    @pl.when(qi < hi)
    def _step():
        q, do = q_ref[...], do_ref[...]
        st, dcap = _capped(_dot(k_ref[...], q, _NT) * cfg.scale, cfg.softcap)  # [bk, bq]
        k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
        q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
        ids = (qid_ref[:1, :], _lanes(kvid_ref[...], bq)) if has_ids else (None, None)
        mask = geom.mask(q_pos, k_pos, *ids)
        if mask is not None:
            st = jnp.where(mask, st, MASK_VALUE)
        pt = jnp.exp(st - lse_ref[:1, :])  # [bk, bq]
        dv_scr[...] += _dot(pt.astype(do.dtype), do, _NN)
        dpt = _dot(v_ref[...], do, _NT)  # [bk, bq]
        dst = pt * (dpt - delta_ref[:1, :])
        if dcap is not None:
            dst = dst * dcap
        if mask is not None:
            dst = jnp.where(mask, dst, 0.0)
        dk_scr[...] += _dot(dst.astype(q.dtype), q, _NN)

    @pl.when(jnp.logical_and(g == cfg.groups - 1, j == geom.q_steps - 1))
    def _finish():
        dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _compiler_params(n_parallel: int, n_arbitrary: int):
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * n_parallel + ("arbitrary",) * n_arbitrary)


def _cost(cfg: _Config, geom: Geometry, h: int, n_matmuls: int, *arrays):
    live = sum(max(hi - lo, 0) for lo, hi in map(geom.kv_range, range(geom.num_q_blocks)))
    entries = arrays[0].shape[0] * cfg.heads * live * geom.block_q * geom.block_k
    nbytes = sum(x.size * x.dtype.itemsize for x in arrays)
    return pl.CostEstimate(flops=2 * n_matmuls * entries * h, transcendentals=entries, bytes_accessed=nbytes)


def _fwd_call(q, k, v, ids, cfg: _Config):
    """q, k, v in kernel layout -> out (kernel layout), lse `[B, N, Tp]` (float32)."""
    b, n, h = q.shape[0], cfg.heads, cfg.head_dim
    geom, groups = cfg.fwd, cfg.groups
    bq, bk = geom.block_q, geom.block_k

    def kv_block(i, j):  # clamped to the live range: dead steps keep the resident block, so no DMA is issued
        lo, hi = geom.kv_range(i)
        return jnp.minimum(lo + j, hi - 1)

    q_spec = _seq_spec(cfg, bq, h, lambda bi, ni, i, j: (bi, ni, i))
    kv_spec = _seq_spec(cfg, bk, h, lambda bi, ni, i, j: (bi, lax.div(ni, groups), kv_block(i, j)))
    in_specs, args = [q_spec, kv_spec, kv_spec], [q, k, v]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, bq, NUM_LANES), lambda bi, ni, i, j: (bi, i, 0)),
            pl.BlockSpec((None, NUM_SUBLANES, bk), lambda bi, ni, i, j: (bi, 0, kv_block(i, j))),
        ]
        args += [_ids_lanes(ids[0]), _ids_sublanes(ids[1])]
    t_pad = geom.block_q * geom.num_q_blocks
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t_pad, NUM_LANES), jnp.float32)],
        grid=(b, n, geom.num_q_blocks, geom.kv_steps),
        in_specs=in_specs,
        out_specs=[q_spec, pl.BlockSpec((None, None, bq, NUM_LANES), lambda bi, ni, i, j: (bi, ni, i, 0))],
        scratch_shapes=[pltpu.VMEM((bq, NUM_LANES), jnp.float32)] * 2 + [pltpu.VMEM((bq, h), jnp.float32)],
        compiler_params=_compiler_params(3, 1),
        cost_estimate=_cost(cfg, geom, h, 2, q, k, v, q),
        interpret=cfg.interpret,
        name="jaxformers_flash_fwd_tpu",
    )(*args)
    return out, lse[..., 0]


def _dq_call(q, k, v, do, lse, delta, ids, cfg: _Config):
    b, n, h = q.shape[0], cfg.heads, cfg.head_dim
    geom, groups = cfg.bwd, cfg.groups
    bq, bk = geom.block_q, geom.block_k

    def kv_block(i, j):
        lo, hi = geom.kv_range(i)
        return jnp.minimum(lo + j, hi - 1)

    q_spec = _seq_spec(cfg, bq, h, lambda bi, ni, i, j: (bi, ni, i))
    kv_spec = _seq_spec(cfg, bk, h, lambda bi, ni, i, j: (bi, lax.div(ni, groups), kv_block(i, j)))
    row_spec = pl.BlockSpec((None, None, bq, NUM_LANES), lambda bi, ni, i, j: (bi, ni, i, 0))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [q, k, v, do, _rows_lanes(lse), _rows_lanes(delta)]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, bq, NUM_LANES), lambda bi, ni, i, j: (bi, i, 0)),
            pl.BlockSpec((None, NUM_SUBLANES, bk), lambda bi, ni, i, j: (bi, 0, kv_block(i, j))),
        ]
        args += [_ids_lanes(ids[0]), _ids_sublanes(ids[1])]
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(b, n, geom.num_q_blocks, geom.kv_steps),
        in_specs=in_specs,
        out_specs=q_spec,
        scratch_shapes=[pltpu.VMEM((bq, h), jnp.float32)],
        compiler_params=_compiler_params(3, 1),
        cost_estimate=_cost(cfg, geom, h, 3, q, k, v, do, q),
        interpret=cfg.interpret,
        name="jaxformers_flash_dq_tpu",
    )(*args)


def _dkv_call(q, k, v, do, lse, delta, ids, cfg: _Config):
    b, kh, h = q.shape[0], cfg.kv_heads, cfg.head_dim
    geom, groups = cfg.bwd, cfg.groups
    bq, bk = geom.block_q, geom.block_k

    def q_block(ki, j):
        lo, hi = geom.q_range(ki)
        return jnp.minimum(lo + j, hi - 1)

    q_spec = _seq_spec(cfg, bq, h, lambda bi, kh_, ki, g, j: (bi, kh_ * groups + g, q_block(ki, j)))
    kv_spec = _seq_spec(cfg, bk, h, lambda bi, kh_, ki, g, j: (bi, kh_, ki))
    row_spec = pl.BlockSpec(
        (None, None, NUM_SUBLANES, bq), lambda bi, kh_, ki, g, j: (bi, kh_ * groups + g, 0, q_block(ki, j))
    )
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [q, k, v, do, _rows_sublanes(lse), _rows_sublanes(delta)]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, NUM_SUBLANES, bq), lambda bi, kh_, ki, g, j: (bi, 0, q_block(ki, j))),
            pl.BlockSpec((None, bk, NUM_LANES), lambda bi, kh_, ki, g, j: (bi, ki, 0)),
        ]
        args += [_ids_sublanes(ids[0]), _ids_lanes(ids[1])]
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        grid=(b, kh, geom.num_kv_blocks, groups, geom.q_steps),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        scratch_shapes=[pltpu.VMEM((bk, h), jnp.float32)] * 2,
        compiler_params=_compiler_params(3, 2),
        cost_estimate=_cost(cfg, geom, h, 4, q, k, v, do, k, v),
        interpret=cfg.interpret,
        name="jaxformers_flash_dkv_tpu",
    )(*args)


def _rows_lanes(x):
    return jnp.broadcast_to(x[..., None], (*x.shape, NUM_LANES))  # [B, N, Tp] -> [B, N, Tp, 128]


def _rows_sublanes(x):
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], NUM_SUBLANES, x.shape[-1]))  # -> [B, N, 8, Tp]


def _ids_lanes(x):
    return jnp.broadcast_to(x[..., None], (*x.shape, NUM_LANES))  # [B, L, 128]


def _ids_sublanes(x):
    return jnp.broadcast_to(x[:, None, :], (x.shape[0], NUM_SUBLANES, x.shape[1]))  # [B, 8, L]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, ids, cfg: _Config):
    return _fwd_call(q, k, v, ids, cfg)[0]


def _flash_fwd(q, k, v, ids, cfg: _Config):
    out, lse = _fwd_call(q, k, v, ids, cfg)
    return out, (q, k, v, ids, out, lse)


def _flash_bwd(cfg: _Config, res, do):
    q, k, v, ids, out, lse = res
    out_h, do_h = (_from_kernel_layout(x.astype(jnp.float32), cfg.merged, cfg.head_dim) for x in (out, do))
    delta = jnp.einsum("BTNH,BTNH->BNT", out_h, do_h)  # rowsum(dO * O)
    dq = _dq_call(q, k, v, do, lse, delta, ids, cfg)
    dk, dv = _dkv_call(q, k, v, do, lse, delta, ids, cfg)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def interpret_params(interpret) -> Any:
    """`True` -> TPU-semantics interpreter (`pltpu.InterpretParams()`, runs on CPU); params objects pass through."""
    return pltpu.InterpretParams() if interpret is True else interpret


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    segment_ids=None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    interpret: Any = False,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Flash attention on TPU, differentiable in q, k, v; see `jaxformers.kernels.flash_attention` for the contract.

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]` with N a multiple of K; float32 or bfloat16 (float16 inputs are
        computed in float32: TPUs have no float16 vector unit).
      causal: keep keys `j <= i`. sliding_window: keep keys `j > i - W`. segment_ids: `[B, T]` (T == S) or a pair.
      scale: default `H ** -0.5`. softcap: `c * tanh(logits / c)` before masking.
      interpret: True runs the TPU interpreter (CPU); an `pltpu.InterpretParams` is passed through.
      block_sizes: tiles; default `BlockSizes.default_for(...)`.
    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    _, t, s, n, kh, h = _common.check_qkv(q, k, v)
    if q.dtype == jnp.float16:  # Mosaic has no float16 vectors on TPU (v5e rejects the loads): compute in float32
        opts = {"causal": causal, "segment_ids": segment_ids, "sliding_window": sliding_window, "scale": scale}
        wide = (x.astype(jnp.float32) for x in (q, k, v))
        return flash_attention(*wide, softcap=softcap, interpret=interpret, block_sizes=block_sizes, **opts).astype(
            q.dtype
        )
    ids = _common.normalize_segment_ids(segment_ids, t, s)
    bs = block_sizes or BlockSizes.default_for(t, s, h, q.dtype)
    t_pad, (bq, bq_bwd) = _common.padded_length(t, (bs.block_q, bs.block_q_bwd), NUM_SUBLANES)
    s_pad, (bk, bk_bwd) = _common.padded_length(s, (bs.block_k, bs.block_k_bwd), NUM_LANES)

    def geom(bq_, bk_):
        return Geometry(causal, sliding_window, s, bq_, bk_, t_pad // bq_, s_pad // bk_)

    scale = h**-0.5 if scale is None else float(scale)
    merged = h % NUM_LANES == 0
    cfg = _Config(geom(bq, bk), geom(bq_bwd, bk_bwd), n, kh, h, merged, scale, softcap, interpret_params(interpret))

    def pad(x, length):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1])) + ((0, 0),) * (x.ndim - 2))

    qk, kk, vk = (_to_kernel_layout(pad(x, length), merged) for x, length in ((q, t_pad), (k, s_pad), (v, s_pad)))
    if ids is not None:
        ids = (pad(ids[0], t_pad), pad(ids[1], s_pad))
    out = _flash(qk, kk, vk, ids, cfg)
    return _from_kernel_layout(out, merged, h)[:, :t]


def reference(q, k, v, *, causal=False, segment_ids=None, sliding_window=None, scale=None, softcap=None):
    """Pure-JAX dense reference with this kernel's semantics (float32 math; O(T*S) memory)."""
    return _common.attention_reference(
        q, k, v, causal=causal, segment_ids=segment_ids, sliding_window=sliding_window, scale=scale, softcap=softcap
    )
