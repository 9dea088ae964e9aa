"""`token-classification` / `ner` against `transformers.pipeline` on the same folder: a tiny random BERT token
classifier (B-/I- PER and LOC labels, 64 positions) with the real MiniLM WordPiece tokenizer, whose
`model_max_length` is set to 64 here so long texts truncate (or split into stride windows) at the model's size in
both libraries."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import transformers

import jaxformers as jf
from jaxformers.tasks import TRACES

LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
STRATEGIES = ["none", "simple", "first", "average", "max"]
TEXTS = [
    "John Smith lives in Paris and works at Microsoft in Washington",
    "",
    "antidisestablishmentarianism Crème brûlée naïve café ☃ x",  # many sub-words, accents, an unknown token
    "Hello",
]
LONG = "the quick brown fox jumps over the lazy dog near Paris with antidisestablishmentarianism " * 8


@pytest.fixture(scope="module")
def raw_folder(task_checkpoint):
    """The checkpoint as the shared fixture builds it (the tokenizer's model_max_length is MiniLM's 512)."""
    d, _ = task_checkpoint("bert", "BertForTokenClassification", num_labels=len(LABELS), id2label=LABELS,
                           label2id={v: k for k, v in LABELS.items()})  # fmt: skip
    return d


@pytest.fixture(scope="module")
def folder(raw_folder, tmp_path_factory):
    """The same checkpoint with model_max_length 64 (= the tiny BERT's position table)."""
    d = tmp_path_factory.mktemp("ner-64")
    for f in raw_folder.iterdir():
        shutil.copy(f, d / f.name)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 64}))
    return d


@pytest.fixture(scope="module")
def pair(folder):
    return transformers.pipeline("ner", model=str(folder)), jf.task("ner", model=folder)


def assert_same(ref, ours, tol=1e-4, path="result"):
    """Same structure, keys, key order, labels, words, spans and value types (np.float32 scores); scores within
    `tol`."""
    assert type(ref) is type(ours), (path, ref, ours)
    if isinstance(ref, list):
        assert len(ref) == len(ours), (path, ref, ours)
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert_same(r, o, tol, f"{path}[{i}]")
    elif isinstance(ref, dict):
        assert list(ref) == list(ours), (path, ref, ours)
        for k in ref:
            assert_same(ref[k], ours[k], tol, f"{path}.{k}")
    elif isinstance(ref, (float, np.floating)):
        assert abs(float(ref) - float(ours)) <= tol, (path, ref, ours)
    else:
        assert ref == ours, (path, ref, ours)


def test_fixture_predicts_several_entity_types(pair):
    """Guard: the random model must tag tokens with several labels, split words into sub-words that disagree, and
    the word strategies must differ, or the comparisons below could pass vacuously."""
    _, ours = pair
    tokens = [e for r in ours(TEXTS, ignore_labels=[]) for e in r]
    assert {e["entity"] for e in tokens} >= {"B-PER", "B-LOC", "I-LOC"}, tokens
    assert {e["entity_group"] for r in ours(TEXTS, aggregation_strategy="simple") for e in r} >= {"PER", "LOC"}
    assert any(e["word"].startswith("##") for e in tokens)
    words = {s: ours(TEXTS[2], aggregation_strategy=s, ignore_labels=[]) for s in ("simple", *STRATEGIES[2:])}
    shapes = {s: [(e["entity_group"], e["start"], e["end"]) for e in r] for s, r in words.items()}
    assert len({json.dumps(v) for v in shapes.values()}) >= 3, shapes
    assert max(e["score"] for e in tokens) - min(e["score"] for e in tokens) > 0.2


@pytest.mark.parametrize("kwargs", [{}, *({"aggregation_strategy": s} for s in STRATEGIES), {"ignore_labels": []},
                                    {"ignore_labels": ["O", "B-LOC"], "aggregation_strategy": "none"},
                                    {"ignore_labels": [], "aggregation_strategy": "first"},
                                    {"ignore_labels": ["PER"], "aggregation_strategy": "simple"}])  # fmt: skip
def test_matches_pipeline(pair, kwargs):
    ref, ours = pair
    for inp in (TEXTS[0], TEXTS, TEXTS[2], "", [""], ["Paris", "Rome"]):
        assert_same(ref(inp, **kwargs), ours(inp, **kwargs))


def test_scores_are_numpy_float32_like_transformers(pair):
    ref, ours = pair
    for strategy in STRATEGIES:
        r, o = ref(TEXTS[0], aggregation_strategy=strategy), ours(TEXTS[0], aggregation_strategy=strategy)
        assert o and type(o[0]["score"]) is type(r[0]["score"]) is np.float32


def test_options_at_construction(folder):
    ref = transformers.pipeline("ner", model=str(folder), aggregation_strategy="average", ignore_labels=[])
    ours = jf.pipeline("token-classification", model=folder, aggregation_strategy="average", ignore_labels=[])
    assert_same(ref(TEXTS), ours(TEXTS))
    assert_same(ref(TEXTS[0], aggregation_strategy="max"), ours(TEXTS[0], aggregation_strategy="max"))


def test_entities_at_both_ends(pair):
    """A text whose first and last words are entities (found among candidates with the reference pipeline), so
    spans at offset 0 and at len(text) are exercised."""
    ref, ours = pair
    words = "john paris smith london berlin mary rome anna cairo peter oslo".split()
    candidates = [f"{a} went from {b} to {c}" for a in words for b in words[:3] for c in words]
    for text in candidates:
        r = ref(text, aggregation_strategy="simple")
        if r and r[0]["start"] == 0 and r[-1]["end"] == len(text):
            break
    else:
        pytest.fail("no candidate text has entities at both ends; extend the candidates")
    for strategy in STRATEGIES:
        assert_same(ref(text, aggregation_strategy=strategy), ours(text, aggregation_strategy=strategy))


@pytest.mark.parametrize("kwargs", [{"stride": 16}, {"stride": 16, "aggregation_strategy": "simple"},
                                    {"stride": 0, "aggregation_strategy": "first"},
                                    {"stride": 40, "aggregation_strategy": "average", "ignore_labels": []},
                                    {"stride": 7, "aggregation_strategy": "max"}, {}])  # fmt: skip
def test_long_text_in_stride_windows(pair, kwargs):
    """A text of ~160 tokens: truncated at 64 without stride, covered by overlapping windows with it."""
    ref, ours = pair
    assert len(ours.tokenizer(LONG, return_tensors=None)["input_ids"]) > 2 * 64
    expected = ref(LONG, **kwargs)
    assert_same(expected, ours(LONG, **kwargs))
    if "stride" in kwargs:  # the windows reach the end of the text
        assert max(e["end"] for e in expected) > len(LONG) - 40
    assert_same(ref([LONG, TEXTS[0]], **kwargs), ours([LONG, TEXTS[0]], **kwargs))


def test_pre_split_words(pair):
    ref, ours = pair
    words = ["John", "Smith", "visited", "antidisestablishmentarianism", "Paris"]
    for kwargs in ({}, {"aggregation_strategy": "simple"}, {"aggregation_strategy": "first", "delimiter": "--"}):
        assert_same(ref(words, is_split_into_words=True, **kwargs), ours(words, is_split_into_words=True, **kwargs))
        batch = [words, ["Paris", "x"]]
        assert_same(ref(batch, is_split_into_words=True, **kwargs), ours(batch, is_split_into_words=True, **kwargs))


def test_offset_mapping(pair):
    ref, ours = pair
    mapping = [(0, 0), (0, 5), (6, 11), (0, 0)]
    for strategy in ("none", "simple"):
        kw = {"ignore_labels": [], "aggregation_strategy": strategy}
        assert_same(ref("hello world", offset_mapping=mapping, **kw), ours("hello world", offset_mapping=mapping, **kw))
    # a batch: text i takes mapping i (transformers 5.24 applies the first mapping to every text, a bug)
    other = [(0, 0), (0, 3), (4, 7), (0, 0)]
    got = ours(["hello world", "foo bar"], offset_mapping=[mapping, other], ignore_labels=[])
    assert_same([ref("hello world", offset_mapping=mapping, ignore_labels=[]),
                 ref("foo bar", offset_mapping=other, ignore_labels=[])], got)  # fmt: skip
    with pytest.raises(ValueError, match="offset_mapping has 2 .* 4 tokens"):
        ours("hello world", offset_mapping=[(0, 5), (6, 11)])
    with pytest.raises(ValueError, match="1 mapping.* for 2 text"):
        ours(["hello world", "foo bar"], offset_mapping=mapping)


def test_fallback_word_heuristic_without_wordpiece(task_checkpoint):
    """A SentencePiece Unigram tokenizer has no continuing-subword prefix: words are found by the "no space before
    it" heuristic, with transformers' warning for the word strategies."""
    d, _ = task_checkpoint("bert", "BertForTokenClassification", tokenizer="unigram", num_labels=len(LABELS),
                           id2label=LABELS, label2id={v: k for k, v in LABELS.items()})  # fmt: skip
    ref, ours = transformers.pipeline("ner", model=str(d)), jf.task("ner", model=d)
    texts = ["the quick brown fox jumps", "crème brûlée noël, isn't it 3.14"]
    for strategy in STRATEGIES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = ours(texts, aggregation_strategy=strategy, ignore_labels=[])
        assert any("fallback heuristic" in str(w.message) for w in caught) == (strategy in ("first", "average", "max"))
        assert_same(ref(texts, aggregation_strategy=strategy, ignore_labels=[]), got)


def test_compiles_a_handful_of_times(pair):
    _, ours = pair
    import random

    rng = random.Random(0)
    words = "John lives in Paris with Mary and antidisestablishmentarianism again".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(100)]
    before = TRACES["token-classification"]
    out = ours(texts, batch_size=8, aggregation_strategy="simple")
    assert len(out) == 100
    assert TRACES["token-classification"] - before <= 6


def test_bad_inputs_raise_like_transformers(pair, raw_folder):
    ref, ours = pair
    # options transformers refuses, with the same exception class (transformers: KeyError for an unknown strategy)
    for kwargs, exc in [({"grouped_entities": True}, TypeError), ({"ignore_subwords": True}, TypeError),
                        ({"stride": 8, "aggregation_strategy": "none"}, ValueError),
                        ({"stride": 64, "aggregation_strategy": "simple"}, ValueError),
                        ({"stride": 63, "aggregation_strategy": "simple"}, ValueError)]:  # fmt: skip
        with pytest.raises(exc):
            ref(LONG, **kwargs)
        with pytest.raises(exc):
            ours(LONG, **kwargs)
    with pytest.raises(KeyError):
        ref("x", aggregation_strategy="grouped")
    with pytest.raises(ValueError, match="aggregation_strategy must be one of"):
        ours("x", aggregation_strategy="grouped")
    with pytest.raises(ValueError, match="stride .*63.* less than 62"):
        ours(LONG, stride=63, aggregation_strategy="simple")
    with pytest.raises(ValueError, match="stride must be a non-negative integer"):
        ours(LONG, stride=-1, aggregation_strategy="simple")
    for bad in ([], ["ok", 3]):
        with pytest.raises(ValueError):
            ref(bad)
        with pytest.raises(ValueError, match="at least one input|takes strings"):
            ours(bad)
    with pytest.raises(ValueError, match="list of words"):
        ours("John", is_split_into_words=True)
    with pytest.raises(TypeError, match="ignore_labels must be a list"):
        ours("x", ignore_labels="O")
    # the tokenizer allows 512 tokens but the model has 64 positions: torch fails inside the model, we say why
    long_ref, long_ours = transformers.pipeline("ner", model=str(raw_folder)), jf.task("ner", model=raw_folder)
    with pytest.raises(RuntimeError):
        long_ref(LONG)
    with pytest.raises(ValueError, match="has 64 positions.*stride"):
        long_ours(LONG)
    with pytest.raises(ValueError, match="needs a model with a token-classification head"):
        jf.task("ner", model=jf.AutoModel.from_pretrained(raw_folder), tokenizer=raw_folder)
