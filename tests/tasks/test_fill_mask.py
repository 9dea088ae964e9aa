"""`fill-mask` against `transformers.pipeline` on the same folders: a tiny random BERT with the real MiniLM WordPiece
tokenizer (its tokenizer.json ships with truncation and padding enabled), and a tiny random RoBERTa with a byte-level
BPE whose `<mask>` strips the space on its left."""

from __future__ import annotations

import logging
import random

import pytest
import tokenizer_fixtures as fx
import transformers

import jaxformers as jf
from jaxformers.tasks import TRACES

TEXTS = ["Paris is the [MASK] of France.", "[MASK]", "Crème brûlée is a [MASK], naïve café!",
         "The [MASK] comes first in a much longer text, with punctuation and 123 numbers! " * 3]  # fmt: skip
MULTI = "The [MASK] sat on the [MASK] today."


@pytest.fixture(scope="module")
def folder(task_checkpoint):
    # large random weights: decisive vocabulary scores (at the default 0.02 they are all ~3e-5, 1e-7 apart)
    d, _ = task_checkpoint("bert", "BertForMaskedLM", initializer_range=0.5)
    return d


@pytest.fixture(scope="module")
def pair(folder):
    return transformers.pipeline("fill-mask", model=str(folder)), jf.task("fill-mask", model=folder)


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A tiny RobertaForMaskedLM (vocab 400) next to a trained byte-level BPE with <s> <pad> </s> <unk> ... <mask>."""
    import torch

    d = fx.roberta_dir(tmp_path_factory.mktemp("fm-roberta"))
    cfg = transformers.RobertaConfig(vocab_size=400, hidden_size=48, num_attention_heads=6, intermediate_size=37,
                                     num_hidden_layers=2, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                     eos_token_id=2, initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.RobertaForMaskedLM(cfg).eval()
    with torch.no_grad():  # random biases and norm weights (HF initialises them to zeros and ones)
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "LayerNorm.weight" in name else 0.0))
    model.save_pretrained(d)
    return d


def assert_same(ref, ours, tol=1e-4):
    """Same structure, keys, tokens and strings; scores within `tol`."""
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


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 1}, {"top_k": 12}, {"targets": ["paris", "london", "the", "."]},
                                    {"targets": "city", "top_k": 3},
                                    {"tokenizer_kwargs": {"truncation": True, "max_length": 12}}])  # fmt: skip
def test_matches_pipeline(pair, kwargs):
    ref, ours = pair
    for inp in (TEXTS[0], TEXTS, MULTI, [MULTI, TEXTS[0]], [TEXTS[2]]):
        assert_same(ref(inp, **kwargs), ours(inp, **kwargs))


def test_options_at_construction(folder):
    kwargs = {"top_k": 3, "targets": ["paris", "london", "rome", "berlin"]}
    ref = transformers.pipeline("fill-mask", model=str(folder), **kwargs)
    ours = jf.task("fill-mask", model=folder, **kwargs)
    assert_same(ref(TEXTS[:2]), ours(TEXTS[:2]))
    assert_same(ref(TEXTS[0], top_k=1), ours(TEXTS[0], top_k=1))  # the call overrides the construction


def test_scores_are_decisive(pair):
    """Guard of the fixture: with near-equal scores a wrong token order could pass the comparisons above."""
    _, ours = pair
    scores = [c["score"] for c in ours(TEXTS[0], top_k=5)]
    assert scores[0] > 1e-3 and min(a - b for a, b in zip(scores, scores[1:])) > 1e-4 * scores[0]
    assert len({c["token"] for c in ours(TEXTS[0])}) == 5


def test_targets_outside_the_vocabulary(pair, caplog):
    """Targets that are not vocabulary entries become their first sub-token, with transformers' warning; an empty one
    is dropped; no usable target at all is an error in both."""
    ref, ours = pair
    targets = ["Paris", "unbelievablyx", "", "paris"]
    with caplog.at_level(logging.WARNING, logger="jaxformers"):
        got = ours(TEXTS[0], targets=targets)
    assert "does not exist in the model vocabulary. Replacing with `paris`" in caplog.text
    assert "ignoring it" in caplog.text
    assert_same(ref(TEXTS[0], targets=targets), got)
    assert len(got) == 2  # "Paris" -> paris (merged with "paris"), "unbelievablyx" -> its first piece
    with pytest.raises(ValueError):
        ref(TEXTS[0], targets=[""])
    with pytest.raises(ValueError, match="none of the targets"):
        ours(TEXTS[0], targets=[""])


def test_roberta_byte_level_bpe(roberta):
    ref = transformers.pipeline("fill-mask", model=str(roberta))
    ours = jf.task("fill-mask", model=roberta)
    texts = ["The quick brown <mask> jumps over the lazy dog.", "hello <mask> world", "<mask> crème brûlée <mask>"]
    for inp in (texts[0], texts, texts[2]):
        for kwargs in ({}, {"top_k": 3, "targets": [" fox", "dog", " the"]}):
            assert_same(ref(inp, **kwargs), ours(inp, **kwargs))


def test_compiles_a_handful_of_times(pair):
    _, ours = pair
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    texts = []
    for _ in range(100):
        w = [rng.choice(words) for _ in range(rng.randint(1, 50))]
        w[rng.randrange(len(w))] = "[MASK]"
        texts.append(" ".join(w))
    before = TRACES["fill-mask"]
    ours(texts, batch_size=8)
    assert TRACES["fill-mask"] - before <= 6


def test_bad_inputs(pair, folder):
    ref, ours = pair
    with pytest.raises(Exception, match="No mask_token"):
        ref("no mask here")
    with pytest.raises(ValueError, match=r"No mask_token \(\[MASK\]\) found on the input"):
        ours("no mask here")
    with pytest.raises(ValueError, match="No mask_token"):  # a bad text anywhere in a list
        ours([TEXTS[0], "no mask here"])
    with pytest.raises(RuntimeError):  # torch's topk: more than the vocabulary
        ref(TEXTS[0], top_k=40000)
    with pytest.raises(ValueError, match="more than the 30522 tokens"):
        ours(TEXTS[0], top_k=40000)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ours(TEXTS[0], top_k=0)
    with pytest.raises(TypeError, match="targets must be a string or a list of strings"):
        ours(TEXTS[0], targets=[3])
    with pytest.raises(TypeError, match="unknown option"):
        ours(TEXTS[0], aggregation_strategy="simple")
    with pytest.raises(TypeError, match="fill-mask takes a string"):
        ours({"text": TEXTS[0]})
    base = jf.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="needs a model with a masked-lm head"):
        jf.task("fill-mask", model=base, tokenizer=folder)
    with pytest.raises(ValueError, match="none of the targets"):  # at construction, as transformers
        jf.task("fill-mask", model=folder, targets=[])
