"""scripts/bench_tasks.py runs end to end (one task, four inputs): the host line and a row with both sides' times
and the ratios, which are the pipeline's times over jaxformers' warm time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_tasks.py"
NUM = r"(\d+\.\d+)"


def test_bench_tasks_smoke():
    run = subprocess.run([sys.executable, str(SCRIPT), "--tasks", "text-classification", "--n", "4"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^CPU: .+\(.*\); \d+ cores$", out, re.M), out
    row = re.search(rf"^text-classification +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM}$", out, re.M)
    assert row, out
    first, warm, pipe, pipe8, ratio, ratio8 = map(float, row.groups())
    assert min(first, warm, pipe, pipe8) > 0
    assert abs(ratio - pipe / warm) < 0.02 + 0.02 * ratio and abs(ratio8 - pipe8 / warm) < 0.02 + 0.02 * ratio8, out
