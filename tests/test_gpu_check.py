"""scripts/gpu_check.sh without a GPU: every stage's command line is accepted by its script's argument parser.

The check runs the script with PYTHON pointing at a stand-in interpreter that parses each benchmark's arguments with
the script's own argparse parser and stops there (pytest and `-c` snippets are accepted as they are), so a renamed
flag or a bad value in a stage fails here instead of in the short lease of a GPU machine.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = f"""#!{sys.executable}
import argparse, runpy, sys
args = sys.argv[1:]
if args[:1] in (["-c"], ["-m"]):
    sys.exit(0)
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, argv=None, namespace=None):
    parse(self, argv, namespace)  # exits 2 on an unknown flag or a bad value
    print("ARGS-OK", args[0])
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
sys.argv = args
runpy.run_path(args[0], run_name="__main__")
"""
STAGES = ["kernels", "attention", "generate", "generate_1b", "decode", "quant_matmul", "tune", "attention_f32",
          "generate_int8", "generate_f32", "quant_kernels", "quant_pallas", "quant_tune", "quant_rows", "quant_q8",
          "generate_quant"]  # fmt: skip


def test_every_stage_parses_its_arguments(tmp_path):
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(python), "TAIL": "3"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), *STAGES], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0].removeprefix("=== ") for line in summary[:-1]] == STAGES, summary
    for stage, line in zip(STAGES, summary):
        assert "rc=0 " in line, (line, (out / f"{stage}.log").read_text()[-2000:])
        if stage not in ("kernels", "quant_kernels"):  # pytest is not run by the stand-in
            assert "ARGS-OK scripts/" in (out / f"{stage}.log").read_text(), stage
    assert not (ROOT / "jaxformers" / "kernels").is_symlink(), "the check linked kernels into an installed checkout"
