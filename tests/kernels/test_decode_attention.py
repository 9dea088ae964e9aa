"""Decode attention kernels (TPU and GPU) against their pure-JAX references: outputs and q/k/v gradients.

Per-row cache lengths (some rows short enough to leave whole splits empty), left-padded prompts through `key_mask`,
T = 1 (plain decoding) and T = a few (speculative / chunked), GQA, sliding window and soft-cap. Small tiles and
several splits make every case span several blocks with a ragged last one; TPU lengths are five times the GPU ones
(Mosaic tiles are at least 128 wide). Gradients come from the dense reference by design (see `_decode_bwd`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import MODES, check_vjp, keep_mask, normal, require_backend

from jaxformers import kernels
from jaxformers.kernels import decode_attention_gpu, decode_attention_tpu

F32, BF16 = jnp.float32, jnp.bfloat16
MODULES = {"tpu": decode_attention_tpu, "gpu": decode_attention_gpu}
SMALL_BLOCKS = {
    "tpu": decode_attention_tpu.BlockSizes(block_k=128, num_splits=2),
    "gpu": decode_attention_gpu.BlockSizes(block_k=16, num_splits=3),
}
LENGTH_SCALE = {"tpu": 5, "gpu": 1}


@dataclasses.dataclass(frozen=True)
class Case:
    """`lengths` and `left_pad` (per row, GPU scale like `s`); left padding masks the first slots of a row."""

    t: int
    s: int
    n: int
    k: int
    lengths: tuple[int, ...]
    left_pad: tuple[int, ...] | None = None
    h: int = 16
    window: int | None = None
    softcap: float | None = None
    dtype: object = F32


CASES = {
    "t3-gqa6-left-pad": Case(3, 61, 6, 1, lengths=(61, 12), left_pad=(7, 2)),
    "t1-gqa1-window-softcap": Case(1, 53, 6, 6, lengths=(40, 53), window=9, softcap=1.5),
    "t4-left-pad-window": Case(4, 47, 6, 2, lengths=(30, 47), left_pad=(3, 20), window=13),
    "t1-gqa3-h128-left-pad": Case(1, 37, 6, 2, lengths=(37, 9), left_pad=(11, 0), h=128),
    "bf16-t2-gqa6": Case(2, 66, 6, 1, lengths=(17, 66), dtype=BF16),
    "bf16-t3-left-pad-window-softcap": Case(3, 58, 6, 2, lengths=(58, 33), left_pad=(5, 9), window=11, softcap=1.5,
                                            dtype=BF16),
}  # fmt: skip
SLOW_CASES = {
    "long-t1-gqa8": Case(1, 3000, 32, 4, lengths=(3000, 1234), left_pad=(0, 300), h=128, dtype=BF16),
    "long-t5-window": Case(5, 2100, 16, 16, lengths=(777, 2100), window=512, h=64),
}


def _check(backend: str, interpret: bool, case: Case, block_sizes, scale: int) -> None:
    require_backend(backend, interpret)
    b, t, s = len(case.lengths), case.t, case.s * scale
    lengths = np.asarray(case.lengths) * scale
    window = None if case.window is None else case.window * scale
    q = normal(0, (b, t, case.n, case.h), case.dtype)
    k = normal(1, (b, s, case.k, case.h), case.dtype)
    v = normal(2, (b, s, case.k, case.h), case.dtype)
    ct = normal(3, (b, t, case.n, case.h), case.dtype)
    key_mask = None
    if case.left_pad is not None:
        key_mask = jnp.asarray(np.arange(s)[None, :] >= np.asarray(case.left_pad)[:, None] * scale)
    opts = {"key_mask": key_mask, "sliding_window": window, "softcap": case.softcap}
    q_pos = lengths[:, None] - t + np.arange(t)[None, :]
    keep = keep_mask(b, t, s, causal=True, window=window, q_pos=q_pos)
    if key_mask is not None:
        keep &= np.asarray(key_mask)[:, None, :]
    assert keep.any(-1).all(), "every decode query must see at least its own slot"
    lengths = jnp.asarray(lengths, jnp.int32)

    def kernel(q, k, v):
        return kernels.decode_attention(
            q, k, v, lengths, backend=backend, interpret=interpret, block_sizes=block_sizes, **opts
        )

    def reference(q, k, v):
        return MODULES[backend].reference(q, k, v, lengths, **opts)

    check_vjp(kernel, reference, (q, k, v), ct, case.dtype, np.ones((b, t), bool))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("mode", MODES)
def test_decode_matches_reference(mode, case):
    backend, interpret = mode
    _check(backend, interpret, case, SMALL_BLOCKS[backend], LENGTH_SCALE[backend])


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES.values(), ids=SLOW_CASES.keys())
@pytest.mark.parametrize("mode", MODES)
def test_decode_matches_reference_long_default_blocks(mode, case):
    backend, interpret = mode
    _check(backend, interpret, case, None, 1)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_decode_row_with_no_visible_key_is_zero(backend):
    """The documented contract for a row whose every slot is masked: zeros (not NaN, not an average of values),
    with zero gradients; the other row is unaffected. Several splits, so both kernels' split merge is involved."""
    q, k, v = normal(0, (2, 1, 4, 16), F32), normal(1, (2, 300, 2, 16), F32), normal(2, (2, 300, 2, 16), F32)
    key_mask = jnp.asarray([[True] * 300, [False] * 300])
    blocks = SMALL_BLOCKS[backend]

    def kernel(q, k, v):
        return kernels.decode_attention(
            q, k, v, jnp.asarray([300, 250]), key_mask=key_mask, backend=backend, interpret=True, block_sizes=blocks
        )

    @jax.jit
    def run(q, k, v):
        out, vjp = jax.vjp(kernel, q, k, v)
        return out, vjp(jnp.zeros_like(out).at[1].set(1.0))  # cotangent on the dead row only

    out, grads = run(q, k, v)
    ref = MODULES[backend].reference(q[:1], k[:1], v[:1], jnp.asarray([300]))
    np.testing.assert_allclose(np.asarray(out[:1]), np.asarray(ref), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_decode_block_sizes_are_validated():
    with pytest.raises(ValueError, match="multiple of 128"):
        decode_attention_tpu.BlockSizes(block_k=96)


def test_gpu_decode_never_copies_a_block_aligned_cache():
    """Padding the cache to `splits * blocks_per_split` blocks copied the whole KV cache on every decode step (seen on
    an H200: at batch 8 every length paid it). Only padding to a block multiple is allowed, so a block-aligned cache
    whose blocks do not divide evenly into the splits reaches the kernel unpadded, and the result is still exact."""
    q, k, v = normal(0, (2, 1, 4, 16), F32), normal(1, (2, 160, 2, 16), F32), normal(2, (2, 160, 2, 16), F32)
    lengths = jnp.asarray([160, 97])
    blocks = decode_attention_gpu.BlockSizes(block_k=16, num_splits=3)  # 10 blocks: splits of 4, 4 and 2

    def kernel(q, k, v):
        return kernels.decode_attention(q, k, v, lengths, backend="gpu", interpret=True, block_sizes=blocks)

    def eqns(jaxpr):  # every equation, nested ones (custom_vjp, pjit) included
        for eqn in jaxpr.eqns:
            yield eqn
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from eqns(inner)

    pads = [eqn for eqn in eqns(jax.make_jaxpr(kernel)(q, k, v).jaxpr) if eqn.primitive.name == "pad"]
    assert pads, "the query rows are padded: the walk must see pad equations"
    cache_pads = [e for e in pads if e.invars[0].aval.shape == k.shape and any(map(any, e.params["padding_config"]))]
    assert not cache_pads, [e.params["padding_config"] for e in cache_pads]
    ref = decode_attention_gpu.reference(q, k, v, lengths)
    np.testing.assert_allclose(np.asarray(kernel(q, k, v)), np.asarray(ref), atol=1e-5, rtol=1e-5)
