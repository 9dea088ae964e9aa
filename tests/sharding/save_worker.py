"""Saves one checkpoint over and over, each time with every parameter set to the step number, until killed.

Run by test_checkpoint.py: `python save_worker.py SOURCE_CHECKPOINT TARGET_DIR [STAGE]`; prints "ready", then per save
"saving N T" and "saved N T" (T: `time.monotonic()`), and "stage NAME" as a save reaches each of its late stages:

    marker     the new copy is complete but for its marker (jaxformers.json)
    swap       complete, about to be swapped in
    exchanged  swapped in with one atomic exchange; the old copy now sits under the hidden temporary name
    cleanup    about to delete the old copy

With STAGE, every save after the first completed one stops at that stage (it sleeps there until killed), so a kill
lands in it for certain; without, saves run freely and the caller kills at a random time.
"""

from __future__ import annotations

import shutil
import sys
import time
import types

import jax
from flax import nnx

import jaxformers as jf
from jaxformers.convert import orbax_io

STOP_AT: str | None = None
completed = 0


def _stage(name: str) -> None:
    print("stage", name, flush=True)
    if name == STOP_AT and completed >= 1:
        time.sleep(600)  # the test kills us here


def _instrument() -> None:
    """Wrap the late steps of `orbax_io.save` (module globals it looks up at call time) to report and stop."""
    write_synced, swap_in, exchange = orbax_io._write_synced, orbax_io._swap_in, orbax_io._exchange

    def write_synced_(path, text):
        if path.name == orbax_io.MARKER:
            _stage("marker")
        return write_synced(path, text)

    def swap_in_(tmp, directory):
        _stage("swap")
        return swap_in(tmp, directory)

    def exchange_(a, b):
        done = exchange(a, b)
        if done:
            _stage("exchanged")
        return done

    def rmtree_(path, *args, **kw):
        if orbax_io._OLD in path.name:
            _stage("cleanup")
        return shutil.rmtree(path, *args, **kw)

    orbax_io._write_synced, orbax_io._swap_in, orbax_io._exchange = write_synced_, swap_in_, exchange_
    orbax_io.shutil = types.SimpleNamespace(rmtree=rmtree_)  # orbax_io's own name only; the module stays intact


def main(source: str, target: str, stop_at: str | None = None) -> None:
    global STOP_AT, completed
    STOP_AT = stop_at
    _instrument()
    mesh = jf.make_mesh((2, 4))
    model = jf.load(source, mesh=mesh, rules=jf.FSDP_TP)
    params = nnx.state(model, nnx.Param)
    fill = jax.jit(lambda tree, s: jax.tree.map(lambda x: x * 0 + s, tree))  # keeps each array's sharding
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        nnx.update(model, fill(params, step))
        print("saving", step, time.monotonic(), flush=True)
        jf.save_checkpoint(model, target)
        completed = step
        print("saved", step, time.monotonic(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
