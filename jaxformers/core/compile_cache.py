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
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`), and the folder is kept under `MAX_SIZE_BYTES`: when a process
starts (`configure`), a folder over the cap loses its oldest entries (by last write, or last use where JAX recorded
it) down to `PRUNE_TO` of the cap. JAX's own cap (`JAX_COMPILATION_CACHE_MAX_SIZE`, used as set when you set it) is
not used by default: it lists the whole folder and reads a timestamp file per entry on every write, which with a
folder of 4,000 entries made each write ~65 ms slower (a GPT-2 first `generate` call 9.7 s instead of 6.9 s:
`scripts/bench_compile_cache.py --filled 4000`; a test run writes ~5,000 entries, a user's folder may hold more).

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
PRUNE_TO = 0.75  # a folder over the cap is pruned to this fraction of it (not every start removes a few entries)
_ENTRY, _ATIME = "-cache", "-atime"  # JAX's file suffixes: a compiled program, and its last use (JAX's LRU only)
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
    # JAX's default threshold (not a user's choice) is replaced: store every program. The folder is bounded here,
    # once per process, unless the user asked JAX to bound it (its per-write eviction)
    own_threshold = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0 and not own_threshold:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if jax.config.jax_compilation_cache_max_size == -1 and "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        prune(path, MAX_SIZE_BYTES)
    return path


def prune(path: str | os.PathLike, max_bytes: int = MAX_SIZE_BYTES, to: float = PRUNE_TO) -> int:
    """If the entries in `path` take more than `max_bytes`, delete the oldest (last use where JAX's LRU recorded it,
    else last write) until they take at most `to * max_bytes`. Returns how many were deleted. Safe while other
    processes use the folder: a file being read stays readable once unlinked, and an entry deleted before another
    process reads it is a cache miss (compiled again)."""
    found, total = [], 0
    with os.scandir(path) as listing:
        for item in listing:
            if not item.name.endswith(_ENTRY):
                continue
            try:
                stat = item.stat()
            except FileNotFoundError:  # deleted meanwhile by another process
                continue
            total += stat.st_size
            found.append((stat.st_mtime_ns, item.path, stat.st_size))
    if total <= max_bytes:
        return 0
    aged = []
    for written, file, size in found:
        atime = file[: -len(_ENTRY)] + _ATIME
        try:
            used = int.from_bytes(Path(atime).read_bytes(), "little")
        except OSError:  # no timestamp (JAX's LRU was not on), or deleted meanwhile
            used = 0
        aged.append((max(written, used), file, size))
    removed = 0
    for _, file, size in sorted(aged):
        if total <= to * max_bytes:
            break
        for name in (file, file[: -len(_ENTRY)] + _ATIME):
            try:
                os.remove(name)
            except FileNotFoundError:
                pass
        total -= size
        removed += 1
    log.info("compilation cache: removed the %d oldest entries of %s (over %d bytes)", removed, path, max_bytes)
    return removed


def entries(path: str | os.PathLike | None = None) -> list[Path]:
    """The compiled programs stored in the cache folder (`path`, default: the one in use)."""
    folder = path or jax.config.jax_compilation_cache_dir
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith("-cache"))
