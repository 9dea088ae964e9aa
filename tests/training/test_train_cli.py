"""`jaxformers train` end to end on a tiny random BERT with the real MiniLM tokenizer: the flags reach the Trainer,
the saved folder is a Hugging Face model that transformers loads with the same logits, --resume continues a run
exactly, and each bad input is one clear line with exit status 1."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizer_fixtures as tf

from jaxformers.training import cli

# tests/conftest.py by path (another conftest.py could shadow `import conftest`)
_spec = importlib.util.spec_from_file_location("_jf_root_conftest", Path(__file__).parents[1] / "conftest.py")
root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root_conftest)

NEUTRAL = "the a movie film plot actor scene story it was and with of this that".split()
CUES = {"pos": ["great", "wonderful", "brilliant"], "neg": ["awful", "boring", "terrible"]}


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Sentences of neutral words with one cue word that decides the label (learnable by a tiny model)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(NEUTRAL, size=int(rng.integers(3, 8))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(CUES[label])))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def tiny_bert(directory, hf_class: str) -> str:
    """A tiny random BERT of `hf_class` with MiniLM's tokenizer files next to it."""
    root_conftest.build_tiny("bert", hf_class, directory, vocab_size=30522, pad_token_id=0)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tf.minilm_dir() / name).exists():
            shutil.copy(tf.minilm_dir() / name, directory / name)
    return str(directory)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random BERT without a classification head (a base model, as a pretrained checkpoint), one with a
    3-label head, and train / eval CSVs."""
    root = tmp_path_factory.mktemp("train-cli")
    return {"model": tiny_bert(root / "bert", "BertModel"),
            "classifier3": tiny_bert(root / "bert-3-labels", "BertForSequenceClassification"),
            "train": write_csv(root / "train.csv", sentiment_rows(48, seed=0)),
            "eval": write_csv(root / "dev.csv", sentiment_rows(16, seed=1))}  # fmt: skip


def train_cli(argv: list[str]) -> int:
    """`jaxformers train ARGV` through the subcommand's own parser and handler."""
    parser = argparse.ArgumentParser(prog="jaxformers")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def base_args(files, output, *extra) -> list[str]:
    return ["--task", "sentiment-analysis", "--model", files["model"], "--train", files["train"],
            "--output", str(output), "--batch-size", "8", "--max-length", "16", "--seed", "0",
            "--logging-steps", "1", "--devices", "1", *extra]  # fmt: skip


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


EPOCHS, STEPS_PER_EPOCH = 10, math.ceil(48 / 8)
STEPS = EPOCHS * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    """One full run: 10 epochs of 48 examples in batches of 8 (60 updates), evaluated every epoch, lr 5e-3 with 25%
    warmup, checkpoints at updates 30 and 60. Returns (output folder, argv, the summary it printed)."""
    output = tmp_path_factory.mktemp("run") / "out"
    argv = base_args(files, output, "--eval", files["eval"], "--epochs", str(EPOCHS), "--lr", "5e-3",
                     "--warmup-ratio", "0.25", "--weight-decay", "0.01", "--save-steps", "30")  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_cli(argv) == 0
    return output, argv, json.loads(out.getvalue().strip().splitlines()[-1])


def test_train_saves_a_model_transformers_loads(trained):
    output, _, summary = trained
    assert summary["global_step"] == STEPS and summary["output"] == str(output)
    # it learned the cue words: the held-out sentences are classified correctly
    assert summary["eval_accuracy"] == 1.0 and summary["eval_loss"] < 0.1, summary

    # the flags reached the optimizer: the logged learning rates follow the linear warmup / decay from --lr
    logs = [e for e in read_jsonl(output / "metrics.jsonl") if "learning_rate" in e]
    warmup = math.ceil(0.25 * STEPS)
    for entry in logs:
        s = entry["step"]  # the rate of the update just taken (its index s - 1)
        expected = 5e-3 * ((s - 1) / warmup if s - 1 < warmup else (STEPS - (s - 1)) / (STEPS - warmup))
        assert entry["learning_rate"] == pytest.approx(expected, rel=1e-5, abs=1e-9), entry
    assert [e["step"] for e in logs] == list(range(1, STEPS + 1))  # --logging-steps 1
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["30", "60"]  # --save-steps 30

    # HF layout with the data's label names; transformers loads it and agrees with jaxformers' pipeline
    import torch
    import transformers

    import jaxformers as jf

    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    texts = ["the movie was great", "a boring film of this actor"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(output).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        expected = hf(**hf_tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    classify = jf.task("text-classification", model=str(output))
    got = classify(texts, top_k=None)
    for row, probs in zip(got, expected):
        scores = {r["label"]: r["score"] for r in row}
        np.testing.assert_allclose([scores["neg"], scores["pos"]], probs, rtol=1e-4, atol=1e-6)
    assert [max(r, key=lambda r: r["score"])["label"] for r in got] == ["pos", "neg"]


def test_resume_continues_the_run_exactly(trained, tmp_path, capsys):
    """The run with its last checkpoint removed (as if killed after update 30) resumes: the same losses for updates
    31..60 and the same final evaluation as the uninterrupted run."""
    output, argv, summary = trained
    cut = tmp_path / "cut"
    shutil.copytree(output, cut)
    shutil.rmtree(cut / "checkpoints" / "60")
    argv = [str(cut) if a == str(output) else a for a in argv]
    assert train_cli(argv) == 1  # a fresh run refuses another run's checkpoints
    err = capsys.readouterr().err
    assert "already holds checkpoints [30]" in err, err
    assert train_cli([*argv, "--resume"]) == 0, capsys.readouterr().err
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    timings = ("eval_runtime", "eval_samples_per_second")
    assert {k: v for k, v in resumed.items() if k not in timings} == {
        **{k: v for k, v in summary.items() if k not in timings}, "output": str(cut)}  # fmt: skip
    losses = [[(e["step"], e["loss"]) for e in read_jsonl(d / "metrics.jsonl") if "loss" in e] for d in (output, cut)]
    assert len(losses[0]) == STEPS
    assert losses[1] == losses[0], [(a, b) for a, b in zip(*losses) if a != b]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--train": "missing.csv"}, "FileNotFoundError: --train {tmp}/missing.csv: no such file"),
        ({"--eval": "missing.csv"}, "FileNotFoundError: --eval {tmp}/missing.csv: no such file"),
        ({"--task": "summarisation"}, "unknown training task 'summarisation'"),
        ({"--task": "text-generation"}, "is a bert model, which has no causal-lm head for --task text-generation; "
                                        "bert trains for: fill-mask, question-answering, text-classification, "
                                        "token-classification"),  # fmt: skip
        ({"--model": "classifier3"}, "already has a BertForSequenceClassification head with 3 labels, but --train has "
                                     "2 (neg, pos): start from the base model"),
        ({"--eval-steps": "5"}, "--eval-steps needs --eval FILE"),
        ({"--lr": "-1"}, "learning_rate=-1.0 must be a number >= 0"),
        ({"--label-column": "stars"}, "record 0 has no column 'stars' (its columns: ['label', 'text'])"),
    ],
    ids=["missing-train", "missing-eval", "unknown-task", "no-such-head", "head-of-other-size", "eval-steps-alone",
         "negative-lr", "unknown-column"],
)
def test_bad_input_is_one_line_and_status_1(files, tmp_path, capsys, change, message):
    argv = base_args(files, tmp_path / "out")
    for flag, value in change.items():
        value = str(tmp_path / value) if value.endswith(".csv") else files.get(value, value)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert train_cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxformers train: error: ") and "\n" not in err, err
    assert message.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "out").exists()  # nothing written
