"""Lazy tensor sources (safetensors single file or sharded index, opt-in pickled torch `.bin`) and the writer.

A source has `keys()`, `shape(key)`, `dtype(key)`, `get(key) -> np.ndarray` and `close()`; safetensors sources also
have `read(key, box)`, which reads only the sub-block `box` (one `(start, stop)` per dimension). Safetensors files
are read with `os.pread` into fresh arrays rather than memory-mapped: mapped pages stay resident and count against
the process, which would double peak memory while loading (model + file), and a sharded load reads only the slice
each device holds.

Checkpoint files may be hostile: headers are validated exactly as the `safetensors` library validates them (no
tensor reads another's bytes or the header's), and an index may only name shards inside the checkpoint directory.
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

from jaxformers.hub import check_filename

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


# The limits the `safetensors` library (Rust, serde_json) applies: headers are read exactly as strictly.
_MAX_HEADER_BYTES = 100_000_000  # the library's MAX_HEADER_SIZE
_MAX_JSON_DEPTH = 127  # serde_json's recursion limit: 128 nested arrays/objects fail
_USIZE = 1 << 64  # shape entries, offsets, element and bit counts are Rust u64 (checked arithmetic)
_NUMPY_BYTES = (1 << 63) - 1  # numpy refuses arrays whose non-zero dimensions span more bytes than this
# Known to the format but not read here: sub-byte floats are packed, the rest have no use in the models we load.
_UNREAD_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64")


def _json_int(text: str):
    # serde_json reads `-0` and integers beyond 64 bits as floats, which are not a valid shape entry or offset.
    if text == "-0" or len(text.lstrip("-")) > 20:
        return _json_float(text)
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _json_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one JSON object ({out[key]!r:.80} and {value!r:.80})")
        out[key] = value
    return out


def _strict_json(text: str):
    """`json.loads` as the safetensors library parses: no duplicate keys, NaN, lone surrogates or deep nesting."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
    except RecursionError as e:
        raise ValueError(f"JSON nested deeper than {_MAX_JSON_DEPTH} levels") from e
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > _MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {_MAX_JSON_DEPTH} levels")
        strings = [item] if isinstance(item, str) else list(item) if isinstance(item, dict) else []
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"JSON string {s!r:.80} holds a lone UTF-16 surrogate escape") from e
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return value


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _usize(value) -> bool:
    return type(value) is int and 0 <= value < _USIZE  # bool is an int subclass: `True` is not a dimension


def _tensor_entry(key: str, info) -> tuple[str, tuple[int, ...], int, int]:
    """`(dtype, shape, begin, end)` of one header entry, checked as the format specifies."""
    if not isinstance(info, dict) or any(f not in info for f in ("dtype", "shape", "data_offsets")):
        raise ValueError(f"tensor {key!r} must be an object with dtype, shape and data_offsets, got {info!r:.120}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPES:
        known = dtype in _UNREAD_DTYPES
        raise ValueError(
            f"tensor {key!r} has dtype {dtype!r}, which "
            + ("jaxformers does not read" if known else "is not a safetensors dtype")
            + f" (supported: {', '.join(_DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_usize(d) for d in shape):
        raise ValueError(f"tensor {key!r} has shape {shape!r:.120}; a shape is a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_usize(o) for o in offsets):
        raise ValueError(f"tensor {key!r} has data_offsets {offsets!r:.120}; they are two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise ValueError(f"tensor {key!r} has data_offsets {begin}:{end}, which end before they begin")
    itemsize, count = np.dtype(_DTYPES[dtype]).itemsize, 1
    for d in shape:  # fold as the library does: an overflow anywhere fails, even when a later dimension is 0
        count *= d
        if count >= _USIZE:
            raise ValueError(f"tensor {key!r} has shape {shape}, whose element count overflows 64 bits")
    if count * itemsize * 8 >= _USIZE:
        raise ValueError(f"tensor {key!r} {dtype}{shape} has a bit size that overflows 64 bits")
    if end - begin != count * itemsize:
        raise ValueError(
            f"tensor {key!r} {dtype}{shape} needs {count * itemsize} bytes but its data_offsets {begin}:{end} "
            f"span {end - begin}"
        )
    if math.prod(d for d in shape if d) * itemsize > _NUMPY_BYTES:
        raise ValueError(f"tensor {key!r} has shape {shape}, too large for a numpy array")
    return dtype, tuple(shape), begin, end


def _parse_header(fd: int, path: Path) -> dict[str, tuple[int, str, tuple[int, ...]]]:
    """`{key: (absolute offset, dtype, shape)}` from a safetensors header, validated as the format specifies.

    The header is an 8-byte little-endian length, then that many bytes of UTF-8 JSON: an object whose optional
    `__metadata__` maps str to str and whose other entries are tensors. Sorted by offset, the tensors' byte ranges
    must tile the data buffer from 0 without gaps or overlap, and the buffer must end exactly at the end of the
    file. Any other file raises `ValueError` (so one tensor can never read another's bytes, or the header's).
    """
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise ValueError(f"the file is {size} bytes long, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} exceeds the format's limit of {_MAX_HEADER_BYTES} bytes")
    if 8 + n > size:
        raise ValueError(f"header length {n} runs past the end of the {size}-byte file")
    raw = os.pread(fd, n, 8)
    if len(raw) != n:
        raise ValueError(f"the file shrank while its {n}-byte header was read")
    try:
        header = _strict_json(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ValueError(f"the header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"the header is JSON {_json_type(header)} {json.dumps(header)[:80]}, not an object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise ValueError(f"__metadata__ must map strings to strings, got {metadata!r:.120}")
    entries = {key: _tensor_entry(key, info) for key, info in header.items() if key != "__metadata__"}
    stop = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3], e[0])):
        if begin != stop:
            problem = "overlaps the tensor before it" if begin < stop else f"leaves a {begin - stop}-byte gap"
            raise ValueError(
                f"tensor {key!r} starts at data offset {begin} but the tensor before it ends at {stop}: it {problem} "
                "(tensors must tile the data buffer contiguously)"
            )
        stop = end
    if 8 + n + stop != size:
        problem = "truncated" if 8 + n + stop > size else f"{size - 8 - n - stop} bytes follow the last tensor"
        raise ValueError(f"the tensors end at byte {8 + n + stop} but the file is {size} bytes long ({problem})")
    return {key: (8 + n + begin, dtype, shape) for key, (dtype, shape, begin, _) in entries.items()}


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
            except ValueError as e:
                self.close()
                raise ValueError(
                    f"{path} is not a valid safetensors file ({e}); it may be corrupt or truncated. "
                    "Re-download or re-save the checkpoint."
                ) from e
            for key, (offset, dtype, shape) in entries.items():
                if key in self._tensors:
                    other = self._tensors[key].path
                    self.close()
                    raise ValueError(
                        f"tensor {key!r} is stored in two shards, {other} and {path}; which one to load is ambiguous. "
                        "Remove it from one shard, or re-save the checkpoint."
                    )
                self._tensors[key] = _Tensor(fd, path, offset, dtype, shape)
        if key_to_file is not None:
            missing = sorted(k for k, f in key_to_file.items() if k not in self._tensors or self._tensors[k].path != f)
            if missing:
                self.close()
                raise ValueError(f"{SAFE_INDEX} lists tensors that its shards do not contain: {missing[:10]}")

    @classmethod
    def from_dir(cls, directory: Path) -> SafetensorsSource:
        index = directory / SAFE_INDEX
        if index.is_file():
            weight_map = read_weight_map(index)
            shards = {name: shard_path(directory, name, index) for name in set(weight_map.values())}
            key_to_file = {k: shards[f] for k, f in weight_map.items()}
            return cls(sorted(set(shards.values())), key_to_file)
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
        self._tensors, origin = {}, {}
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
            for key in loaded:
                if key in origin:
                    raise ValueError(
                        f"tensor {key!r} is stored in two shards, {origin[key]} and {path}; which one to load is "
                        "ambiguous. Remove it from one shard, or re-save the checkpoint."
                    )
                origin[key] = path
            self._tensors.update(loaded)

    @classmethod
    def from_dir(cls, directory: Path) -> TorchBinSource:
        index = directory / TORCH_INDEX
        if index.is_file():
            return cls(sorted({shard_path(directory, name, index) for name in set(read_weight_map(index).values())}))
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


def read_weight_map(index: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a sharded checkpoint's index, checked: a JSON object of
    strings, no tensor listed twice, every shard name a plain relative path (`hub.check_filename`)."""
    try:
        data = _strict_json(Path(index).read_text(encoding="utf-8"))
    except ValueError as e:  # also UnicodeDecodeError and json.JSONDecodeError
        raise ValueError(
            f"{index} is not a valid checkpoint index ({e}). Re-download or re-save the checkpoint."
        ) from e
    if not isinstance(data, dict):
        got = f"a JSON {_json_type(data)}, not an object"
    elif "weight_map" not in data:
        got = f"no 'weight_map' (keys: {sorted(data)[:10]})"
    elif not isinstance(data["weight_map"], dict):
        got = f"a 'weight_map' that is a JSON {_json_type(data['weight_map'])}"
    else:
        bad = [(k, v) for k, v in data["weight_map"].items() if not isinstance(v, str)]
        got = f"non-string shard names {bad[:3]}" if bad else None
    if got is not None:
        raise ValueError(
            f"{index} needs a 'weight_map' object mapping each tensor name to its shard's file name, but it has "
            f"{got}. Re-download or re-save the checkpoint."
        )
    weight_map = data["weight_map"]
    for name in sorted(set(weight_map.values())):
        check_filename(name, f"shard named in {index}")
    return weight_map


def shard_path(directory: Path, name: str, index: Path) -> Path:
    """`directory / name`, refused (ValueError) unless it resolves inside `directory`, symlinks followed, so that
    a hostile index cannot make us read other files. In a huggingface_hub cache snapshot the files are symlinks
    into the repo's `blobs/` folder, which is allowed too."""
    check_filename(name, f"shard named in {index}")
    path = directory / name
    real, roots = path.resolve(), [directory.resolve()]
    if roots[0].parent.name == "snapshots":
        roots.append(roots[0].parent.parent / "blobs")
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(
            f"{index} names the shard {name!r}, which resolves to {real}, outside the checkpoint directory "
            f"{directory}; refusing to read it. Shards must be files inside the checkpoint directory: fix the index "
            "or copy the shard in."
        )
    return path


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
    """Write tensors as one safetensors file, atomically and durably (see `replace_atomically`): a failed or killed
    write leaves the previous file at `path` intact."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    replace_atomically(Path(path), lambda tmp: save_file(arrays, str(tmp), metadata={"format": "pt"}))


# Writer helpers (used by `loading.save_pretrained`).


def replace_atomically(path: Path, write) -> None:
    """Create `path` (or replace it) with what `write(tmp_path)` writes, so that readers and crashes see the old file
    or the complete new one, never a part: written to a hidden temp file next to `path`, fsynced, renamed over it,
    then the directory fsynced (the rename itself must reach the disk before anything relies on the new file).

    The result has an ordinary new file's permissions (0666 less the umask: 0644 with umask 022), whatever `write`
    created: safetensors writes through a private temp file (mode 0600), which the rename would otherwise keep,
    leaving saved weights unreadable to other users (a shared model folder, a container running as another user)."""
    import uuid

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (`os.umask` can only be read by setting it,
    which would briefly change it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomically(path: Path, text: str) -> None:
    """`path.write_text(text)` through `replace_atomically`."""
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def remove_superseded_weights(directory: Path, keep: set[str]) -> list[str]:
    """Delete the weight files of an earlier save in `directory` that a new save (which wrote the files `keep`)
    supersedes; returns their names. Call it only once the new weights are complete on disk.

    Removed, like transformers' save_pretrained cleans up: the safetensors and pickle indexes, every file they list,
    `model-0000i-of-0000n.safetensors` / `pytorch_model-0000i-of-0000n.bin` shards and `pytorch_model.bin`; nothing
    else (tokenizer files, other `*.safetensors` names stay). The indexes go first, each removal made durable before
    the shards': loaders read an index before the single file, so at no crash point does an index name missing
    shards while the single file is there.
    """
    import re

    directory = Path(directory)
    shard = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")
    listed = set()
    for index in (SAFE_INDEX, TORCH_INDEX):
        try:
            listed |= set(json.loads((directory / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or unreadable: its shards by name
            pass
    listed = {n for n in listed if isinstance(n, str) and n == Path(n).name and n.endswith((".safetensors", ".bin"))}
    removed = []
    for index in (SAFE_INDEX, TORCH_INDEX):
        if index not in keep and (directory / index).is_file():
            (directory / index).unlink()
            removed.append(index)
    if removed:
        _fsync_path(directory)
    for p in sorted(directory.iterdir()):
        if p.name in keep or not p.is_file():
            continue
        if p.name in listed or p.name == TORCH_SINGLE or shard.fullmatch(p.name):
            p.unlink()
            removed.append(p.name)
    if removed:
        _fsync_path(directory)
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
