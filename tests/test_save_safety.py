"""Saving never destroys what it should not: what a checkpoint save may replace, stale HF weight files, one saver per
checkpoint directory, and corrupted checkpoint bytes caught on load."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import jaxformers as jf
from jaxformers.convert import orbax_io
from jaxformers.loading import model_params


def _values(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.device_get(v)) for k, v in model_params(model).items()}


def _shifted(src, amount: float):
    """The tiny Llama loaded from `src` with `amount` added to every parameter (so each save is recognisable)."""
    model = jf.load(src)
    nnx.update(model, jax.tree.map(lambda x: x + amount, nnx.state(model, nnx.Param)))
    return model


def _snapshot(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_holds(directory, model) -> None:
    got, want = _values(jf.load(directory)), _values(model)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture(scope="module")
def llama(tiny_hf):
    return tiny_hf("llama", "LlamaForCausalLM")


def test_save_checkpoint_replaces_only_an_earlier_checkpoint(llama, tmp_path, monkeypatch, caplog):
    src, _ = llama
    model = _shifted(src, 0.0)
    # the HF folder the model came from, an ordinary project folder saved to as ".", a plain file: all refused, intact
    hf = tmp_path / "hf"
    shutil.copytree(src, hf)
    before = _snapshot(hf)
    with pytest.raises(FileExistsError, match=f"{hf} exists and is not a jaxformers checkpoint.*overwrite=True"):
        jf.save_checkpoint(model, hf)
    assert _snapshot(hf) == before
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(project)
    with pytest.raises(FileExistsError, match="current working directory"):
        jf.save_checkpoint(model, ".", overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert _snapshot(project) == {"src/train.py": b"print('hi')\n"}
    (tmp_path / "weights.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(FileExistsError, match="weights.bin is a file.*never replaces a file"):
        jf.save_checkpoint(model, tmp_path / "weights.bin", overwrite=True)
    assert (tmp_path / "weights.bin").read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "project", "weights.bin"]  # no hidden leftovers

    # an empty directory may be used; an earlier checkpoint is replaced
    (tmp_path / "ckpt").mkdir()
    jf.save_checkpoint(model, tmp_path / "ckpt")
    newer = _shifted(src, 1.0)
    jf.save_checkpoint(newer, tmp_path / "ckpt")
    _assert_holds(tmp_path / "ckpt", newer)
    # ... unless files a save does not write were added to it; overwrite=True replaces it, loudly
    (tmp_path / "ckpt" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"also holds files a save does not write \(notes.txt\)"):
        jf.save_checkpoint(model, tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="jaxformers"):
        jf.save_checkpoint(model, tmp_path / "ckpt", overwrite=True)
        jf.save_checkpoint(model, hf, overwrite=True)
    assert caplog.text.count("overwrite=True: replacing") == 2
    assert not (tmp_path / "ckpt" / "notes.txt").exists()
    _assert_holds(hf, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "project", "weights.bin"]
    with pytest.raises(FileExistsError, match="is a jaxformers Orbax checkpoint"):  # `load` would ignore HF files here
        model.save_pretrained(tmp_path / "ckpt")


def test_save_pretrained_over_a_sharded_checkpoint_supersedes_it(llama, tmp_path):
    """transformers wrote a sharded checkpoint here; after a jaxformers save, both libraries load the new weights."""
    src, ref = llama
    out = tmp_path / "out"
    ref.save_pretrained(out, max_shard_size="20KB")
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    (out / "pytorch_model.bin").write_bytes(b"older pickled weights")
    (out / "tokenizer.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"not ours")
    model = _shifted(src, 0.5)
    model.save_pretrained(out)
    _assert_holds(out, model)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_model.safetensors", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    written = load_file(out / "model.safetensors")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    old = ref.state_dict()
    for key, value in written.items():
        np.testing.assert_array_equal(reloaded[key].numpy(), value, err_msg=key)
        assert not torch.equal(old[key], reloaded[key]), key


def test_save_pretrained_replaces_config_atomically(llama, tmp_path, monkeypatch):
    src, _ = llama
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()), "note": "old"}))
    before = (out / "config.json").read_bytes()
    real_replace = os.replace

    def fails_on_config(a, b):
        if os.path.basename(b) == "config.json":
            raise OSError(28, "No space left on device")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", fails_on_config)
    with pytest.raises(OSError, match="No space left"):
        _shifted(src, 0.0).save_pretrained(out)
    assert (out / "config.json").read_bytes() == before  # the old file, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # and no temp file left behind


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"pid %d" % os.getpid())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_saver_fails_fast_and_a_killed_one_blocks_nothing(llama, tmp_path):
    src, _ = llama
    target = tmp_path / "ckpt"
    first = _shifted(src, 0.0)
    jf.save_checkpoint(first, target)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(orbax_io._lock_path(target))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = _shifted(src, 1.0)
        with pytest.raises(RuntimeError, match=f"another save to {target} is in progress.*pid {holder.pid}"):
            jf.save_checkpoint(second, target)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.lock", "ckpt"]  # nothing written, lock kept
        _assert_holds(target, first)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock; the file stays behind
        holder.wait()
    jf.save_checkpoint(second, target)
    _assert_holds(target, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_corrupt_checkpoint_is_refused_on_load(llama, tmp_path, caplog):
    src, _ = llama
    model = _shifted(src, 0.0)
    target = tmp_path / "ckpt"
    jf.save_checkpoint(model, target)
    files = [p for p in (target / "params").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    name, saved = largest.relative_to(target).as_posix(), largest.read_bytes()
    flipped = bytearray(saved)
    flipped[len(flipped) // 2] ^= 0x01
    largest.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=f"checkpoint {target} is corrupt: {name} does not match the checksum"):
        jf.load(target)
    jf.load(target, verify=False)  # the documented opt-out reads the (corrupt) bytes without checking them
    largest.unlink()
    with pytest.raises(ValueError, match=f"is corrupt: {name} is missing"):
        jf.load(target)
    largest.write_bytes(saved)
    _assert_holds(target, model)
    # a checkpoint saved before checksums existed (same format) loads, saying it cannot be verified
    marker = json.loads((target / orbax_io.MARKER).read_text())
    (target / orbax_io.MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != "checksums"}))
    with caplog.at_level(logging.INFO, logger="jaxformers"):
        _assert_holds(target, model)
    assert "has no checksums" in caplog.text
