"""`jaxformers train`: fine-tune a checkpoint on local data files with the `Trainer`, from the command line.

    jaxformers train --task text-classification --model PATH --train train.csv --eval dev.csv --output out \\
        --epochs 1 --lr 1e-4 --batch-size 16 --max-length 64
    jaxformers train ... --output out --resume            # continue a killed run from its latest checkpoint

What it does: reads and tokenizes the files for the task (`training.data.tokenize_dataset`: .jsonl / .json / .csv /
.tsv / .txt, columns guessed as transformers' example scripts do unless --text-column / --label-column say), loads
the model with the task's head (classification heads sized by the labels found in --train, with their names), then
`Trainer.train()`, `Trainer.evaluate()` when --eval is given, and `Trainer.save_model(OUTPUT)`: OUTPUT holds the
model in Hugging Face layout with its tokenizer (`jf.task(..., model=OUTPUT)` and transformers load it),
`checkpoints/` (Orbax, for --resume), `metrics.jsonl` and TensorBoard events under `runs/`. The last line on stdout
is one JSON object: global_step, train_loss, the eval_* metrics and the output folder. With several devices the
batch is split over all of them (`--batch-size` is per device, as transformers' per_device_train_batch_size).

Errors (a missing file, an unknown task, a model without that task's head, bad labels, an output folder holding
another run's checkpoints) print one line, `jaxformers train: error: ...`, and `run` returns 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# training task (`training.data.TASKS`) -> the model head it trains (`jaxformers.models.TASK_NAMES`)
HEADS = {
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
    "fill-mask": "masked-lm",
    "text-generation": "causal-lm",
    "text2text-generation": "seq2seq-lm",
}

EPILOG = """\
examples:
  jaxformers train --task text-classification --model DIR --train train.csv --eval dev.csv --output out
  jaxformers train --task token-classification --model DIR --train ner.jsonl --output out --epochs 3
  jaxformers train --task text-classification --model DIR --train train.csv --output out --resume

Tasks: text-classification (alias sentiment-analysis), token-classification (ner), question-answering, fill-mask,
text-generation, text2text-generation (summarization, translation). The result: OUTPUT/config.json +
model.safetensors + tokenizer files; `jaxformers run TASK --model OUTPUT ...` uses it."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `train` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); its handler is `run`."""
    p = subparsers.add_parser("train", help="fine-tune a model on local data files (Trainer)", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--task", required=True, help="text-classification, token-classification, question-answering, "
                   "fill-mask, text-generation or text2text-generation")  # fmt: skip
    p.add_argument("--model", required=True, help="local folder, Orbax checkpoint or hub repo id to start from")
    p.add_argument("--train", required=True, metavar="FILE", help="training data: .jsonl, .json, .csv, .tsv or .txt")
    p.add_argument("--eval", default=None, metavar="FILE", help="evaluation data (evaluated each epoch and at the end)")
    p.add_argument("--output", required=True, metavar="DIR", help="where the model, checkpoints and logs go")
    p.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
    p.add_argument("--max-steps", type=int, default=-1, help="optimizer updates; overrides --epochs when > 0")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of AdamW (default 5e-5)")
    p.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of the updates spent warming up")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (matrices only)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per device per step (default 8)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, longer ones truncated")
    p.add_argument("--text-column", default=None, help="column holding the text (default: guessed)")
    p.add_argument("--text-pair-column", default=None, help="second text of a pair (text-classification)")
    p.add_argument("--label-column", default=None, help="column holding the labels (default: guessed)")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (float32 master weights)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N updates (default 500)")
    p.add_argument("--eval-steps", type=int, default=None, help="evaluate every N updates (default: every epoch)")
    p.add_argument("--logging-steps", type=int, default=10, help="log the loss every N updates (default 10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--devices", type=int, default=None,
                   help="data-parallel devices (default: all; the global batch is --batch-size x devices)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say; 0 on success, 1 after printing a one-line error."""
    from jaxformers.core.host_memory import retain_host_memory

    retain_host_memory(warn=False)  # before any computation: XLA:CPU steps stop page-faulting (core.host_memory)
    try:
        summary = _train(args)
    except Exception as e:
        notes = " ".join(getattr(e, "__notes__", []))
        message = " ".join(f"{type(e).__name__}: {e} {notes}".split())
        print(f"jaxformers train: error: {message}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=float))  # numpy scalars as numbers
    return 0


def _check_file(path: str, flag: str) -> None:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")


def _train(args: argparse.Namespace) -> dict:
    import jax

    import jaxformers as jf
    from jaxformers.training.arguments import TrainingArguments
    from jaxformers.training.data import canonical_task, tokenize_dataset
    from jaxformers.training.trainer import Trainer

    task = canonical_task(args.task)
    _check_file(args.train, "--train")
    if args.eval is not None:
        _check_file(args.eval, "--eval")
    elif args.eval_steps is not None:
        raise ValueError("--eval-steps needs --eval FILE (the data to evaluate on)")
    # every setting checked before anything is read or loaded
    training_args = TrainingArguments(
        output_dir=args.output, learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs, max_steps=args.max_steps,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        eval_strategy="no" if args.eval is None else "steps" if args.eval_steps else "epoch",
        eval_steps=args.eval_steps, save_steps=args.save_steps, logging_steps=args.logging_steps,
        max_length=args.max_length, bf16=args.bf16, seed=args.seed,
        resume_from_checkpoint=True if args.resume else None,
    )  # fmt: skip
    head = HEADS[task]
    config = jf.AutoConfig.from_pretrained(args.model)
    _check_head(config.model_type, head, task, args.model)
    tokenizer = jf.AutoTokenizer.from_pretrained(args.model)
    columns = dict(max_length=args.max_length, text_column=args.text_column, label_column=args.label_column)
    if args.text_pair_column is not None:
        columns["text_pair_column"] = args.text_pair_column
    train_set = tokenize_dataset(args.train, tokenizer, task, **columns)
    eval_set = None
    if args.eval is not None:
        eval_set = tokenize_dataset(args.eval, tokenizer, task, label_names=train_set.label_names, **columns)

    n = jax.device_count() if args.devices is None else args.devices
    if not 1 <= n <= jax.device_count():
        raise ValueError(f"--devices {n}: this host has {jax.device_count()} devices; pass 1..{jax.device_count()}")
    mesh = jf.make_mesh(devices=jax.devices()[:n]) if n > 1 else None  # the batch split over the devices
    model = jf.load(args.model, task=head, mesh=mesh, **_head_labels(config, train_set, head, args.model))
    trainer = Trainer(model, training_args, train_dataset=train_set, eval_dataset=eval_set, tokenizer=tokenizer,
                      mesh=mesh)  # fmt: skip
    result = trainer.train()
    summary = {"global_step": result.global_step, "train_loss": result.training_loss}
    if eval_set is not None:
        summary.update(trainer.evaluate())
    trainer.save_model(args.output)
    summary["output"] = str(Path(args.output).expanduser().absolute())
    return summary


def _check_head(model_type: str, head: str, task: str, model: str) -> None:
    """A clear error, before any weight is read, when the architecture has no head for the task."""
    from jaxformers import models

    heads = models.architecture(model_type).tasks(model_type)
    if head not in heads:
        trainable = sorted(t for t, h in HEADS.items() if h in heads)
        raise ValueError(f"{model} is a {model_type} model, which has no {head} head for --task {task}; "
                         f"{model_type} trains for: {', '.join(trainable) or 'no task'}")  # fmt: skip


def _head_labels(config, features, head: str, model: str) -> dict:
    """Config overrides that size a classification head for the data's labels and name them (as transformers'
    run_glue / run_ner pass num_labels and id2label). A checkpoint that already has this head keeps its weights: it
    must have as many labels as the data (its own names stay when the data has none)."""
    from jaxformers import models

    num_labels = getattr(features, "num_labels", None)
    names = getattr(features, "label_names", None)
    if num_labels is None:  # not a classification task
        return {}
    head_class = models.model_class(config.model_type, head)
    has_head = head_class.hf_architecture in (config.extra.get("architectures") or ())
    if has_head and config.num_labels != num_labels:
        found = f" ({', '.join(map(str, names))})" if names else ""
        raise ValueError(f"{model} already has a {head_class.__name__} head with {config.num_labels} labels, but "
                         f"--train has {num_labels}{found}: start from the base model (without that head), or give "
                         "data with the head's labels")  # fmt: skip
    if names:
        return {"id2label": dict(enumerate(names))}
    return {} if has_head else {"num_labels": num_labels}
