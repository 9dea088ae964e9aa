"""Lazy tensor sources (safetensors single file or sharded index, opt-in pickled torch `.bin`) and the writer.

A source has `keys()`, `shape(key)`, `dtype(key)`, `get(key) -> np.ndarray` and `close()`; tensors are read one at a
time from memory-mapped files, so converting never needs the whole checkpoint in host memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class SafetensorsSource:
    """All tensors of one or more safetensors files, addressed by key."""

    def __init__(self, files: list[Path], key_to_file: dict[str, Path] | None = None):
        self._handles = {}
        self._where: dict[str, Path] = {}
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint shard {path} is missing (listed in {SAFE_INDEX})")
            try:
                handle = safe_open(str(path), framework="numpy")
            except (SafetensorError, OSError, ValueError) as e:
                raise ValueError(
                    f"{path} is not a readable safetensors file (corrupt or truncated: {e}). "
                    "Re-download or re-save the checkpoint."
                ) from e
            self._handles[path] = handle
            for key in handle.keys():
                self._where[key] = path
        if key_to_file is not None:
            missing = sorted(k for k, f in key_to_file.items() if self._where.get(k) != f)
            if missing:
                raise ValueError(f"{SAFE_INDEX} lists tensors that its shards do not contain: {missing[:10]}")

    @classmethod
    def from_dir(cls, directory: Path) -> "SafetensorsSource":
        index = directory / SAFE_INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
            key_to_file = {k: directory / f for k, f in weight_map.items()}
            return cls(sorted(set(key_to_file.values())), key_to_file)
        return cls([directory / SAFE_SINGLE])

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return self._handles[self._where[key]].get_slice(key).get_dtype()

    def get(self, key: str) -> np.ndarray:
        try:
            return self._handles[self._where[key]].get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"could not read tensor {key!r} from {self._where[key]} (corrupt or truncated): {e}") from e

    def close(self) -> None:
        self._handles.clear()


class TorchBinSource:
    """Pickled `pytorch_model.bin` weights, read with `torch.load(weights_only=True)` (opt-in only)."""

    def __init__(self, files: list[Path]):
        try:
            import torch
        except ImportError as e:
            raise ImportError("loading pytorch_model.bin needs torch: pip install torch (or use safetensors)") from e
        self._tensors = {}
        for path in files:
            self._tensors.update(torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def from_dir(cls, directory: Path) -> "TorchBinSource":
        index = directory / TORCH_INDEX
        if index.is_file():
            files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
            return cls(files)
        return cls([directory / TORCH_SINGLE])

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> str:
        return str(self._tensors[key].dtype)

    def get(self, key: str) -> np.ndarray:
        import torch

        t = self._tensors[key]
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def close(self) -> None:
        self._tensors.clear()


def open_checkpoint(directory: Path, *, allow_pickle: bool = False):
    """The tensor source of an HF model directory: safetensors first, pickled `.bin` only with `allow_pickle`."""
    if (directory / SAFE_INDEX).is_file() or (directory / SAFE_SINGLE).is_file():
        return SafetensorsSource.from_dir(directory)
    if (directory / TORCH_INDEX).is_file() or (directory / TORCH_SINGLE).is_file():
        if not allow_pickle:
            raise ValueError(
                f"{directory} has only pickled PyTorch weights (pytorch_model.bin). Pickle files can run arbitrary "
                "code, so they are refused by default. Convert them to safetensors, or pass allow_pickle=True to "
                "load them with torch.load(weights_only=True) (needs torch installed)."
            )
        return TorchBinSource.from_dir(directory)
    raise FileNotFoundError(
        f"no weights found in {directory}: expected {SAFE_SINGLE} or {SAFE_INDEX} (or pytorch_model.bin with "
        "allow_pickle=True)"
    )


def save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write tensors as one safetensors file, atomically (temp file + rename)."""
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
