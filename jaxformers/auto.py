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
