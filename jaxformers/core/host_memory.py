"""Host memory on Linux: let the C allocator keep freed memory for reuse, so XLA:CPU steps stop page-faulting.

XLA:CPU allocates all temporaries of one program execution as a single block and frees it when the execution ends;
a BERT-base training step at batch 8 x 128 asks for 1.67 GB each time. glibc's malloc serves a block that large with
`mmap` and returns it with `munmap`, so every step writes to fresh pages that the kernel must fault in and zero:
measured 419,000 page faults and ~0.75 s of kernel time per 3.6 s step on a 2-core AMD EPYC (user time 6.1 core-s).
PyTorch, which allocates tensor by tensor, took 89,000 faults per step.

`retain_host_memory()` tells glibc to serve every block from one heap (`M_ARENA_MAX=1`, `M_MMAP_MAX=0`) and never
give freed memory back to the operating system (`M_TRIM_THRESHOLD` off): from the second step on, the step's block
is memory the process already holds, with no fault at all (same machine: 0 faults, 0.01 s kernel time, ~15% less wall
time per step; `scripts/bench_train.py` with and without `--no-retain-host-memory`). The same settings are what
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1` in the environment give a process from its start.

The costs, and why it is off by default for `import jaxformers`: the process's resident memory never shrinks below
its peak (as with any caching allocator), and all threads share one malloc arena (its lock), which can slow code that
allocates from many threads at once. Training entry points turn it on (`jaxformers train`, `scripts/
finetune_sentiment.py`, `scripts/bench_train.py`); anyone can with `JAXFORMERS_RETAIN_HOST_MEMORY=1` (applied when
jaxformers is imported) or by calling `jf.retain_host_memory()` first thing. `JAXFORMERS_RETAIN_HOST_MEMORY=0` keeps
it off everywhere, the entry points included.

It must run before JAX's CPU backend starts: each thread picks its malloc arena at its first allocation, and
XLA:CPU's threads are created with the backend (by the first computation or device query). Later it changes
nothing for those threads, so the call then warns and returns False. glibc only: other C libraries (musl, macOS)
return False without changing anything.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

ENV_VAR = "JAXFORMERS_RETAIN_HOST_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>

_applied = False


def setting() -> bool | None:
    """`JAXFORMERS_RETAIN_HOST_MEMORY` as True (1/true/on/yes), False (0/false/off/no) or None (unset)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{ENV_VAR} must be 1 or 0 (true/false, on/off), got {value!r}")


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this helper: assume not started
        return False


def retain_host_memory(*, default: bool = True, warn: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring); True when in effect.

    default: whether to apply it when `JAXFORMERS_RETAIN_HOST_MEMORY` is unset (the variable, when set, decides).
    Returns False without changing anything where the setting is off, the C library is not glibc, or JAX's backend
    has already started (then with a warning naming the fix, unless `warn=False`: entry points that may run inside
    a process already computing, such as a script's `main()` called from a test, pass that)."""
    global _applied
    if _applied:
        return True
    wanted = setting()
    if not (default if wanted is None else wanted):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _backend_started():
        if not warn:
            return False
        warnings.warn(
            "retain_host_memory() came after JAX's backend started, so XLA's threads keep their own malloc arenas "
            f"and nothing changed; call it before the first JAX computation, or start Python with {ENV_VAR}=1",
            stacklevel=2,
        )
        return False
    libc = ctypes.CDLL(None)
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))  # fmt: skip
    _applied = ok
    return ok


def configure() -> bool:
    """Apply `retain_host_memory` at import when `JAXFORMERS_RETAIN_HOST_MEMORY=1` (nothing otherwise)."""
    return retain_host_memory(default=False, warn=False)
