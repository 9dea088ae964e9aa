"""Two real processes on 127.0.0.1 (4 CPU devices each, gloo collectives) against one process with 8 devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

import jaxformers as jf
from jaxformers.loading import model_params

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(hf_dir, orbax_dir, out: Path, process_id: int, num_processes: int, port: int, devices: int):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    args = [HERE / "mp_worker.py", hf_dir, out, process_id, num_processes, port, orbax_dir]
    return subprocess.Popen(
        [sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    return outputs


def test_two_processes_equal_one(llama_dir, tmp_path):
    """Both runs load the HF checkpoint and an Orbax checkpoint this process saved from a (2, 4) FSDP_TP mesh onto an
    (8,) FSDP mesh, train one step, save, and restore onto (2, 4) FSDP_TP; all of it equal across 1 and 2 processes."""
    single, multi, orbax_dir = tmp_path / "single", tmp_path / "multi", tmp_path / "orbax"
    single.mkdir()
    multi.mkdir()
    mesh = jf.make_mesh({"fsdp": 2, "tp": 4})
    model = jf.load(llama_dir, mesh=mesh, rules=jf.FSDP_TP)
    jf.save_checkpoint(model, orbax_dir)
    saved = {k: np.asarray(v) for k, v in model_params(model).items()}
    port = _free_port()
    procs = [_start(llama_dir, orbax_dir, single, 0, 1, 0, devices=8)]
    procs += [_start(llama_dir, orbax_dir, multi, i, 2, port, devices=4) for i in range(2)]
    outputs = _finish(procs)
    assert "done 0 1 8" in outputs[0] and "done 0 2 8" in outputs[1] and "done 1 2 8" in outputs[2]
    ref, got = np.load(single / "result.npz"), np.load(multi / "result.npz")
    assert sorted(ref.files) == sorted(got.files) and len(ref.files) > 3
    for key in ref.files:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in (k for k in got.files if k.startswith("new/")):  # the checkpoint restores what was saved
        np.testing.assert_array_equal(got["restored/" + key[4:]], got[key], err_msg=key)
    assert {k[6:] for k in got.files if k.startswith("orbax/")} == saved.keys()
    for key, value in saved.items():  # the parent's checkpoint, read by two processes onto another mesh
        np.testing.assert_array_equal(got["orbax/" + key], value, err_msg=key)
    assert (multi / "ckpt" / "jaxformers.json").is_file()
