"""Losses for every head, as transformers computes them, plus the sums an exact evaluation needs.

Every loss is `fn(outputs, batch) -> (loss, stats)`: `loss` is the scalar the gradient follows (a mean over the
counted items), `stats` holds sums over the batch (`loss_sum`, `count`, and `correct` where a prediction can be right),
so evaluation aggregates exactly over batches of any size. Labels equal to `IGNORE_INDEX` (-100) never count.
Everything is computed in float32 whatever the compute dtype. `for_model(model)` picks the head's loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100
LossFn = Callable[[object, dict], tuple[jax.Array, dict]]
# Batch keys that are targets, never model inputs (a seq2seq head also takes `labels` to build its decoder inputs).
LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _token_ce(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over `valid` positions of `logits [..., V]` against integer `labels [...]`."""
    logits = logits.astype(jnp.float32)
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    valid_f = valid.astype(jnp.float32)
    loss_sum = jnp.sum(ce * valid_f)
    count = jnp.sum(valid_f)
    correct = jnp.sum((jnp.argmax(logits, -1) == safe) * valid_f)
    return loss_sum / jnp.maximum(count, 1.0), {"loss_sum": loss_sum, "count": count, "correct": correct}


def causal_lm_loss(outputs, batch: dict) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy: logits at t predict labels at t+1 (HF's shift). `labels` default to `input_ids`
    with padding (`attention_mask == 0`) ignored. With `segment_ids` (packed sequences, 0 = padding), a target in a
    different segment than its context is ignored, so no document predicts the next one's first token."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        if "attention_mask" in batch:
            labels = jnp.where(jnp.asarray(batch["attention_mask"]) > 0, labels, IGNORE_INDEX)
    labels = jnp.asarray(labels)
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    seg = batch.get("segment_ids")
    if seg is not None:
        seg = jnp.asarray(seg)
        valid = valid & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    return _token_ce(outputs.logits[:, :-1], target, valid)


def token_loss(outputs, batch: dict) -> tuple[jax.Array, dict]:
    """Cross-entropy at every labelled position (no shift): masked LM (labels -100 except at masked tokens), token
    classification (labels -100 on sub-words after the first and on special tokens), seq2seq LM (decoder labels)."""
    labels = jnp.asarray(batch["labels"])
    return _token_ce(outputs.logits, labels, labels != IGNORE_INDEX)


masked_lm_loss = token_loss
token_classification_loss = token_loss
seq2seq_lm_loss = token_loss


def problem_type(config, labels) -> str:
    """HF's rule: `config.problem_type` if set; else regression for one label, single-label for integer labels,
    multi-label otherwise."""
    extra = getattr(config, "extra", {}) or {}
    kind = extra.get("problem_type")
    if kind:
        return kind
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if jnp.issubdtype(labels.dtype, jnp.integer) else "multi_label_classification"


def sequence_classification_loss(config) -> LossFn:
    """The classification loss of `config`'s head (cross-entropy, MSE regression or multi-label BCE, as HF)."""
    num_labels = config.num_labels

    def loss(outputs, batch):
        logits = outputs.logits.astype(jnp.float32)
        labels = jnp.asarray(batch["labels"])
        kind = problem_type(config, labels)
        if kind == "single_label_classification":  # labels `[B]` or `[B, 1]` (HF flattens both)
            flat = labels.reshape(-1)
            return _token_ce(logits.reshape(flat.shape[0], -1), flat, flat != IGNORE_INDEX)
        n = jnp.asarray(logits.shape[0], jnp.float32)
        if kind == "regression":
            pred = logits.squeeze(-1) if num_labels == 1 else logits
            err = jnp.square(pred - labels.astype(jnp.float32).reshape(pred.shape))
            per_example = err if err.ndim == 1 else err.mean(-1)
            return per_example.mean(), {"loss_sum": per_example.sum(), "count": n}
        if kind == "multi_label_classification":
            targets = labels.astype(jnp.float32)
            per_example = optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
            exact = jnp.all((logits > 0) == (targets > 0.5), axis=-1).astype(jnp.float32)
            return per_example.mean(), {"loss_sum": per_example.sum(), "count": n, "correct": exact.sum()}
        raise ValueError(f"unknown problem_type {kind!r}: use single_label_classification, "
                         "multi_label_classification or regression")

    return loss


def question_answering_loss(outputs, batch: dict) -> tuple[jax.Array, dict]:
    """(start CE + end CE) / 2 as HF: positions outside the sequence are clamped to `seq_len` and ignored."""
    t = outputs.start_logits.shape[-1]
    loss_sum = jnp.zeros((), jnp.float32)
    hits = []
    for logits, key in ((outputs.start_logits, "start_positions"), (outputs.end_logits, "end_positions")):
        pos = jnp.clip(jnp.asarray(batch[key]).reshape(-1), 0, t)
        valid = pos < t
        mean, stats = _token_ce(logits, pos, valid)
        loss_sum = loss_sum + mean / 2
        hits.append((jnp.argmax(logits, -1) == pos) & valid)
    n = jnp.asarray(hits[0].shape[0], jnp.float32)
    correct = jnp.sum((hits[0] & hits[1]).astype(jnp.float32))  # exact span match
    return loss_sum, {"loss_sum": loss_sum * n, "count": n, "correct": correct}


def for_model(model) -> LossFn:
    """The loss of a model's head (by its registered task); a clear error for heads that have none."""
    task = getattr(type(model), "task", "")
    if task == "causal-lm":
        return causal_lm_loss
    if task in ("masked-lm", "token-classification", "seq2seq-lm"):
        return token_loss
    if task == "sequence-classification":
        return sequence_classification_loss(model.config)
    if task == "question-answering":
        return question_answering_loss
    raise ValueError(
        f"{type(model).__name__} (task {task!r}) has no built-in loss: train a head (causal-lm, masked-lm, "
        "sequence-classification, token-classification, question-answering, seq2seq-lm) or pass "
        "loss=fn(outputs, batch) -> (loss, stats) to make_train_step"
    )
