"""The README's main job (`scripts/quickstart.py`) runs end to end and prints what it promises, without PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run the script as `__main__`, then report whether anything imported torch (the GGUF path must not: issue 3)
RUN_AND_REPORT = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
    "print(f'torch imported: {\"torch\" in sys.modules}')"
)


def test_quickstart_prints_similarities_and_the_chat_answer_without_torch():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = str(ROOT / "scripts" / "quickstart.py")
    out = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, script, "--max-new-tokens", "24"],
                         capture_output=True, text=True, env=env, timeout=600, check=True).stdout  # fmt: skip
    assert "most similar pair: [0] and [1] (0.755)" in out
    assert "  assistant: The capital of France is Paris." in out  # the text-generation task's chat reply
    assert "  streamed: The capital of France is Paris." in out  # the same answer from jf.stream
    assert "jf.task('sentiment-analysis')  # distilbert/distilbert-base-uncased-finetuned-sst-2-english" in out
    assert out.rstrip().endswith("torch imported: False"), out[-300:]
