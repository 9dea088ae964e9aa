"""jaxformers: Hugging Face models as pure Flax NNX modules, JAX-first.

    import jaxformers as jf
    tok = jf.AutoTokenizer.from_pretrained(path)
    model = jf.AutoModel.from_pretrained(path)
    out = model(**tok(["a sentence"], padding=True))
"""

from jaxformers.auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from jaxformers.core.functional import pure
from jaxformers.core.options import Options
from jaxformers import distributed
from jaxformers.core.preflight import preflight
from jaxformers.core.sharding import DP, FSDP, FSDP_TP, REPLICATED, TP, make_mesh, shard_batch, use_mesh
from jaxformers.loading import load, save_checkpoint, save_pretrained
from jaxformers.core.quant import QuantizationConfig, quantize
from jaxformers.core import compile_cache as _compile_cache
from jaxformers.core.host_memory import configure as _configure_host_memory, retain_host_memory

_compile_cache.configure()  # JAX's persistent compilation cache, per user (JAXFORMERS_COMPILE_CACHE=0 turns it off)
_configure_host_memory()  # JAXFORMERS_RETAIN_HOST_MEMORY=1: glibc keeps freed memory (XLA:CPU steps stop faulting)


def __getattr__(name):
    # Lazy: tokenization pulls in `tokenizers` and jinja2, generation is large; import on first use.
    if name == "AutoTokenizer":
        from jaxformers.tokenization import AutoTokenizer

        return AutoTokenizer
    if name in ("task", "pipeline"):
        from jaxformers import tasks

        return getattr(tasks, name)
    if name in ("generate", "stream", "GenerationConfig"):
        from jaxformers import generation

        return getattr(generation, name)
    if name in ("TextStreamer", "set_seed"):
        from jaxformers.generation import streamers

        return getattr(streamers, name)
    if name == "LoraConfig":
        from jaxformers.lora import LoraConfig

        return LoraConfig
    if name == "lora":
        import importlib

        return importlib.import_module("jaxformers.lora")
    if name == "training":
        import importlib

        return importlib.import_module("jaxformers.training")
    if name == "Trainer":
        from jaxformers.training.trainer import Trainer

        return Trainer
    if name == "TrainingArguments":
        from jaxformers.training.arguments import TrainingArguments

        return TrainingArguments
    raise AttributeError(f"module 'jaxformers' has no attribute {name!r}")


__all__ = [
    "LoraConfig",
    "QuantizationConfig",
    "lora",
    "quantize",
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForPreTraining",
    "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "DP",
    "FSDP",
    "FSDP_TP",
    "GenerationConfig",
    "Options",
    "REPLICATED",
    "TP",
    "TextStreamer",
    "Trainer",
    "TrainingArguments",
    "distributed",
    "generate",
    "pipeline",
    "load",
    "make_mesh",
    "preflight",
    "pure",
    "retain_host_memory",
    "save_checkpoint",
    "save_pretrained",
    "set_seed",
    "shard_batch",
    "stream",
    "task",
    "training",
    "use_mesh",
]
