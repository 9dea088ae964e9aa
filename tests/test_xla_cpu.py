"""`core.xla_cpu`: the per-program XLA:CPU choice (oneDNN's GEMM for large products on AVX-512 hosts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformers.core import xla_cpu


def test_rule(monkeypatch):
    monkeypatch.setenv("JAXFORMERS_XLA_CPU_ONEDNN", "1")
    assert xla_cpu.gemm_options(xla_cpu.MIN_ROWS) == xla_cpu.ONEDNN_GEMM
    assert xla_cpu.gemm_options(xla_cpu.MIN_ROWS - 1) == {}  # decode steps and small batches: never
    assert xla_cpu.gemm_options(4096, platform="tpu") == {}  # CPU programs only
    monkeypatch.setenv("JAXFORMERS_XLA_CPU_ONEDNN", "0")
    assert xla_cpu.gemm_options(4096) == {}
    monkeypatch.setenv("JAXFORMERS_XLA_CPU_ONEDNN", "auto")
    assert xla_cpu.gemm_options(4096) == (xla_cpu.ONEDNN_GEMM if xla_cpu.host_has_avx512() else {})
    monkeypatch.setenv("JAXFORMERS_XLA_CPU_ONEDNN", "yes")
    with pytest.raises(ValueError, match="JAXFORMERS_XLA_CPU_ONEDNN must be auto, 0 or 1"):
        xla_cpu.gemm_options(4096)


def test_options_reach_onednn_and_compute_the_same():
    """This jaxlib accepts the options (a renamed option would fail to compile) and routes the product to oneDNN,
    with float32 results equal to XLA's default path."""
    rng = np.random.RandomState(0)
    x, w = jnp.asarray(rng.randn(512, 96), jnp.float32), jnp.asarray(rng.randn(96, 160), jnp.float32)
    f = lambda x, w: jax.nn.gelu(x @ w)  # noqa: E731
    compiled = jax.jit(f, compiler_options=xla_cpu.ONEDNN_GEMM).lower(x, w).compile()
    assert "onednn_fusion" in compiled.as_text()
    assert "onednn_fusion" not in jax.jit(f).lower(x, w).compile().as_text()
    np.testing.assert_allclose(compiled(x, w), jax.jit(f)(x, w), rtol=1e-5, atol=1e-5)
