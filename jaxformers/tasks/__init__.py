"""`jf.task` / `jf.pipeline`: a pretrained model on your text in three lines, with transformers' pipeline results.

    classify = jf.task("sentiment-analysis", model="path/or/repo-id")
    classify("I love it")                  # [{'label': 'POSITIVE', 'score': 0.99...}], as transformers.pipeline
    classify(["I love it", "I hate it"], top_k=None)

Each task is a file of this package with a pure core (`jaxformers.tasks.<task>`: padded arrays in, arrays out; an
NNX model as first argument, so `nnx.jit` / `jax.jit` over `nnx.split` work in research code) and a host-side class
for tokenization and post-processing (`jaxformers.tasks.base.Task`). Task names, options and results are
transformers' (`text-classification` / `sentiment-analysis`, `token-classification` / `ner`, `question-answering`,
`fill-mask`, `feature-extraction`, `zero-shot-classification`, `text-generation`, `text2text-generation`,
`summarization`, `translation` and `translation_xx_to_yy`); for the tasks transformers 5 removed
(question-answering, summarization, translation, text2text-generation) the reference is transformers 4.57.
"""

from __future__ import annotations

import importlib
import os
import re

from jaxformers.tasks.base import TRACES, Task

# canonical task name -> (module, class)
_TASKS = {
    "text-classification": ("jaxformers.tasks.text_classification", "TextClassification"),
    "token-classification": ("jaxformers.tasks.token_classification", "TokenClassification"),
    "question-answering": ("jaxformers.tasks.question_answering", "QuestionAnswering"),
    "fill-mask": ("jaxformers.tasks.fill_mask", "FillMask"),
    "feature-extraction": ("jaxformers.tasks.feature_extraction", "FeatureExtraction"),
    "zero-shot-classification": ("jaxformers.tasks.zero_shot", "ZeroShotClassification"),
    "text-generation": ("jaxformers.tasks.text_generation", "TextGeneration"),
    "text2text-generation": ("jaxformers.tasks.text2text", "Text2TextGeneration"),
    "summarization": ("jaxformers.tasks.text2text", "Summarization"),
    "translation": ("jaxformers.tasks.text2text", "Translation"),
}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}

# What transformers loads when no model is given (5.x; for the tasks 5.x removed, 4.57's choice).
DEFAULT_MODELS = {
    "text-classification": "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
    "token-classification": "dbmdz/bert-large-cased-finetuned-conll03-english",
    "question-answering": "distilbert/distilbert-base-cased-distilled-squad",
    "fill-mask": "distilbert/distilroberta-base",
    "feature-extraction": "distilbert/distilbert-base-cased",
    "zero-shot-classification": "facebook/bart-large-mnli",
    "text-generation": "HuggingFaceTB/SmolLM3-3B",
    "text2text-generation": "google-t5/t5-base",
    "summarization": "sshleifer/distilbart-cnn-12-6",
    "translation": "google-t5/t5-base",
}

_TRANSLATION = re.compile(r"^translation_([A-Za-z_-]+?)_to_([A-Za-z_-]+)$")


def task_names() -> list[str]:
    """Every task name `jf.task` accepts (aliases included; `translation_xx_to_yy` for any languages)."""
    return sorted([*_TASKS, *ALIASES, "translation_xx_to_yy"])


def _resolve(name: str) -> tuple[str, dict]:
    if not isinstance(name, str):
        raise TypeError(f"task name must be a string, got {name!r}")
    m = _TRANSLATION.match(name)
    if m:
        return "translation", {"src_lang": m.group(1), "tgt_lang": m.group(2)}
    canonical = ALIASES.get(name, name)
    if canonical not in _TASKS:
        raise ValueError(f"unknown task {name!r}; jaxformers tasks are {task_names()}")
    return canonical, {}


def task_class(name: str) -> type[Task]:
    """The class implementing task `name` (an alias or translation_xx_to_yy resolves to its task)."""
    canonical, _ = _resolve(name)
    module, cls = _TASKS[canonical]
    return getattr(importlib.import_module(module), cls)


def task(name: str, model=None, tokenizer=None, **options) -> Task:
    """A callable running task `name` with `model` (a local folder, a hub repo id, or a loaded jaxformers model).

    tokenizer: a `jf.AutoTokenizer` result or a path (default: the model's folder; required with a loaded model).
    options: the task's options as in `transformers.pipeline` (e.g. `top_k`, `aggregation_strategy`), which calls
      may override, plus `batch_size`; `dtype=` / `mesh=` / `revision=` and other loading keywords go to `jf.load`.
    With no model, the checkpoint transformers would use is resolved through huggingface_hub (offline: one clear
    error naming it; pass a local path instead)."""
    canonical, implied = _resolve(name)
    cls = task_class(canonical)
    load_kwargs = {k: options.pop(k) for k in list(options) if k in _LOAD_KEYWORDS}
    default = model is None
    if default:
        model = DEFAULT_MODELS[canonical]
    try:
        model, tokenizer = _load_parts(cls, canonical, model, tokenizer, load_kwargs)
    except (OSError, ValueError) as e:
        if default:
            e.add_note(
                f"no model= was given, so {name!r} used transformers' default checkpoint {model!r}; pass a local "
                f"folder instead: jf.task({name!r}, model='path/to/model')"
            )
        raise
    return cls(model, tokenizer, **implied, **options)


pipeline = task  # the name transformers users type

_LOAD_KEYWORDS = ("dtype", "torch_dtype", "param_dtype", "mesh", "rules", "revision", "cache_dir", "token",
                  "options", "gguf_file", "allow_pickle", "local_files_only", "verify")  # fmt: skip


def _load_parts(cls, canonical: str, model, tokenizer, load_kwargs: dict):
    from jaxformers.core.modeling import PreTrainedModel
    from jaxformers.loading import load
    from jaxformers.tokenization import AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        source = model
        model = load(source, task=cls.heads[0], **load_kwargs)
        if tokenizer is None:  # from the same files: a GGUF file's vocabulary, the same hub revision
            shared = ("gguf_file", "revision", "cache_dir", "token", "local_files_only")
            tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in load_kwargs.items() if k in shared})
    elif not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"model= must be a local folder, a hub repo id or a loaded jaxformers model, got {type(model).__name__}"
        )
    elif load_kwargs:
        raise TypeError(f"loading options {sorted(load_kwargs)} apply only when model= is a path or repo id")
    if tokenizer is None:
        raise ValueError(
            f"the {canonical!r} task needs a tokenizer: pass tokenizer=jf.AutoTokenizer.from_pretrained(PATH) (or "
            "a path) along with a loaded model, or pass the model as a path"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return model, tokenizer


__all__ = ["ALIASES", "DEFAULT_MODELS", "TRACES", "Task", "pipeline", "task", "task_class", "task_names"]
