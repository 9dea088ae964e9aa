"""Training data: reading files, and tokenize_dataset per task against transformers' own preprocessing (the example
scripts' run_glue / run_ner / run_qa / run_mlm / run_clm / run_summarization functions, re-stated here on the HF
tokenizer of the same vocabulary)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokenizer_fixtures as tf
from jaxformers.tokenization import AutoTokenizer
from jaxformers.training import losses
from jaxformers.training.collators import collator_for
from jaxformers.training.data import Features, pack_sequences, read_records, tokenize_dataset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def toks():
    """(ours, transformers') MiniLM WordPiece tokenizers from the same files."""
    path = str(tf.minilm_dir())
    return AutoTokenizer.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------------------------- reading
def test_read_records_every_format(tmp_path):
    rows = [{"text": "a, b", "label": 1}, {"text": 'say "hi"', "label": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text('text,label\n"a, b",1\n"say ""hi""",0\n')
    (tmp_path / "d.tsv").write_text('text\tlabel\na, b\t1\n"say ""hi"""\t0\n')
    (tmp_path / "d.txt").write_text("first line\n\n   \nsecond line\n")
    for name in ("d.jsonl", "list.json", "lines.json"):
        assert read_records(tmp_path / name) == rows
    strings = [{"text": r["text"], "label": str(r["label"])} for r in rows]  # CSV cells are strings
    assert read_records(tmp_path / "d.csv") == strings
    assert read_records(str(tmp_path / "d.tsv")) == strings
    assert read_records(tmp_path / "d.txt") == [{"text": "first line"}, {"text": "second line"}]
    assert read_records(rows, columns=["text"]) == [{"text": "a, b"}, {"text": 'say "hi"'}]

    class FakeDataset:  # what datasets.Dataset offers: column names, and iteration over dict rows
        column_names = ["text", "label"]

        def __iter__(self):
            return iter(rows)

    assert read_records(FakeDataset()) == rows


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "does not exist"),
    ("empty.jsonl", "\n\n", "has no records"),
    ("empty.csv", "text,label\n", "has no records"),
    ("data.parquet", "x", "unknown extension '.parquet'"),
    ("ragged.csv", "text,label\na,1\nb,0,extra\n", "line 3 has 3 fields but the header has 2"),
    ("ragged.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "record 1 of .* lacks \\['label'\\]"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "line 2: invalid JSON"),
    ("scalar.jsonl", '{"text": "a"}\n3\n', "record 1 of .* is a JSON int, not an object"),
])  # fmt: skip
def test_read_records_errors(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_records(tmp_path / name)


def test_read_records_bad_sources():
    with pytest.raises(ValueError, match="record 1 of the records lacks \\['label'\\]"):
        read_records([{"text": "a", "label": 0}, {"text": "b"}], columns=["text", "label"])
    with pytest.raises(TypeError, match="record 1 is a str, not a dict"):
        read_records([{"text": "a"}, "b"])
    with pytest.raises(ValueError, match="several splits"):
        read_records(type("DatasetDict", (), {"column_names": {"train": ["text"]}})())
    with pytest.raises(ValueError, match="the records has no records"):
        read_records([])


# ----------------------------------------------------------------------------------------- text classification
TEXTS = ["A gripping, beautifully shot film.", "Tedious and overlong; the plot never recovers from its slow start.",
         "ok", "Unbelievably charming performances throughout the whole of this wonderful ensemble piece."]  # fmt: skip
PAIRS = ["Is it good?", "Was it boring?", "Fine?", "Would you watch it again tomorrow?"]


def test_text_classification_matches_hf_tokenization(toks):
    ours, hf = toks
    records = [{"sentence1": t, "sentence2": p, "label": lab} for t, p, lab in zip(TEXTS, PAIRS, "pnpp")]
    features = tokenize_dataset(records, ours, "sentiment-analysis", max_length=12, batch_size=3)
    expected = hf(TEXTS, PAIRS, truncation=True, max_length=12)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert [f[key] for f in features] == expected[key], key
    assert [f["labels"] for f in features] == [1, 0, 1, 1]  # names in sorted order: n=0, p=1
    assert features.label_names == ["n", "p"] and features.num_labels == 2
    assert features.problem_type == "single_label_classification"
    np.testing.assert_array_equal(features.lengths, [len(ids) for ids in expected["input_ids"]])
    assert max(features.lengths) == 12 and min(features.lengths) < 12  # truncated and untruncated rows


def test_label_kinds(toks):
    ours = toks[0]
    tok = lambda labels, **kw: tokenize_dataset(  # noqa: E731
        [{"text": t, "label": lab} for t, lab in zip(TEXTS, labels)], ours, "text-classification", **kw)
    named = tok(["neg", "pos", "pos", "neg"], label_names=["pos", "neg"])
    assert [f["labels"] for f in named] == [1, 0, 0, 1] and named.label_names == ["pos", "neg"]
    ints = tok([2, 0, 1, 2])
    assert [f["labels"] for f in ints] == [2, 0, 1, 2] and ints.num_labels == 3 and ints.label_names is None
    from_csv = tok(["1", "0", "0", "1"])  # CSV cells: class ids, as datasets infers them
    assert [f["labels"] for f in from_csv] == [1, 0, 0, 1]
    regression = tok([0.5, 1, 4.25, 3.0])
    assert [f["labels"] for f in regression] == [0.5, 1.0, 4.25, 3.0]
    assert regression.problem_type == "regression" and regression.num_labels == 1
    multi = tok([["b"], ["a", "c"], [], ["c"]])
    assert [f["labels"] for f in multi] == [[0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert multi.label_names == ["a", "b", "c"] and multi.problem_type == "multi_label_classification"
    hot = tok([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert [f["labels"] for f in hot] == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] and hot.num_labels == 2
    unlabelled = tokenize_dataset([{"text": t} for t in TEXTS], ours, "text-classification")
    assert "labels" not in unlabelled.column_names and len(unlabelled) == 4


@pytest.mark.parametrize("labels, kwargs, message", [
    ([0, 5, 1, 0], {"label_names": ["neg", "pos"]}, "label 5 \\(record 1, column 'label'\\) is outside the 2 classes"),
    ([0, -1, 1, 0], {}, "label -1 \\(record 1"),
    (["neg", "meh", "pos", "neg"], {"label_names": ["neg", "pos"]}, "\\['meh'\\] that are not in label_names"),
    ([0, "pos", 1, 0], {}, "mixes label types"),
    ([0, None, 1, 0], {}, "record 1 has no label"),
    ([[0], 1, [1], [0]], {}, "mixes lists"),
])  # fmt: skip
def test_label_errors(toks, labels, kwargs, message):
    records = [{"text": t, "label": lab} for t, lab in zip(TEXTS, labels)]
    with pytest.raises(ValueError, match=message):
        tokenize_dataset(records, toks[0], "text-classification", **kwargs)


def test_features_check_labels_and_select(toks):
    features = tokenize_dataset([{"text": t, "label": lab} for t, lab in zip(TEXTS, [0, 2, 1, 2])], toks[0],
                                "text-classification")  # fmt: skip
    features.check_labels(3)
    with pytest.raises(ValueError, match="label 2 \\(example 1\\) is outside the 2 classes 0..1 of the model"):
        features.check_labels(2)
    subset = features.select([3, 0])
    assert isinstance(subset, Features) and len(subset) == 2
    assert subset[0] == features[3] and subset[1] == features[0]
    np.testing.assert_array_equal(subset.lengths, features.lengths[[3, 0]])


# ---------------------------------------------------------------------------------------- token classification
WORDS = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
         ["Peter", "Blackburn"],
         ["Unquestionably", "Brüssel-based", "commissioners", "deliberated", "interminably", "yesterday", "in",
          "Strasbourg", "about", "agricultural", "subsidies"]]  # fmt: skip
TAGS = [["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"],
        ["O", "B-LOC", "O", "O", "O", "O", "O", "B-LOC", "O", "O", "O"]]  # fmt: skip


def hf_tokenize_and_align_labels(hf, words, tags, max_length):
    """run_ner's preprocessing (label_all_tokens=False): a word's label on its first sub-word, -100 elsewhere."""
    enc = hf(words, truncation=True, max_length=max_length, is_split_into_words=True)
    labels = []
    for i, row_tags in enumerate(tags):
        previous, row = None, []
        for word in enc.word_ids(batch_index=i):
            row.append(-100 if word is None or word == previous else row_tags[word])
            previous = word
        labels.append(row)
    return enc, labels


def test_token_classification_alignment_matches_hf(toks):
    ours, hf = toks
    names = sorted({t for row in TAGS for t in row})  # run_ner's label list for string tags
    tag_ids = [[names.index(t) for t in row] for row in TAGS]
    features = tokenize_dataset([{"tokens": w, "ner_tags": t} for w, t in zip(WORDS, TAGS)], ours, "ner",
                                max_length=14)  # fmt: skip
    enc, labels = hf_tokenize_and_align_labels(hf, WORDS, tag_ids, 14)
    assert [f["input_ids"] for f in features] == enc["input_ids"]
    assert [f["labels"] for f in features] == labels
    assert features.label_names == names
    assert any(lab.count(-100) > 2 for lab in labels)  # sub-words were ignored, not only specials
    assert len(labels[2]) == 14  # the long sentence was truncated
    ints = tokenize_dataset([{"words": w, "tags": t} for w, t in zip(WORDS, tag_ids)], ours, "token-classification",
                            max_length=14)  # fmt: skip
    assert [f["labels"] for f in ints] == labels and ints.num_labels == len(names)


def test_token_classification_errors(toks):
    with pytest.raises(ValueError, match="record 1 has 2 words but 1 tags"):
        tokenize_dataset([{"tokens": WORDS[0], "ner_tags": TAGS[0]}, {"tokens": WORDS[1], "ner_tags": ["O"]}],
                         toks[0], "token-classification")  # fmt: skip
    with pytest.raises(ValueError, match="outside the 2 classes"):
        tokenize_dataset([{"tokens": ["a", "b"], "ner_tags": [0, 3]}], toks[0], "token-classification",
                         label_names=["O", "X"])  # fmt: skip
    with pytest.raises(ValueError, match="must hold a list"):
        tokenize_dataset([{"tokens": "not split", "ner_tags": []}], toks[0], "token-classification")


# ------------------------------------------------------------------------------------------ question answering
CONTEXT_LONG = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
                "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
                "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through "
                "generations of assimilation the distinct cultural and ethnic identity of the Normans emerged.")
QA = [
    {"question": "  Who led the Norse raiders?", "context": CONTEXT_LONG,
     "answers": {"text": ["Rollo"], "answer_start": [CONTEXT_LONG.index("Rollo")]}},
    {"question": "What region is named after the Normans?", "context": CONTEXT_LONG,
     "answers": {"text": ["Normandy"], "answer_start": [CONTEXT_LONG.index("Normandy")]}},
    {"question": "Where is Paris?", "context": "Paris is the capital of France.",
     "answers": {"text": ["capital of France"], "answer_start": [13]}},
    {"question": "Who is the king of the Moon?", "context": "Nobody knows who rules the Moon, if anyone does.",
     "answers": {"text": [], "answer_start": []}},
]  # fmt: skip


def hf_prepare_train_features(hf, examples, max_length, stride):
    """run_qa's prepare_train_features (question first, no padding), stated on the HF fast tokenizer."""
    enc = hf([e["question"].lstrip() for e in examples], [e["context"] for e in examples], truncation="only_second",
             max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls = ids.index(hf.cls_token_id)
        seq = enc.sequence_ids(i)
        answers = examples[enc["overflow_to_sample_mapping"][i]]["answers"]
        if not answers["answer_start"]:
            starts.append(cls), ends.append(cls)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = seq.index(1)
        last = len(ids) - 1 - seq[::-1].index(1)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls), ends.append(cls)
            continue
        while first < len(offsets) and offsets[first][0] <= start_char:
            first += 1
        while offsets[last][1] >= end_char:
            last -= 1
        starts.append(first - 1), ends.append(last + 1)
    return enc, starts, ends


def test_question_answering_matches_hf_run_qa(toks):
    ours, hf = toks
    features = tokenize_dataset(QA, ours, "question-answering", max_length=40, stride=12, batch_size=3)
    enc, starts, ends = hf_prepare_train_features(hf, QA, 40, 12)
    assert [f["input_ids"] for f in features] == enc["input_ids"]
    assert [f["token_type_ids"] for f in features] == enc["token_type_ids"]
    assert [f["start_positions"] for f in features] == starts
    assert [f["end_positions"] for f in features] == ends
    windows = enc["overflow_to_sample_mapping"]
    assert windows.count(0) >= 3 and windows.count(2) == 1  # the long context spans several windows
    found = [(i, s, e) for i, (s, e) in enumerate(zip(starts, ends)) if s > 0]
    assert {windows[i] for i, _, _ in found} == {0, 1, 2}  # every answerable example found in some window
    for i, s, e in found:  # and the positions point at the answer's text
        answer = QA[windows[i]]["answers"]["text"][0]
        assert ours.decode(features[i]["input_ids"][s : e + 1]).lower() == answer.lower()
    assert all(starts[i] == 0 for i, w in enumerate(windows) if w == 3)  # unanswerable: [CLS]


def test_question_answering_strips_questions(tmp_path):
    """run_qa strips the question's leading spaces, which byte-level BPE would otherwise encode as tokens."""
    gpt2 = AutoTokenizer.from_pretrained(str(tf.gpt2_dir(tmp_path)))
    stripped = [{**example, "question": example["question"].lstrip()} for example in QA]
    features = tokenize_dataset(QA, gpt2, "question-answering", max_length=40, stride=12)
    assert QA[0]["question"] != stripped[0]["question"]
    assert list(features) == list(tokenize_dataset(stripped, gpt2, "question-answering", max_length=40, stride=12))


def test_question_answering_window_errors(toks):
    question = {"question": "why " * 30, "context": CONTEXT_LONG, "answers": {"text": [], "answer_start": []}}
    with pytest.raises(ValueError, match="stride \\(40\\) must be less than max_length \\(40\\) minus the special"):
        tokenize_dataset(QA[:1], toks[0], "question-answering", max_length=40, stride=40)
    # the question is 6 tokens: 30 - 6 - 3 special tokens leave 21 context tokens per window; the tokenizers
    # library panics (a BaseException, with a Rust backtrace) on a stride of 21, so it is refused before encoding
    assert len(tokenize_dataset(QA[:1], toks[0], "question-answering", max_length=30, stride=20)) > 1
    with pytest.raises(ValueError, match="record 0: stride \\(21\\) must be less than the 21 context tokens"):
        tokenize_dataset(QA[:1], toks[0], "question-answering", max_length=30, stride=21)
    with pytest.raises(ValueError, match="record 0: the question is 30 tokens long"):
        tokenize_dataset([question], toks[0], "question-answering", max_length=24, stride=4)
    with pytest.raises(ValueError, match="answers must be \\{'text'"):
        tokenize_dataset([{**QA[2], "answers": {"start": [0]}}], toks[0], "question-answering")


# --------------------------------------------------------------------------------------- language modeling
LINES = [f"line {i}: " + " ".join(["the quick brown fox", "jumps over", "the lazy dog", "again"][: 1 + i % 4])
         for i in range(11)]  # fmt: skip


def hf_group_texts(examples: dict, block_size: int) -> dict:
    """run_mlm / run_clm's group_texts over one `datasets.map` batch: concatenate, drop the remainder, chunk."""
    joined = {k: sum(examples[k], []) for k in examples}
    total = len(joined["input_ids"]) // block_size * block_size
    return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in joined.items()}


@pytest.mark.parametrize("task", ["fill-mask", "text-generation"])
def test_group_texts_matches_hf(toks, task):
    ours, hf = toks
    batch_size, block = 4, 16
    features = tokenize_dataset([{"text": t} for t in LINES], ours, task, block_size=block, batch_size=batch_size)
    expected: dict = {}
    for i in range(0, len(LINES), batch_size):  # datasets.map(batched=True, batch_size=4) on the tokenized texts
        enc = hf(LINES[i : i + batch_size], return_special_tokens_mask=task == "fill-mask")
        for k, v in hf_group_texts(dict(enc), block).items():
            expected.setdefault(k, []).extend(v)
    assert sorted(features.column_names) == sorted(expected)
    for key in expected:
        assert [f[key] for f in features] == expected[key], key
    assert len(features) >= 3 and set(features.lengths) == {block} and features.max_length == block


def test_line_by_line_truncates(toks):
    ours, hf = toks
    records = [{"text": t} for t in ["", *LINES[:4], "   "]]  # blank texts are skipped, as run_mlm's line_by_line
    features = tokenize_dataset(records, ours, "fill-mask", max_length=9)
    expected = hf(LINES[:4], truncation=True, max_length=9, return_special_tokens_mask=True)
    assert [f["input_ids"] for f in features] == expected["input_ids"]
    assert [f["special_tokens_mask"] for f in features] == expected["special_tokens_mask"]


def test_packing_rows_and_loss():
    """Packed rows hold every document whole (split only when longer than a row), with positions restarting; the
    causal loss over a packed, collated batch equals the loss over the documents one per row."""
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 40, size=n)) for n in (5, 9, 3, 14, 2, 7, 1, 6)]
    block = 12
    packed = pack_sequences(docs, block)
    assert all(len(r) <= block for r in packed["input_ids"])
    pieces = []  # (row, segment) -> tokens, in order
    for row, (ids, seg, pos) in enumerate(zip(packed["input_ids"], packed["segment_ids"], packed["position_ids"])):
        for s in sorted(set(seg)):
            idx = [j for j, x in enumerate(seg) if x == s]
            assert idx == list(range(idx[0], idx[-1] + 1)) and [pos[j] for j in idx] == list(range(len(idx)))
            pieces.append([ids[j] for j in idx])
    expected = [d[i : i + block] for d in docs for i in range(0, len(d), block)]
    assert pieces == expected
    assert len(packed["input_ids"]) < len(expected)  # documents shared rows

    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1, "padding_side": "right", "mask_token_id": None})()
    collate = collator_for("text-generation", tok)
    logits = rng.normal(size=(len(packed["input_ids"]), block, 40)).astype(np.float32)
    batch = collate([{k: v[i] for k, v in packed.items()} for i in range(len(packed["input_ids"]))], length=block)
    out = type("Out", (), {"logits": logits})
    loss, stats = losses.causal_lm_loss(out, batch)
    # the same logits, document by document: the logit at each token of a piece predicts the piece's next token
    total, count, r = 0.0, 0, 0
    for row, seg in enumerate(batch["segment_ids"]):
        for s in set(seg[seg > 0].tolist()):
            idx = np.flatnonzero(seg == s)
            lp = logits[row, idx[:-1]] - np.log(np.exp(logits[row, idx[:-1]]).sum(-1, keepdims=True))
            total -= lp[np.arange(len(idx) - 1), batch["input_ids"][row, idx[1:]]].sum()
            count += len(idx) - 1
            r += 1
    assert r == len(expected)
    assert float(stats["count"]) == count == sum(len(p) - 1 for p in expected)
    np.testing.assert_allclose(float(stats["loss_sum"]), total, rtol=1e-5)


def test_packing_through_tokenize_dataset(toks):
    ours = toks[0]
    features = tokenize_dataset([{"text": t} for t in LINES], ours, "causal-lm", packing=True, block_size=20)
    docs = ours(LINES, return_tensors=None)["input_ids"]
    assert sorted(features.column_names) == ["attention_mask", "input_ids", "position_ids", "segment_ids"]
    assert [t for f in features for t in f["input_ids"]] == [t for d in docs for t in d]
    assert all(f["position_ids"][0] == 0 and f["segment_ids"][0] == 1 for f in features)
    assert features.max_length == 20 and max(features.lengths) <= 20


def test_language_modeling_errors(toks):
    with pytest.raises(ValueError, match="fewer than block_size=512 tokens"):
        tokenize_dataset([{"text": "short"}], toks[0], "fill-mask", block_size=512)
    with pytest.raises(ValueError, match="packing=True is for text-generation"):
        tokenize_dataset([{"text": "short"}], toks[0], "fill-mask", packing=True)


# ------------------------------------------------------------------------------------------------ seq2seq
def test_seq2seq_matches_hf(tmp_path):
    ours = AutoTokenizer.from_pretrained(str(tf.t5_dir(tmp_path)))
    ours.save_pretrained(tmp_path / "saved")  # transformers reads the same tokenizer.json (no slow conversion)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    records = [{"document": s, "summary": t} for s, t in zip(TEXTS, PAIRS)]
    features = tokenize_dataset(records, ours, "summarization", max_length=10, max_target_length=4)
    inputs = hf(TEXTS, max_length=10, truncation=True)
    labels = hf(text_target=PAIRS, max_length=4, truncation=True)["input_ids"]
    assert [f["input_ids"] for f in features] == inputs["input_ids"]
    assert [f["attention_mask"] for f in features] == inputs["attention_mask"]
    assert [f["labels"] for f in features] == labels
    assert all(lab[-1] == hf.eos_token_id for lab in labels) and features.max_target_length == 4
    nested = tokenize_dataset([{"translation": {"en": s, "fr": t}} for s, t in zip(TEXTS, PAIRS)], ours,
                              "translation", text_column="translation.en", target_column="translation.fr",
                              max_length=10, max_target_length=4)  # fmt: skip
    assert [f["labels"] for f in nested] == labels


# -------------------------------------------------------------------------------------------- bad arguments
def test_task_and_column_errors(toks):
    with pytest.raises(ValueError, match="unknown training task 'image-classification'"):
        tokenize_dataset([{"text": "a"}], toks[0], "image-classification")
    with pytest.raises(ValueError, match="needs a text column: none of \\['text', 'sentence'.*\\['body'\\]"):
        tokenize_dataset([{"body": "a"}], toks[0], "text-classification")
    with pytest.raises(ValueError, match="record 0 has no column 'review'"):
        tokenize_dataset([{"text": "a"}], toks[0], "text-classification", text_column="review")
    with pytest.raises(ValueError, match="record 1: column 'text' must hold a str"):
        tokenize_dataset([{"text": "a"}, {"text": 3}], toks[0], "text-classification")
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        tokenize_dataset([{"text": "a"}], toks[0], "text-classification", max_length=0)
