"""Read GGUF checkpoints (llama.cpp's single-file format) of the Llama family, in pure numpy through `gguf`.

A GGUF file holds everything a Hugging Face folder would: the weights (often quantised), the model config and the
tokenizer as metadata under llama.cpp's key names. This module turns each back into its Hugging Face form:

- `GGUFSource`: the weights as a lazy tensor source with HF names and PyTorch layouts, like `SafetensorsSource`;
  every tensor is dequantised to float32 when it is read, one at a time, from the memory-mapped file.
- `config_from_gguf`: a `config.json`-style dict; `generation_config_from_gguf`: the special token ids.
- `tokenizer_from_gguf`: a `tokenizers.Tokenizer` plus the special tokens, flags and chat template.

What comes out matches what `transformers` builds from the same file with `gguf_file=`: same tensor names and values
(including the inverse of llama.cpp's rotary row interleaving of q/k projections), same config fields, same token ids.
GGUF architectures read: "llama" (which llama.cpp also writes for Mistral and SmolLM) and "qwen2".
"""

from __future__ import annotations

import functools
import os
import re
from typing import Self

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# GGUF architecture -> (HF model_type, HF architectures entry).
_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)

# llama.cpp interleaves the two rotary halves of every q/k head for these architectures only.
_PERMUTED_QK = {"llama"}

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Precomputed llama3 rope frequency factors: derived data with no HF parameter (transformers skips it too).
_IGNORED_TENSORS = {"rope_freqs.weight"}

# GGUF `tokenizer.ggml.token_type` values.
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split patterns by `tokenizer.ggml.pre`, as transformers applies them; any other value keeps the
# tokenizer type's default (GPT-2's byte-level regex, or none for sentencepiece).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe", "midm-2.0"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}


def _open(path: str | os.PathLike) -> GGUFReader:
    """Memory-map a GGUF file and parse its metadata and tensor table (no tensor data is read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
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
    arch = _value(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"{os.fspath(path)}: GGUF architecture {arch!r} is not supported; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


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


def _hf_name(gguf_name: str) -> str | None:
    """The Hugging Face parameter name of a llama-family GGUF tensor, or None for an unknown one."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS and suffix in ("weight", "bias"):
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match[2] not in _BLOCK_TENSORS:
        return None
    return f"model.layers.{match[1]}.{_BLOCK_TENSORS[match[2]]}.{match[3]}"


def _unpermute_rotary_rows(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head it interleaves the two rotary halves, rows (i, 2) instead of (2, i)."""
    half = weights.shape[0] // n_heads // 2
    return weights.reshape(n_heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


class GGUFSource:
    """The weights of a llama-family GGUF file as a lazy tensor source with Hugging Face names.

    `keys()` are HF state-dict names (`lm_head.weight` only when the file has an untied output projection),
    `shape(key)` is the PyTorch layout (Linear weights `[out, in]`), `get(key)` dequantises that one tensor from the
    memory-mapped file to float32 (whatever its GGML type, F16/BF16 included: lossless for those) and undoes
    llama.cpp's q/k row permutation. Unknown tensor names and types `gguf` cannot dequantise fail at construction.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._reader = _open(self.path)
        arch = _architecture(self._reader, self.path)
        heads = _required(self._reader, f"{arch}.attention.head_count", self.path)
        kv_heads = _value(self._reader, f"{arch}.attention.head_count_kv", heads)
        self._rotary_heads = {"q_proj": heads, "k_proj": kv_heads} if arch in _PERMUTED_QK else {}
        self._tensors = {}
        unknown, unsupported = [], []
        for tensor in self._reader.tensors:
            if tensor.name in _IGNORED_TENSORS:
                continue
            hf_name = _hf_name(tensor.name)
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
        module = key.split(".")[-2]
        if module in self._rotary_heads:
            out = _unpermute_rotary_rows(out, self._rotary_heads[module])
        if np.may_share_memory(out, tensor.data):  # F32 dequantises to a view of the memory map
            out = out.copy()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        """Drop the memory map; the source cannot be read afterwards."""
        self._tensors = {}
        self._reader = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
    arch = _architecture(reader, path)
    model_type, architecture = _ARCHITECTURES[arch]
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
    if model_type == "llama":  # Qwen2 has no such fields: its q/k/v always carry a bias
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


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _byte_level_bpe(tokens: list[str], merges: list[tuple[str, str]]) -> Tokenizer:
    """GPT-2-style byte-level BPE; tokens the file wrote as plain text are respelled in the byte alphabet."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece vocabulary: every split of a token into two known tokens, best score
    first (ties: longer left then right piece first, then vocabulary order), as transformers derives them."""
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = []
    for token, score in dict(zip(tokens, scores)).items():
        pairs = [(token[:i], token[i:], score) for i in range(1, len(token))]
        pairs = [pair for pair in pairs if pair[0] in vocab and pair[1] in vocab]
        merges.extend(sorted(pairs, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    merges.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _sentencepiece_bpe(tokens: list[str], merges: list[tuple[str, str]]) -> Tokenizer:
    """Llama-style sentencepiece BPE: `▁` for spaces, a prefix `▁` on the first word, byte fallback."""
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    return tokenizer


def tokenizer_from_gguf(path: str | os.PathLike) -> dict:
    """The tokenizer a GGUF file describes, built as transformers builds it for `AutoTokenizer(gguf_file=...)`.

    Returns a dict: "tokenizer" (a `tokenizers.Tokenizer` whose `encode(text, add_special_tokens=True)` adds bos/eos
    as the file's flags say), "bos_token", "eos_token", "pad_token", "unk_token" (str or None), "chat_template"
    (str or None), "add_bos_token", "add_eos_token" (bool). `tokenizer.ggml.model` "gpt2" gives byte-level BPE from
    the file's tokens and merges; "llama" gives sentencepiece-style BPE with byte fallback, with merges from the file
    or derived from the token scores.
    """
    reader = _open(path)
    _architecture(reader, path)
    kind = _required(reader, "tokenizer.ggml.model", path)
    if kind not in ("gpt2", "llama"):
        raise ValueError(
            f"{os.fspath(path)}: GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2', 'llama'"
        )
    tokens = _required(reader, "tokenizer.ggml.tokens", path)
    token_types = _value(reader, "tokenizer.ggml.token_type", [])
    if kind == "llama" and reader.get_field("tokenizer.ggml.merges") is None:
        merges = _sentencepiece_merges(tokens, _required(reader, "tokenizer.ggml.scores", path))
    else:
        merges = [tuple(merge.split(" ", 1)) for merge in _required(reader, "tokenizer.ggml.merges", path)]
    tokenizer = _byte_level_bpe(tokens, merges) if kind == "gpt2" else _sentencepiece_bpe(tokens, merges)
    split = _PRE_TOKENIZER_SPLITS.get(_value(reader, "tokenizer.ggml.pre"))
    if split is not None:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    special = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = _value(reader, f"tokenizer.ggml.{key}_token_id")
        special[name] = tokens[token_id] if token_id is not None else None
    # Control tokens stay whole (in a byte-level vocabulary, one spelled outside the byte alphabet is a llama.cpp
    # mislabel and is skipped); user-defined ones are matched whole too but are not special.
    alphabet = set(_bytes_to_unicode().values()) if kind == "gpt2" else None
    control = [
        token
        for token, token_type in zip(tokens, token_types)
        if token_type == _CONTROL and (alphabet is None or set(token) <= alphabet)
    ]
    named = [token for token in special.values() if token is not None and token not in control]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control + named])
    vocab = tokenizer.get_vocab()
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, token_type in zip(tokens, token_types)
        if token_type == _USER_DEFINED and token in vocab
    ]
    tokenizer.add_tokens(user_defined)

    add_bos = bool(_value(reader, "tokenizer.ggml.add_bos_token", kind == "llama")) and special["bos_token"] is not None
    add_eos = bool(_value(reader, "tokenizer.ggml.add_eos_token", False)) and special["eos_token"] is not None
    tokenizer.post_processor = _template(
        special["bos_token"] if add_bos else None, special["eos_token"] if add_eos else None, vocab
    )
    return {
        "tokenizer": tokenizer,
        **special,
        "chat_template": _value(reader, "tokenizer.chat_template"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
    }


def _template(bos: str | None, eos: str | None, vocab: dict[str, int]) -> processors.TemplateProcessing:
    """The post-processor transformers installs: optional bos before and eos after each sequence."""

    def around(sequence: str, type_id: int) -> str:
        return " ".join(
            part for part in (bos and f"{bos}:{type_id}", f"${sequence}:{type_id}", eos and f"{eos}:{type_id}") if part
        )

    return processors.TemplateProcessing(
        single=around("A", 0),
        pair=f"{around('A', 0)} {around('B', 1)}",
        special_tokens=[(token, vocab[token]) for token in (bos, eos) if token is not None],
    )
