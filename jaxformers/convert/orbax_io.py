"""Orbax checkpoints of jaxformers models: params (sharded arrays) + config, saved atomically, restored on any mesh.

Layout of a checkpoint directory:
    jaxformers.json   {"format": 1, "model_type": ..., "architecture": ..., "checksums": {...}}   (written last:
                      marks completeness; "checksums" holds the sha256 of every file under params/)
    config.json       the HF config
    params/           Orbax StandardCheckpointer tree (nested dict of arrays; every process writes its own shards)

What a save may replace. Only an earlier checkpoint (a directory with the marker, holding nothing but what a save
writes), an empty directory, or nothing. Anything else raises `FileExistsError` before a byte is written: an
ordinary directory (a project folder, the HF folder the model came from), a checkpoint that also holds other files,
a directory containing the current working directory, a symbolic link, a plain file. `overwrite=True` lets a save
replace a directory of the first two kinds (logged as a warning); it never replaces a plain file, a link, or the
working directory (a file at a checkpoint path is a mistaken path far more often than something to delete).

Atomicity. A save writes everything into a hidden sibling `.NAME.partial-TOKEN`, flushes it to disk, writes the
marker last, then swaps it into place: on Linux with one `renameat2(RENAME_EXCHANGE)` (old and new trade places
atomically), elsewhere by moving the old checkpoint aside to `.NAME.old-TOKEN` before renaming the new one in; a save
killed between those two renames leaves no `NAME`, and `resolve` then finds the newest complete hidden copy (the new
one: its marker is written before the swap). So a save interrupted at any point leaves a complete checkpoint loadable
under its name, the previous one until the swap, and never a visible directory without a marker. Leftover hidden
directories are removed by the next save to the same name.

One saver per directory. The primary process holds `fcntl.flock` on `.NAME.lock` (next to the target) for the whole
save; a second saver fails at once with a RuntimeError naming the holder. The kernel drops the lock when its holder
exits, even by SIGKILL, so a crashed save never blocks the next one (the file it leaves is reused and removed). The
checks and the lock are decided by process 0 before anything is written and broadcast, so every process of a
multi-process save raises the same error or none. The directory must be on a filesystem all processes share (on
NFS, Linux implements flock with POSIX record locks; where locking is unsupported, the save warns and goes ahead).

Integrity. After the save's shards are written, process 0 records the sha256 of every file under params/ in the
marker; `restore` checks them first (each process hashes its share of the files) and raises a ValueError naming a
corrupt or missing file. That costs about 0.2 s per 100 MB on two CPU cores (from the page cache, which restore
then reads from; measured 0.16-0.25 s against 0.45 s for the restore of a 100 MB checkpoint); `verify=False` skips it.
Checkpoints written before checksums existed (same format 1) load unverified, with a log line saying so.

Restoring reads the saved global arrays onto whatever shardings the caller asks for (another mesh shape, another
device count, one device): Orbax reads only the slices each process needs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxformers")

MARKER = "jaxformers.json"
FORMAT = 1
_PARTIAL = ".partial-"
_OLD = ".old-"
_LOCK = ".lock"
_OWN_ENTRIES = frozenset({MARKER, "config.json", "params"})  # what a save writes into a checkpoint directory
_DIGEST = "sha256"
# What process 0 decided before a save, broadcast so that every process acts alike.
_GO, _REFUSED, _LOCKED, _FAILED = 0, 1, 2, 3


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


def save(params: dict, config: dict, meta: dict, directory, *, overwrite: bool = False) -> Path:
    """Save a params pytree (nested dict of jax.Arrays, possibly sharded) + config atomically to `directory`.

    Every process must call this with the same arguments (Orbax writes each process's shards collectively).
    `directory` may be new, empty, or an earlier checkpoint; `overwrite=True` also replaces a directory that is not
    one (never a file). Raises FileExistsError (target refused) or RuntimeError (another save holds it) on every
    process before anything is written.
    """
    directory = Path(directory).expanduser().absolute()
    lock, code, error = None, _GO, None
    if _is_primary():
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            lock = _Lock.acquire(_lock_path(directory))
            if lock is None:
                code = _LOCKED
            elif _refusal(directory, overwrite) is not None:
                code = _REFUSED
            else:
                if overwrite and _refusal(directory, False) is not None:
                    log.warning("overwrite=True: replacing %s, which is not just an earlier checkpoint", directory)
                # Only while holding the lock: unlocked, a second saver deleted a live save's partial copy here
                # (which then died with a raw Orbax FileNotFoundError).
                for stale in directory.parent.glob(f".{directory.name}{_PARTIAL}*"):
                    shutil.rmtree(stale, ignore_errors=True)
        except Exception as e:  # still broadcast below: the other processes must not wait forever for process 0
            code, error = _FAILED, e
    token, code = _agree(code)
    if code != _GO:
        if lock is not None:
            lock.release()
        if error is not None:
            raise error
        raise _refusal_error(code, directory, overwrite)
    try:
        tmp = directory.parent / f".{directory.name}{_PARTIAL}{token}"
        _barrier("jaxformers_save_start")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        _barrier("jaxformers_save_written")
        if _is_primary():
            _write_synced(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
            _sync_tree(tmp)
            names = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "params").rglob("*") if p.is_file())
            checksums = {"algorithm": _DIGEST, "files": dict(zip(names, _digests(tmp, names)))}
            marker = {"format": FORMAT, **meta, "checksums": checksums}
            _write_synced(tmp / MARKER, json.dumps(marker, indent=2, sort_keys=True))
            _fsync(tmp)
            _swap_in(tmp, directory)
            for old in directory.parent.glob(f".{directory.name}{_OLD}*"):
                shutil.rmtree(old, ignore_errors=True)
        _barrier("jaxformers_save_done")
    finally:
        if lock is not None:
            lock.release()
    return directory


def restore(directory, abstract_params: dict, *, verify: bool = True) -> dict:
    """Restore the params tree onto the shardings given by `abstract_params` (ShapeDtypeStructs with sharding).

    With `verify` (default), first check the files under params/ against the checksums recorded at save.
    """
    path = _require(directory)
    meta = json.loads((path / MARKER).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} has checkpoint format {meta.get('format')}, this jaxformers reads {FORMAT}")
    if verify:
        verify_checksums(path)
    _check_shapes(path, abstract_params)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path / "params", abstract_params)


def verify_checksums(directory) -> None:
    """Check every file under params/ against the sha256 recorded at save; ValueError naming a corrupt file.

    Collective in multi-process runs: each process hashes its share of the files, and all raise alike.
    """
    path = _require(directory)
    recorded = json.loads((path / MARKER).read_text()).get("checksums")
    if recorded is None:
        log.info("%s has no checksums (saved by an older jaxformers): its data cannot be verified", path)
        return
    if recorded.get("algorithm") != _DIGEST:
        raise ValueError(
            f"{path / MARKER} records {recorded.get('algorithm')!r} checksums; this jaxformers verifies {_DIGEST}. "
            "Load it with the jaxformers that saved it, or skip the check (verify=False)."
        )
    names = sorted(recorded["files"])
    index, count = jax.process_index(), jax.process_count()
    mine = names[index::count]
    got = _digests(path, mine)
    bad = next((index + i * count for i, (n, d) in enumerate(zip(mine, got)) if d != recorded["files"][n]), -1)
    if count > 1:
        from jax.experimental import multihost_utils

        found = np.asarray(multihost_utils.process_allgather(np.array([bad], np.int32))).reshape(-1)
        bad = min((int(b) for b in found if b >= 0), default=-1)
    if bad >= 0:
        name = names[bad]
        why = "is missing" if not (path / name).is_file() else "does not match the checksum recorded at save"
        raise ValueError(
            f"checkpoint {path} is corrupt: {name} {why}. Re-save the checkpoint, or restore it from a copy."
        )


def read_meta(directory) -> tuple[dict, dict]:
    """`(marker metadata, HF config)` of a complete checkpoint."""
    path = _require(directory)
    return json.loads((path / MARKER).read_text()), json.loads((path / "config.json").read_text())


def _require(directory) -> Path:
    path = resolve(directory)
    if path is None:
        raise FileNotFoundError(f"no complete jaxformers checkpoint at {directory} (no {MARKER})")
    return path


def _is_own_checkpoint(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def _refusal(directory: Path, overwrite: bool) -> str | None:
    """Why a save to `directory` would destroy something that is not an earlier checkpoint; None when it may go on."""
    if directory.is_symlink():
        return (
            f"{directory} is a symbolic link (to {os.path.realpath(directory)}); a save would replace the link, not "
            "save into its target. Save to the target path, or remove the link."
        )
    if not directory.exists():
        return None
    if not directory.is_dir():
        return (
            f"{directory} is a file, not a checkpoint directory; a save never replaces a file (not even with "
            "overwrite=True). Choose another path, or move the file away."
        )
    if _contains_cwd(directory):
        return (
            f"{directory} is the current working directory or contains it; a save replaces the whole directory. "
            f"Save to a subdirectory instead, e.g. {directory / 'checkpoint'}."
        )
    entries = sorted(p.name for p in directory.iterdir())
    if not entries or overwrite:
        return None
    shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    if _is_own_checkpoint(directory):
        foreign = [e for e in entries if e not in _OWN_ENTRIES]
        if not foreign:
            return None
        return (
            f"{directory} is a jaxformers checkpoint but also holds files a save does not write "
            f"({', '.join(foreign[:5])}); replacing it would delete them. Move them out, or pass overwrite=True."
        )
    return (
        f"{directory} exists and is not a jaxformers checkpoint (no {MARKER}; it holds {shown}); a save would "
        "delete it. Save to a new or empty directory, or pass overwrite=True to replace this one."
    )


def _contains_cwd(directory: Path) -> bool:
    try:
        here = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was deleted
        return False
    there = os.path.realpath(directory)
    return here == there or here.startswith(there.rstrip(os.sep) + os.sep)


def _refusal_error(code: int, directory: Path, overwrite: bool) -> Exception:
    """The error every process raises for process 0's decision (each reads the same shared filesystem)."""
    if code == _LOCKED:
        holder = _Lock.holder(_lock_path(directory))
        return RuntimeError(
            f"another save to {directory} is in progress ({_lock_path(directory)} is locked{holder}); only one "
            "process may save to a checkpoint directory at a time. Wait for it to finish, or save elsewhere."
        )
    if code == _REFUSED:
        reason = _refusal(directory, overwrite) or f"process 0 refused to save to {directory} (its error says why)"
        return FileExistsError(reason)
    return RuntimeError(f"process 0 failed while preparing the save to {directory}; its error says why")


def _lock_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}{_LOCK}"


class _Lock:
    """An exclusive `flock` on a lock file, held for one save.

    flock, not an O_EXCL file: the kernel releases it when the holder dies, so a killed save leaves no stale lock.
    The holder deletes the file on release; a contender that locked the file just as it was deleted sees that the
    path no longer names its file and tries again, so two savers never hold different files of the same name.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path: Path) -> _Lock | None:
        """The lock, or None if another process holds it."""
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                log.warning("%s: this filesystem does not support flock (%s); saving without the lock", path, e)
                return cls(path, None)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
                return cls(path, fd)
            os.close(fd)  # the previous holder removed this file as we opened it: lock the new one
        raise RuntimeError(f"could not lock {path}: it is being created and removed repeatedly by other savers")

    @staticmethod
    def holder(path: Path) -> str:
        try:
            text = path.read_text().strip()
        except OSError:
            return ""
        return f" by {text}" if text else ""

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the class docstring
        finally:
            os.close(self.fd)
            self.fd = None


def _digests(root: Path, names: list[str]) -> list[str | None]:
    """sha256 hex digests of `root / name` for each name (None for a missing file), hashed on a few threads (hashlib
    releases the GIL on large buffers)."""

    def digest(name: str) -> str | None:
        try:
            with open(root / name, "rb") as f:
                return hashlib.file_digest(f, _DIGEST).hexdigest()
        except FileNotFoundError:
            return None

    if len(names) <= 1:
        return [digest(n) for n in names]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1, len(names))) as pool:
        return list(pool.map(digest, names))


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


def _agree(code: int) -> tuple[str, int]:
    """`(temp-dir suffix, decision code)` as process 0 chose them, on every process (one broadcast)."""
    values = np.frombuffer(uuid.uuid4().bytes[:8] + np.int32(code).tobytes(), np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.broadcast_one_to_all(values))
    return "".join(f"{int(x) & 0xFFFFFFFF:08x}" for x in values[:2]), int(values[2])


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
