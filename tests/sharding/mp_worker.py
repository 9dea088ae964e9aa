"""One process of the multi-process test (or the single-process reference run of the same script).

`python mp_worker.py HF_DIR OUT_DIR PROCESS_ID NUM_PROCESSES PORT ORBAX_DIR`: joins the run with
`jf.distributed.initialize`, loads the HF model onto one FSDP mesh over every process's devices, and the Orbax
checkpoint ORBAX_DIR (written by the test from a (2, 4) FSDP_TP mesh) onto that (8,) mesh; feeds each process its own
rows of the batch, runs a forward and one AdamW step, saves a checkpoint, restores it onto a (2, 4) FSDP_TP mesh, and
(process 0) writes the gathered results to OUT_DIR/result.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

import jaxformers as jf


def main(hf_dir: str, out: str, process_id: int, num_processes: int, port: int, orbax_dir: str) -> None:
    if num_processes > 1:
        assert jf.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=60)
    jax.config.update("jax_default_matmul_precision", "highest")
    mesh, rules = jf.make_mesh({"fsdp": -1}), jf.FSDP
    model = jf.AutoModelForCausalLM.from_pretrained(hf_dir, mesh=mesh, rules=rules)
    from_orbax = jf.load(orbax_dir, mesh=mesh, rules=rules)  # saved on another mesh shape, by one process
    ids = np.random.RandomState(1).randint(0, 128, (8, 17)).astype(np.int32)
    rows = len(ids) // jax.process_count()
    local = ids[jax.process_index() * rows : (jax.process_index() + 1) * rows]  # this process's share of the data
    opt = optax.adamw(1e-3)

    def loss_fn(params, apply, batch):
        logits = apply(params, batch[:, :-1]).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean(), logits

    def step(params, opt_state, apply, batch):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, apply, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss, logits

    apply, params = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        new, loss, logits = jax.jit(step, static_argnums=2)(params, opt.init(params), apply, jf.shard_batch(local))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, new)
    nnx.update(model, state)
    jf.save_checkpoint(model, Path(out) / "ckpt")
    restored = jf.load(Path(out) / "ckpt", mesh=jf.make_mesh({"fsdp": 2, "tp": 4}), rules=jf.FSDP_TP)
    embedding = jf.loading.model_params(restored)["model.embed_tokens.embedding"]
    assert dict(embedding.sharding.mesh.shape) == {"data": 1, "fsdp": 2, "tp": 4}, embedding.sharding
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    result = {"logits": gather(logits), "loss": gather(loss)}
    result |= {f"new/{k}": gather(v) for k, v in jf.loading.model_params(model).items()}
    result |= {f"restored/{k}": gather(v) for k, v in jf.loading.model_params(restored).items()}
    result |= {f"orbax/{k}": gather(v) for k, v in jf.loading.model_params(from_orbax).items()}
    if jf.distributed.is_primary():
        np.savez(Path(out) / "result.npz", **result)
    print("done", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6])
