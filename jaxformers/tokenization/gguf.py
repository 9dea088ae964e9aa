"""Tokenizers stored in GGUF files (llama.cpp's single-file format), built as transformers builds them for
`AutoTokenizer.from_pretrained(..., gguf_file=...)`.

A GGUF file keeps the vocabulary as metadata under llama.cpp's key names (`tokenizer.ggml.*`): the tokens, their
types and scores, BPE merges, the special token ids and flags, and the chat template. `tokenizer_from_gguf` turns
them back into a `tokenizers.Tokenizer`; `AutoTokenizer.from_pretrained(gguf_file=...)` wraps it in a `Tokenizer`.
Reading needs the optional `gguf` package (pip install gguf).
"""

from __future__ import annotations

import functools
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from jaxformers.convert.gguf import _architecture, _open, _required, _value

__all__ = ["tokenizer_from_gguf"]

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
