"""The Pallas GPU quantized matmul (`jaxformers.kernels.quant_matmul_gpu`) against its float32 reference: int8 and
4-bit codes, per-channel and grouped scales, GGUF-style zeros, one row to several row blocks, split-K, float32 and
bfloat16; interpreted on CPU (CI) and natively under `-m gpu`. Also: it lowers to Triton on a machine without a GPU
(so a lowering error shows here, not in a GPU lease), the shapes it declines, and when `core.quant` dispatches to it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxformers.core import quant
from jaxformers.kernels import quant_matmul_gpu as qmm

from kernel_helpers import TOL, require_backend

MODES = [pytest.param(False, id="interpret"), pytest.param(True, id="gpu-native", marks=pytest.mark.gpu)]
# (rows, K, N, bits, group_size, zero, unsigned, block sizes)
CASES = [
    pytest.param(1, 256, 96, 8, None, False, False, None, id="int8-per-channel-1row"),
    pytest.param(5, 256, 128, 8, 64, False, False, qmm.BlockSizes(num_splits=2), id="int8-groups-split2"),
    pytest.param(3, 256, 64, 4, 64, False, False, None, id="int4-groups"),
    pytest.param(20, 128, 48, 4, 32, True, True, qmm.BlockSizes(block_k=32), id="q4_1-zero-unsigned"),
    pytest.param(1, 128, 32, 4, None, False, False, None, id="int4-per-channel"),
    pytest.param(2, 128, 32, 8, None, True, False, qmm.BlockSizes(num_splits=4), id="int8-per-channel-zero-split4"),
    pytest.param(70, 128, 64, 8, 32, False, False, qmm.BlockSizes(block_m=32), id="int8-three-row-blocks"),
]


def _operands(rows, k, n, bits, group, zero, unsigned, dtype, seed=0):
    rng = np.random.RandomState(seed)
    spec = quant.QuantSpec(bits, group, zero=zero, unsigned=unsigned)
    codes, scale = quant.quantize_kernel(jnp.asarray(rng.standard_normal((k, n)), jnp.float32), spec, lead=0, n_in=1)
    z = jnp.asarray(rng.standard_normal(scale.shape) * 0.1, jnp.float32) if zero else None
    x = jnp.asarray(rng.standard_normal((rows, k)).astype(np.float32)).astype(dtype)
    return x, codes, scale, z, spec


@pytest.mark.parametrize("native", MODES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("rows,k,n,bits,group,zero,unsigned,blocks", CASES)
def test_kernel_matches_the_dequantized_product(native, dtype, rows, k, n, bits, group, zero, unsigned, blocks):
    require_backend("gpu", not native)
    x, codes, scale, z, spec = _operands(rows, k, n, bits, group, zero, unsigned, dtype)
    got = qmm.quant_matmul(x, codes, scale, z, bits=bits, unsigned=unsigned, interpret=not native,
                           block_sizes=blocks)  # fmt: skip
    assert got.shape == (rows, n) and got.dtype == jnp.float32
    # the reference from core.quant's own dequantization (not the kernel module's), in float32 at full precision
    w = quant.dequantize_kernel(codes, scale, z, spec, lead=0, in_shape=(k,))
    want = np.asarray(jnp.dot(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST))
    np.testing.assert_allclose(np.asarray(qmm.reference(x, codes, scale, z, bits=bits, unsigned=unsigned)), want,
                               rtol=1e-5, atol=1e-5 * np.abs(want).max())  # fmt: skip
    # bf16 inputs: the kernel rounds the dequantized weights to bf16 before the product (as the XLA form does)
    tol = TOL[jnp.dtype(dtype)] * np.abs(want).max()
    assert np.abs(np.asarray(got) - want).max() <= tol, (np.abs(np.asarray(got) - want).max(), tol)


def _lowered_for_cuda(rows, k, n, bits, groups, zero, dtype=jnp.bfloat16) -> str:
    """The StableHLO `quant_matmul` exports to for a CUDA GPU, from this machine (no GPU needed): the Pallas
    kernel is lowered to Triton IR here, so a lowering error raises."""
    codes = jax.ShapeDtypeStruct((k // 2 if bits == 4 else k, n), jnp.uint8 if bits == 4 else jnp.int8)
    args = [jax.ShapeDtypeStruct((rows, k), dtype), codes, jax.ShapeDtypeStruct((groups, n), jnp.float32)]
    if zero:
        args.append(args[-1])
    fn = jax.jit(lambda x, c, s, *z: qmm.quant_matmul(x, c, s, z[0] if z else None, bits=bits, unsigned=zero))
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    return export.export(fn, platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()


@pytest.mark.parametrize("rows,k,n,bits,groups,zero", [
    (1, 2048, 5632, 8, 1, False),  # TinyLlama's up projection, one decoding row
    (8, 2048, 5632, 4, 16, False),  # int4 in groups of 128
    (1, 576, 1536, 4, 18, True),  # SmolLM2's Q4_1 (groups of 32 with a minimum)
    (64, 5632, 2048, 8, 1, False),  # the down projection (K not a power of two)
])  # fmt: skip
def test_kernel_lowers_to_triton_without_a_gpu(rows, k, n, bits, groups, zero):
    module = _lowered_for_cuda(rows, k, n, bits, groups, zero)
    assert module.count("xla.gpu.triton") == 1, module[:2000]


def test_plan_declines_shapes_without_tiles_and_says_why():
    assert qmm.supports(1, 2048, 5632, 8, 1) and qmm.supports(1, 576, 1536, 4, 18)
    assert not qmm.supports(1, 64, 40, 8, 1)  # N = 40: no 16-column tile
    assert not qmm.supports(1, 64, 32, 4, 4)  # 4-bit groups of 16 rows: 8 code rows per group, under 16
    assert not qmm.supports(1, 64, 32, 8, 5)  # groups that do not divide K
    bm, mp, bn, h, per_split, splits = qmm.plan(1, 2048, 5632, 8, 1)
    assert (bm, mp, bn, h) == (16, 16, 128, 128) and per_split * splits == 2048 // 128 and splits > 1
    x, codes, scale, _, _ = _operands(1, 64, 40, 8, None, False, False, jnp.float32)
    with pytest.raises(ValueError, match="N must be a multiple of 16"):
        qmm.quant_matmul(x, codes, scale, interpret=True)
    with pytest.raises(ValueError, match="do not fit"):
        qmm.quant_matmul(x[:, :32], codes, scale, interpret=True)


class _Mesh:
    size = 2


def test_core_quant_dispatch(monkeypatch):
    """Which products `core.quant.matmul` sends to the kernel: "auto" on a GPU up to GPU_KERNEL_MAX_ROWS rows; an
    explicit "weight_only", a transposed (tied) table, TPUs and multi-device meshes keep the XLA form; "pallas" runs
    it on CPU too (interpreted), where it equals the weight-only product."""
    from jaxformers.core import attention

    x, codes, scale, _, spec = _operands(3, 256, 64, 4, 64, False, False, jnp.float32)
    auto, wo, pallas = (quant.QuantSpec(4, 64, compute=c) for c in ("auto", "weight_only", "pallas"))
    use = quant._use_kernel
    assert not use(quant.resolve_compute("auto"), auto, 3, codes, scale, False)  # CPU: "int8"
    assert use("pallas", pallas, 3, codes, scale, False)
    assert not use("pallas", pallas, 3, codes.T, scale.T, True)
    jaxpr = str(jax.make_jaxpr(lambda x: quant.matmul(x, codes, scale, None, pallas, jnp.float32))(x))
    assert "pallas_call" in jaxpr
    got = quant.matmul(x, codes, scale, None, pallas, jnp.float32)
    want = quant.matmul(x, codes, scale, None, wo, jnp.float32)
    # the same weights; the kernel scales each group's partial sum instead of each weight (float32 rounding)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=3e-5 * np.abs(want).max())
    # the input gradient is that of the dequantized product (core.quant's VJP), as in the other modes
    grad = jax.grad(lambda v: jnp.sum(jnp.sin(quant.matmul(v, codes, scale, None, pallas, jnp.float32))))(x)
    w = quant.dequantize_kernel(codes, scale, None, spec, lead=0, in_shape=(256,))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(jnp.cos(got) @ w.T), rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(attention, "target_platform", lambda: "gpu")
    # on a GPU, resolve_compute("auto") is "weight_only" (it reads jax's backend, still CPU here)
    assert use("weight_only", auto, 1, codes, scale, False)
    assert use("weight_only", auto, quant.GPU_KERNEL_MAX_ROWS, codes, scale, False)
    assert not use("weight_only", auto, quant.GPU_KERNEL_MAX_ROWS + 1, codes, scale, False)  # prefill: XLA
    assert not use("weight_only", wo, 1, codes, scale, False)  # asked for XLA's form
    q8 = quant.QuantSpec(8, None, compute="auto")
    c8, s8 = quant.quantize_kernel(jnp.ones((256, 64)), q8, lead=0, n_in=1)
    assert not use("weight_only", q8, 1, c8, s8, False)  # per-channel int8: XLA's scale-after form reads the codes
    q8g = quant.QuantSpec(8, 32, compute="auto")
    c8g, s8g = quant.quantize_kernel(jnp.ones((256, 64)), q8g, lead=0, n_in=1)
    assert use("weight_only", q8g, 1, c8g, s8g, False)  # grouped int8 (GGUF's Q8_0): the kernel
    c16, s16 = quant.quantize_kernel(jnp.ones((64, 32)), quant.QuantSpec(4, 16), lead=0, n_in=1)
    assert not use("weight_only", quant.QuantSpec(4, 16), 1, c16, s16, False)  # no tiles: XLA
    monkeypatch.setattr(attention, "_active_mesh", lambda: _Mesh())
    assert not use("weight_only", auto, 1, codes, scale, False)
    assert not use("pallas", pallas, 1, codes, scale, False)
    monkeypatch.setattr(attention, "_active_mesh", lambda: None)
    monkeypatch.setattr(attention, "target_platform", lambda: "tpu")
    assert not use("pallas", pallas, 1, codes, scale, False)
