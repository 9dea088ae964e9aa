"""Orbax checkpoints: restore on another mesh or one device; atomic saves under SIGKILL; clear shape errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from sharding_helpers import mesh_for

import jaxformers as jf
from jaxformers.convert import orbax_io
from jaxformers.loading import model_params

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def _values(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.device_get(v)) for k, v in model_params(model).items()}


@pytest.fixture(scope="module")
def saved(llama_dir, tmp_path_factory):
    """A checkpoint written from mesh (2, 4) under FSDP_TP, and the values it holds."""
    mesh = mesh_for("fsdp_tp", (2, 4))
    model = jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=jf.FSDP_TP)
    directory = tmp_path_factory.mktemp("ckpt") / "llama"
    assert jf.save_checkpoint(model, directory) == directory
    return directory, _values(model)


@pytest.mark.parametrize("target", ["fsdp-(8,)", "tp-(4, 2)", "one-device"])
def test_restore_on_another_topology(saved, target):
    directory, expected = saved
    if target == "one-device":
        model = jf.load(directory)
        assert all(len(v.sharding.device_set) == 1 for v in model_params(model).values())
    else:
        preset, shape = target.split("-")
        mesh = mesh_for(preset, eval(shape))
        model = jf.load(directory, mesh=mesh, rules=preset)
        embedding = model_params(model)["model.embed_tokens.embedding"]
        assert embedding.sharding.mesh == mesh and len(embedding.addressable_shards) == 8
    assert type(model).__name__ == "LlamaForCausalLM"
    got = _values(model)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_orbax_shapes_must_match_config(saved, tmp_path):
    directory, _ = saved
    copy = tmp_path / "edited"
    copy.mkdir()
    for item in directory.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(
        (directory / "config.json").read_text().replace('"vocab_size": 128', '"vocab_size": 96')
    )
    with pytest.raises(ValueError) as err:
        jf.load(copy)
    assert "does not match the LlamaForCausalLM built from its config: 2 problem(s)" in str(err.value)
    assert "model.embed_tokens.embedding: checkpoint has (128, 64), the model expects (96, 64)" in str(err.value)


def _zeroed(llama_dir):
    model = jf.load(llama_dir)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 0, params))
    return model


# Where a stage-targeted kill leaves the target: the previous save's values, or the interrupted save's (swapped in).
# ("marker", a copy complete but for its marker, is left out for time: "swap" leaves a complete copy unswapped.)
STAGES = {"swap": 0, "exchanged": 1, "cleanup": 1}


def _save_until_killed(source, target, env, *, stage=None, fraction=None) -> tuple[list[str], float]:
    """Run save_worker.py and SIGKILL it once it has completed a save: stopped at `stage` of the next save, or (with
    `fraction`) `fraction` of a save's duration into the third save, the duration measured on the second one.
    Returns every line it printed and the kill time (`time.monotonic()`, the clock the worker prints)."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "save_worker.py"), str(source), str(target), *([stage] if stage else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=target.parent.parent,
    )  # fmt: skip
    lines: list[str] = []
    seen = threading.Condition()

    def read():
        for line in proc.stdout:
            with seen:
                lines.append(line.strip())
                seen.notify_all()

    def ready_to_kill():
        words = [ln.split() for ln in lines]
        if stage is None:
            return ["saving", "3"] in [w[:2] for w in words]
        heads = [w[0] for w in words]  # that stage reached after a completed save (the worker waits there)
        return "saved" in heads and ["stage", stage] in words[heads.index("saved") :]

    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    reader = threading.Thread(target=read)
    reader.start()
    try:
        with seen:
            assert seen.wait_for(lambda: ready_to_kill() or proc.poll() is not None, timeout=100), lines
        assert proc.poll() is None, (lines, proc.stderr.read())
        if fraction is not None:
            t = {w[0] + w[1]: float(w[2]) for w in (ln.split() for ln in lines) if w[0] in ("saving", "saved")}
            time.sleep(max(0.0, t["saving3"] + fraction * (t["saved2"] - t["saving2"]) - time.monotonic()))
        killed_at = time.monotonic()
        proc.kill()
        proc.wait()
        reader.join()
    finally:
        watchdog.cancel()
        proc.kill()
    return lines, killed_at


def test_killed_saves_leave_the_last_complete_checkpoint(llama_dir, tmp_path):
    """SIGKILL a saving process, each time after at least one completed save: stopped at each late stage of the next
    save (swap, after the atomic exchange, cleanup of the old copy), and at random points spread over a save's
    measured duration. The target always restores the last complete values and nothing partial is listed."""
    source, target = tmp_path / "source", tmp_path / "ckpts" / "latest"
    model = _zeroed(llama_dir)
    jf.save_checkpoint(model, source)
    jf.save_checkpoint(model, target)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    rng = random.Random(0)
    stages = [s for s in STAGES if s != "exchanged" or sys.platform == "linux"]  # renameat2 exchange: Linux only
    attempts = [{"stage": s} for s in stages] + [{"fraction": rng.uniform(0, 0.5)}, {"fraction": rng.uniform(0.5, 1)}]
    for attempt in attempts:
        lines, killed_at = _save_until_killed(source, target, env, **attempt)
        words = [ln.split() for ln in lines]
        starts = {int(w[1]): float(w[2]) for w in words if w[0] == "saving"}
        ends = {int(w[1]): float(w[2]) for w in words if w[0] == "saved"}
        last = max(ends)  # the last completed save: at least one, before the kill
        assert last >= 1 and killed_at > ends[last], (attempt, lines)
        # a timed kill may land after save `last` ended and before save `last + 1` printed its start (a save can run
        # faster than the one it was timed on): the target then holds `last`, as it must
        during = last + 1 in starts and killed_at > starts[last + 1]
        if "stage" in attempt:
            assert during and lines[-1] == f"stage {attempt['stage']}", (attempt, lines)  # killed inside that stage
            allowed = {last + STAGES[attempt["stage"]]}
        else:
            allowed = {last, last + 1} if during else {last}
        assert orbax_io.list_checkpoints(target.parent) == [target]
        assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == ["latest"]
        values = {float(v) for arr in _values(jf.load(target)).values() for v in np.unique(arr)}
        assert len(values) == 1 and values <= allowed, (attempt, values, lines)
    jf.save_checkpoint(model, target)  # the next save clears what killed saves left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest"]


def test_interrupted_swap_without_exchange_recovers_the_old_checkpoint(llama_dir, tmp_path, monkeypatch):
    model = _zeroed(llama_dir)
    target = tmp_path / "latest"
    jf.save_checkpoint(model, target)
    nnx.update(model, jax.tree.map(lambda x: x + 1, nnx.state(model, nnx.Param)))
    real_replace, calls = os.replace, []

    def dies_after_first_move(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old checkpoint is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(orbax_io, "_exchange", lambda a, b: False)
    monkeypatch.setattr(orbax_io.os, "replace", dies_after_first_move)
    with pytest.raises(KeyboardInterrupt):
        jf.save_checkpoint(model, target)
    monkeypatch.setattr(orbax_io.os, "replace", real_replace)
    assert not target.exists()
    assert orbax_io.list_checkpoints(tmp_path) == [target]
    restored = _values(jf.load(target))  # the newest complete copy: the new one, written in full before the swap
    assert all(np.all(v == 1) for v in restored.values())
    jf.save_checkpoint(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
