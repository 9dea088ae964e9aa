"""Hostile or broken checkpoint files: malformed safetensors headers, indexes that point outside the model directory,
tensors stored twice, config files that are not JSON objects. Each is refused with a ValueError naming the file.

The safetensors reader is held to the `safetensors` library itself: what the library loads, we load identically;
what it refuses, we refuse. We are stricter in two documented ways only: duplicate JSON keys (the library keeps the
last one) and dtypes the format knows but jaxformers does not read (F8_E8M0, C64, sub-byte floats, ...).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import struct

import huggingface_hub
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError

import jaxformers as jf
from jaxformers import hub
from jaxformers.convert.safetensors_io import SafetensorsSource, TorchBinSource

IDS = np.array([[5, 8, 13, 21, 34, 55]], np.int32)
# Where we raise although the library loads: the documented differences (see the module docstring).
STRICTER = ("appears twice", "jaxformers does not read")


def st_bytes(header, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte header length (default: the true one), header (dict or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def split_file(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def library_load(path) -> dict[str, tuple[np.dtype, tuple, bytes]] | None:
    """What the safetensors library loads from `path` (dtype, shape, bytes per tensor), or None if it refuses."""
    try:
        return {k: (v.dtype, v.shape, v.tobytes()) for k, v in safetensors.numpy.load_file(path).items()}
    except SafetensorError:
        return None
    except (TypeError, AttributeError):  # numpy has no BF16 / F8 dtype: the header was accepted, read through torch
        pass
    except ValueError:  # numpy cannot make the array (dimensions past 2**63 bytes): the numpy loader refuses
        return None
    import ml_dtypes

    to_np = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
             torch.float8_e5m2: ml_dtypes.float8_e5m2}  # fmt: skip
    try:
        loaded = safetensors.torch.load_file(path)
    except Exception:
        return None
    out = {}
    for k, t in loaded.items():
        np_dtype = np.dtype(to_np[t.dtype]) if t.dtype in to_np else t.numpy().dtype
        out[k] = (np_dtype, tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return out


def our_load(path) -> dict[str, tuple[np.dtype, tuple, bytes]]:
    src = SafetensorsSource([path])
    try:
        out = {}
        for k in src.keys():
            a = src.get(k)
            assert a.shape == src.shape(k)
            out[k] = (a.dtype, a.shape, a.tobytes())
        return out
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------------------------
# Malformed headers, one by one

F32x4 = np.arange(4, dtype=np.float32).tobytes()


def t(begin, end, shape=(2,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


MALFORMED = {
    # one tensor reads another's bytes: the old reader returned b's values from a's region
    "overlap": (st_bytes({"a": t(0, 8), "b": t(0, 8), "c": t(8, 16)}, F32x4), "overlaps"),
    # a negative offset reaches back into the header
    "negative_offset": (st_bytes({"a": t(-8, 0), "b": t(0, 16, (4,))}, F32x4), "non-negative"),
    "gap": (st_bytes({"a": t(0, 8), "b": t(12, 20)}, F32x4 + F32x4[:4]), "gap"),
    "trailing_bytes": (st_bytes({"a": t(0, 16, (4,))}, F32x4 + b"xx"), "follow the last tensor"),
    "truncated_data": (st_bytes({"a": t(0, 16, (4,))}, F32x4[:12]), "truncated"),
    "begin_after_end": (st_bytes({"a": t(16, 0, (4,)), "b": t(0, 16, (4,))}, F32x4), "end before they begin"),
    "size_mismatch": (st_bytes({"a": t(0, 16, (3,))}, F32x4), "needs 12 bytes"),
    "duplicate_key": (
        st_bytes(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                 b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', F32x4),  # fmt: skip
        "appears twice",
    ),
    "shape_bool": (st_bytes({"a": t(0, 16, (True, 4))}, F32x4), "non-negative integers"),
    "shape_float": (st_bytes({"a": t(0, 16, (4.0,))}, F32x4), "non-negative integers"),
    "shape_negative_zero": (st_bytes(b'{"a":{"dtype":"F32","shape":[-0,4],"data_offsets":[0,0]}}', b""), "integers"),
    "shape_overflow": (st_bytes({"a": t(0, 0, (2**63, 2, 0))}, b""), "overflows 64 bits"),
    "offsets_three": (st_bytes({"a": {**t(0, 16, (4,)), "data_offsets": [0, 16, 16]}}, F32x4), "two non-negative"),
    "metadata_not_strings": (st_bytes({"__metadata__": {"format": 1}, "a": t(0, 16, (4,))}, F32x4), "__metadata__"),
    "header_is_list": (st_bytes(b"[]", b""), "not an object"),
    "entry_not_object": (st_bytes({"a": 3}, b""), "must be an object"),
    "unknown_dtype": (st_bytes({"a": t(0, 16, (4,), "f32")}, F32x4), "not a safetensors dtype"),
    "header_length_past_end": (st_bytes({"a": t(0, 16, (4,))}, F32x4, length=10_000), "runs past the end"),
    "header_length_over_limit": (st_bytes({}, b"", length=100_000_001), "limit"),
    "lone_surrogate": (st_bytes(b'{"\\ud800":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', F32x4), "surrogate"),
    "too_deep": (st_bytes(b'{"a":{"x":' + b"[" * 130 + b"]" * 130 + b',"dtype":"F32","shape":[4],'
                          b'"data_offsets":[0,16]}}', F32x4), "nested deeper"),  # fmt: skip
    "not_utf8": (st_bytes(b'{"\xff":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', F32x4), "not valid JSON"),
    "short_file": (b"\x01\x00\x00", "shorter than the 8-byte"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_is_refused_like_the_library(tmp_path, case):
    blob, problem = MALFORMED[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    assert library_load(path) is None, "the safetensors library accepts this file: the case is wrong"
    with pytest.raises(ValueError, match=problem) as err:
        SafetensorsSource([path])
    assert str(path) in str(err.value) and "corrupt or truncated" in str(err.value)


def test_valid_unusual_layouts_load_like_the_library(tmp_path):
    """Tensors stored out of key order, scalars, empty tensors, spaces padding the header, extra fields, a null
    __metadata__: all valid, all read as the library reads them."""
    header = b"""{"__metadata__": null, "z": {"dtype": "F32", "shape": [], "data_offsets": [0, 4], "x": [1, {"y": -3}]},
                  "a": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]},
                  "e": {"dtype": "I64", "shape": [0, 5], "data_offsets": [16, 16]}}    """
    path = tmp_path / "model.safetensors"
    path.write_bytes(st_bytes(header, F32x4))
    want = library_load(path)
    assert want is not None and set(want) == {"z", "a", "e"}
    assert our_load(path) == want


def test_json_nesting_limit_is_the_library_s(tmp_path):
    """serde_json, under the library, stops at 128 nested arrays/objects; Python's json would go on (and, much
    deeper, crash with RecursionError)."""
    for depth, ok in [(127, True), (128, False), (100_000, False)]:
        extra = b"[" * (depth - 2) + b"]" * (depth - 2)  # inside the header object and the tensor's object
        path = tmp_path / f"deep{depth}.safetensors"
        path.write_bytes(st_bytes(b'{"a":{"x":' + extra + b',"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', F32x4))
        assert (library_load(path) is not None) == ok
        if ok:
            assert our_load(path) == library_load(path)
        else:
            with pytest.raises(ValueError, match="nested deeper than 127"):
                our_load(path)


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: random mutations of a small real file

BASE = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "i64": np.arange(5, dtype=np.int64) - 2,
    "f16": np.linspace(-1, 1, 8).astype(np.float16).reshape(2, 2, 2),
    "u8": np.arange(7, dtype=np.uint8),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 3), np.float32),
    "flag": np.array([True, False, True]),
}
NUMBERS = [0, 1, 2, 3, 4, 7, 8, 12, 16, 48, 96, -1, -8, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
           2**70, 10**30, True, False, 1.0, 2.5, 1e300, "8", None, [1], {}]  # fmt: skip
DTYPES = ["F32", "I32", "U32", "F16", "BF16", "I16", "U16", "U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2", "F64", "I64",
          "U64", "F8_E8M0", "C64", "f32", "X", 3, None]  # fmt: skip
SAME_SIZE = [("F64", "I64", "U64"), ("F32", "I32", "U32"), ("F16", "BF16", "I16", "U16"),
             ("U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2")]  # fmt: skip


def _intact(entry) -> bool:
    """Whether a header entry still has the form the entry mutations below edit."""
    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)):
        return False
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2):
        return False
    return all(type(v) is int and 0 <= v < 2**20 for v in offsets + entry["shape"])


def _mutate(rng: random.Random, header: dict, data: bytes) -> bytes:
    header = copy.deepcopy(header)
    keys = [k for k in header if k != "__metadata__"]
    dup, length, pad = None, None, ""
    benign = rng.random() < 0.3  # mutations that keep the file valid, so that the accepting path is exercised too
    for _ in range(rng.randint(1, 3)):
        k, kind = rng.choice(keys), rng.choice([1, 2, 5, 6, 8, 12, 14]) if benign else rng.randrange(16)
        entry = header.get(k)
        if not _intact(entry):
            kind = max(kind, 8)  # an earlier mutation broke this entry: mutate something else
        if kind == 0:  # an offset: nearby, or any number
            i = rng.randrange(2)
            nearby = entry["data_offsets"][i] + rng.choice([-8, -4, -2, -1, 1, 2, 4, 8])
            entry["data_offsets"][i] = nearby if rng.random() < 0.5 else rng.choice(NUMBERS)
        elif kind == 1:  # two tensors swap byte ranges (valid when their sizes agree)
            other = header.get(rng.choice(keys))
            if isinstance(other, dict) and "data_offsets" in other:
                entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
        elif kind == 2:  # the same element count in another shape (valid), or any shape
            n = int(np.prod(entry["shape"]))
            entry["shape"] = rng.choice([[n], [1, n, 1], [n, 1], [] if n == 1 else [n] if n else [0, 7]])
        elif kind == 3:
            entry["shape"] = [rng.choice(NUMBERS) for _ in range(rng.randint(0, 3))]
        elif kind == 4:
            entry["shape"] = rng.choice(NUMBERS)
        elif kind == 5:  # a dtype of the same size (valid), or any
            same = [d for group in SAME_SIZE for d in group if entry["dtype"] in group]
            entry["dtype"] = rng.choice(same if benign and same else DTYPES)
        elif kind == 6:  # a field goes missing, or a harmless one is added
            if rng.random() < 0.5 and not benign:
                del entry[rng.choice(sorted(entry))]
            else:
                entry[rng.choice(["extra", "dtype_", "meta"])] = rng.choice([1, "x", [1, [2]], {"a": None}])
        elif kind == 7:
            entry["data_offsets"] = rng.choice([[0], [0, 1, 2], 5, None, {"0": 1}])
        elif kind == 8:
            valid = [{"format": "np"}, {}, None, {"a": "", "\u00e9": "\u2603"}]
            header["__metadata__"] = rng.choice(valid + ([] if benign else [{"a": 1}, [], "x", {"a": {"b": "c"}}]))
        elif kind == 9:
            header[k] = rng.choice([None, 1, "x", [], {}])
        elif kind == 10:  # a key listed twice
            dup = k
        elif kind == 11:  # the 8-byte header length off by a little or a lot
            length = rng.choice([-9, -1, 1, 8, 2**32, 2**63, 2**64 - 1, 100_000_001])
        elif kind == 12:  # spaces after the JSON (as the library pads headers) are valid
            pad = " " * rng.randint(1, 9)
        elif kind == 13:  # data bytes cut off or appended
            data = data[: rng.randrange(len(data))] if rng.random() < 0.6 else data + bytes(rng.randint(1, 9))
        elif kind == 14:  # a new tensor at the end, or one removed
            if rng.random() < 0.5 or benign:
                header[f"new{len(header)}"] = {"dtype": "U8", "shape": [3], "data_offsets": [len(data), len(data) + 3]}
                data += b"abc"
            elif len(header) > 1:
                del header[k]
        else:  # the header is not an object at all
            header = rng.choice([[], "x", 1, None, [header]])
            break
        keys = [k for k in header if k != "__metadata__"] if isinstance(header, dict) and len(header) > 1 else keys
    raw = json.dumps(header)
    if dup is not None and isinstance(header, dict) and dup in header:
        raw = "{" + json.dumps(dup) + ": " + json.dumps(header[dup]) + ", " + raw[1:]
    raw = (raw + pad).encode()
    if length is not None:
        length = max(0, len(raw) + length) if length in (-9, -1, 1, 8) else length
    return st_bytes(raw, data, length)


def test_fuzzed_headers_load_what_the_library_loads_or_raise_valueerror(tmp_path):
    blob = safetensors.numpy.save(BASE, metadata={"format": "np"})
    header, data = split_file(blob)
    rng = random.Random(1234)
    path = tmp_path / "fuzz.safetensors"
    loaded = refused = stricter = 0
    for case in range(400):
        mutated = _mutate(rng, header, data)
        path.write_bytes(mutated)
        want = library_load(path)
        try:
            got = our_load(path)
        except ValueError as e:
            assert str(path) in str(e)
            if want is not None:  # we refuse what the library loads: only for the documented reasons
                assert any(s in str(e) for s in STRICTER), (case, mutated[:400], e)
                stricter += 1
            else:
                refused += 1
            continue
        assert want is not None, f"case {case}: we read a file the safetensors library refuses: {mutated[:400]!r}"
        assert got == want, (case, mutated[:400])
        loaded += 1
    # the mutations must exercise every outcome, or the test proves little
    assert loaded >= 40 and refused >= 200 and stricter >= 3, (loaded, refused, stricter)


# ---------------------------------------------------------------------------------------------------------------
# Index files: shards outside the directory, tensors in two shards, malformed weight maps


def sharded_copy(tiny_hf, tmp_path, shard_names=("model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors")):  # fmt: skip
    """The tiny BERT split into two safetensors shards + index in `tmp_path/model`; returns (dir, ref, tensors)."""
    src, ref = tiny_hf("bert", "BertModel")
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    tensors = safetensors.numpy.load_file(src / "model.safetensors")
    keys = sorted(tensors)
    halves = {shard_names[0]: keys[: len(keys) // 2], shard_names[1]: keys[len(keys) // 2 :]}
    for name, ks in halves.items():
        safetensors.numpy.save_file({k: tensors[k] for k in ks}, d / name, metadata={"format": "pt"})
    weight_map = {k: name for name, ks in halves.items() for k in ks}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d, ref, weight_map


def check_outputs(model, ref):
    with torch.no_grad():
        want = ref(torch.tensor(IDS).long()).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model(IDS).last_hidden_state), want, atol=1e-5)


def point_shard_outside(d, tmp_path, weight_map, kind, ext="safetensors"):
    """Move the second shard out of `d` and make the index reach it by `kind`: '..', absolute path, or symlink."""
    name = sorted(set(weight_map.values()))[1]
    outside = tmp_path / f"outside.{ext}"
    shutil.move(d / name, outside)
    if kind == "parent":
        new = f"../outside.{ext}"
    elif kind == "absolute":
        new = str(outside)
    else:
        new = f"link.{ext}"
        os.symlink(outside, d / new)
    return {k: new if v == name else v for k, v in weight_map.items()}


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_safetensors_shard_outside_the_directory_is_refused(tiny_hf, tmp_path, kind):
    d, _, weight_map = sharded_copy(tiny_hf, tmp_path)
    weight_map = point_shard_outside(d, tmp_path, weight_map, kind)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    problem = "outside the checkpoint directory" if kind == "symlink" else "not a relative path inside"
    with pytest.raises(ValueError, match=problem) as err:
        jf.AutoModel.from_pretrained(d)
    assert "model.safetensors.index.json" in str(err.value)
    with pytest.raises(ValueError, match=problem):
        SafetensorsSource.from_dir(d)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_pickle_shard_outside_the_directory_is_refused(tiny_hf, tmp_path, kind):
    src, ref = tiny_hf("bert", "BertModel")
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    state = ref.state_dict()
    keys = sorted(state)
    weight_map = {k: ("pytorch_model-00001-of-00002.bin" if i % 2 else "pytorch_model-00002-of-00002.bin")
                  for i, k in enumerate(keys)}  # fmt: skip
    for name in set(weight_map.values()):
        torch.save({k: state[k] for k in keys if weight_map[k] == name}, d / name)
    weight_map = point_shard_outside(d, tmp_path, weight_map, kind, ext="bin")
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    problem = "outside the checkpoint directory" if kind == "symlink" else "not a relative path inside"
    with pytest.raises(ValueError, match=problem) as err:
        jf.AutoModel.from_pretrained(d, allow_pickle=True)
    assert "pytorch_model.bin.index.json" in str(err.value)


def fake_hub_cache(tmp_path, src_dir, repo="tiny/bert"):
    """`src_dir`'s files in huggingface_hub's cache layout, as the hub writes it: blobs + symlinked snapshot."""
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("a" * 40)
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("a" * 40)
    for i, f in enumerate(sorted(src_dir.iterdir())):
        blob = root / "blobs" / f"{i:040x}"
        shutil.copy(f, blob)
        os.symlink(f"../../blobs/{blob.name}", snap / f.name)
    return tmp_path / "hub", snap


def test_hub_cache_with_symlinked_shards_still_loads(tiny_hf, tmp_path, monkeypatch):
    """The containment check follows symlinks, but the hub's own snapshot -> blobs links are inside the repo."""
    d, ref, _ = sharded_copy(tiny_hf, tmp_path)
    cache, _ = fake_hub_cache(tmp_path, d)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_outputs(jf.AutoModel.from_pretrained("tiny/bert", cache_dir=cache), ref)


def test_hub_index_naming_a_file_outside_the_repo_is_refused_before_any_download(tiny_hf, tmp_path, monkeypatch):
    d, _, weight_map = sharded_copy(tiny_hf, tmp_path)
    name = sorted(set(weight_map.values()))[1]
    weight_map = {k: f"../../../../{name}" if v == name else v for k, v in weight_map.items()}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cache, _ = fake_hub_cache(tmp_path, d)
    requested = []
    real_download = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kw):
        requested.append(filename)
        return real_download(repo_id, filename, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not a relative path inside the model directory"):
        jf.AutoModel.from_pretrained("tiny/bert", cache_dir=cache)
    assert requested and not [f for f in requested if ".." in f], requested


@pytest.mark.parametrize("name", ["../x.safetensors", "a/../../x.safetensors", "/etc/passwd", "..\\x", "C:x", ""])
def test_hub_resolve_file_refuses_names_outside_the_repo(monkeypatch, name):
    def no_download(*args, **kw):
        raise AssertionError(f"hf_hub_download called for {args} {kw}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(ValueError, match="not a relative path inside the model directory"):
        hub.resolve_file("org/repo", name)


def test_tensor_in_two_shards_names_both_files(tiny_hf, tmp_path):
    d, _, weight_map = sharded_copy(tiny_hf, tmp_path)
    first, second = sorted(set(weight_map.values()))
    key = next(k for k, v in weight_map.items() if v == first)
    # the second shard gains a copy of a tensor of the first, and the index points at that copy
    tensors = safetensors.numpy.load_file(d / second)
    tensors[key] = safetensors.numpy.load_file(d / first)[key] + 1
    safetensors.numpy.save_file(tensors, d / second, metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {**weight_map, key: second}}))
    with pytest.raises(ValueError, match=f"tensor '{key}' is stored in two shards") as err:
        jf.AutoModel.from_pretrained(d)
    assert first in str(err.value) and second in str(err.value)

    # the index itself listing one tensor twice (JSON keeps the last silently)
    raw = json.dumps({"weight_map": weight_map})
    raw = raw.replace('{"weight_map": {', '{"weight_map": {' + json.dumps(key) + ": " + json.dumps(second) + ", ")
    (d / "model.safetensors.index.json").write_text(raw)
    with pytest.raises(ValueError, match=f"'{key}' appears twice") as err:
        jf.AutoModel.from_pretrained(d)
    assert first in str(err.value) and second in str(err.value)


def test_pickle_tensor_in_two_shards_names_both_files(tiny_hf, tmp_path):
    src, ref = tiny_hf("bert", "BertModel")
    state = ref.state_dict()
    key = sorted(state)[0]
    torch.save(state, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({key: state[key] + 1}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in state} | {key: "pytorch_model-00002-of-00002.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=f"tensor '{key}' is stored in two shards") as err:
        TorchBinSource.from_dir(tmp_path)
    assert "pytorch_model-00001-of-00002.bin" in str(err.value) and "pytorch_model-00002-of-00002.bin" in str(err.value)


@pytest.mark.parametrize(
    "index, problem",
    [
        ("{}", "no 'weight_map'"),
        ('{"weight_map": ["a.safetensors"]}', "'weight_map' that is a JSON array"),
        ('{"weight_map": {"a": 3}}', "non-string shard names"),
        ('{"weight_map": {"a": null}}', "non-string shard names"),
        ('["weight_map"]', "JSON array, not an object"),
        ('"weight_map"', "JSON string, not an object"),
        ('{"weight_map": {', "not a valid checkpoint index"),
    ],
)
@pytest.mark.parametrize("fmt", ["safetensors", "pickle"])
def test_malformed_index_is_a_clear_error(tiny_hf, tmp_path, index, problem, fmt):
    src, _ = tiny_hf("bert", "BertModel")
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    name = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (d / name).write_text(index)
    with pytest.raises(ValueError, match=problem) as err:
        jf.AutoModel.from_pretrained(d, allow_pickle=True)
    assert name in str(err.value)


@pytest.mark.parametrize("content", ['["bert"]', '"bert"', "3", "null", "[1, 2"])
def test_config_that_is_not_a_json_object_is_a_clear_error(tiny_hf, tmp_path, content):
    src, _ = tiny_hf("bert", "BertModel")
    d = tmp_path / "model"
    shutil.copytree(src, d)
    (d / "config.json").write_text(content)
    with pytest.raises(ValueError, match="must hold a JSON object|not valid UTF-8 JSON") as err:
        jf.AutoModel.from_pretrained(d)
    assert "config.json" in str(err.value)
