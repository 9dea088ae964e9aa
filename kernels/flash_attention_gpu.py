"""Flash attention for GPU (Pallas lowered through Triton): forward and backward kernels with O(T) memory.

Algorithm: FlashAttention-2 [1]. Forward (algorithm 1): one program per (q block, batch, head) loads its q tile once
and loops over the live kv blocks, keeping the running max, running sum and a float32 accumulator in registers;
it saves `lse` (base 2). Backward (algorithm 2) recomputes `p = exp2(s - lse)` in two kernels, as in the Triton
tutorial [2]: dQ (one program per q block, loop over kv blocks) and dK/dV (one program per kv block and kv head,
loops over the G query heads of the group and the q blocks), with `delta = rowsum(dO * O)` precomputed.

The layout is the model's `[B, T, N, H]` throughout (blocks are strided views, no transposes). Loops are split into
the blocks that need a mask (diagonal, window edge, padding, or any block when segment ids are given) and the blocks
that need none, so the bulk of a causal pass runs without mask arithmetic. Exponentials are base 2 (`exp2` maps to
one MUFU instruction): logits are multiplied by `log2(e)` after scaling and soft-capping.

What differs from jax's `ops/gpu/attention.py` [3]: GQA/MQA through the kv index map (no repeated K/V; dK/dV sum the
group inside one program, so no atomics), sliding window with block skipping, soft-capping, separate q/kv segment
ids, any sequence length and head size (padding to block multiples / a power of two), float32 inputs with IEEE
matmuls (no TF32), and split dQ and dK/dV kernels so T != S works.

[1] T. Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", arXiv:2307.08691.
[2] triton-lang/triton python/tutorials/06-fused-attention.py.
[3] jax/experimental/pallas/ops/gpu/attention.py (jax 0.10.2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxformers.kernels import _common
from jaxformers.kernels._common import MASK_VALUE, Geometry

LOG2E = math.log2(math.e)
MIN_BLOCK = 16  # Triton's smallest tensor-core tile edge
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles (powers of two >= 16) and Triton launch parameters for the three kernels.

    Forward `block_q x block_k`; dQ kernel `block_q_dq x block_k_dq`; dK/dV kernel `block_q_dkv x block_k_dkv`.
    The defaults (16-bit inputs) were measured with `scripts/tune_attention.py` on an H200 (bf16, B=2, N=16, H=128,
    T=S=8192; BENCHMARKS.md): the forward keeps the Triton tutorial's 128 x 64 tiles (no candidate beat them by more
    than 4%); the backward's 64 x 64 tiles in both kernels with 2 stages ran forward+backward 3.45x faster than the
    tutorial's 128 x 32 (dQ) / 32 x 128 (dK/dV) with 3 stages, which spend registers on a 128-row dK/dV accumulator.
    """

    block_q: int = 128
    block_k: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 64
    block_q_dkv: int = 64
    block_k_dkv: int = 64
    num_warps: int = 8
    num_stages: int = 3
    num_warps_bwd: int = 4
    num_stages_bwd: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv"):
            value = getattr(self, name)
            if value < MIN_BLOCK or value & (value - 1):
                raise ValueError(f"GPU {name}={value} must be a power of two >= {MIN_BLOCK}")

    @classmethod
    def default_for(cls, t: int, s: int, h: int, dtype) -> BlockSizes:
        """The measured defaults for 16-bit inputs (4 warps for H <= 64); half-size tiles for float32 (twice the
        registers per element; not measured on a GPU yet)."""
        del t, s
        if jnp.dtype(dtype).itemsize > 2:
            return cls(64, 32, 64, 32, 32, 64, num_warps=4, num_stages=2, num_stages_bwd=2)
        return cls(num_warps=8 if h > 64 else 4)


@dataclasses.dataclass(frozen=True)
class _Config:
    fwd: Geometry
    dq: Geometry
    dkv: Geometry
    groups: int
    scale: float
    softcap: float | None
    block_sizes: BlockSizes
    interpret: bool


def _dot(a, b, dims):
    return lax.dot_general(a, b, dims, precision=_common.dot_precision(a.dtype), preferred_element_type=jnp.float32)


def _logits2(q, k, cfg: _Config, mask):
    """Base-2 logits `log2(e) * cap(scale * q k^T)` with masked entries set to MASK_VALUE, and `d cap / d s`."""
    s = _dot(q, k, _NT) * cfg.scale
    dcap = None
    if cfg.softcap is not None:
        t = jnp.tanh(s / cfg.softcap)
        s, dcap = cfg.softcap * t, 1.0 - t * t
    s = s * LOG2E
    return (s if mask is None else jnp.where(mask, s, MASK_VALUE)), dcap


def _split_loop(ranges, full, body, carry):
    """Run `body(i, carry, masked)` over `[lo, hi)`: masked outside `full = [f_lo, f_hi)`, unmasked inside."""
    (lo, hi), (f_lo, f_hi) = ranges, full
    carry = lax.fori_loop(lo, f_lo, functools.partial(body, masked=True), carry)
    carry = lax.fori_loop(f_lo, f_hi, functools.partial(body, masked=False), carry)
    return lax.fori_loop(f_hi, hi, functools.partial(body, masked=True), carry)


def _fwd_kernel(*refs, cfg: _Config, has_ids: bool):
    """One (q block, batch, head): FlashAttention-2 algorithm 1 over the live kv blocks."""
    if has_ids:
        q_ref, k_ref, v_ref, qid_ref, kvid_ref, o_ref, lse_ref = refs
    else:
        (q_ref, k_ref, v_ref, o_ref, lse_ref), qid_ref, kvid_ref = refs, None, None
    geom = cfg.fwd
    bq, bk = geom.block_q, geom.block_k
    i = pl.program_id(0)
    q = q_ref[...]  # [bq, H]
    q_pos = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    q_ids = qid_ref[...][:, None] if has_ids else None

    def body(ki, carry, masked):
        acc, m, l = carry
        kv_slice = pl.ds(ki * bk, bk)
        mask = None
        if masked:
            k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            mask = geom.mask(q_pos, k_pos, q_ids, kvid_ref[kv_slice][None, :] if has_ids else None)
        s, _ = _logits2(q, k_ref[kv_slice, :], cfg, mask)  # [bq, bk]
        m_next = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_next)
        p = jnp.exp2(s - m_next[:, None])
        v = v_ref[kv_slice, :]
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, _NN)
        return acc, m_next, l * alpha + jnp.sum(p, axis=1)

    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, l = _split_loop(geom.kv_range(i), geom.kv_full_range(i, has_ids), body, init)
    l_safe = jnp.where(l == 0.0, 1.0, l)  # a q block with no live kv block (only possible with a window)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(l_safe)


def _dq_kernel(*refs, cfg: _Config, has_ids: bool):
    """dQ for one (q block, batch, head): dQ = scale * sum_j dS_ij K_j over the live kv blocks."""
    if has_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, dq_ref = refs
    else:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref), qid_ref, kvid_ref = refs, None, None
    geom = cfg.dq
    bq, bk = geom.block_q, geom.block_k
    i = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    q_ids = qid_ref[...][:, None] if has_ids else None

    def body(ki, dq, masked):
        kv_slice = pl.ds(ki * bk, bk)
        mask = None
        if masked:
            k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            mask = geom.mask(q_pos, k_pos, q_ids, kvid_ref[kv_slice][None, :] if has_ids else None)
        k, v = k_ref[kv_slice, :], v_ref[kv_slice, :]
        s, dcap = _logits2(q, k, cfg, mask)
        p = jnp.exp2(s - lse)  # [bq, bk]
        ds = p * (_dot(do, v, _NT) - delta)
        if dcap is not None:
            ds = ds * dcap
        if mask is not None:
            ds = jnp.where(mask, ds, 0.0)
        return dq + _dot(ds.astype(k.dtype), k, _NN)

    dq = _split_loop(geom.kv_range(i), geom.kv_full_range(i, has_ids), body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: _Config, has_ids: bool):
    """dK, dV for one (kv block, batch, kv head): loops over the group's G query heads and the live q blocks."""
    if has_ids:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, dk_ref, dv_ref = refs
    else:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref), qid_ref, kvid_ref = refs, None, None
    geom = cfg.dkv
    bq, bk = geom.block_q, geom.block_k
    ki = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]  # [bk, H]
    k_pos = ki * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    kv_ids = kvid_ref[...][None, :] if has_ids else None

    def body(qi, carry, masked, g):
        dk, dv = carry
        q_slice = pl.ds(qi * bq, bq)
        mask = None
        if masked:
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
            mask = geom.mask(q_pos, k_pos, qid_ref[q_slice][:, None] if has_ids else None, kv_ids)
        q, do = q_ref[q_slice, g, :], do_ref[q_slice, g, :]  # [bq, H]
        s, dcap = _logits2(q, k, cfg, mask)
        p = jnp.exp2(s - lse_ref[g, q_slice][:, None])  # [bq, bk]
        dv = dv + _dot(p.astype(do.dtype), do, _TN)
        ds = p * (_dot(do, v, _NT) - delta_ref[g, q_slice][:, None])
        if dcap is not None:
            ds = ds * dcap
        if mask is not None:
            ds = jnp.where(mask, ds, 0.0)
        return dk + _dot(ds.astype(q.dtype), q, _TN), dv

    def head(g, carry):
        return _split_loop(geom.q_range(ki), geom.q_full_range(ki, has_ids), functools.partial(body, g=g), carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, cfg.groups, head, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _params(cfg: _Config, bwd: bool):
    bs = cfg.block_sizes
    if bwd:
        return pltriton.CompilerParams(num_warps=bs.num_warps_bwd, num_stages=bs.num_stages_bwd)
    return pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)


def _fwd_call(q, k, v, ids, cfg: _Config):
    """q `[B, Tp, N, Hp]`, k/v `[B, Sp, K, Hp]` -> out `[B, Tp, N, Hp]`, base-2 lse `[B, N, Tp]` (float32)."""
    b, t_pad, n, h = q.shape
    s_pad, groups = k.shape[1], cfg.groups
    geom = cfg.fwd
    bq = geom.block_q
    q_spec = pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, i, ni, 0))
    kv_spec = pl.BlockSpec((None, s_pad, None, h), lambda i, bi, ni: (bi, 0, lax.div(ni, groups), 0))
    in_specs, args = [q_spec, kv_spec, kv_spec], [q, k, v]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, bi, ni: (bi, i)),
            pl.BlockSpec((None, s_pad), lambda i, bi, ni: (bi, 0)),
        ]
        args += list(ids)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, t_pad), jnp.float32)],
        grid=(geom.num_q_blocks, b, n),
        in_specs=in_specs,
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, bi, ni: (bi, ni, i))],
        compiler_params=_params(cfg, bwd=False),
        interpret=cfg.interpret,
        name="jaxformers_flash_fwd_gpu",
    )(*args)


def _dq_call(q, k, v, do, lse, delta, ids, cfg: _Config):
    b, _, n, h = q.shape
    s_pad, groups = k.shape[1], cfg.groups
    geom = cfg.dq
    bq = geom.block_q
    q_spec = pl.BlockSpec((None, bq, None, h), lambda i, bi, ni: (bi, i, ni, 0))
    kv_spec = pl.BlockSpec((None, s_pad, None, h), lambda i, bi, ni: (bi, 0, lax.div(ni, groups), 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda i, bi, ni: (bi, ni, i))
    in_specs, args = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec], [q, k, v, do, lse, delta]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, bq), lambda i, bi, ni: (bi, i)),
            pl.BlockSpec((None, s_pad), lambda i, bi, ni: (bi, 0)),
        ]
        args += list(ids)
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(geom.num_q_blocks, b, n),
        in_specs=in_specs,
        out_specs=q_spec,
        compiler_params=_params(cfg, bwd=True),
        interpret=cfg.interpret,
        name="jaxformers_flash_dq_gpu",
    )(*args)


def _dkv_call(q, k, v, do, lse, delta, ids, cfg: _Config):
    b, t_pad, _, h = q.shape
    kh, groups = k.shape[2], cfg.groups
    geom = cfg.dkv
    bk = geom.block_k
    q_spec = pl.BlockSpec((None, t_pad, groups, h), lambda j, bi, kh_: (bi, 0, kh_, 0))  # the group's G heads
    kv_spec = pl.BlockSpec((None, bk, None, h), lambda j, bi, kh_: (bi, j, kh_, 0))
    row_spec = pl.BlockSpec((None, groups, t_pad), lambda j, bi, kh_: (bi, kh_, 0))
    in_specs, args = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec], [q, k, v, do, lse, delta]
    if ids is not None:
        in_specs += [
            pl.BlockSpec((None, t_pad), lambda j, bi, kh_: (bi, 0)),
            pl.BlockSpec((None, bk), lambda j, bi, kh_: (bi, j)),
        ]
        args += list(ids)
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, has_ids=ids is not None),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        grid=(geom.num_kv_blocks, b, kh),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        compiler_params=_params(cfg, bwd=True),
        interpret=cfg.interpret,
        name="jaxformers_flash_dkv_gpu",
    )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, ids, cfg: _Config):
    return _fwd_call(q, k, v, ids, cfg)[0]


def _flash_fwd(q, k, v, ids, cfg: _Config):
    out, lse = _fwd_call(q, k, v, ids, cfg)
    return out, (q, k, v, ids, out, lse)


def _flash_bwd(cfg: _Config, res, do):
    q, k, v, ids, out, lse = res
    delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(jnp.float32), do.astype(jnp.float32))  # rowsum(dO * O)
    dq = _dq_call(q, k, v, do, lse, delta, ids, cfg)
    dk, dv = _dkv_call(q, k, v, do, lse, delta, ids, cfg)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


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
    """Flash attention on GPU via Triton, differentiable in q, k, v; see `jaxformers.kernels.flash_attention`.

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]` with N a multiple of K; float32, bfloat16 or float16.
      causal: keep keys `j <= i`. sliding_window: keep keys `j > i - W`. segment_ids: `[B, T]` (T == S) or a pair.
      scale: default `H ** -0.5`. softcap: `c * tanh(logits / c)` before masking.
      interpret: run the kernels in the Pallas interpreter (CPU).
      block_sizes: tiles and launch parameters; default `BlockSizes.default_for(...)`.
    Returns:
      `[B, T, N, H]` in q's dtype.
    """
    _, t, s, n, kh, h = _common.check_qkv(q, k, v)
    ids = _common.normalize_segment_ids(segment_ids, t, s)
    bs = block_sizes or BlockSizes.default_for(t, s, h, q.dtype)
    t_pad, (bq, bq_dq, bq_dkv) = _common.padded_length(t, (bs.block_q, bs.block_q_dq, bs.block_q_dkv), MIN_BLOCK, True)
    s_pad, (bk, bk_dq, bk_dkv) = _common.padded_length(s, (bs.block_k, bs.block_k_dq, bs.block_k_dkv), MIN_BLOCK, True)

    def geom(bq_, bk_):
        return Geometry(causal, sliding_window, s, bq_, bk_, t_pad // bq_, s_pad // bk_)

    scale = h**-0.5 if scale is None else float(scale)
    cfg = _Config(geom(bq, bk), geom(bq_dq, bk_dq), geom(bq_dkv, bk_dkv), n // kh, scale, softcap, bs, bool(interpret))
    h_pad = max(MIN_BLOCK, 1 << math.ceil(math.log2(h)))  # Triton tiles are powers of two; zero columns change nothing

    def pad(x, length):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, h_pad - h)))

    if ids is not None:
        ids = tuple(jnp.pad(x, ((0, 0), (0, length - x.shape[1]))) for x, length in zip(ids, (t_pad, s_pad)))
    out = _flash(pad(q, t_pad), pad(k, s_pad), pad(v, s_pad), ids, cfg)  # [B, Tp, N, Hp]
    return out[:, :t, :, :h]


def reference(q, k, v, *, causal=False, segment_ids=None, sliding_window=None, scale=None, softcap=None):
    """Pure-JAX dense reference with this kernel's semantics (float32 math; O(T*S) memory)."""
    return _common.attention_reference(
        q, k, v, causal=causal, segment_ids=segment_ids, sliding_window=sliding_window, scale=scale, softcap=softcap
    )
