"""`text-classification` / `sentiment-analysis` against `transformers.pipeline` on the same folder (tiny random BERT
with the real MiniLM WordPiece tokenizer, whose tokenizer.json ships with truncation and padding enabled)."""

from __future__ import annotations

import pytest
import transformers

import jaxformers as jf
from jaxformers.core import xla_cpu
from jaxformers.tasks import TRACES

LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
TEXTS = ["I love it", "", "a much longer text, with punctuation and 123 numbers! " * 3, "Crème brûlée, naïve café"]


@pytest.fixture(scope="module")
def folder(task_checkpoint):
    d, _ = task_checkpoint("bert", "BertForSequenceClassification", id2label=LABELS,
                           label2id={v: k for k, v in LABELS.items()})  # fmt: skip
    return d


@pytest.fixture(scope="module")
def pair(folder):
    return transformers.pipeline("text-classification", model=str(folder)), jf.task("sentiment-analysis", model=folder)


def assert_same(ref, ours, tol=1e-4):
    """Same structure, keys, labels and order; scores within `tol`."""
    assert type(ref) is type(ours), (ref, ours)
    if isinstance(ref, list):
        assert len(ref) == len(ours), (ref, ours)
        for r, o in zip(ref, ours):
            assert_same(r, o, tol)
    elif isinstance(ref, dict):
        assert list(ref) == list(ours), (ref, ours)
        for k in ref:
            assert_same(ref[k], ours[k], tol)
    elif isinstance(ref, float):
        assert abs(ref - ours) <= tol, (ref, ours)
    else:
        assert ref == ours, (ref, ours)


@pytest.mark.parametrize("kwargs", [{}, {"top_k": None}, {"top_k": 2}, {"top_k": 7}, {"function_to_apply": "sigmoid"},
                                    {"function_to_apply": "none", "top_k": None}])  # fmt: skip
def test_matches_pipeline(pair, kwargs):
    ref, ours = pair
    inputs = [TEXTS[0], TEXTS, {"text": "first one", "text_pair": "the second"}, [{"text": "a", "text_pair": "b"}] * 2]
    for inp in inputs:
        assert_same(ref(inp, **kwargs), ours(inp, **kwargs))
    labels = {d["label"] for d in ours(TEXTS)}
    assert labels <= set(LABELS.values())


def test_scores_are_decisive(pair):
    """Guard of the fixture: with near-uniform scores a wrong label order could pass the comparisons above."""
    _, ours = pair
    ranked = ours(TEXTS[0], top_k=None)
    assert ranked[0]["score"] - ranked[1]["score"] > 0.05


def test_top_k_at_construction_keeps_transformers_shapes(folder):
    ref = transformers.pipeline("text-classification", model=str(folder), top_k=2)
    ours = jf.pipeline("text-classification", model=folder, top_k=2)
    for inp in (TEXTS[0], TEXTS[:2]):
        assert_same(ref(inp), ours(inp))


def test_compiles_a_handful_of_times(pair):
    _, ours = pair
    import random

    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 50))) for _ in range(100)]
    before = TRACES["text-classification"]
    ours(texts, batch_size=8)
    assert TRACES["text-classification"] - before <= 6


def test_large_batches_through_onednn_match_transformers(pair, folder, monkeypatch):
    """Batches of >= 512 tokens compile with oneDNN's GEMM (`core.xla_cpu`; forced here, whatever this host's ISA)
    and still match the pipeline; smaller ones keep XLA's default program."""
    ref, _ = pair
    monkeypatch.setenv("JAXFORMERS_XLA_CPU_ONEDNN", "1")
    ours = jf.task("sentiment-analysis", model=folder)
    long = "a " * 58  # 60 tokens with [CLS] and [SEP]: the length bucket 64 (the model's limit)
    texts = [long] * 8 + TEXTS[:2]  # a batch of 8 x 64 tokens, then one of 2 short texts
    assert_same(ref(texts), ours(texts))
    assert [dict(k) for k in ours._jits] == [xla_cpu.ONEDNN_GEMM, {}]


def test_bad_inputs(pair, folder):
    _, ours = pair
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ours("x", top_k=0)
    with pytest.raises(ValueError, match="function_to_apply"):
        ours("x", function_to_apply="tanh")
    with pytest.raises(TypeError, match="unknown option"):
        ours("x", aggregation_strategy="simple")
    with pytest.raises(ValueError, match="text pair is a dict"):
        ours({"txt": "a"})
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        jf.task("sentiment", model=folder)
    base = jf.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="needs a model with a sequence-classification head"):
        jf.task("text-classification", model=base, tokenizer=folder)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        jf.task("text-classification", model=jf.AutoModelForSequenceClassification.from_pretrained(folder))
