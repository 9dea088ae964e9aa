"""The README's main job (`scripts/quickstart.py`) runs end to end and prints what it promises, without PyTorch."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)  # for its constants (importing it runs nothing)

# run the script as `__main__`, then report whether anything imported torch (the GGUF path must not: issue 3)
RUN_AND_REPORT = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
    "print(f'torch imported: {\"torch\" in sys.modules}')"
)


def test_quickstart_prints_similarities_the_chat_answer_and_sentiments_without_torch(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = str(ROOT / "scripts" / "quickstart.py")
    model_dir = tmp_path / "sentiment"
    # the sentiment model is fine-tuned on 64 sentences here (the real main job: 7,530, ~2 minutes)
    args = ["--max-new-tokens", "24", "--sentiment-model", str(model_dir), "--sentiment-train", "64"]
    out = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, script, *args],
                         capture_output=True, text=True, env=env, timeout=900, check=True).stdout  # fmt: skip
    assert "most similar pair: [0] and [1] (0.755)" in out
    assert "  assistant: The capital of France is Paris." in out  # the text-generation task's chat reply
    assert "  streamed: The capital of France is Paris." in out  # the same answer from jf.stream
    # no model yet: fine-tuned, saved (renamed from its .partial folder), then used through jf.task
    assert "Fine-tuning the sentiment model once (all-MiniLM-L6-v2 + a 2-way head on 64" in out
    assert (model_dir / "config.json").exists() and not (tmp_path / "sentiment.partial").exists()
    rows = re.findall(r"^  (POSITIVE|NEGATIVE) (0\.\d{3}|1\.000)  (.+)$", out, re.M)
    assert [text for _, _, text in rows] == quickstart.REVIEWS, out
    assert all(float(score) >= 0.5 for _, score, _ in rows)  # the winning label's probability, 2 labels
    assert "jf.task('ner')  # dbmdz/bert-large-cased-finetuned-conll03-english" in out
    assert out.rstrip().endswith("torch imported: False"), out[-300:]
    # a second run reuses the saved model (no fine-tuning) and classifies the same way
    again = subprocess.run([sys.executable, script, "--no-chat", *args, "A man is eating food.", "A horse."],
                           capture_output=True, text=True, env=env, timeout=600, check=True).stdout  # fmt: skip
    assert "Fine-tuning" not in again
    assert re.findall(r"^  (POSITIVE|NEGATIVE) (0\.\d{3}|1\.000)  (.+)$", again, re.M) == rows
