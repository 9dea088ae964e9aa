"""Flash attention kernels (TPU and GPU) against their pure-JAX references: outputs and q/k/v gradients.

The default grid runs both backends in the Pallas interpreter on CPU with small explicit tiles, so every case spans
several blocks with a ragged last one (GPU: 16/32-wide tiles on lengths 17..70; TPU: 128/256-wide tiles on lengths
five times longer, as Mosaic tiles are at least 128 wide). `-m gpu` runs the same grid natively on a GPU; `-m slow`
adds longer sequences with the default tiles.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import MODES, check_vjp, keep_mask, normal, packed_segment_ids, require_backend

from jaxformers import kernels
from jaxformers.kernels import flash_attention_gpu, flash_attention_tpu

F32, BF16 = jnp.float32, jnp.bfloat16
MODULES = {"tpu": flash_attention_tpu, "gpu": flash_attention_gpu}
# Small tiles with different q and kv widths per kernel, so block-range arithmetic is exercised with bq != bk.
SMALL_BLOCKS = {
    "tpu": flash_attention_tpu.BlockSizes(block_q=128, block_k=256, block_q_bwd=256, block_k_bwd=128),
    "gpu": flash_attention_gpu.BlockSizes(32, 16, 16, 32, 32, 16, num_warps=4, num_stages=1, num_warps_bwd=4),
}
LENGTH_SCALE = {"tpu": 5, "gpu": 1}


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem; `t`, `s` are GPU-scale lengths (multiplied by LENGTH_SCALE per backend)."""

    b: int
    t: int
    s: int
    n: int
    k: int
    h: int = 16
    causal: bool = False
    window: int | None = None
    softcap: float | None = None
    ids: str | None = None  # None, "single" ([B, T], T == S) or "pair" ((q_ids, kv_ids), some q ids absent from kv)
    dtype: object = F32


CASES = {
    "dense-gqa1": Case(2, 37, 37, 6, 6),
    "causal-gqa3": Case(1, 53, 53, 6, 2, causal=True),
    "causal-t<s-gqa6": Case(1, 21, 67, 6, 1, causal=True),
    "causal-t>s": Case(1, 67, 29, 6, 2, causal=True),
    "segments-causal": Case(2, 50, 50, 6, 2, causal=True, ids="single"),
    "segment-pair-t<s": Case(1, 33, 61, 6, 1, h=32, ids="pair"),
    "window-causal": Case(1, 70, 70, 6, 2, causal=True, window=13),
    "window-dense-t<s": Case(1, 40, 58, 6, 6, window=9),
    "softcap-causal": Case(1, 41, 41, 6, 2, causal=True, softcap=1.5),
    "h128-causal": Case(1, 29, 45, 6, 2, h=128, causal=True),
    "bf16-causal": Case(1, 53, 53, 6, 2, causal=True, dtype=BF16),
    "bf16-segments-window-softcap": Case(
        1, 61, 61, 6, 1, h=32, causal=True, window=17, softcap=1.5, ids="single", dtype=BF16
    ),
    "bf16-segment-pair-t>s": Case(1, 47, 29, 6, 3, ids="pair", dtype=BF16),
}
SLOW_CASES = {
    "long-causal-segments": Case(2, 700, 700, 16, 4, h=64, causal=True, ids="single"),
    "long-window-softcap-bf16": Case(1, 1100, 1300, 8, 8, h=128, causal=True, window=257, softcap=30.0, dtype=BF16),
    "long-dense-t!=s-bf16": Case(2, 333, 901, 32, 2, h=64, dtype=BF16),
}


def _inputs(case: Case, t: int, s: int, seed: int = 0):
    """q, k, v, a cotangent, segment ids in the kernel's format, and numpy (q_ids, kv_ids) for the mask."""
    q = normal(seed, (case.b, t, case.n, case.h), case.dtype)
    k = normal(seed + 1, (case.b, s, case.k, case.h), case.dtype)
    v = normal(seed + 2, (case.b, s, case.k, case.h), case.dtype)
    ct = normal(seed + 3, (case.b, t, case.n, case.h), case.dtype)
    rng = np.random.RandomState(seed)
    if case.ids == "single":
        ids = packed_segment_ids(rng, case.b, t, 3)
        return q, k, v, ct, jnp.asarray(ids), (ids, ids)
    if case.ids == "pair":  # kv packs segments 0..2; the queries' last segment (id 3) has no keys: dead rows
        q_ids, kv_ids = packed_segment_ids(rng, case.b, t, 4), packed_segment_ids(rng, case.b, s, 3)
        return q, k, v, ct, (jnp.asarray(q_ids), jnp.asarray(kv_ids)), (q_ids, kv_ids)
    return q, k, v, ct, None, (None, None)


def _check(backend: str, interpret: bool, case: Case, block_sizes, scale: int) -> None:
    require_backend(backend, interpret)
    t, s = case.t * scale, case.s * scale
    window = None if case.window is None else case.window * scale
    q, k, v, ct, ids, (q_ids, kv_ids) = _inputs(case, t, s)
    opts = {"causal": case.causal, "segment_ids": ids, "sliding_window": window, "softcap": case.softcap}
    live = keep_mask(case.b, t, s, causal=case.causal, window=window, q_ids=q_ids, kv_ids=kv_ids).any(-1)
    if case.ids == "pair":
        assert not live.all(), "the pair case must contain query rows with no visible key"

    def kernel(q, k, v):
        return kernels.flash_attention(q, k, v, backend=backend, interpret=interpret, block_sizes=block_sizes, **opts)

    def reference(q, k, v):
        return MODULES[backend].reference(q, k, v, **opts)

    check_vjp(kernel, reference, (q, k, v), ct, case.dtype, live)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("mode", MODES)
def test_flash_matches_reference(mode, case):
    backend, interpret = mode
    _check(backend, interpret, case, SMALL_BLOCKS[backend], LENGTH_SCALE[backend])


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES.values(), ids=SLOW_CASES.keys())
@pytest.mark.parametrize("mode", MODES)
def test_flash_matches_reference_long_default_blocks(mode, case):
    backend, interpret = mode
    _check(backend, interpret, case, None, 1)


def test_explicit_scale_is_used():
    """A non-default softmax scale reaches the kernel (compared with the reference at that scale and the default)."""
    q, k, v = (normal(i, (1, 20, 2, 16), F32) for i in range(3))
    out = kernels.flash_attention(q, k, v, scale=0.5, backend="gpu", interpret=True)
    ref = flash_attention_gpu.reference(q, k, v, scale=0.5)
    default = flash_attention_gpu.reference(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(ref) - np.asarray(default)).max() > 1e-2


@pytest.mark.parametrize(
    "shapes,kwargs,match",
    [
        (((1, 8, 4, 16), (1, 8, 2, 16), (1, 8, 2, 16)), {"backend": "cuda"}, "unknown kernel backend"),
        (((1, 8, 4, 16), (1, 8, 2, 16), (1, 9, 2, 16)), {}, "expected q"),
        (((8, 4, 16), (1, 8, 2, 16), (1, 8, 2, 16)), {}, "expected q"),
        (((1, 8, 6, 16), (1, 8, 4, 16), (1, 8, 4, 16)), {}, "multiple of K"),
        (((1, 8, 4, 16), (1, 8, 2, 32), (1, 8, 2, 32)), {}, "incompatible"),
        (((1, 8, 4, 16), (1, 9, 2, 16), (1, 9, 2, 16)), {"segment_ids": np.zeros((1, 8), np.int32)}, "T == S"),
        (((1, 8, 4, 16), (1, 8, 2, 16), (1, 8, 2, 16)), {"segment_ids": np.zeros((1, 7), np.int32)}, "segment ids"),
    ],
    ids=["backend", "k-v-mismatch", "rank", "heads", "head-dim", "single-ids-t!=s", "ids-length"],
)
def test_flash_rejects_bad_input(shapes, kwargs, match):
    args = [jnp.zeros(shape, F32) for shape in shapes]
    with pytest.raises(ValueError, match=match):
        kernels.flash_attention(*args, interpret=True, **{"backend": "gpu", **kwargs})


def test_flash_rejects_mixed_dtypes():
    q = jnp.zeros((1, 8, 2, 16), F32)
    with pytest.raises(ValueError, match="share a dtype"):
        kernels.flash_attention(q, q.astype(BF16), q, backend="gpu", interpret=True)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: flash_attention_tpu.BlockSizes(block_q=64), "power of two >= 128"),
        (lambda: flash_attention_tpu.BlockSizes(block_k_bwd=384), "power of two"),
        (lambda: flash_attention_gpu.BlockSizes(block_k=8), "power of two >= 16"),
        (lambda: flash_attention_gpu.BlockSizes(block_q_dkv=48), "power of two"),
    ],
    ids=["tpu-small", "tpu-not-pow2", "gpu-small", "gpu-not-pow2"],
)
def test_block_sizes_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()
