"""Training: pure sharded steps underneath (`TrainState`, `make_train_step`, losses, optax optimizers), and a
familiar `Trainer` on top.

    import jaxformers as jf
    from jaxformers import training

    optimizer, schedule = training.create_optimizer(2e-5, num_train_steps=1000, warmup_ratio=0.1)
    state = training.TrainState.create(model, optimizer, seed=0)
    train_step, eval_step = training.make_train_step(model, optimizer, schedule=schedule)
    state, metrics = train_step(state, batch)
    training.update_model(model, state).save_pretrained("out")
"""

from jaxformers.training import losses
from jaxformers.training.collators import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    collator_for,
)
from jaxformers.training.data import Features, read_records, tokenize_dataset
from jaxformers.training.optim import create_optimizer, decay_mask, make_schedule
from jaxformers.training.state import TrainState, merge_params, split_params, update_model
from jaxformers.training.step import make_predict_step, make_train_step, model_input_names

_LAZY = {  # the Trainer side imports Orbax and tqdm: loaded on first use
    "Trainer": "trainer", "TrainOutput": "trainer", "PredictionOutput": "trainer",
    "TrainingArguments": "arguments", "DataLoader": "loader", "CheckpointManager": "checkpoint",
    "CheckpointMismatchError": "checkpoint",
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"jaxformers.training.{_LAZY[name]}"), name)
    if name == "metrics":
        return importlib.import_module("jaxformers.training.metrics")
    raise AttributeError(f"module 'jaxformers.training' has no attribute {name!r}")


__all__ = [
    "CheckpointManager",
    "CheckpointMismatchError",
    "DataLoader",
    "PredictionOutput",
    "TrainOutput",
    "Trainer",
    "TrainingArguments",
    "metrics",
    "DataCollatorForLanguageModeling",
    "DataCollatorForSeq2Seq",
    "DataCollatorForTokenClassification",
    "DataCollatorWithPadding",
    "Features",
    "collator_for",
    "read_records",
    "tokenize_dataset",
    "TrainState",
    "create_optimizer",
    "decay_mask",
    "losses",
    "make_predict_step",
    "make_schedule",
    "make_train_step",
    "merge_params",
    "model_input_names",
    "split_params",
    "update_model",
]
