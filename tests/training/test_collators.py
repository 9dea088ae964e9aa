"""Collators against transformers' own (`return_tensors="np"`) on features made by tokenize_dataset, the masked-LM
statistics, and the fixed `length` the DataLoader asks for."""

from __future__ import annotations

import numpy as np
import pytest

import tokenizer_fixtures as tf
from jaxformers.tokenization import AutoTokenizer
from jaxformers.training.collators import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    collator_for,
)
from jaxformers.training.data import tokenize_dataset

transformers = pytest.importorskip("transformers")

TEXTS = ["A gripping, beautifully shot film.", "Tedious and overlong; the plot never recovers from its slow start.",
         "ok", "Charming performances throughout.",
         "The worst film of the year, by far, and the longest too."]  # fmt: skip


@pytest.fixture(scope="module")
def toks():
    """(ours, transformers') MiniLM WordPiece tokenizers from the same files."""
    path = str(tf.minilm_dir())
    return AutoTokenizer.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)


def assert_same(ours: dict, theirs, keys=None):
    keys = keys or list(theirs.keys())
    assert sorted(ours) == sorted(keys), (sorted(ours), sorted(keys))
    for key in keys:
        expected = np.asarray(theirs[key])
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)
        assert ours[key].dtype == (np.float32 if expected.dtype.kind == "f" else np.int32), key


@pytest.mark.parametrize("side, multiple", [("right", None), ("right", 8), ("left", None)])
def test_with_padding_matches_hf(toks, side, multiple):
    ours, hf = toks
    ours.padding_side = hf.padding_side = side
    try:
        records = [{"text": t, "text_pair": t[::-1], "label": i % 3} for i, t in enumerate(TEXTS)]
        features = list(tokenize_dataset(records, ours, "text-classification"))
        expected = transformers.DataCollatorWithPadding(hf, pad_to_multiple_of=multiple, return_tensors="np")(features)
        assert_same(DataCollatorWithPadding(ours, pad_to_multiple_of=multiple)(features), expected)
        if multiple:
            assert expected["input_ids"].shape[1] % multiple == 0
        fixed = DataCollatorWithPadding(ours)(features, length=64)
        expected = transformers.DataCollatorWithPadding(hf, padding="max_length", max_length=64,
                                                        return_tensors="np")(features)  # fmt: skip
        assert_same(fixed, expected)
    finally:
        ours.padding_side = hf.padding_side = "right"


def test_float_labels_stack(toks):
    ours, hf = toks
    multi = tokenize_dataset([{"text": t, "label": [i % 2, 2]} for i, t in enumerate(TEXTS)], ours,
                             "text-classification")  # fmt: skip
    batch = DataCollatorWithPadding(ours)(list(multi))
    expected = transformers.DataCollatorWithPadding(hf, return_tensors="np")(list(multi))
    assert_same(batch, expected)
    assert batch["labels"].dtype == np.float32 and batch["labels"].shape == (5, 3)


def test_token_classification_matches_hf(toks):
    ours, hf = toks
    words = [t.split() for t in TEXTS]
    records = [{"tokens": w, "ner_tags": [i % 4 for i in range(len(w))]} for w in words]
    features = list(tokenize_dataset(records, ours, "token-classification"))
    for multiple in (None, 16):
        expected = transformers.DataCollatorForTokenClassification(hf, pad_to_multiple_of=multiple,
                                                                   return_tensors="np")(features)  # fmt: skip
        batch = DataCollatorForTokenClassification(ours, pad_to_multiple_of=multiple)(features)
        assert_same(batch, expected)
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    batch = collator_for("ner", ours)(features, length=32)
    assert batch["labels"].shape == (5, 32) and (batch["labels"][:, 20:] == -100).all()


def test_seq2seq_matches_hf(tmp_path):
    ours = AutoTokenizer.from_pretrained(str(tf.t5_dir(tmp_path)))
    ours.save_pretrained(tmp_path / "saved")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    records = [{"text": t, "summary": t[: 5 + 7 * i]} for i, t in enumerate(TEXTS)]
    features = list(tokenize_dataset(records, ours, "text2text-generation", max_length=24, max_target_length=24))
    for multiple in (None, 8):
        expected = transformers.DataCollatorForSeq2Seq(hf, pad_to_multiple_of=multiple, return_tensors="np")(features)
        assert_same(DataCollatorForSeq2Seq(ours, pad_to_multiple_of=multiple)(features), expected)
    fixed = collator_for("summarization", ours, label_length=30)(features, length=24)
    assert fixed["input_ids"].shape == (5, 24) and fixed["labels"].shape == (5, 30)
    np.testing.assert_array_equal(fixed["labels"][:, : expected["labels"].shape[1]][:, :8],
                                  np.asarray(expected["labels"])[:, :8])  # fmt: skip
    with pytest.raises(ValueError, match="a target has .* tokens, more than label_length=3"):
        collator_for("summarization", ours, label_length=3)(features)


@pytest.fixture(scope="module")
def mlm_features(toks):
    lines = [" ".join(TEXTS[(i + j) % 5] for j in range(1 + i % 3)) for i in range(40)]
    return list(tokenize_dataset([{"text": t} for t in lines], toks[0], "fill-mask", max_length=48))


@pytest.mark.parametrize("with_special_mask", [True, False])
def test_mlm_equals_hf_draw_for_draw(toks, mlm_features, with_special_mask):
    """Same generator state -> the very batch transformers' numpy collator makes (same draws in the same order)."""
    ours, hf = toks
    features = mlm_features if with_special_mask else [
        {k: v for k, v in f.items() if k != "special_tokens_mask"} for f in mlm_features]  # fmt: skip
    expected = transformers.DataCollatorForLanguageModeling(hf, return_tensors="np", seed=7)(features)
    batch = DataCollatorForLanguageModeling(ours)(features, rng=np.random.default_rng(7))
    assert_same(batch, expected)
    assert (batch["labels"] != -100).sum() > 20


def test_mlm_statistics(toks, mlm_features):
    """Over ~30k tokens: 15% of the maskable tokens are selected, 80/10/10 of them [MASK]/random/unchanged, within
    5 standard deviations; special tokens and padding are never selected; the same rng gives the same batch."""
    ours = toks[0]
    collate = DataCollatorForLanguageModeling(ours)
    assert collate.needs_rng
    features = mlm_features * 20
    batch = collate(features, length=64, rng=np.random.default_rng(0))
    original = DataCollatorWithPadding(ours)(features, length=64)["input_ids"]
    selected = batch["labels"] != -100
    special = np.isin(original, ours.all_special_ids)
    assert not (selected & special).any() and (batch["attention_mask"] == 0).any()
    np.testing.assert_array_equal(batch["labels"][selected], original[selected])
    n = int((~special).sum())
    k = int(selected.sum())
    assert abs(k / n - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n)
    masked = batch["input_ids"][selected] == ours.mask_token_id
    unchanged = batch["input_ids"][selected] == original[selected]
    assert abs(masked.mean() - 0.8) < 5 * np.sqrt(0.8 * 0.2 / k)
    assert abs(unchanged.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / k) + 1 / 30522  # a random token may be itself
    assert (batch["input_ids"][~selected] == original[~selected]).all()
    again = collate(features, length=64, rng=np.random.default_rng(0))
    other = collate(features, length=64, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again["input_ids"], batch["input_ids"])
    assert (other["labels"] != batch["labels"]).any()


def test_causal_lm_matches_hf(toks, mlm_features):
    ours, hf = toks
    features = [{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in mlm_features[:6]]
    expected = transformers.DataCollatorForLanguageModeling(hf, mlm=False, return_tensors="np")(features)
    collate = collator_for("text-generation", ours)
    assert not collate.needs_rng
    assert_same(collate(features), expected)


def test_length_and_padding_errors(toks):
    ours = toks[0]
    features = list(tokenize_dataset([{"text": t, "label": 0} for t in TEXTS], ours, "text-classification"))
    with pytest.raises(ValueError, match="a row has 18 tokens, more than length=16"):
        DataCollatorWithPadding(ours)(features, length=16)
    with pytest.raises(ValueError, match="cannot collate an empty list"):
        DataCollatorWithPadding(ours)([])
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive integer"):
        DataCollatorWithPadding(ours, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="'extra' has rows of different lengths"):
        DataCollatorWithPadding(ours)([{**f, "extra": [1] * i} for i, f in enumerate(features)])
    no_pad = type("Tok", (), {"pad_token_id": None, "eos_token_id": None, "padding_side": "right",
                              "mask_token_id": None})()  # fmt: skip
    with pytest.raises(ValueError, match="no padding token.*tokenizer.pad_token = tokenizer.eos_token"):
        DataCollatorWithPadding(no_pad)(features)
    with pytest.raises(ValueError, match="no mask token.*mlm=False"):
        DataCollatorForLanguageModeling(no_pad)
    with pytest.raises(ValueError, match="must not exceed 1"):
        DataCollatorForLanguageModeling(ours, mask_replace_prob=0.9, random_replace_prob=0.2)


def test_question_answering_positions_follow_left_padding(toks):
    ours = toks[0]
    context = "Paris is the capital of France, and its largest city by far."
    records = [{"question": q, "context": context, "answers": {"text": ["Paris"], "answer_start": [0]}}
               for q in ("Which city?", "Which city is the capital of the country named France?")]  # fmt: skip
    features = list(tokenize_dataset(records, ours, "question-answering"))
    answers = [f["input_ids"][f["start_positions"]] for f in features]
    ours.padding_side = "left"
    try:
        batch = collator_for("question-answering", ours)(features, length=40)
    finally:
        ours.padding_side = "right"
    rows = np.arange(2)
    assert (batch["input_ids"][rows, batch["start_positions"]] == answers).all()
    assert (batch["input_ids"][rows, batch["end_positions"]] == answers).all()
    assert batch["attention_mask"][0, 0] == 0  # the short row was padded on the left


def test_collator_for_tasks(toks):
    ours = toks[0]
    kinds = {"text-classification": DataCollatorWithPadding, "question-answering": DataCollatorWithPadding,
             "token-classification": DataCollatorForTokenClassification, "translation": DataCollatorForSeq2Seq,
             "masked-lm": DataCollatorForLanguageModeling, "causal-lm": DataCollatorForLanguageModeling}  # fmt: skip
    for task, kind in kinds.items():
        assert type(collator_for(task, ours)) is kind, task
    assert collator_for("fill-mask", ours).mlm and not collator_for("text-generation", ours).mlm
    with pytest.raises(ValueError, match="unknown training task"):
        collator_for("object-detection", ours)
