"""Orbax checkpoints of jaxformers models: params (sharded arrays) + config, saved atomically, restored on any mesh.

Layout of a checkpoint directory:
    jaxformers.json   {"format": 1, "model_type": ..., "architecture": ...}   (written last: marks completeness)
    config.json       the HF config
    params/           Orbax StandardCheckpointer tree (nested dict of arrays; every process writes its own shards)

Atomicity. A save writes everything into a hidden sibling `.NAME.partial-TOKEN`, flushes it to disk, writes the
marker last, then swaps it into place: on Linux with one `renameat2(RENAME_EXCHANGE)` (old and new trade places
atomically), elsewhere by moving the old checkpoint aside to `.NAME.old-TOKEN` before renaming the new one in; a save
killed between those two renames leaves no `NAME`, and `resolve` then finds the newest complete hidden copy (the new
one: its marker is written before the swap). So a save interrupted at any point leaves a complete checkpoint loadable
under its name, the previous one until the swap, and never a visible directory without a marker. Leftover hidden directories are removed by the next save to the same name. One saver per
directory at a time; the directory must be on a filesystem all processes share.

Restoring reads the saved global arrays onto whatever shardings the caller asks for (another mesh shape, another
device count, one device): Orbax reads only the slices each process needs.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

MARKER = "jaxformers.json"
FORMAT = 1
_PARTIAL = ".partial-"
_OLD = ".old-"


def resolve(directory) -> Path | None:
    """The complete checkpoint stored under `directory`, or None.

    Normally `directory` itself; if a save was killed between moving the old checkpoint aside and renaming the new
    one in (non-Linux fallback), the newest complete hidden copy next to it.
    """
    directory = Path(directory).expanduser().absolute()
    if (directory / MARKER).is_file():
        return directory
    if directory.exists() or not directory.parent.is_dir():
        return None
    hidden = [
        p
        for pattern in (f".{directory.name}{_OLD}*", f".{directory.name}{_PARTIAL}*")
        for p in directory.parent.glob(pattern)
        if (p / MARKER).is_file()
    ]
    return max(hidden, key=lambda p: (p / MARKER).stat().st_mtime, default=None)


def is_checkpoint(directory) -> bool:
    """Whether `directory` holds (or `resolve` recovers) a complete jaxformers checkpoint."""
    return resolve(directory) is not None


def list_checkpoints(parent) -> list[Path]:
    """Complete checkpoints directly under `parent`, sorted by name; partial or interrupted saves are never listed."""
    parent = Path(parent).expanduser().absolute()
    if not parent.is_dir():
        return []
    names = {p.name for p in parent.iterdir() if not p.name.startswith(".")}
    for hidden in (*parent.glob(f".*{_OLD}*"), *parent.glob(f".*{_PARTIAL}*")):  # an interrupted swap
        names.add(hidden.name[1:].split(_OLD)[0].split(_PARTIAL)[0])
    return sorted(parent / n for n in names if is_checkpoint(parent / n))


def save(params: dict, config: dict, meta: dict, directory) -> Path:
    """Save a params pytree (nested dict of jax.Arrays, possibly sharded) + config atomically to `directory`.

    Every process must call this with the same arguments (Orbax writes each process's shards collectively).
    """
    directory = Path(directory).expanduser().absolute()
    tmp = directory.parent / f".{directory.name}{_PARTIAL}{_shared_token()}"
    if _is_primary():
        directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in directory.parent.glob(f".{directory.name}{_PARTIAL}*"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier("jaxformers_save_start")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", params)
        ckptr.wait_until_finished()
    _barrier("jaxformers_save_written")
    if _is_primary():
        _write_synced(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
        _sync_tree(tmp)
        _write_synced(tmp / MARKER, json.dumps({"format": FORMAT, **meta}, indent=2))
        _fsync(tmp)
        _swap_in(tmp, directory)
        for old in directory.parent.glob(f".{directory.name}{_OLD}*"):
            shutil.rmtree(old, ignore_errors=True)
    _barrier("jaxformers_save_done")
    return directory


def restore(directory, abstract_params: dict) -> dict:
    """Restore the params tree onto the shardings given by `abstract_params` (ShapeDtypeStructs with sharding)."""
    path = _require(directory)
    meta = json.loads((path / MARKER).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} has checkpoint format {meta.get('format')}, this jaxformers reads {FORMAT}")
    _check_shapes(path, abstract_params)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path / "params", abstract_params)


def read_meta(directory) -> tuple[dict, dict]:
    """`(marker metadata, HF config)` of a complete checkpoint."""
    path = _require(directory)
    return json.loads((path / MARKER).read_text()), json.loads((path / "config.json").read_text())


def _require(directory) -> Path:
    path = resolve(directory)
    if path is None:
        raise FileNotFoundError(f"no complete jaxformers checkpoint at {directory} (no {MARKER})")
    return path


def _check_shapes(path: Path, abstract_params: dict) -> None:
    """Compare saved array shapes with the model's before Orbax reads anything; list every mismatch."""
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path / "params")
    saved = getattr(saved, "item_metadata", saved)
    flat_saved = {_dotted(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    problems = []
    for k, want in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        name = _dotted(k)
        got = flat_saved.pop(name, None)
        if got is None:
            problems.append(f"{name} {tuple(want.shape)}: missing from the checkpoint")
        elif tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name}: checkpoint has {tuple(got.shape)}, the model expects {tuple(want.shape)}")
    problems += [f"{name}: in the checkpoint but not in the model" for name in flat_saved]
    if problems:
        raise ValueError(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _dotted(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def _is_primary() -> bool:
    return jax.process_index() == 0


def _shared_token() -> str:
    """A temp-dir suffix that all processes agree on (process 0's choice, broadcast)."""
    token = np.frombuffer(uuid.uuid4().bytes[:8], np.uint32).astype(np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = multihost_utils.broadcast_one_to_all(token)
    return "".join(f"{int(x) & 0xFFFFFFFF:08x}" for x in np.asarray(token))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _swap_in(tmp: Path, directory: Path) -> None:
    """Put the complete `tmp` at `directory`; an existing checkpoint there ends up in a hidden sibling."""
    if directory.exists():
        if _exchange(tmp, directory):
            os.replace(tmp, directory.parent / f".{directory.name}{_OLD}{uuid.uuid4().hex[:8]}")
        else:
            os.replace(directory, directory.parent / f".{directory.name}{_OLD}{uuid.uuid4().hex[:8]}")
            os.replace(tmp, directory)
    else:
        os.replace(tmp, directory)
    _fsync(directory.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux `renameat2(RENAME_EXCHANGE)`; False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (Orbax leaves durability to the OS)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync(Path(dirpath))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
