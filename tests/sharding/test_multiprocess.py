"""Two real processes on 127.0.0.1 (4 CPU devices each, gloo collectives) against one process with 8 devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(hf_dir, out: Path, process_id: int, num_processes: int, port: int, devices: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    args = [sys.executable, str(HERE / "mp_worker.py"), str(hf_dir), str(out), str(process_id), str(num_processes)]
    return subprocess.Popen(
        [*args, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=out
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
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    port = _free_port()
    procs = [_start(llama_dir, single, 0, 1, 0, devices=8)]
    procs += [_start(llama_dir, multi, i, 2, port, devices=4) for i in range(2)]
    outputs = _finish(procs)
    assert "done 0 1 8" in outputs[0] and "done 0 2 8" in outputs[1] and "done 1 2 8" in outputs[2]
    ref, got = np.load(single / "result.npz"), np.load(multi / "result.npz")
    assert sorted(ref.files) == sorted(got.files) and len(ref.files) > 3
    for key in ref.files:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in (k for k in got.files if k.startswith("new/")):  # the checkpoint restores what was saved
        np.testing.assert_array_equal(got["restored/" + key[4:]], got[key], err_msg=key)
    assert (multi / "ckpt" / "jaxformers.json").is_file()
