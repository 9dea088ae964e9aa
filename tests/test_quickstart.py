"""The README's main job (`scripts/quickstart.py`) runs end to end and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_prints_similarities_and_the_chat_answer():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--max-new-tokens", "24"],
                         capture_output=True, text=True, env=env, timeout=600, check=True).stdout  # fmt: skip
    assert "most similar pair: [0] and [1] (0.755)" in out
    assert "The capital of France is Paris." in out
