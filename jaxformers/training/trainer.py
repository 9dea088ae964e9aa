"""`Trainer`: transformers' familiar training loop over jaxformers' pure, jitted steps.

    import jaxformers as jf
    model = jf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tok = jf.AutoTokenizer.from_pretrained(path)
    args = jf.TrainingArguments("out", learning_rate=5e-5, num_train_epochs=1, eval_strategy="epoch")
    trainer = jf.Trainer(model, args, train_dataset="train.csv", eval_dataset="dev.csv", tokenizer=tok)
    trainer.train()                    # trainer.train(resume_from_checkpoint=True) continues a killed run exactly
    trainer.evaluate()                 # {"eval_loss": ..., "eval_accuracy": ..., "eval_f1": ..., ...}
    trainer.save_model("out/final")    # HF layout: transformers and jf.task load it (LoRA: PEFT's adapter files)

Datasets are `training.data.Features` (from `tokenize_dataset`), or anything `tokenize_dataset` reads (a .jsonl /
.csv / .txt path, a list of dicts, a `datasets.Dataset`), tokenized here with `tokenizer` for the model's task
(`task=` overrides: "text-classification", "token-classification", "question-answering", "fill-mask",
"text-generation", "text2text-generation"). Labels are checked against the head before training starts.

Underneath: `create_optimizer` (AdamW, schedule, clipping, accumulation) from the arguments unless
`optimizers=(optax_tx, schedule)` is given; `TrainState.create`; `make_train_step` (bf16=True computes in bfloat16
with float32 master weights); `DataLoader` (length buckets, order a pure function of seed and epoch); Orbax
checkpoints (`training.checkpoint`) in `output_dir/checkpoints/<step>`. `max_steps`, `logging_steps`, `eval_steps`
and `save_steps` count optimizer updates; with gradient accumulation an epoch's last micro-batches may accumulate
into the next epoch's first update (nothing is dropped).

Exact resume. A checkpoint holds the parameters, the optimizer state (accumulated gradients included), the step,
the PRNG key (dropout draws `fold_in(key, step)`), the position in the data (epoch, batch), the running loss sums and
the log history; the data order and masked-LM masks are functions of (seed, epoch, batch). So a run killed at any
point and resumed gives the same losses, step for step, as the run that was never interrupted; `metrics.jsonl` is
rewritten from the restored history, and TensorBoard drops the events after the checkpoint (`purge_step`).
A fresh run refuses an output_dir that already holds checkpoints (so none is ever overwritten): resume it, or
choose another directory.

Logging (every `logging_steps` updates): loss (mean over the updates since the last log), learning_rate, grad_norm
(of the last micro-batch), epoch; to `output_dir/metrics.jsonl` (one JSON object per line, also `eval_*` results and
a final summary) and TensorBoard events under `logging_dir`, as chosen by `report_to`; a tqdm bar unless
`disable_tqdm`. Only process 0 writes logs.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxformers.core.sharding import FSDP, resolve_rules, use_mesh
from jaxformers.training import losses
from jaxformers.training import metrics as metrics_lib
from jaxformers.training.arguments import TrainingArguments
from jaxformers.training.checkpoint import CheckpointManager, step_of
from jaxformers.training.loader import DataLoader, data_parallel_size
from jaxformers.training.optim import create_optimizer
from jaxformers.training.state import TrainState, update_model
from jaxformers.training.step import make_predict_step, make_train_step

log = logging.getLogger("jaxformers")

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"


class TrainOutput(NamedTuple):
    """What `Trainer.train` returns (as transformers): updates taken, mean training loss, run metrics."""

    global_step: int
    training_loss: float
    metrics: dict


class PredictionOutput(NamedTuple):
    """What `Trainer.predict` returns: model outputs (numpy logits; a tuple for question answering's start / end),
    labels (None when the data has none) and metrics (`test_*`)."""

    predictions: Any
    label_ids: Any
    metrics: dict


def _host(x) -> np.ndarray:
    """A (possibly multi-process, sharded) array as one numpy array on this host."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _concat(arrays: list[np.ndarray], pad=losses.IGNORE_INDEX) -> np.ndarray:
    """Concatenate along rows, padding axis 1 (sequence) with `pad` where batches had different bucket lengths."""
    if arrays[0].ndim < 2:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=pad)
              for a in arrays]  # fmt: skip
    return np.concatenate(padded)


def _steps(value, total: int) -> int:
    """An interval in updates: integers as given, fractions of the run's `total` updates rounded up."""
    return int(value) if value >= 1 else max(1, math.ceil(value * total))


def _is_tokenized(dataset) -> bool:
    """Whether `dataset` already holds token ids (Features, example dicts, a tokenized `datasets.Dataset`)."""
    if hasattr(dataset, "lengths") and hasattr(dataset, "task"):
        return True
    if hasattr(dataset, "column_names") and not isinstance(dataset, (str, os.PathLike)):
        return "input_ids" in dataset.column_names
    if isinstance(dataset, (str, os.PathLike)) or not isinstance(dataset, Sequence) or len(dataset) == 0:
        return False
    first = dataset[0]
    return isinstance(first, dict) and "input_ids" in first


def _column(dataset, key: str) -> list | None:
    """One column of a dataset of examples (`labels` also under its alias `label`), or None when absent."""
    columns = getattr(dataset, "columns", None)
    if isinstance(columns, dict):
        return columns.get(key, columns.get("label") if key == "labels" else None)
    first = dataset[0]
    name = key if key in first else ("label" if key == "labels" and "label" in first else None)
    return None if name is None else [dataset[i][name] for i in range(len(dataset))]


def _first_outside(rows: list | None, bound: int) -> tuple[int, int] | None:
    """(row, value) of the first integer value outside [0, bound) that is not the ignore index, in rows of ints or
    lists of ints; None if there is none (or the rows hold floats: regression and multi-hot targets)."""
    if not rows:
        return None
    nested = [r if isinstance(r, (list, tuple, np.ndarray)) else (r,) for r in rows]
    values = np.fromiter(itertools.chain.from_iterable(nested), np.float64)
    if values.size == 0 or not np.all(values == np.round(values)) or any(isinstance(v, float) for v in nested[0]):
        return None
    bad = (values != losses.IGNORE_INDEX) & ((values < 0) | (values >= bound))
    if not bad.any():
        return None
    first = int(np.argmax(bad))
    row = int(np.searchsorted(np.cumsum([len(r) for r in nested]), first, side="right"))
    return row, int(values[first])


class Trainer:
    """Train, evaluate, predict and save a jaxformers model with `TrainingArguments` (see the module docstring).

    model: a jaxformers head (sequence / token classification, question answering, masked / causal / seq2seq LM).
    tokenizer (alias processing_class): tokenizes raw datasets, pads in the default collator, saved by save_model.
    data_collator: `fn(examples, *, length=None, rng=None) -> dict of arrays` (default: the task's collator).
    compute_metrics: `fn(EvalPrediction) -> dict` added to evaluation results (as transformers).
    optimizers: `(optax_transform, schedule)`; schedule may be None (then no learning rate is logged). Default:
      `create_optimizer` from the arguments. With gradient_accumulation_steps > 1 a given transform is wrapped in
      `optax.MultiSteps`.
    mesh / rules: the mesh the model was loaded onto (`from_pretrained(..., mesh=, rules=)`) and its rules
      (default FSDP); batches are split over the rules' data axes.
    task: the tokenization task for raw datasets (default: the model head's).
    """

    def __init__(self, model, args: TrainingArguments, train_dataset=None, eval_dataset=None, tokenizer=None,
                 data_collator: Callable | None = None, compute_metrics: Callable | None = None,
                 optimizers: tuple = (None, None), mesh=None, rules=None, task: str | None = None,
                 processing_class=None):  # fmt: skip
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise ValueError("pass the tokenizer once: tokenizer= or processing_class=, not two different ones")
        self.model, self.args = model, args
        self.tokenizer = tokenizer if tokenizer is not None else processing_class
        self.compute_metrics = compute_metrics
        self.loss_fn = losses.for_model(model)  # a head without a loss fails here, not after data loading
        self.head = type(model).task  # what the model computes: picks the loss and the metrics
        self.task = task or self.head  # how raw records are tokenized
        self.mesh = mesh
        self.rules = None if mesh is None else resolve_rules(FSDP if rules is None else rules, mesh)
        self.data_parallel = data_parallel_size(mesh, self.rules)
        self.compute_dtype = "bfloat16" if args.bf16 else None
        if not (isinstance(optimizers, (tuple, list)) and len(optimizers) == 2):
            raise TypeError("optimizers must be a pair (optax transform or None, schedule or None)")
        self.optimizer, self.lr_schedule = optimizers
        self.train_dataset = self._prepare(train_dataset, "train_dataset")
        names = getattr(self.train_dataset, "label_names", None)
        self.eval_dataset = self._prepare(eval_dataset, "eval_dataset", label_names=names)
        self.data_collator = data_collator
        self.state: TrainState | None = None
        self.log_history: list[dict] = []
        self.global_step = 0
        self._predict_step = None
        self._stats_fn = None
        self._writer = None

    # ------------------------------------------------------------------------------------------------ data
    def _prepare(self, dataset, role: str, label_names=None):
        """Tokenized features for `dataset` (raw records are tokenized here), labels checked against the head."""
        if dataset is None:
            return None
        if not _is_tokenized(dataset):
            if self.tokenizer is None:
                raise ValueError(f"{role} is raw records: pass tokenizer= to tokenize them (or tokenize with "
                                 "jaxformers.training.data.tokenize_dataset first)")
            from jaxformers.training import data

            dataset = data.tokenize_dataset(dataset, self.tokenizer, self.task,
                                            max_length=self.args.max_length or 128, label_names=label_names)
        if len(dataset) == 0:
            raise ValueError(f"{role} is empty (0 examples): nothing to train or evaluate on. Check the data file "
                             "and the columns used to build it")
        self._check_ids(dataset, role)
        return dataset

    def _check_ids(self, dataset, role: str) -> None:
        """Labels outside the head's classes (or token ids outside the vocabulary) fail before training: on device
        they would be silently clamped."""
        config, head = self.model.config, type(self.model).__name__
        owner = f"{head} (num_labels={config.num_labels})"
        if self.head in ("sequence-classification", "token-classification") and hasattr(dataset, "check_labels"):
            dataset.check_labels(config.num_labels, owner=owner)
        elif self.head in ("sequence-classification", "token-classification") and config.num_labels > 1:
            bad = _first_outside(_column(dataset, "labels"), config.num_labels)
            if bad is not None:
                raise ValueError(f"{role}[{bad[0]}]: label {bad[1]} is outside the {config.num_labels} classes "
                                 f"0..{config.num_labels - 1} of {owner}: fix the labels or load the model with more "
                                 "labels (num_labels=...)")  # fmt: skip
        vocab = getattr(config, "vocab_size", None)
        if vocab is None:
            return
        lm = self.head in ("masked-lm", "causal-lm", "seq2seq-lm")
        for key in ("input_ids", "labels") if lm else ("input_ids",):
            bad = _first_outside(_column(dataset, key), vocab)
            if bad is not None:
                raise ValueError(f"{role}[{bad[0]}]: {key} holds token id {bad[1]}, outside the vocabulary "
                                 f"0..{vocab - 1} of {head}: the tokenizer does not match the model")

    def _collator(self, features):
        if self.data_collator is not None:
            return self.data_collator
        if self.tokenizer is None:
            raise ValueError("pass tokenizer= (the default collator pads with it) or data_collator=")
        from jaxformers.training.collators import collator_for

        self.data_collator = collator_for(getattr(features, "task", self.task), self.tokenizer)
        return self.data_collator

    def _loader(self, features, batch_size: int, *, train: bool) -> DataLoader:
        args = self.args
        return DataLoader(features, self._collator(features), batch_size * self.data_parallel, shuffle=train,
                          seed=args.seed, drop_last=args.dataloader_drop_last and train,
                          group_by_length=args.group_by_length and train, max_length=args.max_length,
                          mesh=self.mesh, rules=self.rules)  # fmt: skip

    def _mesh_context(self):
        return use_mesh(self.mesh, self.rules) if self.mesh is not None else nullcontext()

    # ------------------------------------------------------------------------------------------------ training
    def _create_optimizer(self, total_updates: int):
        args = self.args
        if self.optimizer is None:
            return create_optimizer(
                args.learning_rate, total_updates, warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio,
                lr_scheduler_type=args.lr_scheduler_type, weight_decay=args.weight_decay,
                adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon,
                max_grad_norm=args.max_grad_norm, gradient_accumulation_steps=args.gradient_accumulation_steps,
            )  # fmt: skip
        tx = self.optimizer
        if args.gradient_accumulation_steps > 1:
            tx = optax.MultiSteps(tx, every_k_schedule=args.gradient_accumulation_steps)
        return tx, self.lr_schedule

    def _checkpoint_to_resume(self, resume, directory: Path) -> tuple[Path, int | None] | None:
        """(checkpoints directory, step or None for the latest) to resume from, or None for a fresh run."""
        if resume is None or resume is False:
            return None
        if resume is True:
            return directory, None
        named = step_of(resume)
        if named is not None:
            return named
        path = Path(resume).expanduser().absolute()
        return (path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path), None

    def _restore(self, state: TrainState, source: tuple[Path, int | None], own: Path) -> tuple[TrainState, dict]:
        directory, step = source
        if not directory.is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint: {directory} does not exist")
        reader = CheckpointManager(directory, read_only=True)
        try:
            latest = reader.latest_step()
            if latest is None:
                raise FileNotFoundError(f"resume_from_checkpoint: no complete checkpoint in {directory} (an "
                                        "interrupted save never counts); start without resume_from_checkpoint")
            if step is not None and directory == own and step != latest:
                raise ValueError(f"resuming from checkpoint {step} would overwrite the later checkpoints "
                                 f"{[s for s in reader.steps if s > step]} in {directory}: resume from the latest "
                                 f"({latest}), or move the later ones away first")
            state, trainer_state = reader.restore(state, step)
        finally:
            reader.close()
        saved_model = trainer_state.get("model")
        if saved_model != type(self.model).__name__:
            log.warning("resuming a checkpoint of %s into %s", saved_model, type(self.model).__name__)
        return state, trainer_state

    def train(self, resume_from_checkpoint=None) -> TrainOutput:
        """Train for `max_steps` updates (or `num_train_epochs`); `resume_from_checkpoint` (default: the argument
        of the same name): True for the latest checkpoint in output_dir, or a checkpoint path."""
        args = self.args
        if self.train_dataset is None:
            raise ValueError("Trainer.train needs a train_dataset")
        if args.eval_strategy != "no" and self.eval_dataset is None:
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset")
        resume = args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
        loader = self._loader(self.train_dataset, args.per_device_train_batch_size, train=True)
        accumulation = args.gradient_accumulation_steps
        per_epoch = len(loader)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch / accumulation)
        optimizer, schedule = self._create_optimizer(total)
        from jaxformers import lora  # a model with LoRA adapters trains only them (and its modules_to_save)

        trainable = lora.trainable(self.model) if lora.lora_modules(self.model) else None
        state = TrainState.create(self.model, optimizer, seed=args.seed, trainable=trainable)
        own = Path(args.output_dir).expanduser().absolute() / CHECKPOINTS
        source = self._checkpoint_to_resume(resume, own)
        progress = {"epoch": 0, "batch": 0, "loss_pending": 0.0, "pending_count": 0, "loss_total": 0.0,
                    "total_count": 0, "best_metric": None, "best_step": None, "last_saved": None}  # fmt: skip
        if source is not None:
            state, saved = self._restore(state, source, own)
            progress.update({k: saved[k] for k in progress})
            self.log_history = saved["log_history"]
            if saved.get("batches_per_epoch") != per_epoch:
                log.warning("the checkpoint was trained with %s batches per epoch, this data gives %s: the "
                            "resumed data order differs from the interrupted run's", saved.get("batches_per_epoch"),
                            per_epoch)
        else:
            existing = []
            if own.is_dir():
                with CheckpointManager(own, read_only=True) as reader:
                    existing = reader.steps
            if existing:
                raise FileExistsError(f"{own} already holds checkpoints {existing} of an earlier run; a fresh run "
                                      "would overwrite them. Continue it with resume_from_checkpoint=True, or choose "
                                      "another output_dir")
            self.log_history = []
        self.state = state
        train_step, _ = make_train_step(self.model, optimizer, schedule=schedule, compute_dtype=self.compute_dtype)
        manager = None
        if args.save_strategy != "no":
            manager = CheckpointManager(own, save_total_limit=args.save_total_limit,
                                        best_metric=args.metric_for_best_model,
                                        greater_is_better=bool(args.greater_is_better))  # fmt: skip
        try:
            self._loop(loader, train_step, manager, progress, total, per_epoch, resumed=source is not None)
            if manager is not None:
                manager.wait()
                if args.load_best_model_at_end and progress["best_step"] not in (None, self.global_step):
                    log.info("loading the best checkpoint, step %s (%s=%s)", progress["best_step"],
                             args.metric_for_best_model, progress["best_metric"])
                    self.state, _ = manager.restore(self.state, progress["best_step"])
        finally:
            if manager is not None:
                manager.close()
            self._close_writer()
            update_model(self.model, self.state)
        output = TrainOutput(self.global_step, self.log_history[-1]["train_loss"], dict(self.log_history[-1]))
        if args.push_to_hub:
            self.push_to_hub()
        return output

    def _loop(self, loader: DataLoader, train_step, manager, progress: dict, total: int, per_epoch: int,
              resumed: bool) -> None:  # fmt: skip
        args = self.args
        accumulation = args.gradient_accumulation_steps
        micro = int(_host(self.state.step))
        update = micro // accumulation
        self.global_step = update
        every = {name: _steps(getattr(args, name), total)
                 for name in ("logging_steps", "eval_steps", "save_steps") if getattr(args, name) is not None}
        epoch, index = progress["epoch"], progress["batch"]
        pending = jnp.float32(progress["loss_pending"])
        running = jnp.float32(progress["loss_total"])
        self._open_logs(purge_step=update if resumed else None)
        start, start_update = time.perf_counter(), update
        bar = self._progress_bar(total, update)
        while update < total:
            for batch in loader.batches(epoch, start=index):
                with self._mesh_context():
                    self.state, metrics = train_step(self.state, batch)
                index, micro = index + 1, micro + 1
                pending, running = pending + metrics["loss"], running + metrics["loss"]
                progress["pending_count"] += 1
                progress["total_count"] += 1
                boundary, epoch_done = micro % accumulation == 0, index == per_epoch
                if not (boundary or epoch_done):
                    continue
                progress["epoch"], progress["batch"] = (epoch + 1, 0) if epoch_done else (epoch, index)
                at = epoch + index / per_epoch
                if boundary:
                    update += 1
                    self.global_step = update
                    bar.update(1)
                    if update % every["logging_steps"] == 0:
                        loss = float(pending) / progress["pending_count"]
                        entry = {"loss": loss, "grad_norm": float(metrics["grad_norm"])}
                        if "learning_rate" in metrics:
                            entry["learning_rate"] = float(metrics["learning_rate"])
                        self._log({**entry, "epoch": at}, update)
                        bar.set_postfix(loss=f"{loss:.4f}")
                        pending, progress["pending_count"] = jnp.float32(0.0), 0
                results = None
                if (args.eval_strategy == "epoch" and epoch_done
                        or args.eval_strategy == "steps" and boundary and update % every["eval_steps"] == 0):
                    results = self._evaluate_in_training(at, update)
                if manager is not None and (args.save_strategy == "epoch" and epoch_done
                                            or args.save_strategy == "steps" and boundary
                                            and update % every["save_steps"] == 0
                                            or boundary and update == total):  # fmt: skip
                    self._save(manager, progress, pending, running, update, per_epoch, results)
                if boundary and update >= total:
                    break
            else:
                epoch, index = epoch + 1, 0
        bar.close()
        runtime = time.perf_counter() - start
        done = update - start_update
        summary = {"train_runtime": runtime, "train_steps_per_second": done / runtime if runtime else 0.0,
                   "train_samples_per_second": done * accumulation * loader.batch_size / runtime if runtime else 0.0,
                   "train_loss": float(running) / max(progress["total_count"], 1),
                   "epoch": progress["epoch"] + progress["batch"] / per_epoch}  # fmt: skip
        self._log(summary, update)

    def _progress_bar(self, total: int, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                    disable=self.args.disable_tqdm or jax.process_index() != 0)  # fmt: skip

    def _evaluate_in_training(self, epoch: float, update: int) -> dict:
        results = self._evaluate(self.state, self.eval_dataset, "eval")
        self._log({**results, "epoch": epoch}, update)
        return results

    def _save(self, manager: CheckpointManager, progress: dict, pending, running, update: int, per_epoch: int,
              results: dict | None) -> None:  # fmt: skip
        if progress["last_saved"] == update:  # an epoch end that fell on a step already saved
            return
        metric = self.args.metric_for_best_model
        if results is not None and metric in results:
            value, best = results[metric], progress["best_metric"]
            better = best is None or (value > best if self.args.greater_is_better else value < best)
            if better:
                progress["best_metric"], progress["best_step"] = value, update
        progress["last_saved"] = update
        progress["loss_pending"], progress["loss_total"] = float(pending), float(running)
        trainer_state = {**progress, "global_step": update, "batches_per_epoch": per_epoch,
                         "model": type(self.model).__name__, "log_history": self.log_history,
                         "args": self.args.to_dict()}  # fmt: skip
        manager.save(update, self.state, trainer_state, metrics=results)

    # ------------------------------------------------------------------------------------------------ logging
    def _open_logs(self, purge_step: int | None) -> None:
        """Rewrite metrics.jsonl from the (restored) history and open the TensorBoard writer (process 0 only)."""
        if jax.process_index() != 0:
            return
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if "jsonl" in self.args.report_to:
            tmp = out / f".{METRICS_FILE}.tmp"
            tmp.write_text("".join(json.dumps(e) + "\n" for e in self.log_history))
            os.replace(tmp, out / METRICS_FILE)
        if "tensorboard" in self.args.report_to:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.args.logging_dir, purge_step=purge_step)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _log(self, entry: dict, step: int) -> None:
        """Record `entry` at `step`: log history, metrics.jsonl, TensorBoard (`eval/loss`, `train/loss`, ...)."""
        entry = {**entry, "step": step}
        self.log_history.append(entry)
        if jax.process_index() != 0:
            return
        if self._writer is None and "tensorboard" in self.args.report_to:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.args.logging_dir)
        if "jsonl" in self.args.report_to:
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.args.output_dir) / METRICS_FILE, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            for key, value in entry.items():
                if key == "step" or not isinstance(value, (int, float)):
                    continue
                prefix, _, name = key.partition("_")  # transformers' tags: eval/loss, train/loss, train/train_loss
                tag = f"{prefix}/{name}" if prefix in ("eval", "test") and name else f"train/{key}"
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    # ------------------------------------------------------------------------------------------------ evaluation
    def _current_state(self) -> TrainState:
        """The trained state, or the model's current parameters (evaluation before / without training)."""
        if self.state is not None:
            return self.state
        return TrainState.create(self.model, optax.identity(), seed=self.args.seed)

    def _compile_eval(self) -> None:
        if self._predict_step is not None:
            return
        self._predict_step = make_predict_step(self.model, compute_dtype=self.compute_dtype)
        loss_fn, task, config = self.loss_fn, self.head, self.model.config

        def stats(outputs, batch):
            if task == "question-answering":
                predictions = (jnp.argmax(outputs.start_logits, -1), jnp.argmax(outputs.end_logits, -1))
            elif task == "sequence-classification" and config.num_labels == 1:
                predictions = outputs.logits[..., 0]
            else:
                predictions = jnp.argmax(outputs.logits, -1)
            if not any(k in batch for k in losses.LABEL_KEYS) and task != "causal-lm":
                return {}, predictions
            return loss_fn(outputs, batch)[1], predictions

        self._stats_fn = jax.jit(stats)

    def _run(self, state: TrainState, features, want_logits: bool):
        """One pass over `features`: summed loss statistics, host predictions, labels and (optionally) logits."""
        self._compile_eval()
        loader = self._loader(features, self.args.per_device_eval_batch_size, train=False)
        sums: dict = {}
        predictions, labels, logits = [], [], []
        for batch in loader.batches(0):
            with self._mesh_context():
                outputs = self._predict_step(state, batch)
                stats, preds = self._stats_fn(outputs, batch)
            sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
            predictions.append(jax.tree.map(_host, preds))
            keys = [k for k in losses.LABEL_KEYS if k in batch]
            if keys:
                labels.append(tuple(_host(batch[k]) for k in keys))
            if want_logits:
                fields = ("start_logits", "end_logits") if self.head == "question-answering" else ("logits",)
                logits.append(tuple(_host(getattr(outputs, f)) for f in fields))
        return {k: float(v) for k, v in sums.items()}, predictions, labels, logits

    def _evaluate(self, state: TrainState, features, prefix: str, want_logits: bool | None = None):
        want_logits = self.compute_metrics is not None if want_logits is None else want_logits
        start = time.perf_counter()
        sums, predictions, labels, logits = self._run(state, features, want_logits)
        results = {}
        if sums:
            count = max(sums["count"], 1.0)
            results["loss"] = sums["loss_sum"] / count
            if "correct" in sums:
                results["accuracy"] = sums["correct"] / count
            if self.head in ("masked-lm", "causal-lm", "seq2seq-lm"):
                results["perplexity"] = metrics_lib.perplexity(results["loss"])
        if labels:
            results.update(self._task_metrics(features, predictions, labels))
        label_ids = self._stack(labels) if labels else None
        if want_logits and self.compute_metrics is not None and label_ids is not None:
            results.update(self.compute_metrics(metrics_lib.EvalPrediction(self._stack(logits), label_ids)))
        runtime = time.perf_counter() - start
        results.update(runtime=runtime, samples_per_second=len(features) / runtime if runtime else 0.0)
        out = {f"{prefix}_{k}": v for k, v in results.items()}
        return (out, logits, label_ids) if want_logits else out

    @staticmethod
    def _stack(batches: list[tuple]):
        """Per-batch tuples of arrays -> one array per field (a tuple when there are several)."""
        fields = tuple(_concat([b[i] for b in batches]) for i in range(len(batches[0])))
        return fields[0] if len(fields) == 1 else fields

    def _task_metrics(self, features, predictions: list, labels: list[tuple]) -> dict:
        """F1 for sequence classification (binary for 2 classes, else macro); entity-level precision / recall / F1
        for token classification with chunk tags (B-X / I-X ...)."""
        config = self.model.config
        if self.head == "sequence-classification" and config.num_labels > 1:
            preds, gold = _concat(predictions), _concat([b[0] for b in labels])
            if gold.ndim != 1:  # multi-label rows: accuracy (exact match) only
                return {}
            return {"f1": metrics_lib.f1_score(preds, gold, average="binary" if config.num_labels == 2 else "macro")}
        if self.head == "token-classification":
            names = getattr(features, "label_names", None)
            if names is None:
                id2label = config.extra.get("id2label") or {}
                names = [id2label.get(str(i), id2label.get(i, str(i))) for i in range(config.num_labels)]
            if not metrics_lib.is_iob(names):
                return {}
            pred_tags, gold_tags = [], []
            for preds, (gold,) in zip(predictions, labels, strict=True):
                for p_row, g_row in zip(preds, gold, strict=True):
                    keep = g_row != losses.IGNORE_INDEX
                    pred_tags.append([names[i] for i in p_row[keep]])
                    gold_tags.append([names[i] for i in g_row[keep]])
            scores = metrics_lib.entity_scores(pred_tags, gold_tags)
            return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"]}
        return {}

    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict:
        """Loss and metrics over `eval_dataset` (default: the Trainer's): `eval_loss`, `eval_accuracy` where a
        prediction can be right, `eval_f1` (classification), `eval_precision` / `eval_recall` / `eval_f1`
        (entity-level, token classification with chunk tags), `eval_perplexity` (language models), plus
        `compute_metrics`' results; also logged."""
        names = getattr(self.train_dataset, "label_names", None)
        features = self.eval_dataset if eval_dataset is None else self._prepare(eval_dataset, "eval_dataset", names)
        if features is None:
            raise ValueError("Trainer.evaluate needs an eval_dataset (here or in the constructor)")
        results = self._evaluate(self._current_state(), features, metric_key_prefix)
        self._log(results, self.global_step)
        self._close_writer()
        return results

    def predict(self, test_dataset, metric_key_prefix: str = "test") -> PredictionOutput:
        """Model outputs over `test_dataset` in its order (logits as numpy, padded with -100 to one length for
        token-level heads), its labels (None without), and `test_*` metrics when it has labels."""
        names = getattr(self.train_dataset, "label_names", None)
        features = self._prepare(test_dataset, "test_dataset", names)
        results, logits, label_ids = self._evaluate(self._current_state(), features, metric_key_prefix,
                                                    want_logits=True)  # fmt: skip
        return PredictionOutput(self._stack(logits), label_ids, results)

    # ------------------------------------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None) -> None:
        """The trained model in HF layout (config.json + model.safetensors) and the tokenizer's files, so
        transformers' `from_pretrained`, `jf.AutoModel...from_pretrained` and `jf.task` load the folder.

        A model with LoRA adapters saves the adapter only, in PEFT's format (adapter_config.json +
        adapter_model.safetensors, as transformers' Trainer does for a PEFT model): `jf.lora.load_adapter` into the
        base model, or PEFT's `PeftModel.from_pretrained`, loads it."""
        from jaxformers import lora

        output_dir = self.args.output_dir if output_dir is None else os.fspath(output_dir)
        if self.state is not None:
            update_model(self.model, self.state)
        if jax.process_index() != 0:
            return
        if lora.lora_modules(self.model):
            lora.save_adapter(self.model, output_dir)
        else:
            self.model.save_pretrained(output_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(output_dir)

    def push_to_hub(self, repo_id: str | None = None, *, commit_message: str = "End of training",
                    private: bool | None = None, token: str | None = None, revision: str | None = None):
        """Save the model into output_dir and upload that folder (without its checkpoints) to the Hub repo
        `repo_id` (default: `hub_model_id`, else the output_dir's name), creating the repo if needed. Returns the
        commit info from `huggingface_hub`."""
        from huggingface_hub import HfApi

        repo_id = repo_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        self.save_model()
        if jax.process_index() != 0:
            return None
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = getattr(repo, "repo_id", repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=self.args.output_dir, commit_message=commit_message,
                                 revision=revision, ignore_patterns=[f"{CHECKPOINTS}/**", f".{METRICS_FILE}.tmp"])
