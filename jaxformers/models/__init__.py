"""Registry: HF `model_type` -> the model file that implements it, imported lazily, read only through its record.

Each model file ends with one `ARCHITECTURE = core.modeling.Architecture(...)` record (config class, classes per
model type and task, HF weight table, GGUF names); nothing else of a model file is read here, and a file is imported
only when one of its model types is asked for (`import jaxformers` imports none of them).
"""

from __future__ import annotations

import importlib
import importlib.util

from jaxformers.core.modeling import Architecture

MODEL_TYPES = {
    "bert": "jaxformers.models.bert",
    "gpt2": "jaxformers.models.gpt2",
    "llama": "jaxformers.models.llama",
    "mistral": "jaxformers.models.llama",
    "qwen2": "jaxformers.models.llama",
    "gemma": "jaxformers.models.llama",
    "roberta": "jaxformers.models.roberta",
    "xlm-roberta": "jaxformers.models.roberta",
    "distilbert": "jaxformers.models.distilbert",
    "electra": "jaxformers.models.electra",
    "deberta-v2": "jaxformers.models.deberta_v2",
    "modernbert": "jaxformers.models.modernbert",
    "t5": "jaxformers.models.t5",
    "mt5": "jaxformers.models.t5",
    "bart": "jaxformers.models.bart",
    "mbart": "jaxformers.models.bart",
    "marian": "jaxformers.models.bart",
}

TASK_NAMES = (
    "base",
    "causal-lm",
    "masked-lm",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "pretraining",  # ELECTRA's discriminator (HF `ElectraForPreTraining`)
    "seq2seq-lm",  # encoder-decoder LM heads (T5ForConditionalGeneration, BartForConditionalGeneration, ...)
    "encoder",  # an encoder-decoder's encoder alone (T5EncoderModel)
)


def _unknown(model_type) -> ValueError:
    return ValueError(
        f"unknown model_type {model_type!r}: jaxformers supports {sorted(MODEL_TYPES)}. "
        "Check config.json, or add the architecture as a new file under jaxformers/models/."
    )


def is_available(model_type: str) -> bool:
    """Whether `model_type` is registered and its model file is present (without importing it)."""
    path = MODEL_TYPES.get(model_type)
    return path is not None and importlib.util.find_spec(path) is not None


def architecture(model_type: str) -> Architecture:
    """The `Architecture` record implementing `model_type`; a clear error when it is unknown or its file is missing."""
    if model_type not in MODEL_TYPES:
        raise _unknown(model_type)
    path = MODEL_TYPES[model_type]
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name != path:  # the file exists but an import inside it failed: that error is the one to see
            raise
        raise ImportError(
            f"model_type {model_type!r} is registered to {path}, which is not part of this installation; "
            "update jaxformers, or load a checkpoint of another architecture"
        ) from e
    record = getattr(module, "ARCHITECTURE", None)
    if not isinstance(record, Architecture):
        raise TypeError(f"{path} must end with an `ARCHITECTURE = Architecture(...)` record (the model file contract)")
    if model_type not in record.classes:
        raise ValueError(
            f"the registry maps model_type {model_type!r} to {path}, whose ARCHITECTURE record implements only "
            f"{sorted(record.classes)}; add {model_type!r} to its `classes`"
        )
    return record


def model_class(model_type: str, task: str) -> type:
    """The class serving `task` (one of `TASK_NAMES`) for `model_type`; a clear error lists the available tasks."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; tasks are {list(TASK_NAMES)}")
    tasks = architecture(model_type).tasks(model_type)
    if task not in tasks:
        raise ValueError(f"{model_type} has no {task!r} model; available: {sorted(tasks)}")
    return tasks[task]


def config_class(model_type: str) -> type:
    """The config dataclass of `model_type` (the one its classes declare)."""
    return architecture(model_type).tasks(model_type)["base"].config_class


def gguf_names(gguf_architecture: str) -> dict | None:
    """The GGUF tensor-name table (a record's `gguf_names`) that reads GGUF `general.architecture` files of
    `gguf_architecture`, or None when no available model file declares it.

    llama.cpp names most architectures as HF's model_type, so that record is asked first; otherwise every available
    model file is (imported only here, on GGUF loading)."""
    if is_available(gguf_architecture):
        names = architecture(gguf_architecture).gguf_names
        if names is not None and gguf_architecture in names["architectures"]:
            return names
    for record in _available_records():
        if record.gguf_names is not None and gguf_architecture in record.gguf_names["architectures"]:
            return record.gguf_names
    return None


def gguf_architectures() -> tuple[str, ...]:
    """Every GGUF `general.architecture` the available model files read, sorted."""
    archs = {a for r in _available_records() if r.gguf_names is not None for a in r.gguf_names["architectures"]}
    return tuple(sorted(archs))


def _available_records() -> list[Architecture]:
    seen, out = set(), []
    for model_type, path in MODEL_TYPES.items():
        if path not in seen and is_available(model_type):
            seen.add(path)
            out.append(architecture(model_type))
    return out
