"""`TrainingArguments`: the Trainer's settings, with transformers' names and defaults where they apply.

    args = TrainingArguments("out", learning_rate=2e-5, per_device_train_batch_size=16, num_train_epochs=2,
                             eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True)

Everything is checked when the object is built, so a typo fails before any model is loaded. Differences from
transformers: `report_to` knows "jsonl" (`output_dir/metrics.jsonl`) and "tensorboard" (`logging_dir`, default
`output_dir/runs`); checkpoints go to `output_dir/checkpoints/<step>` (Orbax); `group_by_length` defaults to True
and `max_length` caps the padded length buckets (the tokenization length for raw records, default 128).
The global batch is `per_device_*_batch_size` times the number of devices the batch is split over (the mesh's data
axes), as in transformers.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence

from jaxformers.training.optim import SCHEDULES

STRATEGIES = ("no", "steps", "epoch")
REPORTERS = ("jsonl", "tensorboard")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass
class TrainingArguments:
    """Settings of a `Trainer` run (see the module docstring; field meanings follow transformers).

    *_steps fields (logging_steps, eval_steps, save_steps) count optimizer updates; an integer >= 1, or a float in
    (0, 1) for a fraction of the run's total updates, as transformers. eval_steps defaults to logging_steps.
    metric_for_best_model: an evaluation metric name ("loss", "accuracy", "f1", ...; the "eval_" prefix is optional),
    default "loss" when load_best_model_at_end is set; greater_is_better defaults to False for losses, else True.
    save_total_limit: checkpoints kept (the newest; with a best metric, the best one is kept as well).
    resume_from_checkpoint: True (the latest checkpoint in output_dir), a checkpoint directory, or None.
    """

    output_dir: str
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = -1
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    eval_strategy: str = "no"
    eval_steps: float | None = None
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    logging_steps: float = 10
    logging_dir: str | None = None
    bf16: bool = False
    seed: int = 42
    resume_from_checkpoint: str | bool | None = None
    report_to: str | Sequence[str] = REPORTERS
    disable_tqdm: bool = False
    group_by_length: bool = True
    max_length: int | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    dataloader_drop_last: bool = False

    def __post_init__(self):
        if isinstance(self.output_dir, os.PathLike):
            self.output_dir = os.fspath(self.output_dir)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a directory path, got {self.output_dir!r}")
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, "runs")
        self._check_numbers()
        for name in ("eval_strategy", "save_strategy"):
            value = getattr(self, name)
            if value not in STRATEGIES:
                raise ValueError(f"{name}={value!r}: use one of {STRATEGIES}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r}: use one of {SCHEDULES}")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        for name in ("logging_steps", "save_steps", "eval_steps"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1 or _is_real(value) and 0 < value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1 (updates) or a float in (0, 1) "
                                 "(a fraction of the total updates)")
        self.report_to = self._reporters(self.report_to)
        self._check_best_model()
        if self.resume_from_checkpoint is not None and not isinstance(self.resume_from_checkpoint, (bool, str)):
            if not isinstance(self.resume_from_checkpoint, os.PathLike):
                raise ValueError("resume_from_checkpoint must be True (the latest checkpoint in output_dir), a "
                                 f"checkpoint path, or None; got {self.resume_from_checkpoint!r}")
            self.resume_from_checkpoint = os.fspath(self.resume_from_checkpoint)

    def _check_numbers(self) -> None:
        positive_ints = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "warmup_ratio", "num_train_epochs",
                     "adam_epsilon"):  # fmt: skip
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must lie in [0, 1)")
        if self.warmup_ratio > 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} is a fraction of the run: use a value in [0, 1]")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if not _is_int(self.max_steps) or self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps={self.max_steps!r}: use a positive number of updates, or -1 to train for "
                             "num_train_epochs")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError("num_train_epochs must be > 0 when max_steps is -1 (nothing would train)")
        if self.save_total_limit is not None and (not _is_int(self.save_total_limit) or self.save_total_limit < 1):
            raise ValueError(f"save_total_limit={self.save_total_limit!r} must be None (keep all) or an integer >= 1")
        if self.max_length is not None and (not _is_int(self.max_length) or self.max_length < 1):
            raise ValueError(f"max_length={self.max_length!r} must be None or an integer >= 1")
        if not _is_int(self.seed):
            raise ValueError(f"seed={self.seed!r} must be an integer")

    @staticmethod
    def _reporters(report_to) -> tuple[str, ...]:
        if report_to is None or report_to == "none":
            return ()
        if report_to == "all":
            return REPORTERS
        names = (report_to,) if isinstance(report_to, str) else tuple(report_to)
        unknown = [n for n in names if n not in REPORTERS]
        if unknown:
            raise ValueError(f"report_to: {unknown} not supported; use any of {REPORTERS}, 'all' or 'none'")
        return names

    def _check_best_model(self) -> None:
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is None:
            return
        if not self.metric_for_best_model.startswith("eval_"):
            self.metric_for_best_model = f"eval_{self.metric_for_best_model}"
        if self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.eval_strategy == "no":
            raise ValueError(f"metric_for_best_model={self.metric_for_best_model!r} needs evaluations: set "
                             "eval_strategy='steps' or 'epoch' (and pass an eval_dataset)")
        if not self.load_best_model_at_end:
            return
        if self.save_strategy != self.eval_strategy:
            raise ValueError(f"load_best_model_at_end needs save_strategy == eval_strategy, got "
                             f"{self.save_strategy!r} and {self.eval_strategy!r}")
        if self.save_strategy == "steps" and _is_int(self.save_steps) and _is_int(self.eval_steps):
            if self.save_steps % self.eval_steps:
                raise ValueError(f"load_best_model_at_end needs save_steps ({self.save_steps}) to be a multiple of "
                                 f"eval_steps ({self.eval_steps}), so every checkpoint has an evaluation")

    def to_dict(self) -> dict:
        """The arguments as a JSON-ready dict (recorded in each checkpoint's trainer state)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
