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
import platform
import warnings

import jax
import jax.numpy as jnp

ONEDNN_GEMM = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
MIN_ROWS = 512  # rows (batch x tokens) of the products from which oneDNN was faster


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo (None and no flags where that file does not exist)."""
    model, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def host_has_avx512() -> bool:
    """Whether this x86 host offers AVX-512 (read from /proc/cpuinfo; False where that file does not exist)."""
    return "avx512f" in _cpuinfo()[1]


def cpu_description() -> str:
    """The host CPU's model and the x86 vector extensions that decide XLA:CPU's and PyTorch's kernels (AVX2,
    AVX-512, AVX512-BF16, AMX), e.g. "AMD EPYC 9B14 (AVX2, AVX-512, AVX512-BF16)": what every benchmark prints, since
    the project's figures differ by host kind (BENCHMARKS.md keeps a table per kind)."""
    model, flags = _cpuinfo()
    if model is None:
        return platform.processor() or platform.machine()
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_tile", "AMX")) if flag in flags]  # fmt: skip
    return f"{model} ({', '.join(isa) or 'no AVX2'})"


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


# Up to this many rows, `table_product` computes a tied head as `table @ x.T` on CPU.
TABLE_FIRST_MAX_ROWS = 32


def table_product(x: jax.Array, table: jax.Array) -> jax.Array:
    """`x [N, D] @ table[V, D].T`, the logits of a tied head (`Embed.attend`, and its exact quantized form).

    On a CPU backend with at most `TABLE_FIRST_MAX_ROWS` rows (decoding's rows) it computes `table @ x.T` (`[V, N]`,
    fenced by an optimization barrier so that XLA keeps that orientation) and transposes the small result: XLA:CPU
    streams the table ~1.5x faster so from 2 to 32 rows and as fast or faster at 1 (one-off probe: t5-small's head
    at 8 rows 5.1 -> 3.4 ms, bart-base's 11.0 -> 6.8 ms; BENCHMARKS.md). More rows (training, MLM) keep `x @ table.T`,
    which the transposed `[V, N]` result would cost a copy of. Both the float and the exact quantized head call this,
    so a kept-quantized model's logits stay bit-identical to its float32 twin's."""
    if x.shape[0] <= TABLE_FIRST_MAX_ROWS and jax.default_backend() == "cpu":
        return jax.lax.optimization_barrier(jnp.dot(table, x.T)).T
    return jnp.dot(x, table.T)
