"""HF-familiar Auto classes: thin façades over `jaxformers.load` (no second loading path)."""

from __future__ import annotations


class _AutoModel:
    """Each subclass names one task of `jaxformers.models.TASK_NAMES`; the checkpoint's model type (config.json)
    picks the architecture, whose record gives the class for that task."""

    task = "base"

    def __init__(self, *args, **kwargs):
        raise TypeError(f"use {type(self).__name__}.from_pretrained(name_or_path)")

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        """Load the checkpoint's architecture with this task's head (see `jaxformers.load` for keywords)."""
        from jaxformers.loading import load

        return load(name_or_path, task=cls.task, **kwargs)


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForCausalLM(_AutoModel):
    task = "causal-lm"


class AutoModelForMaskedLM(_AutoModel):
    task = "masked-lm"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence-classification"


class AutoModelForTokenClassification(_AutoModel):
    task = "token-classification"


class AutoModelForQuestionAnswering(_AutoModel):
    task = "question-answering"


class AutoModelForPreTraining(_AutoModel):
    task = "pretraining"  # e.g. ELECTRA's discriminator (HF ElectraForPreTraining)


class AutoModelForSeq2SeqLM(_AutoModel):
    task = "seq2seq-lm"  # T5 / BART / mBART / Marian with their LM head (jf.generate runs them)


class AutoConfig:
    """`AutoConfig.from_pretrained(name_or_path)`: the checkpoint's config as its architecture's config dataclass
    (`BertConfig`, `LlamaConfig`, ...), chosen by config.json's `model_type` through the registry
    (`jaxformers.models.config_class`); an unknown model type is the registry's error, naming the supported ones."""

    def __init__(self, *args, **kwargs):
        raise TypeError("use AutoConfig.from_pretrained(name_or_path)")

    @staticmethod
    def from_pretrained(name_or_path, **kwargs):
        """Read config.json of a local model directory, hub repo id or jaxformers Orbax checkpoint.

        Hub keywords: revision, cache_dir, local_files_only, token. Other keywords override config.json entries,
        as in transformers (`AutoConfig.from_pretrained(path, layer_norm_eps=1e-6)`)."""
        from pathlib import Path

        from jaxformers import hub, models
        from jaxformers.convert import orbax_io
        from jaxformers.loading import _read_json

        opts = hub.HubOptions.pop_from(kwargs)
        if isinstance(name_or_path, (str, Path)) and orbax_io.is_checkpoint(name_or_path):
            config = orbax_io.read_meta(name_or_path)[1]
        else:
            config = _read_json(hub.resolve_file(name_or_path, "config.json", opts))
        model_type = config.get("model_type")
        if model_type is None:
            raise ValueError(
                f"config.json of {name_or_path} has no 'model_type', so its architecture is unknown; add the "
                "model_type (e.g. \"bert\") to config.json"
            )
        return models.config_class(model_type).from_hf({**config, **kwargs})
