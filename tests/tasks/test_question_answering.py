"""`question-answering` against transformers 4.57's pipeline (v5 removed it; `tf4.py` runs 4.57 from the `.venv/tf4`
overlay in one subprocess for the whole module) on the same folder: a tiny random BERT QA model (64 positions, so
`max_seq_len` <= 64 and small strides split contexts into several windows) with the real MiniLM WordPiece tokenizer.
"""

from __future__ import annotations

import copy
import random
import shutil
import warnings

import jax
import numpy as np
import pytest
import torch

import jaxformers as jf
import tf4
from jaxformers.tasks import TRACES
from jaxformers.tasks.question_answering import QuestionAnsweringInputError, span_logits

CTX = ("My name is Wolfgang and I live in Berlin. The weather there is cold in winter, and the beer is good. "
       "Unbelievably, the Oktoberfest happens in Munich, not in Berlin; tourists often confuse the two cities.")
QUESTIONS = ["Where do I live?", "What is my name?", "What happens in Munich?", "Who confuses the cities?",
             "How is the weather in winter?", "What is good?"]  # fmt: skip
SPLIT = {"max_seq_len": 32, "doc_stride": 8}  # CTX needs 3+ windows beside any of the questions

# name -> (positional args, keyword args) of one call, run by 4.57 and by us
CASES = {
    "keywords": ((), {"question": QUESTIONS[0], "context": CTX, "max_seq_len": 64}),
    "split": ((), {"question": QUESTIONS[0], "context": CTX, **SPLIT}),
    "split_top_k": ((), {"question": QUESTIONS[2], "context": CTX, "top_k": 5, **SPLIT}),
    "stride_0_short_answers": ((), {"question": QUESTIONS[1], "context": CTX, "max_seq_len": 24, "doc_stride": 0,
                                    "top_k": 3, "max_answer_len": 3}),  # fmt: skip
    "max_answer_len_1": ((), {"question": QUESTIONS[3], "context": CTX, "top_k": 3, "max_answer_len": 1, **SPLIT}),
    "no_word_alignment": ((), {"question": QUESTIONS[2], "context": CTX, "top_k": 4, "align_to_words": False, **SPLIT}),
    "impossible_answer": ((), {"question": QUESTIONS[4], "context": "I am Sam.", "top_k": 3, "max_seq_len": 48,
                               "handle_impossible_answer": True}),  # fmt: skip
    "impossible_answer_split": ((), {"question": QUESTIONS[3], "context": CTX, "top_k": 3,
                                     "handle_impossible_answer": True, **SPLIT}),  # fmt: skip
    "questions_one_context": ((), {"question": QUESTIONS, "context": CTX, **SPLIT}),
    "question_and_context_lists": ((), {"question": QUESTIONS[:2], "context": [CTX, "I am Sam, from Ohio."],
                                        "max_seq_len": 64}),  # fmt: skip
    "one_question_in_a_list": ((), {"question": QUESTIONS[:1], "context": CTX, "max_seq_len": 64}),
    "dict": (({"question": QUESTIONS[5], "context": CTX},), {"max_seq_len": 64, "top_k": 2}),
    "list_of_dicts": (([{"question": "Who are you?", "context": "I am Sam."},
                        {"question": "Why?", "context": "Because it is raining cats and dogs all day long."}],),
                      {"max_seq_len": 48, "top_k": 2}),  # fmt: skip
    "list_of_one_dict": (([{"question": "Who are you?", "context": "I am Sam."}],), {"max_seq_len": 48}),
    "two_strings": (("Who are you?", "I am Sam."), {"max_seq_len": 48}),
    "one_word_context": ((), {"question": "Where?", "context": "Berlin", "top_k": 3, "max_seq_len": 48}),
    "top_k_above_candidates": ((), {"question": "Who?", "context": "Hi there", "top_k": 30, "max_seq_len": 48}),
    "whitespace_context": ((), {"question": "Who?", "context": "   ", "max_seq_len": 48}),
    "unicode_context": ((), {"question": "What is sweet?", "context": "Crème brûlée, naïve café in Zürich: déjà vu!",
                             "top_k": 4, "max_seq_len": 48}),  # fmt: skip
    "deprecated_topk": ((), {"question": QUESTIONS[0], "context": CTX, "topk": 2, **SPLIT}),
    # 4.57 refuses these: we refuse the same inputs (with our own messages)
    "empty_context": ((), {"question": "Who?", "context": ""}),
    "empty_question": (({"question": "", "context": CTX},), {}),
    "none_context": (({"question": "Who?", "context": None},), {}),
    "no_context": ((), {"question": "Who?"}),
    "dict_without_context": (({"question": "Who?"},), {}),
    "string_item": ((["Who?"],), {}),
    "length_mismatch": ((), {"question": QUESTIONS[:2], "context": [CTX]}),
    "top_k_0": ((), {"question": "Who?", "context": CTX, "top_k": 0}),
    "max_answer_len_0": ((), {"question": "Who?", "context": CTX, "max_answer_len": 0}),
    "stride_above_max_seq_len": ((), {"question": "Who?", "context": CTX, "max_seq_len": 32, "doc_stride": 33}),
    "stride_above_single_room": ((), {"question": "Who?", "context": CTX, "max_seq_len": 32, "doc_stride": 31}),
    "stride_above_context_room": ((), {"question": "Who?", "context": CTX, "max_seq_len": 32, "doc_stride": 28}),
    "question_fills_window": ((), {"question": "Who is that long question that goes on and on and on?",
                                   "context": CTX, "max_seq_len": 16, "doc_stride": 2}),  # fmt: skip
}
# refused inputs: (exception class we raise, a fragment of our message); 4.57 raises ValueError, KeyError (a dict
# without its key: ours is both) or the tokenizers library's Exception / Rust panic (ours: a ValueError saying why)
ERRORS = {
    "empty_context": (ValueError, "context is empty"),
    "empty_question": (ValueError, "question is empty"),
    "none_context": (ValueError, "context is None"),
    "no_context": (ValueError, "needs a question and a context, but the call gave only the question"),
    "dict_without_context": (KeyError, "add the 'context' key"),
    "string_item": (ValueError, "must be a dict"),
    "length_mismatch": (ValueError, "2 questions but 1 contexts"),
    "top_k_0": (ValueError, "top_k must be a positive integer"),
    "max_answer_len_0": (ValueError, "max_answer_len must be a positive integer"),
    "stride_above_max_seq_len": (ValueError, r"doc_stride \(33\) is larger than max_seq_len \(32\)"),
    "stride_above_single_room": (ValueError, r"doc_stride \(31\) must be less than max_seq_len \(32\) minus"),
    "stride_above_context_room": (ValueError, r"doc_stride \(28\) must be less than the 27 context tokens"),
    "question_fills_window": (ValueError, "leaves no room for the context in max_seq_len=16"),
}
MATCHED = [name for name in CASES if name not in ERRORS]


CLS_BOOST = 0.15  # see `checkpoint`: gives [CLS] (the "impossible" answer) 10-70% of the probability


@pytest.fixture(scope="module")
def checkpoint(task_checkpoint, tmp_path_factory):
    """The shared tiny QA checkpoint, with the [CLS] embedding nudged towards the QA head's start and end directions:
    random [CLS] probabilities are ~1e-6, so `handle_impossible_answer`'s null score would sit below the 1e-4 score
    tolerance and never rank; nudged, the empty answer wins on short contexts. -> (folder, torch model)."""
    src, shared = task_checkpoint("bert", "BertForQuestionAnswering", num_labels=2)
    model = copy.deepcopy(shared)  # the session's model stays as built
    with torch.no_grad():
        w = model.qa_outputs.weight
        model.bert.embeddings.word_embeddings.weight[101] += CLS_BOOST * (w[0] + w[1]) / (w[0] + w[1]).norm()
    out = tmp_path_factory.mktemp("qa-cls")
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out, model


@pytest.fixture(scope="module")
def folder(checkpoint):
    return checkpoint[0]


@pytest.fixture(scope="module")
def ours(folder):
    return jf.task("question-answering", model=folder)


@pytest.fixture(scope="module")
def v4(folder):
    """Every case through transformers 4.57, in one subprocess: name -> result (or `tf4.V4Error`)."""
    calls = [{"args": list(args), "kwargs": kwargs} for args, kwargs in CASES.values()]
    return dict(zip(CASES, tf4.run_v4_pipeline("question-answering", folder, calls)))


def call(qa, name):
    args, kwargs = CASES[name]
    return qa(*args, **kwargs)


def assert_same(ref, ours, tol=1e-4, path="result"):
    """Same structure, keys, types, spans and strings; scores within `tol`."""
    assert type(ref) is type(ours), f"{path}: {type(ref).__name__} vs {type(ours).__name__}: {ref!r} vs {ours!r}"
    if isinstance(ref, list):
        assert len(ref) == len(ours), f"{path}: {ref} vs {ours}"
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert_same(r, o, tol, f"{path}[{i}]")
    elif isinstance(ref, dict):
        assert list(ref) == list(ours), f"{path}: {ref} vs {ours}"
        for k in ref:
            assert_same(ref[k], ours[k], tol, f"{path}[{k!r}]")
    elif isinstance(ref, float):
        assert abs(ref - ours) <= tol, f"{path}: {ref} vs {ours}"
    else:
        assert ref == ours, f"{path}: {ref!r} vs {ours!r}"


def answers(result) -> list[dict]:
    return [result] if isinstance(result, dict) else [a for r in result for a in answers(r)]


@pytest.mark.parametrize("name", MATCHED)
def test_matches_transformers_4_57(ours, v4, name):
    assert not isinstance(v4[name], tf4.V4Error), f"4.57 raised on {name}: {v4[name]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated topk
        assert_same(v4[name], call(ours, name))


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_refuses_what_transformers_4_57_refuses(ours, v4, name):
    assert isinstance(v4[name], tf4.V4Error), f"4.57 accepted {name}: {v4[name]}"
    cls, message = ERRORS[name]
    with pytest.raises(cls, match=message):
        call(ours, name)


def test_comparisons_are_not_vacuous(v4, folder):
    """Guards of the fixture: the random model's answers differ across questions, long contexts really split and the
    best answer sometimes lies past the first window, and the edge cases hit what they are named for."""
    per_question = v4["questions_one_context"]
    assert len({a["answer"] for a in per_question}) >= 3, per_question
    tok = jf.AutoTokenizer.from_pretrained(folder)
    first_window_end = []
    for q in QUESTIONS:
        enc = tok(q, text_pair=CTX, truncation="only_second", max_length=SPLIT["max_seq_len"],
                  stride=SPLIT["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True,
                  return_tensors=None)  # fmt: skip
        assert len(enc["input_ids"]) >= 3
        first_window_end.append(max(o[1] for o, s in zip(enc["offset_mapping"][0], enc.sequence_ids(0)) if s == 1))
    assert any(a["end"] > end for a, end in zip(per_question, first_window_end)), (per_question, first_window_end)
    assert len(v4["top_k_above_candidates"]) < 30 and any(a["score"] == 0.0 for a in v4["top_k_above_candidates"])
    one_word = answers(v4["one_word_context"])
    assert any(a["start"] == 0 for a in one_word) and any(a["end"] == len("Berlin") for a in one_word)
    assert v4["impossible_answer"][0]["answer"] == "" and v4["impossible_answer"][0]["score"] > 0.01
    # without word alignment some answer starts or ends inside a word (WordPiece splits "Unbelievably", ...)
    inside = [a for a in answers(v4["no_word_alignment"]) if (a["start"] > 0 and CTX[a["start"] - 1].isalnum())
              or (a["end"] < len(CTX) and CTX[a["end"]].isalnum())]  # fmt: skip
    assert inside, v4["no_word_alignment"]
    assert isinstance(v4["list_of_one_dict"], dict) and isinstance(v4["list_of_dicts"], list)


def test_options_at_construction_and_batch_size(folder, v4):
    """Options given to jf.task hold for every call (4.57: pipeline(..., **options)); a call overrides them."""
    qa = jf.task("question-answering", model=folder, top_k=5, batch_size=2, **SPLIT)
    assert_same(v4["questions_one_context"], qa(question=QUESTIONS, context=CTX, top_k=1))


def test_deprecated_topk_warns(ours):
    with pytest.warns(FutureWarning, match="topk is deprecated"):
        ours(question="Who?", context=CTX, topk=2, **SPLIT)


def test_core_matches_torch_logits(checkpoint, ours):
    """The pure core, jitted as research code would, on a padded batch of windows equals PyTorch's start/end logits."""
    _, torch_model = checkpoint
    enc = ours.tokenizer([QUESTIONS[0], QUESTIONS[2]], text_pair=[CTX, "I am Sam."], padding=True, return_tensors="np")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = jax.jit(span_logits)(ours.model, batch)
    with torch.no_grad():
        ref = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    for key in ("start_logits", "end_logits"):
        expected = getattr(ref, key).numpy()
        mask = batch["attention_mask"].astype(bool)
        err = np.abs(np.asarray(out[key])[mask] - expected[mask]).max() / np.abs(expected[mask]).max()
        assert err <= 1e-4, (key, err)


def test_compiles_a_handful_of_times(ours):
    rng = random.Random(0)
    words = CTX.split()
    inputs = [{"question": rng.choice(QUESTIONS), "context": " ".join(rng.choices(words, k=rng.randint(1, 60)))}
              for _ in range(100)]  # fmt: skip
    before = TRACES["question-answering"]
    results = ours(inputs, max_seq_len=64, doc_stride=16, batch_size=8)
    assert len(results) == 100
    assert TRACES["question-answering"] - before <= 6


def test_bad_inputs(ours, folder):
    with pytest.raises(QuestionAnsweringInputError) as info:  # KeyError like 4.57, ValueError like the rest
        ours({"context": CTX})
    assert isinstance(info.value, ValueError) and str(info.value).startswith("a question-answering input needs")
    with pytest.raises(TypeError, match="unknown option"):
        ours(question="Who?", context=CTX, aggregation_strategy="simple")
    with pytest.raises(ValueError, match="handle_impossible_answer must be True or False"):
        ours(question="Who?", context=CTX, handle_impossible_answer="yes")
    with pytest.raises(ValueError, match="doc_stride must be a non-negative integer"):
        ours(question="Who?", context=CTX, doc_stride=-1)
    with pytest.raises(ValueError, match="either positionally or as question=/context="):
        ours({"question": "Who?", "context": CTX}, question="Who?", context=CTX)
    with pytest.raises(ValueError, match="question must be a string"):
        ours(question=[["Who?"]], context=CTX)
    with pytest.raises(ValueError, match="the model has 64 positions; pass max_seq_len=64"):
        ours(question="Who?", context=CTX * 3)  # default max_seq_len 384: windows past the position table
    with pytest.raises(ValueError, match="needs a model with a question-answering head"):
        jf.task("question-answering", model=jf.AutoModel.from_pretrained(folder), tokenizer=folder)


def test_missing_overlay_fails_with_the_setup_command(monkeypatch, tmp_path, folder):
    monkeypatch.setattr(tf4, "OVERLAY", tmp_path)
    with pytest.raises(tf4.OverlayMissing, match=r"bash scripts/setup_env.sh --test"):
        tf4.run_v4_pipeline("question-answering", folder, [])
