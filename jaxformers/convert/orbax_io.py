"""Orbax checkpoints of jaxformers models: params (sharded arrays) + config, saved atomically.

Layout of a checkpoint directory:
    jaxformers.json   {"format": 1, "model_type": ..., "architecture": ...}   (written last: marks completeness)
    config.json       the HF config
    params/           Orbax StandardCheckpointer tree (nested dict of arrays)
A save writes everything into a hidden sibling temp directory and renames it into place only when complete, so an
interrupted save never leaves a directory that looks like a checkpoint, and the previous one stays intact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import orbax.checkpoint as ocp

MARKER = "jaxformers.json"
FORMAT = 1


def is_checkpoint(directory) -> bool:
    return (Path(directory) / MARKER).is_file()


def _is_primary() -> bool:
    return jax.process_index() == 0


def save(params: dict, config: dict, meta: dict, directory) -> Path:
    """Save a params pytree (nested dict of jax.Arrays, possibly sharded) + config atomically to `directory`."""
    directory = Path(directory).expanduser().absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.partial-{_shared_token()}"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", params)
        ckptr.wait_until_finished()
    if _is_primary():
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, **meta}, indent=2))
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _barrier("jaxformers_save_done")
    return directory


def restore(directory, abstract_params: dict) -> dict:
    """Restore the params tree onto the shardings given by `abstract_params` (ShapeDtypeStructs with sharding)."""
    directory = Path(directory).expanduser().absolute()
    meta = json.loads((directory / MARKER).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} has checkpoint format {meta.get('format')}, this jaxformers reads {FORMAT}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(directory / "params", abstract_params)


def read_meta(directory) -> tuple[dict, dict]:
    directory = Path(directory)
    return json.loads((directory / MARKER).read_text()), json.loads((directory / "config.json").read_text())


def _shared_token() -> str:
    """A temp-dir suffix that all processes agree on (process 0's choice, broadcast)."""
    if jax.process_count() == 1:
        return uuid.uuid4().hex[:12]
    import numpy as np
    from jax.experimental import multihost_utils

    token = np.frombuffer(uuid.uuid4().bytes[:8], np.int32)
    token = multihost_utils.broadcast_one_to_all(token)
    return "".join(f"{int(x) & 0xFFFFFFFF:08x}" for x in token)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
