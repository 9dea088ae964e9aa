"""The training run the sharded-training tests compare, and one process of its multi-process version.

`train(...)` loads a checkpoint (onto a mesh or not), builds `TrainState` / `make_train_step` with AdamW (warmup,
linear decay, weight decay, clipping) and runs the steps with dropout on, each process feeding its own rows of every
global batch through `jf.shard_batch`. It checks after every step that the state kept its shardings.

`python mp_train_worker.py HF_DIR OUT_DIR PROCESS_ID NUM_PROCESSES PORT STEPS`: joins the run with
`jf.distributed.initialize` (gloo collectives on 127.0.0.1), trains the tiny Llama on an FSDP mesh over every
process's devices, and (process 0) writes the losses to OUT_DIR/losses.json.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import jax
import numpy as np

import jaxformers as jf
from jaxformers.training import TrainState, create_optimizer, make_train_step

# Every sharded size divisible by 8 (kv heads by 4), and dropout on: attention probabilities for Llama; hidden
# states, attention probabilities and the classifier input for BERT.
LLAMA = dict(vocab_size=128, hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
             intermediate_size=128, attention_dropout=0.1)  # fmt: skip
BERT = dict(vocab_size=96, hidden_size=64, num_attention_heads=8, intermediate_size=128, hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1)  # fmt: skip
NUM_STEPS = 20


def llama_batches(steps: int, batch: int = 8, length: int = 16) -> list[dict]:
    """Causal LM batches: random ids, the last rows right-padded (padding is not predicted). The first two are the
    same batch: step 0 runs at learning rate 0 (warmup), so steps 0 and 1 differ only in their dropout masks."""
    rng = np.random.RandomState(0)
    out = []
    for _ in range(steps - 1):
        mask = np.ones((batch, length), np.int32)
        mask[-2:, -5:] = 0
        out.append({"input_ids": rng.randint(0, LLAMA["vocab_size"], (batch, length)).astype(np.int32),
                    "attention_mask": mask})  # fmt: skip
    return out[:1] + out


def bert_batches(steps: int, batch: int = 8, length: int = 16, num_labels: int = 3) -> list[dict]:
    """Sequence classification batches: random ids and segments, some rows padded, labels in [0, num_labels); the
    first two are the same batch (see `llama_batches`)."""
    rng = np.random.RandomState(1)
    out = []
    for _ in range(steps - 1):
        mask = (np.arange(length) < rng.randint(length // 2, length + 1, (batch, 1))).astype(np.int32)
        out.append({
            "input_ids": rng.randint(0, BERT["vocab_size"], (batch, length)).astype(np.int32),
            "token_type_ids": (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0),
            "attention_mask": mask,
            "labels": rng.randint(0, num_labels, (batch,)).astype(np.int32),
        })  # fmt: skip
    return out[:1] + out


def shardings(tree) -> list:
    return [x.sharding for x in jax.tree.leaves(tree)]


def train(hf_dir, mesh=None, rules=None, batches=(), *, steps: int = NUM_STEPS):
    """Losses of `len(batches)` train steps (schedule over `steps`), and the final state."""
    model = jf.load(hf_dir, mesh=mesh, rules=rules)
    optimizer, schedule = create_optimizer(1e-3, steps, warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0)
    state = TrainState.create(model, optimizer, seed=0)
    train_step, _ = make_train_step(model, optimizer, schedule=schedule)
    expected, losses = shardings(state), []
    with jf.use_mesh(mesh, rules) if mesh is not None else contextlib.nullcontext():
        for batch in batches:
            if mesh is not None:  # this process's rows of the global batch, assembled into global arrays
                rows = len(batch["input_ids"]) // jax.process_count()
                mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
                batch = jf.shard_batch({k: v[mine] for k, v in batch.items()})
            state, metrics = train_step(state, batch)
            assert shardings(state) == expected, "the train step changed the state's shardings"
            losses.append(float(metrics["loss"]))
    return losses, state


def main(hf_dir: str, out: str, process_id: int, num_processes: int, port: int, steps: int) -> None:
    if num_processes > 1:
        assert jf.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=60)
    jax.config.update("jax_default_matmul_precision", "highest")
    mesh = jf.make_mesh({"fsdp": -1})
    losses, _ = train(hf_dir, mesh, jf.FSDP, llama_batches(steps))
    if jf.distributed.is_primary():
        (Path(out) / "losses.json").write_text(json.dumps(losses))
    print("done", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7]))
