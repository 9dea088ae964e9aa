"""Legacy vocabulary files converted to a `tokenizers.Tokenizer` the way transformers 5's tokenizer classes build
them: WordPiece (`vocab.txt`), byte-level BPE (`vocab.json` + `merges.txt`) and SentencePiece (`*.model`, as BPE or
Unigram).

Each converter takes (vocabulary paths, tokenizer config, special tokens) and returns the backend plus the extra
special tokens the vocabulary defines; a family in `FIXED_POST_PROCESSORS` then gets the post-processor its
transformers class writes once the special tokens have ids.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

if TYPE_CHECKING:
    from jaxformers.tokenization.base import Tokenizer

# Legacy vocabulary files, per converter family, in the order they are looked for.
LEGACY_FILES = {
    "wordpiece": ("vocab.txt",),
    "gpt2": ("vocab.json", "merges.txt"),
    "llama": ("tokenizer.model",),
    "t5": ("spiece.model",),
    "xlm_roberta": ("sentencepiece.bpe.model",),
    "deberta_v2": ("spm.model",),
    "mbart": ("sentencepiece.bpe.model",),  # mBART's and mBART-50's: only their class chooses these families
    "mbart50": ("sentencepiece.bpe.model",),
    "roberta": ("vocab.json", "merges.txt"),  # GPT-2's files: found first as "gpt2" unless the class says RoBERTa
}


# fairseq language codes that mBART (cc25) and mBART-50 append to the vocabulary, in id order.
MBART_LANGUAGE_CODES = (
    "ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN", "it_IT", "ja_XX", "kk_KZ",
    "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO", "ru_RU", "si_LK", "tr_TR", "vi_VN", "zh_CN",
)  # fmt: skip
MBART50_LANGUAGE_CODES = MBART_LANGUAGE_CODES + (
    "af_ZA", "az_AZ", "bn_IN", "fa_IR", "he_IL", "hr_HR", "id_ID", "ka_GE", "km_KH", "mk_MK", "ml_IN", "mn_MN", "mr_IN",
    "pl_PL", "ps_AF", "pt_XX", "sv_SE", "sw_KE", "ta_IN", "te_IN", "th_TH", "tl_XX", "uk_UA", "ur_PK", "xh_ZA", "gl_ES",
    "sl_SI",
)  # fmt: skip


def _flag(config: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean tokenizer option; absent or null means the class default, as in transformers' keyword defaults."""
    value = config.get(name)
    return default if value is None else bool(value)


def _convert_wordpiece(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """BERT vocab.txt, as transformers' BertTokenizer builds it."""
    unk = special["unk_token"]
    backend = tokenizers.Tokenizer(models.WordPiece(models.WordPiece.read_file(str(paths[0])), unk_token=str(unk)))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend, []


def _bert_post_processor(tokenizer: Tokenizer, config: Mapping[str, Any]) -> None:
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    cls_id = 2 if tokenizer.cls_token_id is None else tokenizer.cls_token_id
    sep_id = 3 if tokenizer.sep_token_id is None else tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )


def _convert_gpt2(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """GPT-2 vocab.json + merges.txt, as transformers' GPT2Tokenizer builds them: byte-level BPE, no special tokens
    added unless the config asks for BOS/EOS."""
    vocab, merges = models.BPE.read_file(str(paths[0]), str(paths[1]))
    backend = tokenizers.Tokenizer(
        models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    backend.decoder = decoders.ByteLevel()
    return backend, []


def _load_sentencepiece_proto(path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # sentencepiece's generated module also needs protobuf
        raise ImportError(
            f"Converting the SentencePiece model {path.name} needs the sentencepiece and protobuf packages: "
            "pip install sentencepiece protobuf"
        ) from e
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _sentencepiece_added_tokens(proto) -> list[AddedToken]:
    """Control pieces (special) and user-defined pieces (not special), in id order."""
    return [
        AddedToken(piece.piece, normalized=False, special=piece.type == 3)
        for piece in proto.pieces
        if piece.type in (3, 4)
    ]


def _merges_from_vocab(vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary, ranked by the merged piece's id (transformers' `generate_merges`)."""
    merges = []
    for piece, rank in vocab.items():
        splits = [(piece[:i], piece[i:], rank) for i in range(1, len(piece))]
        local = [split for split in splits if split[0] in vocab and split[1] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])))
    return [(left, right) for left, right, _ in merges]


def _convert_llama(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """Llama tokenizer.model, as transformers 5's LlamaTokenizer converts it: BPE with byte fallback over the
    SentencePiece pieces, Metaspace pre-tokenizer (▁ prepended to the first chunk only unless `legacy`), no normalizer;
    BOS/EOS as `add_bos_token` / `add_eos_token` say."""
    proto = _load_sentencepiece_proto(paths[0])
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=_merges_from_vocab(vocab), fuse_unk=True, byte_fallback=True, dropout=None)
    )
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    prepend_scheme = ("always" if config.get("legacy", False) else "first") if add_prefix_space else "never"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    return backend, _add_user_pieces(backend, proto)


def _add_user_pieces(backend: tokenizers.Tokenizer, proto) -> list[str]:
    """Register the SentencePiece user-defined pieces as (non-special) added tokens; returns the control and
    user-defined pieces in id order, which transformers' SentencePiece extractor makes the extra special tokens."""
    pieces = _sentencepiece_added_tokens(proto)
    backend.add_tokens([p for p in pieces if not p.special])
    return [p.content for p in pieces]


def _t5_backend(vocab: list[tuple[str, float]], charsmap: bytes | None):
    """transformers 5's T5Tokenizer over a vocabulary: Unigram with <unk> at id 2 whatever the model says, the
    SentencePiece precompiled normalizer (if any), whitespace split and Metaspace."""
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return backend


def _convert_t5(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """T5 spiece.model, as transformers 5's T5Tokenizer converts it: the pieces plus `extra_ids` sentinel tokens
    (<extra_id_0> has the highest id) under `_t5_backend`; `</s>` appended to every sequence."""
    proto = _load_sentencepiece_proto(paths[0])
    extra_ids = int(config.get("extra_ids", 100))
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    backend = _t5_backend(vocab, proto.normalizer_spec.precompiled_charsmap)
    extra = _add_user_pieces(backend, proto)
    return backend, extra + [f"<extra_id_{i}>" for i in range(extra_ids)]


def _t5_post_processor(tokenizer: Tokenizer, config: Mapping[str, Any]) -> None:
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, tokenizer.eos_token_id)]
    )


def _roberta_backend(vocab: dict[str, int], merges: list[tuple[str, str]], config: Mapping[str, Any]):
    """transformers 5's RobertaTokenizer over a vocabulary: GPT-2's byte-level BPE, the config's `add_prefix_space`
    (default False), no normalizer; `_roberta_post_processor` adds `<s> A </s></s> B </s>`."""
    backend = tokenizers.Tokenizer(
        models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=_flag(config, "add_prefix_space", False))
    backend.decoder = decoders.ByteLevel()
    return backend


def _convert_roberta(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """RoBERTa vocab.json + merges.txt."""
    vocab, merges = models.BPE.read_file(str(paths[0]), str(paths[1]))
    return _roberta_backend(vocab, merges, config), []


def _roberta_post_processor(tokenizer: Tokenizer, config: Mapping[str, Any]) -> None:
    # RobertaProcessing, not a template: it also trims the offsets of byte-level tokens to exclude the spaces they
    # carry (trim_offsets), which a TemplateProcessing cannot do.
    tokenizer.backend_tokenizer.post_processor = processors.RobertaProcessing(
        (str(tokenizer.sep_token), tokenizer.sep_token_id),
        (str(tokenizer.cls_token), tokenizer.cls_token_id),
        trim_offsets=_flag(config, "trim_offsets", True),
        add_prefix_space=_flag(config, "add_prefix_space", False),
    )


def _metaspace(add_prefix_space: bool, otherwise: str) -> tuple[pre_tokenizers.Metaspace, decoders.Metaspace]:
    """The Metaspace pre-tokenizer and decoder pair: "▁" for spaces, prepended always or as `otherwise` says."""
    scheme = "always" if add_prefix_space else otherwise
    return (
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme),
        decoders.Metaspace(replacement="▁", prepend_scheme=scheme),
    )


def _xlm_roberta_backend(vocab: list[tuple[str, float]], charsmap: bytes | None, config: Mapping[str, Any]):
    """transformers 5's XLMRobertaTokenizer over a vocabulary in its own id order: Unigram with <unk> at id 3, the
    SentencePiece model's precompiled normalizer (if any), whitespace split then Metaspace (prefix "▁" unless
    `add_prefix_space` is false)."""
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    metaspace, decoder = _metaspace(_flag(config, "add_prefix_space", True), otherwise="never")
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
    backend.decoder = decoder
    return backend


def _convert_xlm_roberta(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """XLM-RoBERTa sentencepiece.bpe.model, with transformers' XLMRobertaConverter vocabulary: fairseq ids, so <s>
    <pad> </s> <unk> take ids 0-3, the pieces after the model's own <unk> <s> </s> follow shifted by one, and
    <mask> comes last."""
    proto = _load_sentencepiece_proto(paths[0])
    first = [special[name] for name in ("bos_token", "pad_token", "eos_token", "unk_token")]
    vocab = [(str(token), 0.0) for token in first]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]]
    vocab.append((str(special["mask_token"]), 0.0))
    backend = _xlm_roberta_backend(vocab, proto.normalizer_spec.precompiled_charsmap, config)
    return backend, _add_user_pieces(backend, proto)


def _xlm_roberta_post_processor(tokenizer: Tokenizer, config: Mapping[str, Any]) -> None:
    bos, eos = str(tokenizer.bos_token), str(tokenizer.eos_token)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=[bos, "$A", eos],
        pair=[bos, "$A", eos, eos, "$B", eos],
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )


def _deberta_v2_backend(
    vocab: list[tuple[str, float]], unk_id: int, config: Mapping[str, Any], special: Mapping[str, str | None]
):
    """transformers 5's DebertaV2Tokenizer over a vocabulary: Unigram; optional lower-casing, runs of spaces and any
    tab or newline to one space, NFC, right strip (never the SentencePiece model's own normalizer); optional
    punctuation split (`split_by_punct`), then Metaspace. `unk_id` is used only when the vocabulary has no
    (unk_token, 0.0) entry: transformers looks the unknown piece up that way first."""
    unk = (str(special["unk_token"]), 0.0)
    unk_id = vocab.index(unk) if unk in vocab else unk_id
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps = [normalizers.Lowercase()] if _flag(config, "do_lower_case", False) else []
    steps += [
        normalizers.Replace(tokenizers.Regex(r"\s{2,}|[\n\r\t]"), " "),
        normalizers.NFC(),
        normalizers.Strip(left=False, right=True),
    ]
    backend.normalizer = normalizers.Sequence(steps)
    metaspace, decoder = _metaspace(_flag(config, "add_prefix_space", True), otherwise="first")
    punctuation = [pre_tokenizers.Punctuation(behavior="isolated")] if _flag(config, "split_by_punct", False) else []
    backend.pre_tokenizer = pre_tokenizers.Sequence([*punctuation, metaspace])
    backend.decoder = decoder
    return backend


def _convert_deberta_v2(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """DeBERTa-v2/v3 spm.model: its pieces in their own order (whatever the model type, transformers reads them as
    Unigram log-probabilities)."""
    proto = _load_sentencepiece_proto(paths[0])
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = _deberta_v2_backend(vocab, proto.trainer_spec.unk_id, config, special)
    return backend, _add_user_pieces(backend, proto)


def _deberta_v2_post_processor(tokenizer: Tokenizer, config: Mapping[str, Any]) -> None:
    cls, sep = str(tokenizer.cls_token), str(tokenizer.sep_token)
    cls_id = 0 if tokenizer.cls_token_id is None else tokenizer.cls_token_id
    sep_id = 0 if tokenizer.sep_token_id is None else tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )


def _fairseq_language_vocab(
    pieces: list[tuple[str, float]], special: Mapping[str, str | None], first: str, codes: tuple[str, ...]
) -> list[tuple[str, float]]:
    """mBART's fairseq vocabulary: `first` (<s>), <pad>, </s>, <unk> take ids 0-3, the SentencePiece pieces after the
    model's own <unk> <s> </s> follow shifted by one, then the language codes and <mask>."""
    names = (first, "pad_token", "eos_token", "unk_token")
    return [
        *[(str(special[name]), 0.0) for name in names],
        *pieces[3:],
        *[(code, 0.0) for code in codes],
        (str(special["mask_token"]), 0.0),
    ]


def _mbart_backend(vocab: list[tuple[str, float]]):
    """transformers 5's MBartTokenizer over a vocabulary: Unigram with <unk> at id 3, no normalizer at all (not even
    the SentencePiece model's), whitespace split and Metaspace."""
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return backend


def _convert_mbart(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """mBART (cc25) sentencepiece.bpe.model: fairseq ids and the 25 language codes (MBartConverter's vocabulary),
    read as Unigram log-probabilities whatever the model type, as transformers 5 does."""
    proto = _load_sentencepiece_proto(paths[0])
    pieces = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = _mbart_backend(_fairseq_language_vocab(pieces, special, "bos_token", MBART_LANGUAGE_CODES))
    return backend, _add_user_pieces(backend, proto)


def _mbart50_backend(vocab: list[tuple[str, float]], charsmap: bytes | None):
    """transformers 5's MBart50Tokenizer over a vocabulary: Unigram with <unk> at id 3; the SentencePiece
    precompiled normalizer (if any) then runs of spaces to one; Metaspace alone (no whitespace split)."""
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    steps = [normalizers.Precompiled(charsmap)] if charsmap else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return backend


def _convert_mbart50(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """mBART-50 sentencepiece.bpe.model: fairseq ids and the 52 language codes (MBart50Converter's vocabulary)."""
    proto = _load_sentencepiece_proto(paths[0])
    pieces = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab = _fairseq_language_vocab(pieces, special, "cls_token", MBART50_LANGUAGE_CODES)
    backend = _mbart50_backend(vocab, proto.normalizer_spec.precompiled_charsmap)
    return backend, _add_user_pieces(backend, proto)


# ---------------------------------------------------------------------- tokenizer.json under a class that rebuilds it


def _json_bpe(model: Mapping[str, Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = model["vocab"]
    if isinstance(vocab, list):
        vocab = {token[0] if isinstance(token, list) else token: i for i, token in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return vocab, merges


def _json_unigram(model: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [tuple(entry) for entry in model["vocab"]]


def _json_charsmap(normalizer: Mapping[str, Any] | None) -> bytes | None:
    """The SentencePiece precompiled charsmap of a tokenizer.json normalizer (alone or in a Sequence), if any."""
    if not normalizer:
        return None
    steps = normalizer["normalizers"] if normalizer.get("type") == "Sequence" else [normalizer]
    for step in steps:
        if step.get("type") == "Precompiled" and step.get("precompiled_charsmap"):
            return base64.b64decode(step["precompiled_charsmap"])
    return None


def _rebuild_roberta(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    return _roberta_backend(*_json_bpe(data["model"]), config)


def _rebuild_t5(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    return _t5_backend(_json_unigram(data["model"]), _json_charsmap(data.get("normalizer")))


def _rebuild_xlm_roberta(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    return _xlm_roberta_backend(_json_unigram(data["model"]), _json_charsmap(data.get("normalizer")), config)


def _rebuild_deberta_v2(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    unk_id = config.get("unk_id")
    return _deberta_v2_backend(_json_unigram(data["model"]), 1 if unk_id is None else int(unk_id), config, special)


def _rebuild_mbart(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    return _mbart_backend(_json_unigram(data["model"]))


def _rebuild_mbart50(data: Mapping[str, Any], config: Mapping[str, Any], special: Mapping[str, str | None]):
    vocab = _json_unigram(data["model"])
    if not any(token in MBART50_LANGUAGE_CODES for token, _ in vocab):  # a SentencePiece-ordered vocabulary
        vocab = _fairseq_language_vocab(vocab, special, "cls_token", MBART50_LANGUAGE_CODES)
    return _mbart50_backend(vocab, _json_charsmap(data.get("normalizer")))


def rebuild_from_json(
    family: str,
    backend: tokenizers.Tokenizer,
    data: Mapping[str, Any],
    config: Mapping[str, Any],
    special: Mapping[str, str | None],
    source: str = "tokenizer.json",
) -> None:
    """Give a tokenizer.json's backend the model, normalizer, pre-tokenizer and decoder that the family's
    transformers class builds from that file's vocabulary and the config, in place.

    transformers 5 does not run a tokenizer.json as it is under these classes: it takes the vocabulary (and merges)
    out and rebuilds the rest from the class and tokenizer_config.json, so `add_prefix_space`, `do_lower_case`,
    `split_by_punct`, ... given there (or to from_pretrained) win over the file, and files written by older
    converters (DeBERTa-v2's precompiled normalizer) encode the way transformers 5 encodes. The backend keeps its
    added tokens, padding and truncation; the family's fixed post-processor is applied after loading.
    """
    rebuild, model_type = REBUILT_FROM_JSON[family]
    found = data.get("model", {}).get("type")
    if found is not None and found != model_type:  # files from older tokenizers versions may not name the type
        raise ValueError(
            f"{source} holds a {found} model but its tokenizer class ({_FAMILY_NAMES[family]}) builds a {model_type} "
            f'model from the vocabulary. Set "tokenizer_class": "PreTrainedTokenizerFast" in '
            "tokenizer_config.json to use the file as it is, or name the class the file was written for."
        )
    rebuilt = rebuild(data, config, special)
    backend.model = rebuilt.model
    backend.normalizer = rebuilt.normalizer
    backend.pre_tokenizer = rebuilt.pre_tokenizer
    backend.decoder = rebuilt.decoder


CONVERTERS = {
    "wordpiece": _convert_wordpiece,
    "gpt2": _convert_gpt2,
    "llama": _convert_llama,
    "t5": _convert_t5,
    "roberta": _convert_roberta,
    "xlm_roberta": _convert_xlm_roberta,
    "deberta_v2": _convert_deberta_v2,
    "mbart": _convert_mbart,
    "mbart50": _convert_mbart50,
}
# Families whose transformers class rebuilds a tokenizer.json from its vocabulary (see `rebuild_from_json`). The
# older families' classes do too, but their tokenizer.json files are still used as they are here.
REBUILT_FROM_JSON = {
    "t5": (_rebuild_t5, "Unigram"),
    "roberta": (_rebuild_roberta, "BPE"),
    "xlm_roberta": (_rebuild_xlm_roberta, "Unigram"),
    "deberta_v2": (_rebuild_deberta_v2, "Unigram"),
    "mbart": (_rebuild_mbart, "Unigram"),
    "mbart50": (_rebuild_mbart50, "Unigram"),
}
_FAMILY_NAMES = {
    "t5": "T5Tokenizer",
    "roberta": "RobertaTokenizer",
    "xlm_roberta": "XLMRobertaTokenizer",
    "deberta_v2": "DebertaV2Tokenizer",
    "mbart": "MBartTokenizer",
    "mbart50": "MBart50Tokenizer",
}
# Families whose transformers class writes its own post-processor after loading, whatever add_bos/eos say; each
# takes the loaded tokenizer (special tokens registered, so they have ids) and the tokenizer config.
FIXED_POST_PROCESSORS = {
    "wordpiece": _bert_post_processor,
    "t5": _t5_post_processor,
    "roberta": _roberta_post_processor,
    "xlm_roberta": _xlm_roberta_post_processor,
    "deberta_v2": _deberta_v2_post_processor,
}
