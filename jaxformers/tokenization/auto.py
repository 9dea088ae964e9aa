"""`AutoTokenizer.from_pretrained`: find a model's tokenizer files (local folder or hub repo), read its
configuration, and build a `Tokenizer` that encodes exactly as transformers 5's `AutoTokenizer` does.

`tokenizer.json` is used when the model ships one; otherwise the legacy vocabulary files are converted
(`jaxformers.tokenization.convert`), or a GGUF file's vocabulary is read (`gguf_file=`). `tokenizer_config.json`,
`special_tokens_map.json` and `chat_template.jinja` supply the special tokens, lengths, padding side and chat template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken

from jaxformers.hub import HubOptions, is_local, resolve_file
from jaxformers.tokenization import convert
from jaxformers.tokenization.base import (
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKEN_NAMES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    Tokenizer,
)
from jaxformers.tokenization.marian import MARIAN_FILES, TARGET_VOCAB_FILE, MarianTokenizer
from jaxformers.tokenization.seq2seq import MBart50Tokenizer, MBartTokenizer, mask_token

__all__ = ["AutoTokenizer"]


_BERT_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_DEBERTA_TOKENS = {
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_MBART50_TOKENS = {name: token for name, token in _ROBERTA_TOKENS.items() if name != "bos_token"}
_WITH_TYPE_IDS = ("input_ids", "token_type_ids", "attention_mask")

# What transformers 5's tokenizer classes contribute beyond the files: converter family for legacy vocabularies (and,
# for the families in `convert.REBUILT_FROM_JSON`, for tokenizer.json too), default special tokens, model_input_names
# and padding side. Any other class behaves like `TokenizersBackend`.
_CLASSES: dict[str, dict[str, Any]] = {
    "BertTokenizer": {"family": "wordpiece", "tokens": _BERT_TOKENS, "input_names": _WITH_TYPE_IDS},
    "ElectraTokenizer": {"family": "wordpiece", "tokens": _BERT_TOKENS, "input_names": _WITH_TYPE_IDS},
    "DistilBertTokenizer": {"family": "wordpiece", "tokens": _BERT_TOKENS},
    "GPT2Tokenizer": {
        "family": "gpt2",
        "tokens": dict.fromkeys(("unk_token", "bos_token", "eos_token"), "<|endoftext|>"),
    },
    "LlamaTokenizer": {
        "family": "llama",
        "tokens": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        "padding_side": "left",
    },
    "T5Tokenizer": {"family": "t5", "tokens": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}},
    "RobertaTokenizer": {"family": "roberta", "tokens": _ROBERTA_TOKENS},
    "BartTokenizer": {"family": "roberta", "tokens": _ROBERTA_TOKENS},  # transformers 5: an alias of RobertaTokenizer
    "XLMRobertaTokenizer": {"family": "xlm_roberta", "tokens": _ROBERTA_TOKENS},
    "DebertaV2Tokenizer": {
        "family": "deberta_v2",
        "tokens": _DEBERTA_TOKENS,
        "input_names": ("input_ids", "attention_mask", "token_type_ids"),  # transformers' order
    },
    "MBartTokenizer": {"family": "mbart", "tokens": _ROBERTA_TOKENS, "class": MBartTokenizer, "mask_lstrip": True},
    "MBart50Tokenizer": {
        "family": "mbart50",
        "tokens": _MBART50_TOKENS,
        "class": MBart50Tokenizer,
        "mask_lstrip": True,
    },
    "Qwen2Tokenizer": {
        "tokens": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    },
    "GemmaTokenizer": {
        "tokens": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "padding_side": "left",
    },
}
# The class a family's files stand for when no class is named; RoBERTa's files are GPT-2's, so it is never guessed.
_FAMILY_CLASSES = {
    "wordpiece": "BertTokenizer",
    "gpt2": "GPT2Tokenizer",
    "llama": "LlamaTokenizer",
    "t5": "T5Tokenizer",
    "xlm_roberta": "XLMRobertaTokenizer",
    "deberta_v2": "DebertaV2Tokenizer",
}
# config.json model_type -> tokenizer class, used when tokenizer_config.json names none.
_MODEL_TYPE_CLASSES = {
    "bert": "BertTokenizer",
    "distilbert": "BertTokenizer",
    "electra": "BertTokenizer",
    "gpt2": "GPT2Tokenizer",
    "llama": "LlamaTokenizer",
    "t5": "T5Tokenizer",
    "mt5": "T5Tokenizer",
    "roberta": "RobertaTokenizer",
    "bart": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
    "mbart": "MBartTokenizer",
    "marian": "MarianTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gemma": "GemmaTokenizer",
}


class AutoTokenizer:
    """Entry point: `AutoTokenizer.from_pretrained(path_or_repo_id)` returns a `Tokenizer`."""

    def __init__(self):
        raise TypeError("Use AutoTokenizer.from_pretrained(name_or_path).")

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load the tokenizer of a local model folder or hub repo (see `jaxformers.hub`).

        Hub keywords: revision, cache_dir, local_files_only, token. `gguf_file="x.gguf"` builds the tokenizer from a
        GGUF file in that folder or repo. Any other keyword overrides the matching tokenizer_config.json entry
        (pad_token, padding_side, model_max_length, add_bos_token, chat_template, do_lower_case, ...).
        """
        opts = HubOptions.pop_from(kwargs)
        for ignored in ("use_fast", "trust_remote_code"):
            kwargs.pop(ignored, None)
        gguf_file = kwargs.pop("gguf_file", None)
        if gguf_file is not None:
            return _from_gguf(resolve_file(name_or_path, gguf_file, opts), kwargs, str(name_or_path))

        config = _read_json(resolve_file(name_or_path, TOKENIZER_CONFIG_FILE, opts, required=False))
        if "added_tokens_decoder" not in config:
            special_map = _read_json(resolve_file(name_or_path, SPECIAL_TOKENS_MAP_FILE, opts, required=False))
            config.update({key: value for key, value in special_map.items() if key not in kwargs})
        template_path = resolve_file(name_or_path, CHAT_TEMPLATE_FILE, opts, required=False)
        templates = _read_extra_chat_templates(name_or_path)
        if template_path is not None:
            templates["default"] = template_path.read_text(encoding="utf-8")
        if templates:
            config["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
        explicit_bos_eos = {key: kwargs[key] for key in ("add_bos_token", "add_eos_token") if key in kwargs}
        config.update(kwargs)

        class_name = _tokenizer_class_name(name_or_path, config, opts)
        if class_name == "MarianTokenizer":  # a slow sentencepiece tokenizer in transformers: tokenizer.json unused
            return _marian_from_files(name_or_path, config, opts)
        tokenizer_json = resolve_file(name_or_path, TOKENIZER_FILE, opts, required=False)
        if (
            class_name == "LlamaTokenizer"
            and tokenizer_json is not None
            and '"ByteLevel"' in tokenizer_json.read_text(encoding="utf-8")
        ):
            class_name = None  # transformers too loads byte-level "LlamaTokenizer" repos (Llama 3) generically
        info = _CLASSES.get(class_name or "", {})
        special = _special_tokens_from_config(config, info.get("tokens", {}))
        if info.get("mask_lstrip"):
            special["mask_token"] = mask_token(special["mask_token"])
        extra_config = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = [_added_token_from_config(t, named=False) if isinstance(t, dict) else t for t in extra_config]

        if tokenizer_json is not None:
            # transformers ignores add_bos_token / add_eos_token in the config when tokenizer.json exists
            text = tokenizer_json.read_text(encoding="utf-8")
            backend = tokenizers.Tokenizer.from_str(text)
            # the class builds the backend itself from the file's vocabulary, and then its own post-processor
            class_built = info.get("family") in convert.REBUILT_FROM_JSON
            if class_built:
                data = json.loads(text)
                convert.rebuild_from_json(info["family"], backend, data, config, special, str(tokenizer_json))
            if info.get("family") == "t5" and not extra:  # T5Tokenizer's sentinels, unless the config lists its own
                extra = [f"<extra_id_{i}>" for i in range(int(config.get("extra_ids", 100)))]
            if backend.padding is not None:
                config.setdefault("padding_side", backend.padding["direction"])
                special["pad_token"] = special["pad_token"] or backend.padding["pad_token"]
            bos_eos = explicit_bos_eos
        else:
            family, paths = _find_legacy_files(name_or_path, class_name, opts)
            if "family" not in info:  # class unknown: the files decide, as the class they belong to
                info = _CLASSES[_FAMILY_CLASSES[family]]
                special = _special_tokens_from_config(config, info["tokens"])
            backend, extra_from_vocab = convert.CONVERTERS[family](paths, config, special)
            extra = extra or extra_from_vocab
            bos_eos = {key: config[key] for key in ("add_bos_token", "add_eos_token") if key in config}
            class_built = True

        tokenizer_class = info.get("class", Tokenizer)
        class_options = {key: config[key] for key in getattr(tokenizer_class, "CONFIG_KEYS", ()) if key in config}
        tokenizer = tokenizer_class(
            backend,
            special_tokens=special,
            extra_special_tokens=extra,
            model_max_length=config.get("model_max_length"),
            padding_side=config.get("padding_side", info.get("padding_side", "right")),
            truncation_side=config.get("truncation_side", "right"),
            model_input_names=config.get("model_input_names", info.get("input_names", ("input_ids", "attention_mask"))),
            clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False),
            chat_template=_chat_template_from_config(config.get("chat_template")),
            name_or_path=str(name_or_path),
            **bos_eos,
            **class_options,
        )
        if class_built and info.get("family") in convert.FIXED_POST_PROCESSORS:
            convert.FIXED_POST_PROCESSORS[info["family"]](tokenizer, config)
        tokenizer._tokenizer.no_padding()
        tokenizer._tokenizer.no_truncation()
        return tokenizer


# ---------------------------------------------------------------------- loading helpers


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_extra_chat_templates(name_or_path: str | os.PathLike) -> dict[str, str]:
    """Named templates saved under additional_chat_templates/ (local folders only)."""
    if not is_local(name_or_path):
        return {}
    folder = Path(name_or_path).expanduser() / CHAT_TEMPLATE_DIR
    if not folder.is_dir():
        return {}
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.jinja"))}


def _chat_template_from_config(value: Any) -> str | dict[str, str] | None:
    if isinstance(value, (list, tuple)):  # the legacy multi-template format: [{"name": ..., "template": ...}]
        return {entry["name"]: entry["template"] for entry in value}
    return value


def _added_token_from_config(value: Mapping[str, Any], named: bool) -> AddedToken:
    """A serialized AddedToken. As in transformers, one without a "special" field counts as special only when it is
    a named special token (an extra one stays an ordinary added token, which decode does not skip)."""
    fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
    token = AddedToken(value["content"], **fields)
    if named:
        token.special = True
    return token


def _special_tokens_from_config(config: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, Any]:
    """Named special tokens from the config (strings, or AddedTokens where the config serialized one), else the
    class defaults."""
    special = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config[name] if name in config else defaults.get(name)
        special[name] = _added_token_from_config(value, named=True) if isinstance(value, dict) else value
    return special


def _tokenizer_class_name(name_or_path: str | os.PathLike, config: Mapping[str, Any], opts: HubOptions) -> str | None:
    """tokenizer_config.json's class, else config.json's tokenizer_class or model_type; None when unknown."""
    name = config.get("tokenizer_class")
    if name is None:
        model_config = _read_json(resolve_file(name_or_path, "config.json", opts, required=False))
        name = model_config.get("tokenizer_class") or _MODEL_TYPE_CLASSES.get(model_config.get("model_type", ""))
    return name.removesuffix("Fast") if name else None


def _find_legacy_files(
    name_or_path: str | os.PathLike, class_name: str | None, opts: HubOptions
) -> tuple[str, list[Path]]:
    """The converter family and its vocabulary files, or FileNotFoundError naming everything looked for."""
    family = _CLASSES.get(class_name or "", {}).get("family")
    if class_name is not None and class_name in _CLASSES and family is None:
        raise ValueError(
            f"{name_or_path} has no {TOKENIZER_FILE} and jaxformers converts legacy vocabulary files only for "
            f"{sorted(n for n, i in _CLASSES.items() if 'family' in i)}, not {class_name}. Save the tokenizer once "
            "with transformers (tokenizer.save_pretrained) to get a tokenizer.json."
        )
    # An unknown class is guessed from the files; RoBERTa's are GPT-2's, so only its class can choose that family.
    families = [family] if family else list(_FAMILY_CLASSES)
    for candidate in families:
        paths = [resolve_file(name_or_path, f, opts, required=False) for f in convert.LEGACY_FILES[candidate]]
        if all(p is not None for p in paths):
            return candidate, paths
    looked_for = [TOKENIZER_FILE] + [" + ".join(convert.LEGACY_FILES[f]) for f in families]
    raise FileNotFoundError(
        f"No tokenizer files in {name_or_path}: looked for {', '.join(looked_for)}"
        + (f" (tokenizer class {class_name})." if class_name else ".")
    )


def _marian_from_files(name_or_path: str | os.PathLike, config: Mapping[str, Any], opts: HubOptions) -> Tokenizer:
    """A Marian folder: source.spm, target.spm, vocab.json (and target_vocab.json with `separate_vocabs`)."""
    separate = bool(config.get("separate_vocabs", False))
    names = [*MARIAN_FILES, *([TARGET_VOCAB_FILE] if separate else [])]
    paths = [resolve_file(name_or_path, name, opts, required=False) for name in names]
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing:
        raise FileNotFoundError(
            f"{name_or_path} names MarianTokenizer but lacks {', '.join(missing)}: a Marian tokenizer needs "
            f"{', '.join(MARIAN_FILES)} (and {TARGET_VOCAB_FILE} when separate_vocabs is true)."
        )

    def text(value: Any) -> Any:
        return value["content"] if isinstance(value, dict) else value

    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    added = {int(index): str(text(token)) for index, token in (config.get("added_tokens_decoder") or {}).items()}
    return MarianTokenizer(
        paths[0],
        paths[1],
        _read_json(paths[2]),
        _read_json(paths[3]) if separate else None,
        separate_vocabs=separate,
        source_lang=config.get("source_lang"),
        target_lang=config.get("target_lang"),
        unk_token=str(text(config.get("unk_token") or "<unk>")),
        eos_token=str(text(config.get("eos_token") or "</s>")),
        pad_token=str(text(config.get("pad_token") or "<pad>")),
        extra_special_tokens=[str(text(token)) for token in extra],
        added_tokens=added,
        model_max_length=config.get("model_max_length", 512),
        padding_side=config.get("padding_side", "right"),
        truncation_side=config.get("truncation_side", "right"),
        model_input_names=config.get("model_input_names", ("input_ids", "attention_mask")),
        clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False),
        chat_template=_chat_template_from_config(config.get("chat_template")),
        name_or_path=str(name_or_path),
    )


def _from_gguf(path: Path, overrides: dict[str, Any], name_or_path: str) -> Tokenizer:
    """A tokenizer from the vocabulary, special tokens and chat template stored in a GGUF file."""
    from jaxformers.tokenization.gguf import tokenizer_from_gguf  # needs the optional gguf package

    info = {**tokenizer_from_gguf(str(path)), **overrides}
    return Tokenizer(
        info["tokenizer"],
        special_tokens={name: info.get(name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        model_max_length=info.get("model_max_length"),
        padding_side=info.get("padding_side", "right"),
        chat_template=info.get("chat_template"),
        add_bos_token=bool(info.get("add_bos_token", False)),
        add_eos_token=bool(info.get("add_eos_token", False)),
        name_or_path=name_or_path,
    )
