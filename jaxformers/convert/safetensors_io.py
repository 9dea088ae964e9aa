"""Lazy tensor sources (safetensors single file or sharded index, opt-in pickled torch `.bin`) and the writer.

A source has `keys()`, `shape(key)`, `dtype(key)`, `get(key) -> np.ndarray` and `close()`; safetensors sources also
have `read(key, box)`, which reads only the sub-block `box` (one `(start, stop)` per dimension). Safetensors files
are read with `os.pread` into fresh arrays rather than memory-mapped: mapped pages stay resident and count against
the process, which would double peak memory while loading (model + file), and a sharded load reads only the slice
each device holds.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_SINGLE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F32": np.float32,
    "F64": np.float64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}
_RUN_BYTES = 64 << 10  # contiguous runs at least this long are read one by one, shorter ones via whole rows
_CHUNK_BYTES = 16 << 20  # rows read at once when slicing inside rows (bounds the transient buffer)


class _Tensor:
    """Where one tensor lives: file descriptor, absolute byte offset, dtype, shape."""

    def __init__(self, fd: int, path: Path, offset: int, dtype: str, shape: tuple[int, ...]):
        self.fd, self.path, self.offset, self.dtype, self.shape = fd, path, offset, dtype, shape
        self.np_dtype = np.dtype(_DTYPES[dtype])


def _parse_header(fd: int, path: Path) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """`{key: (absolute offset, dtype, shape)}` from a safetensors header, validated against the file size."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise ValueError(f"header length {n} exceeds the file size {size}")
    header = json.loads(os.pread(fd, n, 8))
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {key!r} has unsupported dtype {dtype}")
        if end - begin != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize or 8 + n + end > size:
            raise ValueError(f"tensor {key!r} {dtype}{list(shape)} does not fit its byte range {begin}:{end}")
        out[key] = (8 + n + begin, dtype, shape)
    return out


def _pread_into(t: _Tensor, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf.reshape(-1).view(np.uint8)), 0
    while done < len(view):
        got = os.preadv(t.fd, [view[done:]], offset + done)
        if got == 0:
            raise ValueError(f"{t.path} ended early (truncated)")
        done += got


class SafetensorsSource:
    """All tensors of one or more safetensors files, addressed by key."""

    def __init__(self, files: list[Path], key_to_file: dict[str, Path] | None = None):
        self._fds: list[int] = []
        self._tensors: dict[str, _Tensor] = {}
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint shard {path} is missing (listed in {SAFE_INDEX})")
            fd = os.open(path, os.O_RDONLY)
            self._fds.append(fd)
            try:
                entries = _parse_header(fd, path)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                self.close()
                raise ValueError(
                    f"{path} is not a readable safetensors file (corrupt or truncated: {e}). "
                    "Re-download or re-save the checkpoint."
                ) from e
            for key, (offset, dtype, shape) in entries.items():
                self._tensors[key] = _Tensor(fd, path, offset, dtype, shape)
        if key_to_file is not None:
            missing = sorted(k for k, f in key_to_file.items() if k not in self._tensors or self._tensors[k].path != f)
            if missing:
                raise ValueError(f"{SAFE_INDEX} lists tensors that its shards do not contain: {missing[:10]}")

    @classmethod
    def from_dir(cls, directory: Path) -> SafetensorsSource:
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
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def dtype(self, key: str) -> str:
        return self._tensors[key].dtype

    def get(self, key: str) -> np.ndarray:
        return self.read(key, tuple((0, n) for n in self._tensors[key].shape))

    def read(self, key: str, box: tuple[tuple[int, int], ...]) -> np.ndarray:
        """The sub-block `box` (`(start, stop)` per dimension) of tensor `key`, read without the rest."""
        t = self._tensors[key]
        out = np.empty(tuple(b - a for a, b in box), t.np_dtype)
        if out.size == 0:
            return out
        item, shape = t.np_dtype.itemsize, t.shape
        partial = [i for i, (a, b) in enumerate(box) if (a, b) != (0, shape[i])]
        p = partial[-1] if partial else 0  # dims after p are whole: each index over dims < p is one contiguous run
        inner = math.prod(shape[p + 1 :])
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        run = (box[p][1] - box[p][0]) * inner if shape else 1
        if p == 0 or run * item >= _RUN_BYTES:
            runs = out.reshape(-1, run)
            for j, idx in enumerate(itertools.product(*(range(a, b) for a, b in box[:p]))):
                start = sum(i * s for i, s in zip(idx, strides)) + (box[p][0] * inner if shape else 0)
                _pread_into(t, runs[j], t.offset + start * item)
            return out
        rows_at_once = max(1, _CHUNK_BYTES // (strides[0] * item))
        inside = tuple(slice(a, b) for a, b in box[1:])
        (r0, r1) = box[0]
        for r in range(r0, r1, rows_at_once):
            n = min(rows_at_once, r1 - r)
            rows = np.empty((n, *shape[1:]), t.np_dtype)
            _pread_into(t, rows, t.offset + r * strides[0] * item)
            out[r - r0 : r - r0 + n] = rows[(slice(None), *inside)]
        return out

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._tensors.clear()


class TorchBinSource:
    """Pickled `pytorch_model.bin` weights, read with `torch.load(weights_only=True)` (opt-in only)."""

    def __init__(self, files: list[Path]):
        try:
            import torch
        except ImportError as e:
            raise ImportError("loading pytorch_model.bin needs torch: pip install torch (or use safetensors)") from e
        self._tensors = {}
        for path in files:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                lines = [ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler error" in ln]
                detail = lines[0].split(" was not an allowed global")[0] if lines else type(e).__name__
                raise ValueError(
                    f"{path} holds pickled objects other than tensors, and torch.load(weights_only=True) refused it "
                    f"(unpickling them could run code). Convert it to safetensors where you trust it. ({detail})"
                ) from e
            if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                raise ValueError(f"{path} is not a state dict of tensors (got {type(loaded).__name__})")
            self._tensors.update(loaded)

    @classmethod
    def from_dir(cls, directory: Path) -> TorchBinSource:
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
