"""Read GGUF checkpoints (llama.cpp's single-file format), in pure numpy through `gguf` (today: the Llama family).

A GGUF file holds everything a Hugging Face folder would: the weights (often quantised), the model config and the
tokenizer as metadata under llama.cpp's key names. This module turns each back into its Hugging Face form:

- `GGUFSource`: the weights as a lazy tensor source with HF names and PyTorch layouts, like `SafetensorsSource`;
  every tensor is dequantised to float32 when it is read, one at a time, from the memory-mapped file. With
  `load(..., quantization="gguf")` the block-quantised tensors are instead kept as integer codes and scales
  (`quantized_format` / `get_quantized`, the `jaxformers.core.quant` format), where the block format maps exactly:
      Q8_0 -> int8, groups of 32         Q4_0 -> 4-bit, groups of 32      Q4_1 -> 4-bit unsigned + min, groups of 32
      Q5_0 -> int8, groups of 32         Q5_1 -> int8 + min, groups of 32
      Q4_K -> 4-bit unsigned + min, 32   Q5_K -> int8 + min, 32           Q6_K -> int8, groups of 16
  (a K-quant's super-block scale times its 6- or 8-bit sub-block scale is one float32 scale per group of 32 or 16:
  the same values, exactly). Q2_K, Q3_K and the IQ/TQ/MXFP4 types are not kept: they are dequantised to float32
  (their codes are 2-3 bits or look-up tables; widening them to int8 would hold more bytes than float16 saves).
- `config_from_gguf`: a `config.json`-style dict; `generation_config_from_gguf`: the special token ids.
- the tokenizer is read by `jaxformers.tokenization.gguf.tokenizer_from_gguf` (also importable from here).

What comes out matches what `transformers` builds from the same file with `gguf_file=`: same tensor names and values
(including the inverse of llama.cpp's rotary row interleaving of q/k projections), same config fields, same token ids.

No model knowledge lives here: the GGUF architectures read (`general.architecture`: "llama", which llama.cpp also
writes for Mistral and SmolLM, and "qwen2") and their tensor names come from the model files' records
(`Architecture.gguf_names`, found through `jaxformers.models.gguf_names`), a dict of:
  architectures  {gguf_arch: {"model_type", "architecture" (HF architectures entry), "permuted_qk" (llama.cpp
                 interleaved the rotary halves of every q/k head: undone on read), "bias_flags" (config.json states
                 head_dim, attention_bias and mlp_bias)}}
  global         {gguf_stem: hf_prefix} for tensors outside the blocks ("token_embd" -> "model.embed_tokens")
  block_prefix   HF prefix of the blocks ("model.layers": block `i` is "model.layers.{i}.")
  block          {gguf_stem: hf_module} inside a block ("attn_q" -> "self_attn.q_proj")
  rotary         {"q": hf_module, "k": hf_module}: the projections `permuted_qk` applies to
  ignored        GGUF tensor names with no HF parameter
"""

from __future__ import annotations

import functools
import os
import re
from typing import Self

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from jaxformers import models as registry
from jaxformers.core.quant import QuantSpec

_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _open(path: str | os.PathLike) -> GGUFReader:
    """Memory-map a GGUF file and parse its metadata and tensor table (no tensor data is read).

    The last two files parsed are kept (keyed by path, size and modification time): one `load` reads a file's
    config, generation settings and weights, and `AutoTokenizer` its vocabulary, while parsing the metadata of a
    file with a 49k-token vocabulary takes seconds."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    stat = os.stat(path)
    return _parse(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parse(path: str, size: int, mtime_ns: int) -> GGUFReader:
    del size, mtime_ns  # cache key only: a rewritten file is parsed again
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid GGUF file (unreadable or truncated: {err})") from err


def _value(reader: GGUFReader, key: str, default=None):
    """A metadata value as a Python object (str, int, float, bool or list), or `default` when absent."""
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _required(reader: GGUFReader, key: str, path: str | os.PathLike):
    value = _value(reader, key)
    if value is None:
        raise ValueError(f"{os.fspath(path)}: GGUF metadata key {key!r} is missing")
    return value


def _architecture(reader: GGUFReader, path: str | os.PathLike) -> str:
    """The file's `general.architecture`, refused unless a model file's record reads it (`_names`)."""
    _names(reader, path)
    return _value(reader, "general.architecture")


def _names(reader: GGUFReader, path: str | os.PathLike) -> dict:
    """The tensor-name table (a model record's `gguf_names`, see the module docstring) for the file's architecture."""
    arch = _value(reader, "general.architecture")
    names = registry.gguf_names(arch) if isinstance(arch, str) else None
    if names is None:
        raise ValueError(
            f"{os.fspath(path)}: GGUF architecture {arch!r} is not supported; "
            f"supported architectures: {', '.join(registry.gguf_architectures())}"
        )
    return names


@functools.cache
def _dequantizable_types() -> frozenset[GGMLQuantizationType]:
    """The GGML tensor types `gguf.quants.dequantize` can turn into floats (probed on one zero block each)."""
    supported = set()
    for qtype in GGMLQuantizationType:
        try:
            dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
        except NotImplementedError:
            continue
        supported.add(qtype)
    return frozenset(supported)


def _f16(raw: np.ndarray) -> np.ndarray:
    """float16 bytes `[..., 2]` -> float32 `[..., 1]`."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes `[..., n]` -> `[..., 2n]` uint8: the n low nibbles, then the n high nibbles (llama.cpp's order)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _fifth_bit(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's 32 high bits (`[..., 4]` bytes, little endian) as `[..., 32]` values 0 or 16."""
    bits = np.ascontiguousarray(qh).view("<u4") >> np.arange(32, dtype=np.uint32)
    return ((bits & 1) << 4).astype(np.uint8)


def _k_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's twelve bytes of eight 6-bit scales and eight 6-bit mins -> two `[..., 8]` float32 arrays."""
    d, m, m_d = raw[..., 0:4], raw[..., 4:8], raw[..., 8:12]
    sc = np.concatenate([d & 63, (m_d & 15) | ((d >> 2) & 48)], axis=-1)
    mn = np.concatenate([m & 63, (m_d >> 4) | ((m >> 2) & 48)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q8_0(b):
    return b[..., 2:].view(np.int8), _f16(b[..., :2]), None


def _q4_0(b):
    return _nibbles(b[..., 2:]).astype(np.int8) - 8, _f16(b[..., :2]), None


def _q4_1(b):
    return _nibbles(b[..., 4:]).astype(np.int8), _f16(b[..., :2]), _f16(b[..., 2:4])


def _q5_0(b):
    return (_nibbles(b[..., 6:]) | _fifth_bit(b[..., 2:6])).astype(np.int8) - 16, _f16(b[..., :2]), None


def _q5_1(b):
    return (_nibbles(b[..., 8:]) | _fifth_bit(b[..., 4:8])).astype(np.int8), _f16(b[..., :2]), _f16(b[..., 2:4])


def _k_quant(b, high_bits: bool):
    """Q4_K (`high_bits` False) / Q5_K super-blocks of 256: eight groups of 32 with scale d * sc and zero -dmin * m."""
    sc, mn = _k_scales(b[..., 4:16])
    scale, zero = _f16(b[..., :2]) * sc, -(_f16(b[..., 2:4]) * mn)
    qs = b[..., 48:] if high_bits else b[..., 16:]
    q = _nibbles(qs.reshape(*qs.shape[:-1], 4, 32)).reshape(*qs.shape[:-1], 8, 32)  # sub-blocks 2j, 2j+1 per 32 bytes
    if high_bits:
        q = q | (((b[..., None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None]) & 1) << 4)
    return q.reshape(*qs.shape[:-1], 256).astype(np.int8), scale, zero


_q4_k = functools.partial(_k_quant, high_bits=False)
_q5_k = functools.partial(_k_quant, high_bits=True)


def _q6_k(b):
    """Super-blocks of 256: sixteen groups of 16 with scale d * sc (int8), codes q - 32 from 4 + 2 bits."""
    lead = b.shape[:-1]
    ql, qh = b[..., :128].reshape(*lead, 2, 64), b[..., 128:192].reshape(*lead, 2, 32)
    low = _nibbles(ql).reshape(*lead, 2, 4, 32)  # per half of 128: rows (l & 15) of 32, then (l >> 4)
    high = (qh[..., None, :] >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3  # [.., 2, 4, 32]
    q = (low | (high << 4)).reshape(*lead, 256).astype(np.int8) - 32
    scale = _f16(b[..., 208:210]) * b[..., 192:208].view(np.int8).astype(np.float32)
    return q, scale, None


# GGML type -> (block parser: blocks [..., bytes] -> (codes [..., n], scale [..., g], zero [..., g] | None), spec)
_KEPT = {
    GGMLQuantizationType.Q8_0: (_q8_0, QuantSpec(8, 32)),
    GGMLQuantizationType.Q4_0: (_q4_0, QuantSpec(4, 32)),
    GGMLQuantizationType.Q4_1: (_q4_1, QuantSpec(4, 32, zero=True, unsigned=True)),
    GGMLQuantizationType.Q5_0: (_q5_0, QuantSpec(8, 32)),
    GGMLQuantizationType.Q5_1: (_q5_1, QuantSpec(8, 32, zero=True)),
    GGMLQuantizationType.Q4_K: (_q4_k, QuantSpec(4, 32, zero=True, unsigned=True)),
    GGMLQuantizationType.Q5_K: (_q5_k, QuantSpec(8, 32, zero=True)),
    GGMLQuantizationType.Q6_K: (_q6_k, QuantSpec(8, 16)),
}


def common_format(specs: list[QuantSpec | None]) -> QuantSpec | None:
    """One format holding every layer's tensors of a stacked family exactly (llama.cpp's Q4_K_M mixes Q4_K and
    Q6_K layers): the widest codes, the smallest group, a zero term if any has one; None if any layer is float."""
    if not specs or any(s is None for s in specs):
        return None
    if len(set(specs)) == 1:
        return specs[0]
    four = {(s.bits, s.unsigned) for s in specs} in ({(4, False)}, {(4, True)})
    return QuantSpec(4 if four else 8, min(s.group_size for s in specs), zero=any(s.zero for s in specs),
                     unsigned=four and specs[0].unsigned)  # fmt: skip


def _hf_name(gguf_name: str, names: dict) -> str | None:
    """The Hugging Face parameter name of a GGUF tensor under the table `names`, or None for an unknown one."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in names["global"] and suffix in ("weight", "bias"):
        return f"{names['global'][stem]}.{suffix}"
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match[2] not in names["block"]:
        return None
    return f"{names['block_prefix']}.{match[1]}.{names['block'][match[2]]}.{match[3]}"


def _unpermute_rotary_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head it interleaves the two rotary halves, rows (i, 2) instead of (2, i)."""
    half = weights.shape[0] // n_heads // 2
    return weights.reshape(n_heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


class GGUFSource:
    """The weights of a GGUF file (of an architecture a model record reads) as a lazy tensor source with HF names.

    `keys()` are HF state-dict names (`lm_head.weight` only when the file has an untied output projection),
    `shape(key)` is the PyTorch layout (Linear weights `[out, in]`), `get(key)` dequantises that one tensor from the
    memory-mapped file to float32 (whatever its GGML type, F16/BF16 included: lossless for those) and undoes
    llama.cpp's q/k row permutation. Unknown tensor names and types `gguf` cannot dequantise fail at construction.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._reader = _open(self.path)
        names = _names(self._reader, self.path)
        arch = _architecture(self._reader, self.path)
        heads = _required(self._reader, f"{arch}.attention.head_count", self.path)
        kv_heads = _value(self._reader, f"{arch}.attention.head_count_kv", heads)
        # HF module path within a block -> heads whose rotary rows llama.cpp interleaved
        rotary = names["rotary"]
        permuted = names["architectures"][arch]["permuted_qk"]
        self._rotary_heads = {rotary["q"]: heads, rotary["k"]: kv_heads} if permuted else {}
        self._block_prefix = names["block_prefix"] + "."
        self._tensors = {}
        unknown, unsupported = [], []
        for tensor in self._reader.tensors:
            if tensor.name in names["ignored"]:
                continue
            hf_name = _hf_name(tensor.name, names)
            if hf_name is None:
                unknown.append(tensor.name)
            elif tensor.tensor_type not in _dequantizable_types():
                unsupported.append(f"{tensor.name} ({tensor.tensor_type.name})")
            else:
                self._tensors[hf_name] = tensor
        if unsupported:
            names = ", ".join(sorted(t.name for t in _dequantizable_types()))
            raise ValueError(
                f"{self.path}: unsupported GGML quantisation type in tensor(s) {', '.join(unsupported)}; "
                f"supported types: {names}"
            )
        if unknown:
            raise ValueError(f"{self.path}: tensors with no Hugging Face {arch} parameter name: {', '.join(unknown)}")

    def keys(self) -> list[str]:
        """HF parameter names of the tensors in the file, in file order."""
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        """PyTorch-layout shape of `key` (GGUF stores dimensions fastest-varying first)."""
        return tuple(int(d) for d in reversed(self._tensor(key).shape))

    def dtype(self, key: str) -> np.dtype:
        """The dtype `get(key)` returns: always float32 (quantised, F16, BF16 and F32 tensors alike)."""
        self._tensor(key)
        return np.dtype(np.float32)

    def get(self, key: str) -> np.ndarray:
        """Dequantise `key` into a new float32 array in PyTorch layout and HF row order."""
        tensor = self._tensor(key)
        out = dequantize(tensor.data, tensor.tensor_type).reshape(self.shape(key))
        module = self._block_module(key)
        if module in self._rotary_heads:
            out = _unpermute_rotary_rows(out, self._rotary_heads[module])
        if np.may_share_memory(out, tensor.data):  # F32 dequantises to a view of the memory map
            out = out.copy()
        return out.astype(np.float32, copy=False)

    def quantized_format(self, key: str) -> QuantSpec | None:
        """The `core.quant` format `key` is kept in by `load(..., quantization="gguf")`; None for float tensors and
        for the types that are dequantised instead (module docstring)."""
        kept = _KEPT.get(self._tensor(key).tensor_type)
        return None if kept is None else kept[1]

    def get_quantized(self, key: str, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """`key` as integer codes `[out, in]` (int8 code values: `W = code * scale (+ zero)`), float32 scales and
        zeros `[out, in / group]`, in PyTorch layout and HF row order, regrouped to `spec` (its `quantized_format`
        or a `common_format` with other layers): exactly the values `get(key)` dequantises to."""
        tensor = self._tensor(key)
        parse, own = _KEPT[tensor.tensor_type]
        out_dim = self.shape(key)[0]
        codes, scale, zero = parse(tensor.data.reshape(out_dim, -1, GGML_QUANT_SIZES[tensor.tensor_type][1]))
        codes, scale = codes.reshape(out_dim, -1), scale.reshape(out_dim, -1)
        zero = None if zero is None else zero.reshape(out_dim, -1)
        if spec.zero and zero is None:
            zero = np.zeros_like(scale)
        repeat = own.group_size // spec.group_size
        if repeat > 1:  # a smaller common group: each of this tensor's scales covers several
            scale = np.repeat(scale, repeat, axis=-1)
            zero = None if zero is None else np.repeat(zero, repeat, axis=-1)
        module = self._block_module(key)
        if module in self._rotary_heads:
            heads = self._rotary_heads[module]
            codes, scale = _unpermute_rotary_rows(codes, heads), _unpermute_rotary_rows(scale, heads)
            zero = None if zero is None else _unpermute_rotary_rows(zero, heads)
        return codes, scale, zero

    def close(self) -> None:
        """Drop the memory map; the source cannot be read afterwards."""
        self._tensors = {}
        self._reader = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _block_module(self, key: str) -> str | None:
        """`self_attn.q_proj` for `model.layers.3.self_attn.q_proj.weight`; None outside the blocks."""
        if not key.startswith(self._block_prefix):
            return None
        return key[len(self._block_prefix) :].partition(".")[2].rpartition(".")[0]

    def _tensor(self, key: str):
        if key not in self._tensors:
            raise KeyError(f"{key!r} is not a tensor of {self.path}")
        return self._tensors[key]


def config_from_gguf(path: str | os.PathLike) -> dict:
    """An HF `config.json`-style dict for the model in a GGUF file (as `transformers.AutoConfig` builds it).

    `rope_scaling` is set only when the file states `{arch}.rope.scaling.type` (linear or yarn); llama3-style scaling,
    which llama.cpp stores as a `rope_freqs` tensor, is not reconstructed (transformers does not either).
    """
    reader = _open(path)
    names = _names(reader, path)
    arch = _architecture(reader, path)
    facts = names["architectures"][arch]
    model_type, architecture = facts["model_type"], facts["architecture"]
    tensor_names = {tensor.name for tensor in reader.tensors}

    def meta(name, default=None):
        return _value(reader, f"{arch}.{name}", default)

    def need(name):
        return _required(reader, f"{arch}.{name}", path)

    heads = need("attention.head_count")
    hidden = need("embedding_length")
    config = {
        "model_type": model_type,
        "architectures": [architecture],
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": meta("attention.head_count_kv", heads),
        "max_position_embeddings": need("context_length"),
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon"),
        "rope_theta": meta("rope.freq_base", 10000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _value(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _value(reader, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    config["vocab_size"] = meta("vocab_size")
    if config["vocab_size"] is None:  # older files: one embedding row per token (GGUF lists dimensions reversed)
        embedding = [tensor for tensor in reader.tensors if tensor.name == "token_embd.weight"]
        if not embedding:
            raise ValueError(f"{os.fspath(path)}: neither {arch}.vocab_size nor token_embd.weight is in the file")
        config["vocab_size"] = int(embedding[0].shape[-1])
    if facts["bias_flags"]:  # Qwen2's config has no such fields: its q/k/v always carry a bias
        config["head_dim"] = meta("attention.key_length", meta("rope.dimension_count", hidden // heads))
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensor_names
    scaling = meta("rope.scaling.type")
    if scaling not in (None, "none"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": meta("rope.scaling.factor")}
        original = meta("rope.scaling.original_context_length")
        if original is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = original
    return config


def generation_config_from_gguf(path: str | os.PathLike) -> dict:
    """A `generation_config.json`-style dict: the bos/eos/pad token ids the file states."""
    reader = _open(path)
    _architecture(reader, path)
    keys = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}
    ids = {name: _value(reader, f"tokenizer.ggml.{key}") for name, key in keys.items()}
    return {name: value for name, value in ids.items() if value is not None}


def __getattr__(name: str):
    # `tokenizer_from_gguf` moved to jaxformers.tokenization.gguf, which imports this module's readers: importing it
    # lazily here keeps `from jaxformers.convert.gguf import tokenizer_from_gguf` working without an import cycle.
    if name == "tokenizer_from_gguf":
        from jaxformers.tokenization.gguf import tokenizer_from_gguf

        return tokenizer_from_gguf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
