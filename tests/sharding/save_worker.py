"""Saves one checkpoint over and over, each time with every parameter set to the step number, until killed.

Run by test_checkpoint.py: `python save_worker.py SOURCE_CHECKPOINT TARGET_DIR`; prints "ready", then "saved N".
"""

from __future__ import annotations

import sys

import jax
from flax import nnx

import jaxformers as jf


def main(source: str, target: str) -> None:
    mesh = jf.make_mesh((2, 4))
    model = jf.load(source, mesh=mesh, rules=jf.FSDP_TP)
    params = nnx.state(model, nnx.Param)
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        nnx.update(model, jax.tree.map(lambda x, s=step: x * 0 + s, params))  # keeps each array's sharding
        jf.save_checkpoint(model, target)
        print("saved", step, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
