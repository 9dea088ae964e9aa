"""Evaluation metrics in plain numpy: accuracy, F1 (binary / macro / micro), perplexity, and entity-level F1 for
token classification (the seqeval / conlleval chunk rules, default mode).

    accuracy(preds, labels)                        # positions labelled -100 are ignored everywhere
    f1_score(preds, labels, average="binary")      # sklearn's definitions; "macro" averages over the classes seen
    perplexity(eval_loss)                          # exp(mean token cross-entropy)
    entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])  # {"precision", "recall", "f1", "accuracy"}

`compute_metrics` functions given to the Trainer receive an `EvalPrediction(predictions, label_ids)` as in
transformers (logits as numpy arrays; token-level arrays padded with -100 to one length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

IGNORE_INDEX = -100


class EvalPrediction(NamedTuple):
    """What a `compute_metrics(eval_pred) -> dict` function receives: model outputs and labels as numpy arrays
    (tuples of arrays for heads with several outputs or label columns, as question answering's start / end)."""

    predictions: Any
    label_ids: Any


def _valid(predictions, labels, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must have the same shape "
                         "(pass class ids, e.g. logits.argmax(-1), not logits)")
    keep = labels != ignore_index
    return predictions[keep], labels[keep]


def accuracy(predictions, labels, *, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of predictions equal to their label, over positions whose label is not `ignore_index`."""
    predictions, labels = _valid(predictions, labels, ignore_index)
    if labels.size == 0:
        raise ValueError("accuracy of zero labelled examples is undefined: every label is the ignore index")
    return float(np.mean(predictions == labels))


def _prf(tp: float, n_pred: float, n_true: float) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts (0 where undefined, as sklearn's zero_division=0)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1_score(predictions, labels, *, average: str = "binary", pos_label: int = 1,
             ignore_index: int = IGNORE_INDEX) -> float:
    """F1 of class-id predictions, as `sklearn.metrics.f1_score`.

    average: "binary" (F1 of `pos_label`), "macro" (unweighted mean over the classes present in labels or
    predictions), "micro" (from the pooled counts: equals accuracy for single-label data)."""
    predictions, labels = _valid(predictions, labels, ignore_index)
    if average == "binary":
        tp = float(np.sum((predictions == pos_label) & (labels == pos_label)))
        return _prf(tp, float(np.sum(predictions == pos_label)), float(np.sum(labels == pos_label)))[2]
    classes = np.union1d(predictions, labels)
    if average == "macro":
        if classes.size == 0:
            return 0.0
        return float(np.mean([f1_score(predictions, labels, average="binary", pos_label=c) for c in classes]))
    if average == "micro":
        tp = float(np.sum(predictions == labels))
        return _prf(tp, float(predictions.size), float(labels.size))[2]
    raise ValueError(f"unknown average {average!r}: use 'binary', 'macro' or 'micro'")


def perplexity(eval_loss: float) -> float:
    """exp(mean cross-entropy in nats); inf when it overflows."""
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return math.inf


def _split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER" (also "B_PER"); ("O", "") for "O"; a tag without a prefix is its own type inside."""
    if tag in ("O", ""):
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_" and tag[0] in "BIESLU":
        prefix = {"L": "E", "U": "S"}.get(tag[0], tag[0])  # BILOU spells end / single as L / U
        return prefix, tag[2:]
    return "I", tag


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Chunks `(type, start, end_inclusive)` of one tag sequence under conlleval's rules: a chunk starts at a B or S
    tag, or at an I / E tag whose type differs from the previous tag's (so IOB1 and IOB2 both read correctly), and
    ends before a B, S or O tag, after an E or S tag, or where the type changes."""
    found: set[tuple[str, int, int]] = set()
    start, prev, prev_type = None, "O", ""
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes a chunk that runs to the end
        kind, typ = _split_tag(tag)
        if start is not None and (prev in "ES" or kind in "BSO" or typ != prev_type):
            found.add((prev_type, start, i - 1))
            start = None
        if kind != "O" and start is None:
            start = i
        prev, prev_type = kind, typ
    return found


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 (an entity counts when type, start and end all match) and
    token accuracy, over sentences of tag strings (seqeval's `classification_report` totals, default mode)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} references")
    tp = n_pred = n_true = 0
    correct = total = 0
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(f"sentence {i}: {len(pred)} predicted tags but {len(ref)} reference tags")
        p, r = entities(pred), entities(ref)
        tp, n_pred, n_true = tp + len(p & r), n_pred + len(p), n_true + len(r)
        correct += sum(a == b for a, b in zip(pred, ref, strict=True))
        total += len(ref)
    precision, recall, f1 = _prf(tp, n_pred, n_true)
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": correct / total if total else 0.0}


def is_iob(label_names: Sequence[str] | None) -> bool:
    """Whether class names look like chunk tags (B-X / I-X / O ...), so entity-level scores make sense."""
    return bool(label_names) and all(_split_tag(n)[0] in "BIESO" for n in label_names) and any(
        len(n) > 2 and n[1] in "-_" for n in label_names)
