"""`zero-shot-classification` against `transformers.pipeline` on the same folders: tiny random NLI classifiers (BERT
with the real MiniLM WordPiece tokenizer, whose tokenizer.json ships with truncation and padding enabled; BART with a
RoBERTa-style byte-level BPE) whose labels put entailment last, first, or nowhere."""

from __future__ import annotations

import json
import logging
import random
import shutil

import pytest
import transformers

import jaxformers as jf
import tokenizer_fixtures as tf
from jaxformers.tasks import TRACES

NLI = {0: "contradiction", 1: "neutral", 2: "entailment"}
NLI_FIRST = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}
NO_ENTAIL = {0: "agree", 1: "unsure", 2: "disagree"}
TEXTS = ["I love it", "a much longer text, with punctuation and 123 numbers!", "Crème brûlée, naïve café"]
LABELS = ["sports", "the economy and international politics", "cooking", "x"]
# Labels differ by a token or two of the hypothesis: weights wider than the default init (0.02) make the entailment
# logits of the labels differ by ~0.3-1 (distinct scores), the head scaled by 20 keeps them decisive (~10, no overflow).
INIT_RANGE, HEAD_SCALE = 0.1, 20.0


def _checkpoint(task_checkpoint, labels, **kw):
    d, _ = task_checkpoint("bert", "BertForSequenceClassification", id2label=labels, head_scale=HEAD_SCALE,
                           initializer_range=INIT_RANGE, label2id={v: k for k, v in labels.items()}, **kw)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def folder(task_checkpoint):
    return _checkpoint(task_checkpoint, NLI)


@pytest.fixture(scope="module")
def pair(folder):
    return (transformers.pipeline("zero-shot-classification", model=str(folder)),
            jf.task("zero-shot-classification", model=folder))  # fmt: skip


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


CALLS = [
    ((TEXTS[0],), {"candidate_labels": LABELS}),
    ((TEXTS,), {"candidate_labels": LABELS}),
    ((TEXTS,), {"candidate_labels": LABELS, "multi_label": True}),
    ((TEXTS[1], LABELS[:2]), {}),  # labels positionally
    ((TEXTS[2],), {"candidate_labels": " sports,cooking ,, the economy,"}),  # a comma-separated string
    ((TEXTS,), {"candidate_labels": ["cooking"]}),  # one label: entailment vs contradiction
    ((TEXTS[:2],), {"candidate_labels": LABELS, "hypothesis_template": "Das Thema ist {}!"}),
    ((TEXTS[0],), {"candidate_labels": ["a", "b", "a"]}),  # a repeated label: both kept
    (([TEXTS[1]],), {"candidate_labels": LABELS[1:], "multi_label": True}),  # a list of one text
    ((), {"sequences": TEXTS[2], "candidate_labels": LABELS}),  # the text by keyword
]


@pytest.mark.parametrize("args,kwargs", CALLS)
def test_matches_pipeline(pair, args, kwargs):
    ref, ours = pair
    assert_same(ref(*args, **kwargs), ours(*args, **kwargs))


def test_scores_are_decisive(pair):
    """Guard of the fixture: with near-uniform scores a wrong label order or column could pass the comparisons."""
    _, ours = pair
    scores = ours(TEXTS[0], candidate_labels=LABELS)["scores"]
    assert min(a - b for a, b in zip(scores, scores[1:])) > 1e-3, scores
    multi = ours(TEXTS[0], candidate_labels=LABELS, multi_label=True)["scores"]
    assert max(multi) - min(multi) > 0.02 and abs(sum(multi) - 1) > 0.05, multi


def test_options_at_construction(folder):
    kwargs = {"candidate_labels": "cooking, sports", "hypothesis_template": "It is about {}.", "multi_label": True}
    ref = transformers.pipeline("zero-shot-classification", model=str(folder), **kwargs)
    ours = jf.pipeline("zero-shot-classification", model=folder, **kwargs)
    assert_same(ref(TEXTS), ours(TEXTS))
    assert_same(ref(TEXTS[0], multi_label=False), ours(TEXTS[0], multi_label=False))  # the call overrides
    assert_same(ref(TEXTS[0], candidate_labels=LABELS), ours(TEXTS[0], candidate_labels=LABELS))


@pytest.mark.parametrize("labels", [NLI_FIRST, NO_ENTAIL])
def test_other_label_orders(task_checkpoint, labels, caplog):
    """Entailment first (contradiction is then the last column) and no entailment label at all (transformers warns
    and reads the last column as entailment)."""
    folder = _checkpoint(task_checkpoint, labels)
    ref = transformers.pipeline("zero-shot-classification", model=str(folder))
    with caplog.at_level(logging.WARNING, logger="jaxformers"):
        ours = jf.task("zero-shot-classification", model=folder)
    warned = [r.name for r in caplog.records if "entail" in r.getMessage()]
    assert warned == (["transformers.pipelines.zero_shot_classification", "jaxformers"] if labels is NO_ENTAIL else [])
    assert ours.entailment_id == ref.entailment_id
    for multi in (False, True):  # multi_label=True takes the path of a single label too
        assert_same(ref(TEXTS, candidate_labels=LABELS, multi_label=multi),
                    ours(TEXTS, candidate_labels=LABELS, multi_label=multi))  # fmt: skip


def test_truncates_the_premise_only(folder, tmp_path):
    """A 24-token limit: a long premise is cut (truncation="only_first"), and a hypothesis longer than the limit
    makes transformers tokenize without truncation (so the model sees more than 24 tokens) — both as HF."""
    short = tmp_path / "short"
    shutil.copytree(folder, short)
    cfg = json.loads((short / "tokenizer_config.json").read_text())
    (short / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 24}))
    ref = transformers.pipeline("zero-shot-classification", model=str(short))
    ours = jf.task("zero-shot-classification", model=short)
    long_text = "the quick brown fox jumps over the lazy dog " * 2  # 18 tokens
    long_template = "This hypothesis has so many words that it alone is longer than the limit of 24 tokens: {}."
    for template in ("This example is {}.", long_template):
        assert_same(ref([long_text, TEXTS[0]], candidate_labels=LABELS, hypothesis_template=template),
                    ours([long_text, TEXTS[0]], candidate_labels=LABELS, hypothesis_template=template))  # fmt: skip
    # the comparisons above went through both paths: the premise cut to the limit, then no cut at all
    params = {"candidate_labels": ["x"], "hypothesis_template": "This example is {}."}
    assert len(ours.preprocess(long_text, **params)[0]["input_ids"]) == 24
    params["hypothesis_template"] = long_template
    whole = ours.tokenizer(long_text, text_pair=long_template.format("x"), return_tensors=None)["input_ids"]
    assert ours.preprocess(long_text, **params)[0]["input_ids"] == list(whole) and len(whole) > 24 + 12


def test_bart(tmp_path_factory):
    """BART, the usual zero-shot architecture (classified at the last </s> of the decoder), with a RoBERTa-style
    byte-level BPE (no token_type_ids)."""
    import torch

    folder = tmp_path_factory.mktemp("zs-bart")
    tok = tf.roberta_dir(tmp_path_factory.mktemp("zs-bart-tok"))
    cfg = transformers.BartConfig(
        vocab_size=400, d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, init_std=INIT_RANGE, id2label=NLI,
        label2id={v: k for k, v in NLI.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BartForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            if name == "classification_head.out_proj.weight":
                p.mul_(HEAD_SCALE)
    model.save_pretrained(folder)
    for f in tok.iterdir():
        shutil.copy(f, folder / f.name)
    ref = transformers.pipeline("zero-shot-classification", model=str(folder))
    ours = jf.task("zero-shot-classification", model=folder)
    for multi in (False, True):
        assert_same(ref(TEXTS, candidate_labels=LABELS, multi_label=multi),
                    ours(TEXTS, candidate_labels=LABELS, multi_label=multi))  # fmt: skip
    assert_same(ref(TEXTS, "cooking, sports"), ours(TEXTS, "cooking, sports"))
    scores = ours(TEXTS[0], candidate_labels=LABELS)["scores"]
    assert min(a - b for a, b in zip(scores, scores[1:])) > 1e-3, scores


def test_compiles_a_handful_of_times(pair):
    _, ours = pair
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(100)]
    before = TRACES["zero-shot-classification"]
    results = ours(texts, candidate_labels=LABELS[:3], batch_size=8)
    assert len(results) == 100 and [r["sequence"] for r in results] == texts
    assert TRACES["zero-shot-classification"] - before <= 6


def _both_raise(ref, ours, exc, match, *args, **kwargs):
    """transformers refuses the input too (with some exception); ours with `exc` and a message matching `match`."""
    with pytest.raises(Exception):
        ref(*args, **kwargs)
    with pytest.raises(exc, match=match):
        ours(*args, **kwargs)


def test_bad_inputs(pair, folder):
    ref, ours = pair
    _both_raise(ref, ours, TypeError, "needs candidate labels", "text")
    _both_raise(ref, ours, TypeError, "needs candidate labels", "text", candidate_labels=None)
    _both_raise(ref, ours, ValueError, "at least one label", "text", candidate_labels=[])
    _both_raise(ref, ours, ValueError, "at least one label", "text", candidate_labels=" , ")
    _both_raise(ref, ours, ValueError, "hypothesis_template", "text", candidate_labels=["a"], hypothesis_template="x")
    _both_raise(ref, ours, ValueError, "exactly one {}", "t", candidate_labels=["a"], hypothesis_template="{} {}")
    _both_raise(ref, ours, ValueError, "exactly one {}", "t", candidate_labels=["a"], hypothesis_template="{name}")
    _both_raise(ref, ours, ValueError, "at least one sequence", "", candidate_labels=["a"])
    _both_raise(ref, ours, ValueError, "at least one sequence", ["a", ""], candidate_labels=["a"])
    _both_raise(ref, ours, ValueError, "at least one sequence", [], candidate_labels=["a"])
    _both_raise(ref, ours, ValueError, "extra arguments", "text", ["a"], ["b"])
    _both_raise(ref, ours, ValueError, "extra arguments", "text", ["a"], candidate_labels=["b"])
    with pytest.raises(TypeError, match="candidate_labels must be a list"):
        ours("text", candidate_labels={"a", "b"})
    with pytest.raises(TypeError, match="takes a text or a list of texts"):
        ours(["text", 3], candidate_labels=["a"])
    with pytest.raises(TypeError, match="unknown option"):
        ours("text", candidate_labels=["a"], top_k=2)
    base = jf.AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="needs a model with a sequence-classification head"):
        jf.task("zero-shot-classification", model=base, tokenizer=folder)
