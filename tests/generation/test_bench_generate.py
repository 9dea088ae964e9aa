"""scripts/bench_generate.py runs end to end (an encoder-decoder, the smallest settings): the host line, both
frameworks' rows with their first calls, the ratio, and greedy tokens that agree with PyTorch's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_generate.py"
NUM = r"\d+\.\d+"


def test_bench_generate_smoke():
    args = ["--arch", "t5", "--batches", "1", "--prompt", "8", "--new", "4", "--repeats", "1"]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^cpu: .+\(.*\); jax ", out, re.M), out  # model and vector extensions (issue 15)
    ours = re.search(rf"^t5 +1 +jaxformers +({NUM}) +({NUM}) +({NUM}) \(-?{NUM}\) +({NUM})$", out, re.M)
    theirs = re.search(rf"^ +pytorch +({NUM}) +({NUM}) +({NUM}) +tokens agreeing with pytorch: 100\.0%$", out, re.M)
    assert ours and theirs, out  # greedy: every token the same
    tps, first, ratio = float(ours.group(1)), float(ours.group(3)), float(ours.group(4))
    pt_tps, pt_first = float(theirs.group(1)), float(theirs.group(3))
    assert first > 0 and pt_first > 0
    assert abs(ratio - tps / pt_tps) < 0.01 + 0.01 * ratio, out
