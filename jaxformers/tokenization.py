"""Tokenizers: `AutoTokenizer.from_pretrained` over the Rust `tokenizers` library, output identical to transformers.

A `Tokenizer` wraps one `tokenizers.Tokenizer`. It is built from `tokenizer.json` when the model ships one, otherwise
from the legacy vocabulary files, converted the way transformers 5 converts them: `vocab.txt` (BERT WordPiece),
`vocab.json` + `merges.txt` (GPT-2 byte-level BPE), `tokenizer.model` (Llama SentencePiece BPE with byte fallback) and
`spiece.model` (T5 SentencePiece Unigram), or from a GGUF file (`gguf_file=`). `tokenizer_config.json`,
`special_tokens_map.json` and `chat_template.jinja` supply the special tokens, lengths, padding side and chat template.

Calling the tokenizer returns a dict of 2-D `np.int32` arrays by default (`return_tensors="np"`), ready for
`model(**batch)`; `return_tensors=None` gives transformers' python lists exactly, `"jax"` gives jax arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

from jaxformers.hub import HubOptions, is_local, resolve_file

__all__ = ["AutoTokenizer", "BatchEncoding", "Tokenizer", "render_chat_template"]

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
LARGE_INTEGER = int(1e20)  # above this, model_max_length counts as unset

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
TENSOR_TYPES = (None, "np", "jax")

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# Legacy vocabulary files, per converter family, in the order they are looked for.
_LEGACY_FILES = {
    "wordpiece": ("vocab.txt",),
    "gpt2": ("vocab.json", "merges.txt"),
    "llama": ("tokenizer.model",),
    "t5": ("spiece.model",),
}

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
_WITH_TYPE_IDS = ("input_ids", "token_type_ids", "attention_mask")

# What transformers 5's tokenizer classes contribute beyond the files: converter family for legacy vocabularies,
# default special tokens, model_input_names and padding side. Any other class behaves like `TokenizersBackend`.
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
    "RobertaTokenizer": {"tokens": _ROBERTA_TOKENS},
    "XLMRobertaTokenizer": {"tokens": _ROBERTA_TOKENS},
    "Qwen2Tokenizer": {
        "tokens": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    },
    "GemmaTokenizer": {
        "tokens": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "padding_side": "left",
    },
}
_FAMILY_CLASSES = {
    "wordpiece": "BertTokenizer",
    "gpt2": "GPT2Tokenizer",
    "llama": "LlamaTokenizer",
    "t5": "T5Tokenizer",
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
    "xlm-roberta": "XLMRobertaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gemma": "GemmaTokenizer",
}


class BatchEncoding(dict):
    """The output of `Tokenizer.__call__`: a dict of model inputs plus the `tokenizers.Encoding` of each row."""

    def __init__(self, data: Mapping[str, Any], encodings: list[tokenizers.Encoding] | None = None):
        super().__init__(data)
        self.encodings = encodings

    def tokens(self, batch_index: int = 0) -> list[str]:
        """Token strings of row `batch_index`."""
        return self.encodings[batch_index].tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the input word each token of row `batch_index` comes from (None for special tokens)."""
        return self.encodings[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 or 1 for tokens of the first or second text of row `batch_index`, None for special tokens."""
        return self.encodings[batch_index].sequence_ids


# A pytree like the dict it is (keys sorted as for dicts), so a batch goes straight into `jax.jit` functions; the
# per-row `encodings` are host-side metadata and do not cross the jit boundary.
jax.tree_util.register_pytree_with_keys(
    BatchEncoding,
    lambda b: ([(jax.tree_util.DictKey(k), b[k]) for k in sorted(b)], tuple(sorted(b))),
    lambda keys, values: BatchEncoding(dict(zip(keys, values))),
)


def _special_token_property(name: str) -> property:
    def get(self: Tokenizer) -> str | None:
        return self._special_tokens.get(name)

    def set_(self: Tokenizer, value: str | AddedToken | None) -> None:
        self._special_tokens[name] = None if value is None else str(value)

    return property(get, set_, doc=f"The {name.replace('_', ' ')} string, or None.")


def _special_token_id_property(name: str) -> property:
    def get(self: Tokenizer) -> int | None:
        token = self._special_tokens.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def set_(self: Tokenizer, value: int | None) -> None:
        self._special_tokens[name] = None if value is None else self.convert_ids_to_tokens(int(value))

    return property(get, set_, doc=f"The id of the {name.replace('_', ' ')}, or None.")


class Tokenizer:
    """A text tokenizer over a `tokenizers.Tokenizer`, with transformers' calling conventions.

    Build one with `AutoTokenizer.from_pretrained`, or directly from a `tokenizers.Tokenizer` and its settings.
    """

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    sep_token = _special_token_property("sep_token")
    pad_token = _special_token_property("pad_token")
    cls_token = _special_token_property("cls_token")
    mask_token = _special_token_property("mask_token")
    bos_token_id = _special_token_id_property("bos_token")
    eos_token_id = _special_token_id_property("eos_token")
    unk_token_id = _special_token_id_property("unk_token")
    sep_token_id = _special_token_id_property("sep_token")
    pad_token_id = _special_token_id_property("pad_token")
    cls_token_id = _special_token_id_property("cls_token")
    mask_token_id = _special_token_id_property("mask_token")

    def __init__(
        self,
        tokenizer_object: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str | AddedToken | None] | None = None,
        extra_special_tokens: Sequence[str | AddedToken] = (),
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        model_input_names: Sequence[str] = ("input_ids", "attention_mask"),
        clean_up_tokenization_spaces: bool = False,
        chat_template: str | dict[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        name_or_path: str = "",
    ):
        """Wrap `tokenizer_object`, registering the special tokens (str or `AddedToken`) as special added tokens.

        As in transformers, giving `add_bos_token` or `add_eos_token` (or a backend without post-processor)
        rewrites the post-processor to add exactly those tokens; leaving both None keeps the backend's own.
        """
        for side, value in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if value not in ("left", "right"):
                raise ValueError(f"{side} must be 'left' or 'right', got {value!r}.")
        unknown = set(special_tokens or {}) - set(SPECIAL_TOKEN_NAMES)
        if unknown:
            raise ValueError(f"Unknown special token names {sorted(unknown)}; allowed: {list(SPECIAL_TOKEN_NAMES)}.")
        self._tokenizer = tokenizer_object
        self._special_tokens = {name: None for name in SPECIAL_TOKEN_NAMES}
        for name, value in (special_tokens or {}).items():
            self._special_tokens[name] = None if value is None else str(value)
        self.extra_special_tokens = [str(t) for t in extra_special_tokens]
        # transformers marks every special token as a special added token, adding those the vocabulary lacks
        existing = {token.content: token for token in self.added_tokens_decoder.values()}
        given = {str(t): t for t in [*(special_tokens or {}).values(), *extra_special_tokens] if t is not None}
        tokens = [existing.get(text) or _special_added_token(token) for text, token in given.items()]
        self._tokenizer.add_tokens(tokens)  # keeps each token's own `special` flag
        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_input_names = list(model_input_names)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.chat_template = chat_template
        self._add_bos_token = bool(add_bos_token)
        self._add_eos_token = bool(add_eos_token)
        self.name_or_path = str(name_or_path)
        if add_bos_token is not None or add_eos_token is not None or tokenizer_object.post_processor is None:
            self.update_post_processor()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> Tokenizer:
        """Same as `AutoTokenizer.from_pretrained`."""
        return AutoTokenizer.from_pretrained(name_or_path, **kwargs)

    # ------------------------------------------------------------------ vocabulary

    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Id -> `AddedToken` for the tokens added on top of the model's vocabulary (special tokens among them)."""
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, e.g. {"eos_token": "</s>"}."""
        return {name: value for name, value in self._special_tokens.items() if value is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens then extra special tokens, without repeats."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of `all_special_tokens`."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """Id of a token (or ids of a list of tokens); unknown tokens map to `unk_token_id`."""
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None and tokens != self.unk_token else index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Token of an id (or tokens of a list of ids), optionally leaving out special tokens."""
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def add_tokens(
        self, new_tokens: str | AddedToken | Sequence[str | AddedToken], special_tokens: bool = False
    ) -> int:
        """Add tokens to the vocabulary (never split, matched before the model runs); returns how many were new."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(list(new_tokens))
        return self._tokenizer.add_tokens(list(new_tokens))

    def add_special_tokens(self, special_tokens_dict: Mapping[str, str | Sequence[str]]) -> int:
        """Set named special tokens (and `extra_special_tokens`), adding the ones the vocabulary lacks."""
        added = 0
        for key, value in special_tokens_dict.items():
            if key in ("extra_special_tokens", "additional_special_tokens"):
                self.extra_special_tokens = [str(token) for token in value]
                added += self.add_tokens([_special_added_token(token) for token in value], special_tokens=True)
            elif key in SPECIAL_TOKEN_NAMES:
                self._special_tokens[key] = str(value)
                added += self.add_tokens(_special_added_token(value), special_tokens=True)
            else:
                raise ValueError(f"Unknown special token name {key!r}; allowed: {list(SPECIAL_TOKEN_NAMES)}.")
        return added

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens encoding one text (or a pair) adds."""
        return self._tokenizer.num_special_tokens_to_add(pair)

    # ------------------------------------------------------------------ BOS / EOS post-processing

    @property
    def add_bos_token(self) -> bool:
        """Whether the tokenizer was configured to prepend BOS (setting it rewrites the post-processor)."""
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        """Whether the tokenizer was configured to append EOS (setting it rewrites the post-processor)."""
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Rebuild the post-processor from `add_bos_token` / `add_eos_token`, as transformers does."""
        bos, eos = self.bos_token, self.eos_token
        add_bos = self._add_bos_token and bos is not None
        add_eos = self._add_eos_token and eos is not None
        single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
        pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
        special = ([(bos, self.bos_token_id)] if add_bos else []) + ([(eos, self.eos_token_id)] if add_eos else [])
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special
        )

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "np",
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
    ) -> BatchEncoding:
        """Tokenize one text, a batch of texts, or (batches of) text pairs.

        Arguments mean what they mean in transformers. `padding`: False/"do_not_pad", True/"longest", "max_length";
        `truncation`: False/None/"do_not_truncate", True/"longest_first", "only_first", "only_second"; `max_length`
        alone turns on "longest_first" truncation, and defaults to `model_max_length` when truncating or padding to
        max length. `token_type_ids` are returned where `model_input_names` lists them unless
        `return_token_type_ids` says otherwise.

        Returns a `BatchEncoding` (a dict). With `return_tensors="np"` (the default) each value is a 2-D `np.int32`
        array (a single text gives shape [1, T]); rows of different lengths raise a ValueError, so pad them or ask
        for `return_tensors=None`, which gives transformers' python lists (flat lists for a single text).
        `"jax"` gives jax arrays.
        """
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}.")
        if return_tensors not in TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {TENSOR_TYPES}, got {return_tensors!r}.")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}.")
        pad_strategy, trunc_strategy, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)

        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("When text is a batch, text_pair must be a batch (list) of the same length.")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"text has {len(text)} entries but text_pair has {len(text_pair)}.")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            inputs = [(text, text_pair)] if text_pair else [text]

        self._configure_backend(pad_strategy, trunc_strategy, max_length, stride, pad_to_multiple_of, padding_side)
        encodings = self._tokenizer.encode_batch(
            inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
        )

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        fields = {
            "input_ids": lambda e: e.ids,
            "token_type_ids": lambda e: e.type_ids,
            "attention_mask": lambda e: e.attention_mask,
            "special_tokens_mask": lambda e: e.special_tokens_mask,
            "offset_mapping": lambda e: e.offsets,
            "length": lambda e: len(e.ids),
        }
        wanted = {
            "input_ids": True,
            "token_type_ids": return_token_type_ids,
            "attention_mask": return_attention_mask,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
            "length": return_length,
        }
        rows, sample_of_row = [], []
        for index, encoding in enumerate(encodings):
            group = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows += group
            sample_of_row += [index] * len(group)
        data: dict[str, Any] = {key: [fields[key](e) for e in rows] for key, want in wanted.items() if want}
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row

        if return_tensors is None:
            if not is_batched and not return_overflowing_tokens:
                data = {key: value[0] if value and isinstance(value[0], list) else value for key, value in data.items()}
            return BatchEncoding(data, rows)
        return BatchEncoding({key: _to_tensor(key, value, return_tensors) for key, value in data.items()}, rows)

    def _strategies(
        self, padding: Any, truncation: Any, max_length: int | None, pad_to_multiple_of: int | None
    ) -> tuple[str, str, int | None]:
        """transformers' `_get_padding_truncation_strategies`: validated strategy names and the effective max_length."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            pad_strategy = "longest"
        elif padding is False or padding is None:
            pad_strategy = "do_not_pad"
        elif isinstance(padding, str) and padding in PADDING_STRATEGIES:
            pad_strategy = padding
        else:
            raise ValueError(f"padding must be True, False or one of {PADDING_STRATEGIES}, got {padding!r}.")
        if truncation is True:
            trunc_strategy = "longest_first"
        elif truncation is False or truncation is None:
            trunc_strategy = "do_not_truncate"
        elif isinstance(truncation, str) and truncation in TRUNCATION_STRATEGIES:
            trunc_strategy = truncation
        else:
            raise ValueError(
                f"truncation must be True, False, None or one of {TRUNCATION_STRATEGIES}, got {truncation!r}."
            )
        if max_length is None:
            if pad_strategy == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    pad_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc_strategy != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    trunc_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if pad_strategy != "do_not_pad" and (self.pad_token is None or self.pad_token_id is None):
            raise ValueError(
                "Padding was requested but this tokenizer has no padding token. Set one first, usually "
                "`tokenizer.pad_token = tokenizer.eos_token`, or call without padding and return_tensors=None."
            )
        if (
            trunc_strategy != "do_not_truncate"
            and pad_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"Truncation and padding are both on but max_length ({max_length}) is not a multiple of "
                f"pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return pad_strategy, trunc_strategy, max_length

    def _configure_backend(
        self,
        pad_strategy: str,
        trunc_strategy: str,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
    ) -> None:
        if trunc_strategy == "do_not_truncate":
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(
                max_length, stride=stride, strategy=trunc_strategy, direction=self.truncation_side
            )
        if pad_strategy == "do_not_pad":
            self._tokenizer.no_padding()
        else:
            self._tokenizer.enable_padding(
                direction=padding_side or self.padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=0,
                pad_token=self.pad_token,
                length=max_length if pad_strategy == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
            )

    def encode(self, text: str, text_pair: str | None = None, *, add_special_tokens: bool = True, **kwargs) -> list:
        """Token ids of one text (or pair) as a python list; keyword arguments as in `__call__`."""
        kwargs["return_tensors"] = None
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, *, add_special_tokens: bool = False, **kwargs) -> list[str]:
        """Token strings of one text (or pair), without special tokens unless asked."""
        kwargs["return_tensors"] = None
        return self(text, pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Text of a sequence of ids (int, list, numpy or jax array); a batch (2-D) gives a list of texts."""
        token_ids = _to_python(token_ids)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and isinstance(token_ids[0], list):
            return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in token_ids]
        text = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        # transformers never cleans up after BPE models: the clean-up was written for WordPiece and corrupts BPE text.
        if clean_up_tokenization_spaces and type(self._tokenizer.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        """Texts of a batch of id sequences."""
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in _to_python(sequences)]

    # ------------------------------------------------------------------ chat templates

    def get_chat_template(self, chat_template: str | None = None) -> str:
        """The template to render: `chat_template` (a template or, for multi-template tokenizers, a name) or the
        tokenizer's own."""
        if isinstance(self.chat_template, dict):
            if chat_template is not None and chat_template in self.chat_template:
                return self.chat_template[chat_template]
            if chat_template is None:
                if "default" not in self.chat_template:
                    raise ValueError(
                        f"This tokenizer has several chat templates {sorted(self.chat_template)} and no default: "
                        "pass chat_template=<name>."
                    )
                return self.chat_template["default"]
            return chat_template
        if chat_template is not None:
            return chat_template
        if self.chat_template is None:
            raise ValueError(
                "This tokenizer has no chat template: set tokenizer.chat_template or pass chat_template=<jinja string>."
            )
        return self.chat_template

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = True,
        **template_kwargs: Any,
    ) -> str | list[str] | list[int] | BatchEncoding:
        """Render a conversation (or a batch of them) with the Jinja chat template, as transformers 5 does.

        `tokenize=False` returns the rendered text. `tokenize=True` (the default) encodes it without adding special
        tokens (the template writes them) and returns a `BatchEncoding` (python lists unless `return_tensors` is
        given), or only the input ids when `return_dict=False`. Extra keyword arguments reach the template, next
        to the special tokens (`bos_token`, `eos_token`, ...), `messages`, `tools`, `documents` and
        `add_generation_prompt`.
        """
        template = self.get_chat_template(chat_template)
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("Cannot apply a chat template to an empty conversation.")
        is_batched = isinstance(conversation, (list, tuple)) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot be used together.")
        rendered = [
            render_chat_template(
                template,
                chat,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **{**self.special_tokens_map, **template_kwargs},
            )
            for chat in conversations
        ]
        text = rendered if is_batched else rendered[0]
        if not tokenize:
            return text
        out = self(
            text,
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
        )
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the chat template(s).

        transformers' `AutoTokenizer.from_pretrained` loads the folder into a tokenizer that encodes and decodes
        identically (the config names the generic `PreTrainedTokenizerFast` class, so the tokenizer.json is used
        as it is, and records model_input_names and padding side explicitly).
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        written = [directory / TOKENIZER_FILE, directory / TOKENIZER_CONFIG_FILE, directory / SPECIAL_TOKENS_MAP_FILE]
        self._tokenizer.save(str(written[0]))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "model_input_names": self.model_input_names,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self.special_tokens_map,
        }
        if self.extra_special_tokens:
            config["extra_special_tokens"] = self.extra_special_tokens
        templates = self.chat_template if isinstance(self.chat_template, dict) else {"default": self.chat_template}
        for name, template in templates.items():
            if template is None:
                continue
            if name == "default":
                path = directory / CHAT_TEMPLATE_FILE
            else:
                if Path(name).name != name or name in ("", ".", ".."):
                    raise ValueError(f"Invalid chat template name {name!r}.")
                path = directory / CHAT_TEMPLATE_DIR / f"{name}.jinja"
                path.parent.mkdir(exist_ok=True)
            path.write_text(template, encoding="utf-8")
            written.append(path)
        written[1].write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        special_map = dict(self.special_tokens_map)
        if self.extra_special_tokens:
            special_map["extra_special_tokens"] = self.extra_special_tokens
        written[2].write_text(json.dumps(special_map, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")
        return tuple(str(path) for path in written)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )


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
        tokenizer_json = resolve_file(name_or_path, TOKENIZER_FILE, opts, required=False)
        if class_name == "LlamaTokenizer" and tokenizer_json is not None and '"ByteLevel"' in tokenizer_json.read_text(
            encoding="utf-8"
        ):
            class_name = None  # transformers too loads byte-level "LlamaTokenizer" repos (Llama 3) generically
        info = _CLASSES.get(class_name or "", {})
        special = _special_tokens_from_config(config, info.get("tokens", {}))
        extra_config = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = [_added_token_from_config(t, named=False) if isinstance(t, dict) else t for t in extra_config]

        if tokenizer_json is not None:
            # transformers ignores add_bos_token / add_eos_token in the config when tokenizer.json exists
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
            if backend.padding is not None:
                config.setdefault("padding_side", backend.padding["direction"])
                special["pad_token"] = special["pad_token"] or backend.padding["pad_token"]
            bos_eos = explicit_bos_eos
        else:
            family, paths = _find_legacy_files(name_or_path, class_name, opts)
            if "family" not in info:  # class unknown: the files decide, as the class they belong to
                info = _CLASSES[_FAMILY_CLASSES[family]]
                special = _special_tokens_from_config(config, info["tokens"])
            backend, extra_from_vocab = _CONVERTERS[family](paths, config, special)
            extra = extra or extra_from_vocab
            bos_eos = {key: config[key] for key in ("add_bos_token", "add_eos_token") if key in config}

        tokenizer = Tokenizer(
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
        )
        if tokenizer_json is None and info.get("family") in _FIXED_POST_PROCESSORS:
            _FIXED_POST_PROCESSORS[info["family"]](tokenizer)
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


def _special_added_token(value: str | AddedToken) -> AddedToken:
    return value if isinstance(value, AddedToken) else AddedToken(str(value), special=True, normalized=False)


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
    families = [family] if family else list(_LEGACY_FILES)
    for candidate in families:
        paths = [resolve_file(name_or_path, f, opts, required=False) for f in _LEGACY_FILES[candidate]]
        if all(p is not None for p in paths):
            return candidate, paths
    looked_for = [TOKENIZER_FILE] + [" + ".join(_LEGACY_FILES[f]) for f in families]
    raise FileNotFoundError(
        f"No tokenizer files in {name_or_path}: looked for {', '.join(looked_for)}"
        + (f" (tokenizer class {class_name})." if class_name else ".")
    )


# ---------------------------------------------------------------------- legacy converters (transformers 5 behaviour)


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


def _bert_post_processor(tokenizer: Tokenizer) -> None:
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
    """Register SentencePiece control/user pieces as added tokens; returns the control pieces (special tokens)."""
    pieces = _sentencepiece_added_tokens(proto)
    backend.add_tokens([p for p in pieces if not p.special])
    return [p.content for p in pieces]


def _convert_t5(paths: list[Path], config: Mapping[str, Any], special: Mapping[str, str | None]):
    """T5 spiece.model, as transformers 5's T5Tokenizer converts it: Unigram over the pieces plus `extra_ids`
    sentinel tokens (<extra_id_0> has the highest id), the model's precompiled normalizer, whitespace split and
    Metaspace; `</s>` appended to every sequence."""
    proto = _load_sentencepiece_proto(paths[0])
    extra_ids = int(config.get("extra_ids", 100))
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    backend.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    extra = _add_user_pieces(backend, proto)
    return backend, extra + [f"<extra_id_{i}>" for i in range(extra_ids)]


def _t5_post_processor(tokenizer: Tokenizer) -> None:
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, tokenizer.eos_token_id)]
    )


_CONVERTERS = {"wordpiece": _convert_wordpiece, "gpt2": _convert_gpt2, "llama": _convert_llama, "t5": _convert_t5}
# Families whose transformers class writes its own post-processor after loading, whatever add_bos/eos say.
_FIXED_POST_PROCESSORS = {"wordpiece": _bert_post_processor, "t5": _t5_post_processor}


def _from_gguf(path: Path, overrides: dict[str, Any], name_or_path: str) -> Tokenizer:
    """A tokenizer from the vocabulary, special tokens and chat template stored in a GGUF file."""
    from jaxformers.convert.gguf import tokenizer_from_gguf

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


# ---------------------------------------------------------------------- chat templates


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    **template_kwargs: Any,
) -> str:
    """Render one conversation exactly as transformers' `apply_chat_template(..., tokenize=False)` does."""
    if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
        raise TypeError("tools must be JSON schemas (dicts).")
    if documents is not None and not all(isinstance(doc, Mapping) for doc in documents):
        raise TypeError("documents must be dicts with 'title' and 'text' keys.")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"Chat messages must be dicts, got {message!r}.")
        message = _plain_data({key: value for key, value in message.items() if value is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    final_message = None
    if continue_final_message:
        if not chat or not isinstance(chat[-1].get("content"), str):
            raise ValueError("continue_final_message needs a final message with text content.")
        final_message = chat[-1]["content"]
        chat[-1]["content"] = final_message + _CONTINUE_TAG
    rendered = _compile_chat_template(template).render(
        messages=chat,
        tools=_plain_data(tools),
        documents=_plain_data(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain_data(template_kwargs),
    )
    if final_message is not None:
        if final_message.strip() not in rendered or _CONTINUE_TAG.strip() not in rendered:
            raise ValueError("continue_final_message is set but the chat template dropped part of the final message.")
        cut = rendered.rindex(_CONTINUE_TAG.strip())
        keeps_spacing = rendered[cut : cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG
        rendered = rendered[:cut] if keeps_spacing else rendered[:cut].rstrip()
    return rendered


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_TEMPLATE_CACHE: dict[str, Any] = {}


def _plain_data(value: Any) -> Any:
    """Copy into plain JSON-like types, so the sandboxed template sees no rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return _plain_data(value.item())
    for base in (str, bool, int, float):  # subclasses (enums, ...) back to the base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain_data(k): _plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_data(v) for v in value)
    return f"<{type(value).__name__}>"


def _compile_chat_template(template: str):
    """Compile with transformers' Jinja environment: immutable sandbox, trim_blocks, lstrip_blocks, loop controls,
    `{% generation %}` blocks, `raise_exception`, `strftime_now`, a non-escaping `tojson`."""
    if template in _TEMPLATE_CACHE:
        return _TEMPLATE_CACHE[template]
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(jinja2.ext.Extension):
        """Accept `{% generation %}...{% endgeneration %}` (assistant-mask markers) and render the body as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace()` that refuses underscore attributes, like transformers'."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace.check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"Chat templates cannot set namespace attribute {name!r}.")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    compiled = env.from_string(template)
    _TEMPLATE_CACHE[template] = compiled
    return compiled


# ---------------------------------------------------------------------- small helpers


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and English contractions."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def _to_python(ids: Any) -> Any:
    """numpy / jax arrays and scalars -> python ints and lists."""
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        return np.asarray(ids).tolist()
    if isinstance(ids, (list, tuple)):
        return [_to_python(i) for i in ids]
    return int(ids)


def _to_tensor(key: str, rows: list, tensor_type: str):
    """Stack python rows into an np.int32 (or jax) array, refusing ragged rows."""
    if rows and isinstance(rows[0], list):
        lengths = {len(row) for row in rows}
        if len(lengths) > 1:
            raise ValueError(
                f"The {len(rows)} sequences have different lengths ({min(lengths)} to {max(lengths)} tokens), so "
                f"{key} cannot be one array: pass padding=True to pad them (or padding='max_length'), or "
                "return_tensors=None to get python lists."
            )
    array = np.asarray(rows, dtype=np.int32)
    if array.size == 0 and key != "overflow_to_sample_mapping":
        array = array.reshape(len(rows), 0)
    if tensor_type == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    return array
