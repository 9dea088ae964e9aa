"""Shared test setup: float32 matmuls at full precision, and tiny random HF reference models built on the fly.

`tiny_hf(name, hf_class, **config_overrides)` builds a tiny random `transformers` model (odd sizes so transposes
cannot hide), saves it with `save_pretrained` into a session temp dir once, and returns `(directory, torch_model)`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread for PyTorch (the reference) in each test process: two xdist workers share two cores, and PyTorch's
# default of a thread per core spins while it waits, crowding the other worker out (tests/models with `-n 2`: 151.8 s
# with the default, 129.6 s with one thread). Test subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# glibc's malloc as it comes in every test process: the training entry points (`jaxformers train`, the fine-tune
# script) would otherwise switch a worker to keeping freed memory when one of them happens to be the worker's first
# computation, and two workers holding their peaks at once is memory CI does not have. tests/test_host_memory.py
# turns it on in the processes it starts.
os.environ.setdefault("JAXFORMERS_RETAIN_HOST_MEMORY", "0")
# One persistent compilation cache for the whole run, never the user's: a fresh folder made by the first process that
# imports this file (pytest itself, or its xdist controller) before any worker or test subprocess starts, so the
# workers and every process a test starts (scripts, notebooks, README blocks) inherit it through the environment and
# read back each other's compiled programs. It starts empty and is removed when the run ends, so no result depends on
# an earlier run. Setting JAXFORMERS_COMPILE_CACHE yourself (0: off) overrides it.
_OWN_CACHE = None
if "JAXFORMERS_COMPILE_CACHE" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxformers-test-compile-cache-")
    os.environ["JAXFORMERS_COMPILE_CACHE"] = _OWN_CACHE

# XLA:CPU code generation tuned for compiling fast, not for running fast: most of this suite's time is compiling
# hundreds of small programs that then run once on tiny shapes. LLVM without its optimisation passes, and XLA's
# classic elemental emitter instead of its MLIR fusion emitters. `pytest -n 2` on a 2-core VM: 18 min 42 s with
# XLA's defaults, 10 min 21 s with these (BENCHMARKS.md, "The test suite's compile settings"), every test passing
# under both. They change how loops are compiled, not what is computed, but they do round float32 differently
# (~1e-7 relative), so the numbers users get are checked at XLA's defaults too: tests/test_xla_defaults.py reruns
# the checks against PyTorch (every architecture x head, greedy generation, AdamW) in one process with XLA's
# defaults, and the notebooks run with them (tests/test_notebooks.py strips these flags). Benchmarks and the product
# use XLA's defaults. A flag of this list already in
# XLA_FLAGS is left as set; JAXFORMERS_TEST_XLA_DEFAULTS=1 adds none. The flags added are listed in
# JAXFORMERS_TEST_XLA_FLAGS for the tests that start a process with XLA's defaults.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("JAXFORMERS_TEST_XLA_DEFAULTS", "0") != "1" and "JAXFORMERS_TEST_XLA_FLAGS" not in os.environ:
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _set = {f.split("=")[0] for f in _flags}
    _added = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in _set]
    os.environ["XLA_FLAGS"] = " ".join(_flags + _added)
    os.environ["JAXFORMERS_TEST_XLA_FLAGS"] = " ".join(_added)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# name -> (transformers config class, config kwargs, transformers model class)
_COMMON_DEC = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                   intermediate_size=37, num_hidden_layers=2, max_position_embeddings=64, pad_token_id=0,
                   bos_token_id=1, eos_token_id=2, num_labels=3)  # fmt: skip
_BERT = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, intermediate_size=37, num_hidden_layers=2,
             max_position_embeddings=64, type_vocab_size=2, num_labels=3)  # fmt: skip
_GPT2 = dict(vocab_size=97, n_embd=48, n_head=6, n_layer=2, n_positions=64, n_inner=37, bos_token_id=1,
             eos_token_id=2, pad_token_id=0, num_labels=3)  # fmt: skip

CONFIGS = {
    "bert": ("BertConfig", _BERT),
    "gpt2": ("GPT2Config", _GPT2),
    "llama": ("LlamaConfig", _COMMON_DEC),
    "llama-tied-bias": ("LlamaConfig", {**_COMMON_DEC, "tie_word_embeddings": True, "attention_bias": True,
                                        "mlp_bias": True})  # fmt: skip
    ,
    "llama-rope-linear": ("LlamaConfig", {**_COMMON_DEC, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-rope-dynamic": ("LlamaConfig", {**_COMMON_DEC, "max_position_embeddings": 8,
                                           "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),  # fmt: skip
    "llama-rope-llama3": ("LlamaConfig", {**_COMMON_DEC, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),  # fmt: skip
    "mistral": ("MistralConfig", {**_COMMON_DEC, "sliding_window": 3}),
    "qwen2": ("Qwen2Config", {**_COMMON_DEC, "use_sliding_window": True, "sliding_window": 3,
                              "max_window_layers": 1}),  # fmt: skip
    "gemma": ("GemmaConfig", {**_COMMON_DEC, "hidden_act": "gelu_pytorch_tanh"}),
}


def build_tiny(name: str, hf_class: str, directory, seed: int = 0, **overrides):
    import torch
    import transformers

    cfg_cls, kwargs = CONFIGS[name]
    cfg = getattr(transformers, cfg_cls)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(cfg).eval()
    # Random (not zero / one) biases and norm weights, so every parameter matters: every bias, and every 1-D weight
    # whatever its name (GPT-2's ln_1 / ln_2 / ln_f too), so a swapped rule changes the outputs. Norm weights stay
    # near 1 (Gemma's `(1 + w)` norms near 0).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or p.ndim == 1 or "norm" in n.lower():
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") and "gemma" not in name else 0.0))
    model.save_pretrained(directory)
    return model


@pytest.fixture(autouse=True)
def _reorder_kernels_for_short_generations(monkeypatch):
    """Batch-1 generation reorders kernels `[out, in]` only for calls of at least `OUT_FIRST_MIN_NEW_TOKENS` new
    tokens (128; below that the transposes cost more than they save). The suite's calls are a few tokens long, so it
    lowers the threshold to 1: every batch-1 test then runs the reordered path it ran before the threshold existed,
    and `tests/generation/test_seq2seq_generate.py` checks the default threshold itself (no reorder, same tokens)."""
    from jaxformers.generation import decode

    monkeypatch.setattr(decode, "OUT_FIRST_MIN_NEW_TOKENS", 1)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    cache = {}

    def get(name: str, hf_class: str, **overrides):
        key = (name, hf_class, tuple(sorted(overrides.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"{name}-{hf_class}")
            extra = {"num_labels": 2} if "QuestionAnswering" in hf_class else {}
            cache[key] = (directory, build_tiny(name, hf_class, directory, **extra, **overrides))
        return cache[key]

    return get


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The files that take ~25 s or more (summed test time on a 2-core VM), longest first, run before the rest:
# `--dist loadfile` (pyproject.toml) hands each xdist worker whole files in collection order, and a long file left
# for the end would keep one worker busy while the other idles.
LONG_FILES_FIRST = (
    "test_notebooks.py", "training/test_train_scripts.py", "test_gguf.py", "test_quickstart.py", "test_xla_defaults.py",
    "test_bench_forward.py", "generation/test_generate.py", "aot/test_plan.py", "generation/test_seq2seq_generate.py",
    "kernels/test_flash_attention.py", "test_quant.py", "aot/test_tpu_models.py", "test_readme.py",
    "training/test_sharded_train.py", "models/test_parity.py",
)  # fmt: skip
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}

    def key(item):
        try:
            return rank.get(Path(item.path).relative_to(TESTS).as_posix(), len(rank))
        except ValueError:  # a test file outside tests/
            return len(rank)

    items.sort(key=key)  # stable: every file keeps its own order, the other files theirs
