"""scripts/bench_forward.py runs end to end (smallest sizes) and reports the ratio and the compile time separately."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_forward.py"


@pytest.mark.parametrize("arch", ["bert", "roberta", "deberta-v2", "modernbert"])
def test_bench_forward_smoke(arch):
    args = ["--arch", arch, "--layers", "1", "--hidden", "32", "--batch", "1", "--seq", "8", "--repeats", "5"]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^  ratio \(pytorch time / jaxformers time\): \d+\.\d{3}$", out, re.M), out
    assert re.search(rf"^{arch} .* encoder forward", out, re.M) and re.search(r"^  cpu: .+", out, re.M), out
    assert re.search(r"^  jaxformers compile time: \d+\.\d+ s", out, re.M), out  # its own line, not in the ratio
    diff = float(re.search(r"max \|diff\| vs pytorch: (\S+)", out).group(1))
    assert diff < 1e-2, out  # loose: a smoke check (accelerators may run fp32 matmuls at reduced precision)


def test_bench_forward_bfloat16_and_the_xla_choice():
    """`--dtype bfloat16` runs both sides in bf16; the "xla:cpu" line names the compiler choice (oneDNN forced on
    through the environment for a batch of 512 tokens, XLA's defaults with --xla-defaults)."""
    base = ["--layers", "1", "--hidden", "32", "--batch", "4", "--seq", "128", "--repeats", "5"]
    env = {**os.environ, "JAXFORMERS_XLA_CPU_ONEDNN": "1"}
    for extra, choice in ((["--dtype", "bfloat16"], "oneDNN GEMM"), (["--xla-defaults"], "XLA defaults")):
        run = subprocess.run([sys.executable, str(SCRIPT), *base, *extra], capture_output=True, text=True,
                             timeout=120, env=env)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        out = run.stdout
        assert re.search(rf"^  xla:cpu: {choice}", out, re.M), out
        assert ("bfloat16, 1 layers" in out) == ("--dtype" in extra), out
        diff = float(re.search(r"max \|diff\| vs pytorch: (\S+)", out).group(1))
        assert diff < (0.1 if "--dtype" in extra else 1e-4), out  # bf16: both round to 8 mantissa bits
        assert "persistent compilation cache" not in run.stderr  # the oneDNN cache warning is filtered
