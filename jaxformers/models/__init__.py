"""Registry: HF `model_type` -> the model file that implements it (imported lazily)."""

from __future__ import annotations

import importlib

MODEL_TYPES = {
    "bert": "jaxformers.models.bert",
    "gpt2": "jaxformers.models.gpt2",
    "llama": "jaxformers.models.llama",
    "mistral": "jaxformers.models.llama",
    "qwen2": "jaxformers.models.llama",
    "gemma": "jaxformers.models.llama",
}

TASK_NAMES = (
    "base",
    "causal-lm",
    "masked-lm",
    "sequence-classification",
    "token-classification",
    "question-answering",
)


def architecture(model_type: str):
    """The model module for `model_type`; a clear error lists what is supported."""
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"unknown model_type {model_type!r}: jaxformers supports {sorted(MODEL_TYPES)}. "
            "Check config.json, or add the architecture as a new file under jaxformers/models/."
        )
    return importlib.import_module(MODEL_TYPES[model_type])


def model_class(model_type: str, task: str):
    module = architecture(model_type)
    tasks = module.tasks_for(model_type) if hasattr(module, "tasks_for") else module.TASKS
    if task not in tasks:
        raise ValueError(f"{model_type} has no {task!r} model; available: {sorted(tasks)}")
    return tasks[task]


def config_class(model_type: str):
    module = architecture(model_type)
    return module.config_for(model_type) if hasattr(module, "config_for") else module.TASKS["base"].config_class
