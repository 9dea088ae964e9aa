"""Weight-only quantized matmul for GPU (Pallas lowered through Triton): `x [M, K] @ W` with `W` stored as int8 or
4-bit codes and float scales (and zeros), dequantized tile by tile in registers, never written to memory.

Why a kernel: XLA:GPU does not fuse a grouped dequantization (`code * scale (+ zero)`) into its GEMM; it writes the
whole bf16 weight with a separate fusion and then multiplies, reading 3 bytes per weight instead of 1 (int8) or 0.5
(4 bits). Decoding is a stream of such products with a few rows, bound by the bytes read, so that costs 2-4x.

Storage (that of `jaxformers.core.quant`): codes `[K', N]` over the input rows, `K' = K` (int8) or `K / 2` (4 bits,
two codes per uint8: within each group of `group_size` rows, byte t holds row t in its low nibble and row
t + group_size / 2 in its high one, as GGUF packs a block); scale and optional zero `[G, N]`, one row per group of
`group_size = K / G` input rows: `W[k, n] = code[k, n] * scale[k // group_size, n] (+ zero[...])`.

Algorithm: grid `(M blocks, N blocks, splits)`. Each program owns `block_n` output columns and a contiguous run of
`block_k`-row steps of the input (split-K, so a decode-sized product with few column blocks still fills the GPU);
per step it loads the codes tile, converts (4 bits: unpacks the two nibble halves) to the activation dtype, and
accumulates the tile's product in float32, times the step's group scale (plus the activations' sum times the group
zero). With one group and no zero (per-channel int8) the scale multiplies the finished sum instead. The splits' float32
partial sums are added in XLA.
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

MIN_BLOCK = 16  # Triton's smallest dot tile
_NN = (((1,), (0,)), ((), ()))
# Programs aimed at when choosing the split count: four waves of an H100/H200's 132 SMs (as the decode kernel).
_TARGET_PROGRAMS = 4 * 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Output columns per program `block_n`, input rows per step `block_k` (both powers of two >= 16; `block_k` is cut
    to the group size), rows per program `block_m` (a cap: small M is padded to a power of two >= 16 only), split
    count (None: about four waves of programs)."""

    block_n: int = 128
    block_k: int = 128
    block_m: int = 64
    num_splits: int | None = None
    num_warps: int = 4
    num_stages: int = 3


@dataclasses.dataclass(frozen=True)
class _Config:
    bits: int
    unsigned: bool
    group_rows: int  # input rows per group
    step_rows: int  # code rows per step (input rows / 2 for 4 bits)
    steps_per_split: int
    has_zero: bool
    one_group: bool
    num_warps: int
    num_stages: int
    interpret: bool


def _dot(a, b):
    return lax.dot_general(a, b, _NN, precision=_common.dot_precision(a.dtype), preferred_element_type=jnp.float32)


def _kernel(*refs, cfg: _Config):
    if cfg.has_zero:
        x_ref, c_ref, s_ref, z_ref, o_ref = refs
    else:
        (x_ref, c_ref, s_ref, o_ref), z_ref = refs, None
    h = cfg.step_rows
    group_codes = cfg.group_rows // (2 if cfg.bits == 4 else 1)  # code rows per group
    steps_per_group = group_codes // h
    dtype = x_ref.dtype
    first = pl.program_id(2) * cfg.steps_per_split

    def x_cols(start):
        return x_ref[:, pl.ds(pl.multiple_of(start, h), h)]

    def body(step, acc):
        row = pl.multiple_of(step * h, h)
        codes = c_ref[pl.ds(row, h), :]  # [h, bn]
        g = lax.div(step, steps_per_group)
        if cfg.bits == 8:
            xs = [x_cols(row)]
            ws = [codes.astype(dtype)]
        else:  # the step's h bytes: rows `local + t` (low nibbles) and `local + group / 2 + t` (high) of group g
            lo_col = g * cfg.group_rows + (row - g * group_codes)
            xs = [x_cols(lo_col), x_cols(lo_col + cfg.group_rows // 2)]
            shift = 0.0 if cfg.unsigned else 8.0
            ws = [
                ((codes & jnp.uint8(15)).astype(jnp.float32) - shift).astype(dtype),
                (lax.shift_right_logical(codes, jnp.uint8(4)).astype(jnp.float32) - shift).astype(dtype),
            ]
        part = _dot(xs[0], ws[0])
        for xp, wp in zip(xs[1:], ws[1:]):
            part = part + _dot(xp, wp)
        if cfg.one_group:
            return acc + part
        part = part * s_ref[pl.ds(g, 1), :]
        if cfg.has_zero:
            xsum = sum(xp.astype(jnp.float32).sum(axis=1) for xp in xs)
            part = part + xsum[:, None] * z_ref[pl.ds(g, 1), :]
        return acc + part

    acc = jnp.zeros(o_ref.shape, jnp.float32)
    acc = lax.fori_loop(first, first + cfg.steps_per_split, body, acc)
    if cfg.one_group:
        acc = acc * s_ref[...]
    o_ref[...] = acc


def _call(x, codes, scale, zero, cfg: _Config, bm: int, bn: int, splits: int):
    mp, k = x.shape
    kc, n = codes.shape
    g = scale.shape[0]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j, s: (i, 0)),
        pl.BlockSpec((kc, bn), lambda i, j, s: (0, j)),
        pl.BlockSpec((g, bn), lambda i, j, s: (0, j)),
    ]
    args = [x, codes, scale]
    if zero is not None:
        in_specs.append(pl.BlockSpec((g, bn), lambda i, j, s: (0, j)))
        args.append(zero)
    return pl.pallas_call(
        functools.partial(_kernel, cfg=cfg),
        out_shape=jax.ShapeDtypeStruct((splits, mp, n), jnp.float32),
        grid=(mp // bm, n // bn, splits),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j)),
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name=f"jaxformers_quant_matmul_{cfg.bits}bit",
    )(*args)


def _pow2_at_least(v: int, low: int = MIN_BLOCK) -> int:
    return max(low, 1 << math.ceil(math.log2(max(v, 1))))


def _largest_pow2_divisor(v: int, cap: int) -> int:
    d = 1
    while v % (d * 2) == 0 and d * 2 <= cap:
        d *= 2
    return d


def plan(m: int, k: int, n: int, bits: int, groups: int, block_sizes: BlockSizes | None = None):
    """The tiles for `[m, k] @ [k, n]` with `groups` scale rows, or None where this kernel does not apply (a column
    count that is not a multiple of 16, a group or step smaller than Triton's 16-row dot tile).

    Returns (block_m, padded M, block_n, code rows per step, steps per split, splits)."""
    bs = block_sizes or BlockSizes()
    if k % groups:
        return None
    group_rows = k // groups
    group_codes = group_rows // (2 if bits == 4 else 1)
    bn = _largest_pow2_divisor(n, bs.block_n)
    h = _largest_pow2_divisor(group_codes, bs.block_k // (2 if bits == 4 else 1))
    if bn < MIN_BLOCK or h < MIN_BLOCK or (bits == 4 and group_rows % 2):
        return None
    bm = min(_pow2_at_least(m), bs.block_m)
    mp = _common.round_up(m, bm)
    steps = (k // (2 if bits == 4 else 1)) // h
    programs = (mp // bm) * (n // bn)
    want = bs.num_splits or max(1, _common.cdiv(_TARGET_PROGRAMS, programs))
    splits = max(d for d in range(1, min(want, steps) + 1) if steps % d == 0)
    return bm, mp, bn, h, steps // splits, splits


def supports(m: int, k: int, n: int, bits: int, groups: int, block_sizes: BlockSizes | None = None) -> bool:
    """Whether `quant_matmul` takes these shapes (`plan` finds tiles for them)."""
    return plan(m, k, n, bits, groups, block_sizes) is not None


def quant_matmul(
    x: jax.Array,
    codes: jax.Array,
    scale: jax.Array,
    zero: jax.Array | None = None,
    *,
    bits: int = 8,
    unsigned: bool = False,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """`x [M, K] @ W` for the quantized `W` of codes `[K', N]` and scale (zero) `[G, N]` (module docstring).

    x: float32 / bfloat16 / float16 (the weights are dequantized to its dtype; float32 products run at full
    precision). bits: 8 (int8 codes) or 4 (nibbles in uint8; `unsigned`: nibble values 0..15, else nibble - 8).
    Returns `[M, N]` float32 (the caller casts). Raises ValueError for shapes `supports` rejects.
    """
    m, k = x.shape
    kc, n = codes.shape
    g = scale.shape[0]
    if bits not in (8, 4) or kc * (2 if bits == 4 else 1) != k or scale.shape != (g, n):
        raise ValueError(f"quant_matmul: x {x.shape}, {bits}-bit codes {codes.shape} and scale {scale.shape} do not "
                         "fit (codes [K, N] for 8 bits, [K / 2, N] for 4; scale [G, N])")  # fmt: skip
    tiles = plan(m, k, n, bits, g, block_sizes)
    if tiles is None:
        raise ValueError(f"quant_matmul: no GPU tiles for M={m}, K={k}, N={n}, {g} groups (N must be a multiple of "
                         "16, and each group at least 16 code rows)")  # fmt: skip
    bm, mp, bn, h, per_split, splits = tiles
    bs = block_sizes or BlockSizes()
    # One group without zeros: scale the finished sums. (A zero term is added per step, so that each split adds
    # its own rows' share.)
    one_group = g == 1 and zero is None
    cfg = _Config(bits, unsigned, k // g, h, per_split, zero is not None, one_group, bs.num_warps, bs.num_stages,
                  bool(interpret))  # fmt: skip
    xp = jnp.pad(x, ((0, mp - m), (0, 0)))
    scale = scale.astype(jnp.float32)
    zero = None if zero is None else zero.astype(jnp.float32)
    out = _call(xp, codes, scale, zero, cfg, bm, bn, splits)
    return out.sum(axis=0)[:m] if splits > 1 else out[0, :m]


def reference(x, codes, scale, zero=None, *, bits: int = 8, unsigned: bool = False) -> jax.Array:
    """Dequantize the whole weight in float32, then `x @ W` at full precision (the kernel's semantics)."""
    kc, n = codes.shape
    g = scale.shape[0]
    grouped = codes.reshape(g, -1, n)
    if bits == 8:
        w = grouped.astype(jnp.float32)
    else:
        shift = 0 if unsigned else 8
        lo = (grouped & 15).astype(jnp.float32) - shift
        hi = (grouped >> 4).astype(jnp.float32) - shift
        w = jnp.concatenate([lo, hi], axis=1)
    w = w * scale.astype(jnp.float32)[:, None, :]
    if zero is not None:
        w = w + zero.astype(jnp.float32)[:, None, :]
    return jnp.dot(x.astype(jnp.float32), w.reshape(-1, n), precision=lax.Precision.HIGHEST)
