"""The Pallas TPU kernels compile through Mosaic (the real TPU compiler, libtpu) for v5e and v5p, forward and backward.

The interpreter tests (tests/kernels) check numerics; these check that the same configurations are accepted by
Mosaic, which the interpreter does not model (vector layouts, tile shapes, dtypes the chip has). A program only
counts when its compiled HLO holds the kernel as a Mosaic custom call, so a silent fallback cannot pass. The default
set is one representative of each feature per kernel; `-m slow` compiles the whole interpreter grid (its small-tile
and default-tile variants, and its long cases) for both chips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxformers import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
import test_decode_attention as decode_grid  # noqa: E402  (the interpreter tests' grid: one source of cases)
import test_flash_attention as flash_grid  # noqa: E402

CHIPS = ("v5e-1", "v5p-8")
F16 = jnp.float16


def _sds(device, shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.SingleDeviceSharding(device))


def _assert_mosaic(compiled, what: str) -> None:
    text = compiled.as_text()
    assert "tpu_custom_call" in text, f"{what}: no Mosaic kernel in the compiled program"


def compile_flash(device, case, block_sizes, scale: int):
    """Forward + q/k/v gradients of `kernels.flash_attention` (backend "tpu", native) for a grid case."""
    t, s = case.t * scale, case.s * scale
    window = None if case.window is None else case.window * scale
    args = [_sds(device, (case.b, t, case.n, case.h), case.dtype)]
    args += [_sds(device, (case.b, s, case.k, case.h), case.dtype)] * 2
    ids_shapes = {None: [], "single": [(case.b, t)], "pair": [(case.b, t), (case.b, s)]}[case.ids]
    args += [_sds(device, shape, jnp.int32) for shape in ids_shapes]

    def fwd_bwd(q, k, v, *ids):
        segment_ids = None if not ids else ids[0] if len(ids) == 1 else ids

        def attend(q, k, v):
            return kernels.flash_attention(
                q, k, v, causal=case.causal, segment_ids=segment_ids, sliding_window=window, softcap=case.softcap,
                backend="tpu", block_sizes=block_sizes,
            )  # fmt: skip

        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(out)

    compiled = jax.jit(fwd_bwd).lower(*args).compile()
    _assert_mosaic(compiled, "flash attention")
    return compiled


def compile_decode(device, case, block_sizes, scale: int):
    """`kernels.decode_attention` (backend "tpu", native) with per-row lengths for a grid case."""
    b, s = len(case.lengths), case.s * scale
    window = None if case.window is None else case.window * scale
    args = [_sds(device, (b, case.t, case.n, case.h), case.dtype)]
    args += [_sds(device, (b, s, case.k, case.h), case.dtype)] * 2 + [_sds(device, (b,), jnp.int32)]
    if case.left_pad is not None:
        args.append(_sds(device, (b, s), jnp.bool_))

    def attend(q, k, v, lengths, *key_mask):
        return kernels.decode_attention(
            q, k, v, lengths, key_mask=key_mask[0] if key_mask else None, sliding_window=window,
            softcap=case.softcap, backend="tpu", block_sizes=block_sizes,
        )  # fmt: skip

    compiled = jax.jit(attend).lower(*args).compile()
    _assert_mosaic(compiled, "decode attention")
    return compiled


# One representative per feature: GQA 3 and 6, T != S both ways, segment ids (single and pair), sliding window,
# soft-cap, head dims 16/32/128, float32 and bfloat16, small tiles (several blocks, ragged last) and default tiles.
FLASH = {
    "bf16-segments-window-softcap-gqa6": ("bf16-segments-window-softcap", "small"),
    "f32-segment-pair-t<s-gqa6": ("segment-pair-t<s", "small"),
    "f32-h128-causal-t<s-gqa3": ("h128-causal", "default"),
    "bf16-segment-pair-t>s-gqa2": ("bf16-segment-pair-t>s", "default"),
}
DECODE = {
    "bf16-t3-left-pad-window-softcap": ("bf16-t3-left-pad-window-softcap", "small"),
    "f32-t1-gqa3-h128-left-pad": ("t1-gqa3-h128-left-pad", "default"),
}


def _blocks(grid, kind: str):
    return grid.SMALL_BLOCKS["tpu"] if kind == "small" else None


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("name", FLASH)
def test_flash_compiles_for_tpu(tpu, chip, name):
    case, kind = FLASH[name]
    device = tpu(chip).devices[0]
    compile_flash(device, flash_grid.CASES[case], _blocks(flash_grid, kind), flash_grid.LENGTH_SCALE["tpu"])


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("name", DECODE)
def test_decode_compiles_for_tpu(tpu, chip, name):
    case, kind = DECODE[name]
    compile_decode(tpu(chip).devices[0], decode_grid.CASES[case], _blocks(decode_grid, kind), 5)


def test_float16_compiles_for_tpu(tpu):
    """float16 reaches Mosaic as float32 (v5e has no float16 vectors: a float16 kernel fails to compile there)."""
    device = tpu("v5e-1").devices[0]
    case = flash_grid.Case(1, 61, 61, 6, 1, h=32, causal=True, window=17, softcap=1.5, ids="single", dtype=F16)
    compile_flash(device, case, None, 5)
    out = jax.eval_shape(
        lambda q: kernels.flash_attention(q, q, q, backend="tpu"), _sds(device, (1, 300, 2, 64), F16)
    )
    assert out.dtype == F16
    dec = decode_grid.Case(1, 53, 6, 2, lengths=(40, 53), left_pad=(3, 0), dtype=F16)
    compile_decode(device, dec, None, 5)


def _grid():
    for chip in CHIPS:
        for name, case in flash_grid.CASES.items():
            for kind in ("small", "default"):
                yield pytest.param("flash", chip, case, kind, 5, id=f"{chip}-flash-{kind}-{name}")
        for name, case in flash_grid.SLOW_CASES.items():
            yield pytest.param("flash", chip, case, "default", 1, id=f"{chip}-flash-long-{name}")
        for name, case in decode_grid.CASES.items():
            for kind in ("small", "default"):
                yield pytest.param("decode", chip, case, kind, 5, id=f"{chip}-decode-{kind}-{name}")
        for name, case in decode_grid.SLOW_CASES.items():
            yield pytest.param("decode", chip, case, "default", 1, id=f"{chip}-decode-long-{name}")


@pytest.mark.slow
@pytest.mark.parametrize("kernel,chip,case,kind,scale", list(_grid()))
def test_whole_interpreter_grid_compiles_for_tpu(tpu, kernel, chip, case, kind, scale):
    grid, compile_fn = (flash_grid, compile_flash) if kernel == "flash" else (decode_grid, compile_decode)
    compile_fn(tpu(chip).devices[0], case, _blocks(grid, kind), scale)
