"""XLA:CPU compiler options chosen per compiled program: oneDNN's GEMM for large matrix products on AVX-512 hosts.

XLA:CPU hands matrix products to YNNPACK by default. jaxlib also carries oneDNN, off unless asked for; per program,
`jax.jit(fn, compiler_options=gemm_options(rows))` routes that program's dots to oneDNN. Measured on an Intel Xeon
with AVX-512/AMX, 2 cores (BENCHMARKS.md, "oneDNN for large products"): fp32 `[M, 768] x [768, 3072]` and
`[M, 3072] x [3072, 768]` products are 5-15% faster through oneDNN from M = 512 rows up, but about as fast at 128-256
and up to 2.7x slower below (a fixed ~0.3 ms per product), so one-row decode steps must never get it; a BERT-base
forward at 8 x 128 tokens takes ~10% less time. A training step's backward products were slower through it, so the
training step does not use it. Not measured on AVX2-only hosts (AMD EPYC), so nothing changes there.

Programs compiled this way are not written to JAX's persistent compilation cache (jaxlib cannot serialise oneDNN
fusions yet); they recompile in each process. `JAXFORMERS_XLA_CPU_ONEDNN`: `auto` (default: the rule above), `1` (any CPU host, still only from `MIN_ROWS` rows),
`0` (never).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax

ONEDNN_GEMM = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
MIN_ROWS = 512  # rows (batch x tokens) of the products from which oneDNN was faster


@functools.lru_cache(maxsize=None)
def host_has_avx512() -> bool:
    """Whether this x86 host offers AVX-512 (read from /proc/cpuinfo; False where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def gemm_options(rows: int, platform: str | None = None) -> dict:
    """`compiler_options` for a program whose matrix products have `rows` rows (batch x tokens): `ONEDNN_GEMM` on a
    CPU backend when the rule in this module's docstring says so, else `{}` (XLA's defaults). `platform`: the
    program's device platform (default: JAX's default backend)."""
    mode = os.environ.get("JAXFORMERS_XLA_CPU_ONEDNN", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"JAXFORMERS_XLA_CPU_ONEDNN must be auto, 0 or 1, got {mode!r}")
    if mode == "0" or rows < MIN_ROWS or (platform or jax.default_backend()) != "cpu":
        return {}
    if mode == "auto" and not host_has_avx512():
        return {}
    _quiet_cache_warning()
    return dict(ONEDNN_GEMM)


@functools.lru_cache(maxsize=None)
def _quiet_cache_warning() -> None:
    """jaxlib cannot serialise a program holding oneDNN fusions into JAX's persistent compilation cache: it warns
    ("ToProto is not implemented for thunk kind: onednn-fusion") and recompiles such programs in each new process
    (encoder programs compile in well under a second). The warning says nothing the user can act on: filter exactly
    that one."""
    warnings.filterwarnings("ignore", message=r"(?s)Error writing persistent compilation cache entry.*onednn",
                            category=UserWarning)  # fmt: skip
