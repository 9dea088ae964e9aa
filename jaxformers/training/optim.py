"""Optimizers as transformers' Trainer builds them, from optax parts.

`create_optimizer(...)` chains global-norm clipping, AdamW with a learning-rate schedule (linear or cosine decay after
a linear warmup, as `transformers.get_scheduler`), weight decay on every parameter except biases and norm weights
(transformers' "bias" / "LayerNorm.weight" rule, by parameter name), and gradient accumulation with
`optax.MultiSteps`. It returns the optimizer and its schedule (for logging the learning rate).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


def make_schedule(learning_rate: float, num_train_steps: int | None = None, *, warmup_steps: int = 0,
                  warmup_ratio: float = 0.0, kind: str = "linear") -> optax.Schedule:
    """The learning rate at each optimizer step (not micro-step): warmup from 0, then `kind` decay to 0 at
    `num_train_steps` (transformers' `get_scheduler` values, step for step)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {SCHEDULES}")
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
    if kind in ("linear", "cosine") and not num_train_steps:
        raise ValueError(f"a {kind} schedule decays to 0 at num_train_steps; pass num_train_steps (> 0)")
    if warmup_ratio and not warmup_steps:
        warmup_steps = int(-(-warmup_ratio * (num_train_steps or 0) // 1))  # ceil, as transformers
    if kind == "constant":
        return optax.constant_schedule(learning_rate)
    warm = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    if kind == "constant_with_warmup":
        after = optax.constant_schedule(learning_rate)
    else:
        decay = max(num_train_steps - warmup_steps, 1)
        after = (optax.linear_schedule(learning_rate, 0.0, decay) if kind == "linear"
                 else optax.cosine_decay_schedule(learning_rate, decay))
    if not warmup_steps:
        return after
    return optax.join_schedules([warm, after], [warmup_steps])


def decay_mask(params):
    """True where weight decay applies: every parameter but biases and norm weights, decided by name as
    transformers' Trainer does (not by rank: scanned layers give biases and norm scales a leading layers axis, and
    attention biases split per head are 2-D)."""

    def decays(path, _):
        names = [str(getattr(k, "key", k)).lower() for k in path]
        return names[-1] != "scale" and not any("bias" in n or "norm" in n for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(learning_rate: float = 5e-5, num_train_steps: int | None = None, *, warmup_steps: int = 0,
                     warmup_ratio: float = 0.0, lr_scheduler_type: str = "linear", weight_decay: float = 0.0,
                     adam_beta1: float = 0.9, adam_beta2: float = 0.999, adam_epsilon: float = 1e-8,
                     max_grad_norm: float | None = 1.0, gradient_accumulation_steps: int = 1
                     ) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW + schedule + clipping + accumulation, with transformers' `TrainingArguments` names and defaults.

    num_train_steps counts optimizer updates (micro-steps / gradient_accumulation_steps).
    Returns (optimizer, schedule)."""
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    schedule = make_schedule(learning_rate, num_train_steps, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
                             kind=lr_scheduler_type)
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon, weight_decay=weight_decay,
                             mask=decay_mask))
    tx = optax.chain(*parts)
    if gradient_accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=gradient_accumulation_steps)
    return tx, schedule
