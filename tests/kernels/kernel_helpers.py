"""Shared pieces of the kernel tests: tolerances, execution modes, random inputs, an independent mask, comparison.

Tolerances are relative to max |reference| over the compared array, stated once per dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2}

# (backend, interpret) per mode: the interpreters run everywhere (CI), native GPU only under `-m gpu`.
MODES = [
    pytest.param(("tpu", True), id="tpu-interpret"),
    pytest.param(("gpu", True), id="gpu-interpret"),
    pytest.param(("gpu", False), id="gpu-native", marks=pytest.mark.gpu),
]


@functools.cache
def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def require_backend(backend: str, interpret: bool) -> None:
    """Skip native runs on a machine without the device (the interpreters need none)."""
    if not interpret and backend == "gpu" and not _has_gpu():
        pytest.skip("native GPU kernels need a CUDA device visible to jax; none found (jax.devices('gpu') failed)")


def normal(seed: int, shape, dtype) -> jax.Array:
    """Standard normal values drawn in numpy (no per-shape XLA compile), rounded to `dtype`."""
    return jnp.asarray(np.random.RandomState(seed).standard_normal(shape).astype(np.float32).astype(dtype))


def packed_segment_ids(rng: np.random.RandomState, b: int, length: int, n_segments: int) -> np.ndarray:
    """`[B, L]` int32 ids of `n_segments` consecutive runs per row (packed sequences), cut at random points."""
    out = np.zeros((b, length), np.int32)
    for i in range(b):
        cuts = np.sort(rng.choice(np.arange(1, length), n_segments - 1, replace=False))
        out[i] = np.searchsorted(cuts, np.arange(length), side="right")
    return out


def keep_mask(b, t, s, *, causal=False, window=None, q_ids=None, kv_ids=None, q_pos=None) -> np.ndarray:
    """Independent numpy `[B, T, S]` keep-mask: causal `j <= i`, window `j > i - W`, equal segment ids.

    `q_pos` (`[B, T]`) overrides the query positions (decode: slots at the end of the valid prefix).
    """
    qp = np.broadcast_to(np.arange(t)[None, :] if q_pos is None else np.asarray(q_pos), (b, t))[:, :, None]
    kp = np.arange(s)[None, None, :]
    keep = np.ones((b, t, s), bool)
    if causal:
        keep &= kp <= qp
    if window is not None:
        keep &= kp > qp - window
    if q_ids is not None:
        keep &= np.asarray(q_ids)[:, :, None] == np.asarray(kv_ids)[:, None, :]
    return keep


def assert_close(actual, expected, dtype, what: str, rows=None) -> None:
    """max |actual - expected| / max |expected| <= TOL[dtype]; `rows` (`[B, T]` bool) restricts `[B, T, ...]` arrays."""
    a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    assert np.isfinite(a).all(), f"{what}: non-finite values"
    if rows is not None:
        a, e = a[rows], e[rows]
    scale = np.abs(e).max()
    assert scale > 0, f"{what}: reference is all zeros, the comparison would be vacuous"
    err = np.abs(a - e).max() / scale
    assert err <= TOL[jnp.dtype(dtype)], f"{what}: max|diff|/max|ref| = {err:.2e} > {TOL[jnp.dtype(dtype)]:.0e}"


def check_vjp(kernel_fn, reference_fn, args, cotangent, dtype, live_rows) -> None:
    """Kernel vs reference: outputs on live query rows, and the q, k, v gradients of a random cotangent.

    The cotangent is zero on query rows with no visible key (their outputs are unspecified, so they must not feed
    gradients either); kernel outputs must still be finite everywhere.
    """
    ct = jnp.where(jnp.asarray(live_rows)[:, :, None, None], cotangent, 0).astype(cotangent.dtype)

    def fwd_bwd(fn):
        def run(*xs):
            out, vjp = jax.vjp(fn, *xs)
            return out, vjp(ct)

        return jax.jit(run)(*args)

    out, grads = fwd_bwd(kernel_fn)
    ref_out, ref_grads = fwd_bwd(reference_fn)
    assert out.dtype == jnp.dtype(dtype), out.dtype
    assert_close(out, ref_out, dtype, "output", rows=live_rows)
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert g.dtype == jnp.dtype(dtype), (name, g.dtype)
        assert_close(g, rg, dtype, f"d{name}")
