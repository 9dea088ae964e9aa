"""Persistent compilation cache: jitted programs (forward passes, generation loops, train steps) compiled by one
process are read back from disk by the next, instead of being compiled again.

This is JAX's own cache (`jax_compilation_cache_dir`), switched on by `import jaxformers` in a per-user folder:

    $XDG_CACHE_HOME/jaxformers/jax        (XDG_CACHE_HOME defaults to ~/.cache)

    JAXFORMERS_COMPILE_CACHE=0            off (also: false, off, no)
    JAXFORMERS_COMPILE_CACHE=/some/dir    another folder (1, true, on or unset: the default folder)

A cache the user configured for JAX itself (`JAX_COMPILATION_CACHE_DIR`, `jax.config.update(
"jax_compilation_cache_dir", ...)` before importing jaxformers, or `JAX_ENABLE_COMPILATION_CACHE=false`) is left
exactly as it is. Two of JAX's defaults change unless set through their own environment variables: every program is
stored, however fast it compiled (JAX's default stores only those over 1 s, which skips most of a model's programs:
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`), and the folder is capped at `MAX_SIZE_BYTES`, least recently used
entries evicted first (JAX's default never evicts: `JAX_COMPILATION_CACHE_MAX_SIZE`, -1 for no cap).

Backends: JAX 0.10 uses the cache on CPU, GPU and TPU (every backend that serializes its executables);
tests/test_compile_cache.py checks hits on XLA:CPU. An entry is keyed by the program, the compile options and XLA
flags, the backend and its version, the jax / jaxlib version and the device topology, so other versions or devices
miss rather than reuse. XLA:CPU compiles for the host's processor: where one home folder serves machines with
different CPUs, give each machine its own folder (`JAXFORMERS_COMPILE_CACHE=/local/dir`). Deleting the folder is
always safe. As JAX warns, the cache holds code that runs: never use a folder other users can write to.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

ENV_VAR = "JAXFORMERS_COMPILE_CACHE"
MIN_COMPILE_TIME_SECS = 0.0
MAX_SIZE_BYTES = 2 << 30
_OFF = ("0", "false", "off", "no")
_ON = ("", "1", "true", "on", "yes")

log = logging.getLogger("jaxformers")


def default_dir() -> Path:
    """`$XDG_CACHE_HOME/jaxformers/jax`, or `~/.cache/jaxformers/jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxformers" / "jax"


def configure(setting: str | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on as `setting` says (default: the `JAXFORMERS_COMPILE_CACHE`
    environment variable, see the module docstring) and return the folder in use, or None when it is off.

    A cache folder already configured for JAX wins and is returned unchanged; so does a JAX cache switched off.
    Calling it again changes nothing once JAX has a folder."""
    own = jax.config.jax_compilation_cache_dir
    if own:
        return Path(own)
    if not jax.config.jax_enable_compilation_cache:
        return None
    value = (os.environ.get(ENV_VAR, "") if setting is None else str(setting)).strip()
    if value.lower() in _OFF:
        return None
    path = default_dir() if value.lower() in _ON else Path(value).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compilation cache disabled: cannot create %s (%s); set %s to a writable folder or 0", path, e,
                    ENV_VAR)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX's defaults (not a user's choice) are replaced: store every program, and bound the folder (LRU eviction)
    own_threshold = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0 and not own_threshold:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if jax.config.jax_compilation_cache_max_size == -1 and "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_SIZE_BYTES)
    return path


def entries(path: str | os.PathLike | None = None) -> list[Path]:
    """The compiled programs stored in the cache folder (`path`, default: the one in use)."""
    folder = path or jax.config.jax_compilation_cache_dir
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith("-cache"))
