"""Training data: read records from local files (or a `datasets.Dataset`), tokenize them for a task in fast batches,
and keep the result as `Features`, which the DataLoader batches with a collator (`training.collators`).

    records = read_records("train.jsonl")                       # .jsonl .json .csv .tsv .txt, list of dicts, Dataset
    features = tokenize_dataset(records, tokenizer, "text-classification", max_length=128)
    features[0]          # {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...], "labels": 1}
    features.lengths     # tokens per example (length bucketing); features.label_names: id -> name

What each task produces follows transformers' example scripts (run_glue, run_ner, run_qa, run_mlm, run_clm,
run_summarization), so a model fine-tuned here sees what it would see there:

- "text-classification": `labels` per text (or text pair). String labels become ids in sorted order (or in the order
  of `label_names`); integer labels are kept and checked against `label_names`; float labels mean regression; list
  labels mean multi-label (multi-hot float vectors: lists of names or class ids are converted, lists of floats are
  taken as multi-hot vectors already).
- "token-classification": `labels` per token, aligned as run_ner's `tokenize_and_align_labels`: each word's label on
  its first sub-word, -100 on the other sub-words and on special tokens. Words go through the tokenizer as pre-split
  input (`is_split_into_words`); byte-level BPE tokenizers need `add_prefix_space=True` for that, as in transformers.
- "question-answering": run_qa's `prepare_train_features`: question and context as a pair, the context cut into
  windows of `max_length` tokens overlapping by `stride`; `start_positions` / `end_positions` of the first answer in
  each window, or the [CLS] index where the window does not contain it (and for unanswerable questions).
- "fill-mask" and "text-generation": texts grouped into blocks of `block_size` tokens (run_mlm / run_clm
  `group_texts`, per batch of `batch_size` records, dropping each batch's remainder), or one row per text truncated
  to `max_length` when `block_size` is None. Labels are made by the collator. With `packing=True` (text-generation),
  whole documents are packed into rows of up to `block_size` tokens with `segment_ids` (1, 2, ... per document) and
  `position_ids` restarting at 0 for each document; the causal loss never crosses a document boundary.
- "text2text-generation" ("summarization", "translation"): `input_ids` of the source and `labels` of the target
  (the tokenizer's `text_target=` side, truncated to `max_target_length`).

Columns are guessed as the example scripts do (see `_COLUMNS`) unless given; a column may name a field of a nested
record with a dot (`"translation.fr"`). Empty or whitespace-only texts are skipped for fill-mask / text-generation.
"""

from __future__ import annotations

import collections.abc
import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxformers.training.losses import IGNORE_INDEX

__all__ = ["TASKS", "Features", "canonical_task", "group_texts", "pack_sequences", "read_records", "tokenize_dataset"]

TASKS = ("text-classification", "token-classification", "question-answering", "fill-mask", "text-generation",
         "text2text-generation")  # fmt: skip
_ALIASES = {
    "sentiment-analysis": "text-classification", "sequence-classification": "text-classification",
    "ner": "token-classification", "masked-lm": "fill-mask", "causal-lm": "text-generation",
    "summarization": "text2text-generation", "translation": "text2text-generation",
    "seq2seq-lm": "text2text-generation",
}  # fmt: skip
# The columns each role is looked up under, in order, when not given (the names of the HF example datasets).
_COLUMNS = {
    "text": ("text", "sentence", "sentence1", "question1", "premise", "content", "review", "document"),
    "text_pair": ("text_pair", "sentence2", "question2", "hypothesis"),
    "label": ("label", "labels", "score"),
    "tokens": ("tokens", "words"),
    "tags": ("ner_tags", "labels", "tags", "pos_tags", "chunk_tags", "label"),
    "question": ("question",),
    "context": ("context",),
    "answers": ("answers",),
    "source": ("text", "document", "article", "source", "input", "dialogue", "sentence"),
    "target": ("summary", "target", "highlights", "output", "labels", "label"),
}
_READERS = (".jsonl", ".json", ".csv", ".tsv", ".txt")
_INT = re.compile(r"[+-]?\d+")


def canonical_task(task: str) -> str:
    """The task name training uses for `task` (pipeline names and model-head names are accepted as aliases)."""
    name = _ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown training task {task!r}; use one of {list(TASKS)} (or an alias: {sorted(_ALIASES)})")
    return name


# ---------------------------------------------------------------------------------------------------------- reading
def read_records(source, *, columns: list[str] | None = None) -> list[dict]:
    """Records (one dict per example) from a path to a .jsonl / .json (a list, or one object per line), .csv / .tsv
    (header row) or .txt file (one `{"text": line}` per non-empty line), a list of dicts, or a `datasets.Dataset`.

    columns: keep only these columns (each must be in every record). Every record must have the same columns:
    ragged rows are an error, with the record's number, rather than examples that silently lose a field."""
    if isinstance(source, (str, os.PathLike)):
        name, records = str(source), _read_file(Path(source))
    elif hasattr(source, "column_names"):
        if isinstance(source.column_names, dict):
            raise ValueError(f"got a dataset with several splits {sorted(source.column_names)}: pass one split, "
                             "e.g. dataset['train']")  # fmt: skip
        name, records = f"the {type(source).__name__}", [dict(row) for row in source]
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        name, records = "the records", list(source)
        bad = next((i for i, r in enumerate(records) if not isinstance(r, collections.abc.Mapping)), None)
        if bad is not None:
            raise TypeError(f"record {bad} is a {type(records[bad]).__name__}, not a dict: pass a list of dicts such "
                            "as {'text': ..., 'label': ...}")  # fmt: skip
        records = [dict(r) for r in records]
    else:
        raise TypeError(f"cannot read records from a {type(source).__name__}: pass a file path ({', '.join(_READERS)}"
                        "), a list of dicts or a datasets.Dataset")  # fmt: skip
    if not records:
        raise ValueError(f"{name} has no records: give a file with at least one example")
    _check_columns(records, columns, name)
    return [{c: r[c] for c in columns} for r in records] if columns is not None else records


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(f"cannot read {path}: unknown extension {suffix!r}; use one of {', '.join(_READERS)} "
                         "(or pass a list of dicts)")  # fmt: skip
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        return [{"text": line} for line in text.splitlines() if line.strip()]
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json" and text.lstrip().startswith("["):
        records = _parse_json(path, text, 1)
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of objects (or one JSON object per line)")
    else:
        records = [_parse_json(path, line, i) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"record {bad} of {path} is a JSON {type(records[bad]).__name__}, not an object: write one "
                         "object such as {\"text\": ..., \"label\": ...} per example")  # fmt: skip
    return records


def _parse_json(path: Path, text: str, line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {line + err.lineno - 1}: invalid JSON ({err.msg})") from None


def _read_csv(path: Path, text: str, delimiter: str) -> list[dict]:
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))  # quoted fields may hold newlines
    rows = [row for row in rows if row]
    if not rows:
        return []
    header = rows[0]
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise ValueError(f"{path} line {number} has {len(row)} fields but the header has {len(header)} "
                             f"({header}); quote fields that contain the delimiter {delimiter!r}")  # fmt: skip
    return [dict(zip(header, row)) for row in rows[1:]]


def _check_columns(records: list[dict], columns: list[str] | None, name: str) -> None:
    """Every record has the same columns (or at least `columns`)."""
    wanted = set(records[0]) if columns is None else set(columns)
    for i, record in enumerate(records):
        missing = wanted - set(record)
        extra = set(record) - wanted if columns is None else set()
        if missing or extra:
            what = f"lacks {sorted(missing)}" if missing else f"has extra columns {sorted(extra)}"
            raise ValueError(f"record {i} of {name} {what}; every record needs the columns {sorted(wanted)} "
                             "(fix the data, or pass columns=[...] to keep only the ones you need)")  # fmt: skip


# --------------------------------------------------------------------------------------------------------- features
class Features(collections.abc.Sequence):
    """Tokenized examples, stored by column: `features[i]` is a dict of python ints and lists (`input_ids`,
    `attention_mask`, `token_type_ids`, `labels`, `start_positions`, ...), ready for a collator.

    task: the canonical task name. lengths: `np.int32 [N]`, tokens per example (the DataLoader's length buckets).
    label_names: class names in id order (classification tasks), or None. num_labels / problem_type: what the
    classification head needs (num_labels inferred from the data when no names are given). max_length: the longest
    row (block_size when grouping). max_target_length: the labels' bound (seq2seq), else None."""

    def __init__(self, columns: dict[str, list], *, task: str, max_length: int, label_names: list[str] | None = None,
                 num_labels: int | None = None, problem_type: str | None = None,
                 max_target_length: int | None = None):  # fmt: skip
        sizes = {key: len(values) for key, values in columns.items()}
        if "input_ids" not in columns or len(set(sizes.values())) > 1:
            raise ValueError(f"Features need an input_ids column and columns of one length, got {sizes}")
        self.columns = columns
        self.task = task
        self.lengths = np.asarray([len(ids) for ids in columns["input_ids"]], np.int32)
        self.label_names = label_names
        self.num_labels = num_labels
        self.problem_type = problem_type
        self.max_length = max_length
        self.max_target_length = max_target_length

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {key: values[index] for key, values in self.columns.items()}

    def select(self, indices: Iterable[int]) -> Features:
        """The examples at `indices`, in that order (e.g. a train / eval split), with the same attributes."""
        indices = [int(i) for i in indices]
        columns = {key: [values[i] for i in indices] for key, values in self.columns.items()}
        return Features(columns, task=self.task, max_length=self.max_length, label_names=self.label_names,
                        num_labels=self.num_labels, problem_type=self.problem_type,
                        max_target_length=self.max_target_length)  # fmt: skip

    def check_labels(self, num_labels: int, *, owner: str = "the model") -> None:
        """Raise a clear error when a class id lies outside `num_labels` classes (e.g. the head's), or the label
        count of multi-label vectors differs."""
        if "labels" not in self.columns or self.problem_type == "regression":
            return
        names = "" if self.label_names is None else f" (the data's classes: {self.label_names})"
        if self.problem_type == "multi_label_classification":
            width = len(self.columns["labels"][0])
            if width != num_labels:
                raise ValueError(f"the multi-label vectors have {width} classes but {owner} has {num_labels}{names}")
            return
        for i, label in enumerate(self.columns["labels"]):
            for value in label if isinstance(label, list) else [label]:
                if value != IGNORE_INDEX and not 0 <= value < num_labels:
                    raise ValueError(f"label {value} (example {i}) is outside the {num_labels} classes "
                                     f"0..{num_labels - 1} of {owner}{names}: fix the labels or give {owner} more "
                                     "classes")  # fmt: skip

    def __repr__(self) -> str:
        return f"Features(task={self.task!r}, examples={len(self)}, columns={self.column_names})"


# ----------------------------------------------------------------------------------------------------- tokenization
def tokenize_dataset(records_or_source, tokenizer, task: str, *, max_length: int = 128, text_column=None,
                     text_pair_column=None, label_column=None, label_names=None, target_column=None,
                     max_target_length=128, stride: int | None = None, block_size: int | None = None,
                     packing: bool = False, batch_size: int = 1000) -> Features:  # fmt: skip
    """Tokenize records (anything `read_records` takes) for `task`; see the module docstring for what each task makes.

    max_length: tokens per row (capped at the tokenizer's model_max_length). text_column / text_pair_column /
    label_column / target_column: the columns to read (guessed when None; for token classification text_column is
    the words and label_column the tags; for question answering text_column / text_pair_column are the question and
    context and label_column the answers). label_names: class names in id order. stride: overlap of consecutive
    question-answering windows (default min(max_length // 2, 128), as transformers' pipeline). block_size: group
    texts into rows of this many tokens (fill-mask / text-generation). packing: pack whole documents into rows with
    segment ids (text-generation). batch_size: records per tokenizer call (and per `group_texts` batch).
    """
    task = canonical_task(task)
    records = read_records(records_or_source)
    for name, value in (("max_length", max_length), ("batch_size", batch_size), ("block_size", block_size),
                        ("max_target_length", max_target_length)):  # fmt: skip
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    max_length = min(max_length, tokenizer.model_max_length)
    if packing and task != "text-generation":
        raise ValueError(f"packing=True is for text-generation (causal LM) only, not {task}")
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    if task == "text-classification":
        return _classification(records, batches, tokenizer, max_length, text_column, text_pair_column, label_column,
                               label_names)  # fmt: skip
    if task == "token-classification":
        return _token_classification(records, batches, tokenizer, max_length, text_column, label_column, label_names)
    if task == "question-answering":
        if stride is None:
            stride = min(max_length // 2, 128)
        return _question_answering(records, batches, tokenizer, max_length, stride, text_column, text_pair_column,
                                   label_column)  # fmt: skip
    if task == "text2text-generation":
        return _seq2seq(records, batches, tokenizer, max_length, max_target_length, text_column, target_column)
    return _language_modeling(records, batches, tokenizer, task, max_length, text_column, block_size, packing)


def _column(records: list[dict], given: str | None, role: str, task: str, required: bool = True) -> str | None:
    """The column playing `role`: `given` (checked) or the first of `_COLUMNS[role]` the records have."""
    if given is not None:
        _values(records[:1], given)  # a clear error if it is missing
        return given
    found = next((c for c in _COLUMNS[role] if c in records[0]), None)
    if found is None and required:
        raise ValueError(f"{task} needs a {role.replace('_', ' ')} column: none of {list(_COLUMNS[role])} is among "
                         f"the records' columns {sorted(records[0])}; name it with the matching *_column "
                         "argument")  # fmt: skip
    return found


def _values(records: list[dict], column: str, *, kind: type | None = None, start: int = 0) -> list:
    """The `column` of every record (a dotted name reads a nested field), optionally checked to be of `kind`."""
    out = []
    for i, record in enumerate(records, start):
        value = record
        for part in [column] if column in record else column.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"record {i} has no column {column!r} (its columns: {sorted(record)})")
            value = value[part]
        if kind is not None and not isinstance(value, kind):
            raise ValueError(f"record {i}: column {column!r} must hold a {kind.__name__}, got "
                             f"{type(value).__name__} {value!r:.60}")  # fmt: skip
        out.append(value)
    return out


def _encode(tokenizer, *args, **kwargs):
    return tokenizer(*args, return_tensors=None, **kwargs)


def _model_columns(enc) -> dict[str, list]:
    return {key: enc[key] for key in ("input_ids", "token_type_ids", "attention_mask") if key in enc}


def _extend(columns: dict[str, list], new: dict[str, list]) -> None:
    for key, values in new.items():
        columns.setdefault(key, []).extend(values)


def _classification(records, batches, tok, max_length, text_col, pair_col, label_col, label_names) -> Features:
    task = "text-classification"
    text_col = _column(records, text_col, "text", task)
    pair_col = _column(records, pair_col, "text_pair", task, required=False)
    label_col = _column(records, label_col, "label", task, required=False)
    columns: dict[str, list] = {}
    for start, batch in _starts(batches):
        texts = _values(batch, text_col, kind=str, start=start)
        pairs = _values(batch, pair_col, kind=str, start=start) if pair_col else None
        _extend(columns, _model_columns(_encode(tok, texts, pairs, truncation=True, max_length=max_length)))
    info: dict[str, Any] = {}
    if label_col is not None:
        labels, names, num_labels, problem = _class_labels(_values(records, label_col), label_names, label_col)
        columns["labels"] = labels
        info = {"label_names": names, "num_labels": num_labels, "problem_type": problem}
    return Features(columns, task=task, max_length=max_length, **info)


def _starts(batches: list[list[dict]]):
    start = 0
    for batch in batches:
        yield start, batch
        start += len(batch)


def _class_labels(values: list, label_names, column: str):
    """(labels, label_names, num_labels, problem_type) of one label per example: see the module docstring."""
    where = f"column {column!r}"
    if any(v is None for v in values):
        raise ValueError(f"record {values.index(None)} has no label ({where} is null): label every example")
    if all(isinstance(v, (list, tuple)) for v in values):
        return _multi_hot(values, label_names, where)
    if any(isinstance(v, (list, tuple)) for v in values):
        raise ValueError(f"{where} mixes lists (multi-label) and single labels: use one form for every example")
    if all(isinstance(v, str) for v in values):
        if label_names is None and all(_INT.fullmatch(v.strip()) for v in values):
            values = [int(v) for v in values]  # CSV cells: "0" / "1" are class ids, as datasets reads them
        elif label_names is None and all(_is_float(v) for v in values):
            values = [float(v) for v in values]
    if all(isinstance(v, str) for v in values):
        ids, names = _names_to_ids(values, label_names, where)
        return ids, names, len(names), "single_label_classification"
    if all(isinstance(v, (int, np.integer)) for v in values):
        ids = [int(v) for v in values]
        names = _checked_names(label_names)
        num_labels = len(names) if names else max(2, max(ids) + 1)
        _check_ids(ids, num_labels, names, where)
        return ids, names, num_labels, "single_label_classification"
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return [float(v) for v in values], None, 1, "regression"
    kinds = sorted({type(v).__name__ for v in values})
    raise ValueError(f"{where} mixes label types {kinds}: use class names (str), class ids (int), floats "
                     "(regression) or lists (multi-label) throughout")  # fmt: skip


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked_names(label_names) -> list[str] | None:
    if label_names is None:
        return None
    names = [str(n) for n in label_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"label_names must be distinct class names in id order, got {list(label_names)}")
    return names


def _names_to_ids(values: list[str], label_names, where: str) -> tuple[list[int], list[str]]:
    names = _checked_names(label_names) or sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ValueError(f"{where} has labels {unknown[:5]} that are not in label_names {names}: add them or fix the "
                         "data")  # fmt: skip
    return [index[v] for v in values], names


def _check_ids(ids: list[int], num_labels: int, names, where: str) -> None:
    bad = next((i for i, v in enumerate(ids) if v != IGNORE_INDEX and not 0 <= v < num_labels), None)
    if bad is not None:
        known = f": {names}" if names else ""
        raise ValueError(f"label {ids[bad]} (record {bad}, {where}) is outside the {num_labels} classes 0.."
                         f"{num_labels - 1}{known}; fix the label or give the right label_names")  # fmt: skip


def _multi_hot(values: list, label_names, where: str):
    flat = [v for row in values for v in row]
    if not flat:
        raise ValueError(f"{where}: every multi-label list is empty; give each example its classes")
    if all(isinstance(v, float) for v in flat):  # multi-hot vectors as given
        widths = {len(row) for row in values}
        names = _checked_names(label_names)
        if len(widths) > 1 or (names and widths != {len(names)}):
            raise ValueError(f"{where} holds multi-hot vectors of lengths {sorted(widths)}"
                             + (f" for {len(names)} label_names" if names else "") + ": give one value per class")
        return [[float(v) for v in row] for row in values], names, widths.pop(), "multi_label_classification"
    if all(isinstance(v, str) for v in flat):
        ids, names = _names_to_ids(flat, label_names, where)
        num_labels = len(names)
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
        ids, names = [int(v) for v in flat], _checked_names(label_names)
        num_labels = len(names) if names else max(2, max(ids, default=0) + 1)
        _check_ids(ids, num_labels, names, where)
    else:
        raise ValueError(f"{where}: multi-label lists must hold class names, class ids, or floats (a multi-hot "
                         "vector), one kind throughout")  # fmt: skip
    rows, pos = [], 0
    for row in values:
        hot = [0.0] * num_labels
        for i in ids[pos : pos + len(row)]:
            hot[i] = 1.0
        rows.append(hot)
        pos += len(row)
    return rows, names, num_labels, "multi_label_classification"


def _token_classification(records, batches, tok, max_length, words_col, tags_col, label_names) -> Features:
    task = "token-classification"
    words_col = _column(records, words_col, "tokens", task)
    tags_col = _column(records, tags_col, "tags", task, required=False)
    names = None
    if tags_col is not None:
        tags = _values(records, tags_col, kind=list)
        flat = [t for row in tags for t in row]
        if flat and all(isinstance(t, str) for t in flat):
            ids, names = _names_to_ids(flat, label_names, f"column {tags_col!r}")
        elif all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in flat):
            ids, names = [int(t) for t in flat], _checked_names(label_names)
            _check_ids(ids, len(names) if names else max(ids, default=0) + 1, names, f"column {tags_col!r}")
        else:
            raise ValueError(f"column {tags_col!r} must hold lists of tag names (str) or tag ids (int)")
        it = iter(ids)
        tag_ids = [[next(it) for _ in row] for row in tags]
    columns: dict[str, list] = {}
    for start, batch in _starts(batches):
        words = _values(batch, words_col, kind=list, start=start)
        for i, row in enumerate(words, start):
            if not all(isinstance(w, str) for w in row):
                raise ValueError(f"record {i}: column {words_col!r} must be a list of words (str)")
            if tags_col is not None and len(tag_ids[i]) != len(row):
                raise ValueError(f"record {i} has {len(row)} words but {len(tag_ids[i])} tags: give one tag per word")
        enc = _encode(tok, words, is_split_into_words=True, truncation=True, max_length=max_length)
        _extend(columns, _model_columns(enc))
        if tags_col is not None:
            columns.setdefault("labels", []).extend(
                _align_labels(enc.word_ids(j), tag_ids[start + j]) for j in range(len(words))
            )
    num_labels = None
    if tags_col is not None:
        num_labels = len(names) if names else max((t for row in tag_ids for t in row), default=0) + 1
    return Features(columns, task=task, max_length=max_length, label_names=names, num_labels=num_labels)


def _align_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Each word's tag on its first token; -100 on special tokens and on a word's later sub-words."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return out


def _question_answering(records, batches, tok, max_length, stride, q_col, c_col, a_col) -> Features:
    task = "question-answering"
    q_col, c_col = _column(records, q_col, "question", task), _column(records, c_col, "context", task)
    a_col = _column(records, a_col, "answers", task, required=False)
    question_first = tok.padding_side == "right"  # as run_qa: a tokenizer padding on the left takes context first
    columns: dict[str, list] = {}
    for start, batch in _starts(batches):
        questions = [q.lstrip() for q in _values(batch, q_col, kind=str, start=start)]  # run_qa strips them too
        contexts = _values(batch, c_col, kind=str, start=start)
        answers = _values(batch, a_col, kind=dict, start=start) if a_col else None
        _check_windows(tok, questions, contexts, max_length, stride, start)
        pair = (questions, contexts) if question_first else (contexts, questions)
        enc = _encode(tok, *pair, truncation="only_second" if question_first else "only_first", max_length=max_length,
                      stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
        _extend(columns, _model_columns(enc))
        if answers is None:
            continue
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            ids = enc["input_ids"][row]
            cls = ids.index(tok.cls_token_id) if tok.cls_token_id in ids else 0
            span = _answer_span(answers[sample], start + sample, enc["offset_mapping"][row], enc.sequence_ids(row),
                                1 if question_first else 0)  # fmt: skip
            s, e = span if span is not None else (cls, cls)
            columns.setdefault("start_positions", []).append(s)
            columns.setdefault("end_positions", []).append(e)
    return Features(columns, task=task, max_length=max_length)


def _answer_span(answer: dict, record: int, offsets, sequence_ids, context_id: int) -> tuple[int, int] | None:
    """Token positions of the first answer in one window, or None when the window does not contain all of it (or
    the question has no answer)."""
    if "text" not in answer or "answer_start" not in answer:
        raise ValueError(f"record {record}: answers must be {{'text': [...], 'answer_start': [...]}} (SQuAD's "
                         f"layout), got keys {sorted(answer)}")  # fmt: skip
    if not answer["answer_start"]:
        return None
    start_char = int(answer["answer_start"][0])
    end_char = start_char + len(answer["text"][0])
    context = [i for i, s in enumerate(sequence_ids) if s == context_id]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return None
    start = max(i for i in context if offsets[i][0] <= start_char)  # the token the answer starts in
    end = min(i for i in context if offsets[i][1] >= end_char)  # the token it ends in
    return start, end


def _check_windows(tok, questions: list[str], contexts: list[str], max_length: int, stride: int, start: int) -> None:
    """Refuse, with the numbers, the window settings the tokenizers library refuses (one with a Rust panic): a stride
    not below a window's room, a question that leaves no room for the context (checked before encoding)."""
    single_room = max_length - tok.num_special_tokens_to_add(pair=False)
    if stride >= single_room:
        raise ValueError(f"stride ({stride}) must be less than max_length ({max_length}) minus the special tokens "
                         f"(= {single_room}); lower stride")  # fmt: skip
    lengths = [len(ids) for ids in _encode(tok, questions, add_special_tokens=False)["input_ids"]]
    rooms = [max_length - n - tok.num_special_tokens_to_add(pair=True) for n in lengths]  # context tokens per window
    risky = [i for i, room in enumerate(rooms) if room <= stride]
    if not risky:
        return
    # only a pair longer than max_length is split into windows, and only then do these settings fail
    whole = _encode(tok, [questions[i] for i in risky], [contexts[i] for i in risky])["input_ids"]
    for i, ids in zip(risky, whole):
        if len(ids) <= max_length:
            continue
        if rooms[i] <= 0:
            raise ValueError(f"record {start + i}: the question is {lengths[i]} tokens long, which leaves no room "
                             f"for the context in max_length={max_length} tokens; shorten it or raise max_length")
        raise ValueError(f"record {start + i}: stride ({stride}) must be less than the {rooms[i]} context tokens that "
                         f"fit in each window beside the {lengths[i]}-token question; lower stride or raise "
                         "max_length")  # fmt: skip


def _seq2seq(records, batches, tok, max_length, max_target_length, source_col, target_col) -> Features:
    task = "text2text-generation"
    source_col = _column(records, source_col, "source", task)
    target_col = _column(records, target_col, "target", task, required=False)
    columns: dict[str, list] = {}
    for start, batch in _starts(batches):
        sources = _values(batch, source_col, kind=str, start=start)
        targets = _values(batch, target_col, kind=str, start=start) if target_col else None
        enc = _encode(tok, sources, text_target=targets, truncation=True, max_length=max_length,
                      max_target_length=max_target_length)  # fmt: skip
        _extend(columns, {**_model_columns(enc), **({"labels": enc["labels"]} if targets else {})})
    return Features(columns, task=task, max_length=max_length, max_target_length=max_target_length)


def _language_modeling(records, batches, tok, task, max_length, text_col, block_size, packing) -> Features:
    text_col = _column(records, text_col, "text", task)
    if packing and block_size is None:
        block_size = max_length
    mlm = task == "fill-mask"
    columns: dict[str, list] = {}
    for start, batch in _starts(batches):
        texts = [t for t in _values(batch, text_col, kind=str, start=start) if t.strip()]
        if not texts:
            continue
        truncate = {"truncation": True, "max_length": max_length} if block_size is None else {}
        enc = _encode(tok, texts, return_special_tokens_mask=mlm, **truncate)
        rows = {**_model_columns(enc), **({"special_tokens_mask": enc["special_tokens_mask"]} if mlm else {})}
        if packing:
            _pack_into(columns, rows["input_ids"], block_size)
        else:
            _extend(columns, rows if block_size is None else group_texts(rows, block_size))
    if not columns.get("input_ids"):
        total = "no text" if block_size is None else f"fewer than block_size={block_size} tokens per batch"
        raise ValueError(f"{task}: the records give {total}; add (longer) texts or lower block_size")
    return Features(columns, task=task, max_length=block_size or max_length)


def group_texts(columns: dict[str, list[list]], block_size: int) -> dict[str, list[list]]:
    """run_mlm / run_clm's `group_texts`: concatenate each column's rows and cut them into rows of `block_size`,
    dropping the remainder (shorter than a block)."""
    out = {}
    for key, rows in columns.items():
        joined = [x for row in rows for x in row]
        total = len(joined) // block_size * block_size
        out[key] = [joined[i : i + block_size] for i in range(0, total, block_size)]
    return out


def pack_sequences(sequences: list[list[int]], block_size: int) -> dict[str, list[list[int]]]:
    """Pack token sequences, in order, into rows of up to `block_size` tokens: a sequence that does not fit in the
    current row starts the next one, a sequence longer than a row is split into row-sized pieces. Returns
    `input_ids`, `attention_mask`, `segment_ids` (1, 2, ... per piece within a row) and `position_ids` (0, 1, ...
    within each piece)."""
    columns: dict[str, list] = {}
    _pack_into(columns, sequences, block_size)
    return columns


def _pack_into(columns: dict[str, list], sequences: list[list[int]], block_size: int) -> None:
    """`pack_sequences`, appending to `columns` (its last row may still take more)."""
    for key in ("input_ids", "attention_mask", "segment_ids", "position_ids"):
        columns.setdefault(key, [])
    rows = columns["input_ids"]
    for sequence in sequences:
        for i in range(0, len(sequence), block_size):
            piece = sequence[i : i + block_size]
            if not rows or len(rows[-1]) + len(piece) > block_size:
                for key in columns:
                    columns[key].append([])
            segment = columns["segment_ids"][-1][-1] + 1 if rows[-1] else 1
            rows[-1].extend(piece)
            columns["attention_mask"][-1].extend([1] * len(piece))
            columns["segment_ids"][-1].extend([segment] * len(piece))
            columns["position_ids"][-1].extend(range(len(piece)))
