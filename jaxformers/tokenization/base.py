"""The tokenizer API: `Tokenizer` (one `tokenizers.Tokenizer` with transformers' calling conventions) and
`BatchEncoding` (what calling it returns).

Calling a tokenizer returns a dict of 2-D `np.int32` arrays by default (`return_tensors="np"`), ready for
`model(**batch)`; `return_tensors=None` gives transformers' python lists exactly, `"jax"` gives jax arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tokenizers
from tokenizers import AddedToken, processors

from jaxformers.tokenization.chat import render_chat_template

__all__ = ["BatchEncoding", "Tokenizer", "clean_up_tokenization"]

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
        from jaxformers.tokenization.auto import AutoTokenizer  # auto builds on this module

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
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        text_target: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        text_pair_target: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        max_target_length: int | None = None,
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
        """Tokenize one text, a batch of texts, or (batches of) text pairs; and/or the targets of a seq2seq model.

        Arguments mean what they mean in transformers. `padding`: False/"do_not_pad", True/"longest", "max_length";
        `truncation`: False/None/"do_not_truncate", True/"longest_first", "only_first", "only_second"; `max_length`
        alone turns on "longest_first" truncation, and defaults to `model_max_length` when truncating or padding to
        max length. `token_type_ids` are returned where `model_input_names` lists them unless
        `return_token_type_ids` says otherwise.

        `text_target` (and `text_pair_target`) are encoded as the decoder side, the way the tokenizer encodes
        targets (mBART: with `tgt_lang`; Marian: with the target vocabulary), with the same padding and truncation
        (`max_target_length`, if given, replaces `max_length`). With `text` too, their input ids come back as
        `labels` (padded with the pad id, as in transformers, not -100); alone, they come back as the encoding.

        Returns a `BatchEncoding` (a dict). With `return_tensors="np"` (the default) each value is a 2-D `np.int32`
        array (a single text gives shape [1, T]); rows of different lengths raise a ValueError, so pad them or ask
        for `return_tensors=None`, which gives transformers' python lists (flat lists for a single text).
        `"jax"` gives jax arrays.
        """
        if text is None and text_target is None:
            raise ValueError("Nothing to tokenize: pass text (the encoder input), text_target (the labels), or both.")
        if return_tensors not in TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {TENSOR_TYPES}, got {return_tensors!r}.")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}.")
        pad_strategy, trunc_strategy, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        options = {
            "add_special_tokens": add_special_tokens,
            "pad_strategy": pad_strategy,
            "trunc_strategy": trunc_strategy,
            "stride": stride,
            "is_split_into_words": is_split_into_words,
            "pad_to_multiple_of": pad_to_multiple_of,
            "padding_side": padding_side,
            "return_tensors": return_tensors,
            "return_token_type_ids": return_token_type_ids,
            "return_attention_mask": return_attention_mask,
            "return_overflowing_tokens": return_overflowing_tokens,
            "return_special_tokens_mask": return_special_tokens_mask,
            "return_offsets_mapping": return_offsets_mapping,
            "return_length": return_length,
        }
        encoded = None
        if text is not None:
            self._switch_to_input_mode()
            encoded = self._encode(text, text_pair, max_length=max_length, **options)
        if text_target is None:
            return encoded
        self._switch_to_target_mode()
        try:
            target_length = max_target_length if max_target_length is not None else max_length
            targets = self._encode(text_target, text_pair_target, max_length=target_length, **options)
        finally:
            self._switch_to_input_mode()  # as transformers: the tokenizer is left encoding inputs
        if encoded is None:
            return targets
        encoded["labels"] = targets["input_ids"]
        return encoded

    def _switch_to_input_mode(self) -> None:
        """Set the tokenizer up to encode encoder inputs (a no-op unless the tokenizer has a target side)."""

    def _switch_to_target_mode(self) -> None:
        """Set the tokenizer up to encode decoder targets (a no-op unless the tokenizer has a target side)."""

    def _encode(
        self,
        text: Any,
        text_pair: Any,
        *,
        add_special_tokens: bool,
        pad_strategy: str,
        trunc_strategy: str,
        max_length: int | None,
        stride: int,
        is_split_into_words: bool,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_tensors: str | None,
        return_token_type_ids: bool | None,
        return_attention_mask: bool | None,
        return_overflowing_tokens: bool,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
        return_length: bool,
    ) -> BatchEncoding:
        """`__call__` for one side (inputs or targets), with validated padding and truncation strategies."""
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}.")
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

        encodings = self._encode_rows(
            inputs,
            add_special_tokens=add_special_tokens,
            is_pretokenized=is_split_into_words,
            pad_strategy=pad_strategy,
            trunc_strategy=trunc_strategy,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_overflowing_tokens=return_overflowing_tokens,
        )

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        fields = {
            "input_ids": None,  # `_output_ids`, which also sees the row's input
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
        data: dict[str, Any] = {
            key: [self._output_ids(e, inputs[i]) for e, i in zip(rows, sample_of_row)]
            if key == "input_ids"
            else [fields[key](e) for e in rows]
            for key, want in wanted.items()
            if want
        }
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row

        if return_tensors is None:
            if not is_batched and not return_overflowing_tokens:
                data = {key: value[0] if value and isinstance(value[0], list) else value for key, value in data.items()}
            return BatchEncoding(data, rows)
        return BatchEncoding({key: _to_tensor(key, value, return_tensors) for key, value in data.items()}, rows)

    def _encode_rows(
        self,
        inputs: list,
        *,
        add_special_tokens: bool,
        is_pretokenized: bool,
        pad_strategy: str,
        trunc_strategy: str,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_overflowing_tokens: bool,
    ) -> list[tokenizers.Encoding]:
        """One padded, truncated `tokenizers.Encoding` per input (a text, a (text, pair) tuple or a word list)."""
        self._configure_backend(pad_strategy, trunc_strategy, max_length, stride, pad_to_multiple_of, padding_side)
        return self._tokenizer.encode_batch(
            inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized
        )

    def _output_ids(self, encoding: tokenizers.Encoding, source: Any) -> list[int]:
        """The model's ids of one encoded row, given the input it came from (a text, a (text, pair) tuple or a list
        of words): the backend's own ids unless a subclass maps them."""
        return encoding.ids

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
                pad_id=self._backend_pad_id(),
                pad_type_id=0,
                pad_token=self.pad_token,
                length=max_length if pad_strategy == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
            )

    def _backend_pad_id(self) -> int:
        """The pad token's id in the backend (the model's pad id, unless a subclass maps backend ids)."""
        backend_id = self._tokenizer.token_to_id(str(self.pad_token))
        return self.pad_token_id if backend_id is None else backend_id

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
        as it is, and records model_input_names and padding side explicitly; mBART tokenizers name their own class
        and languages instead, so that both libraries reload them with `src_lang` / `tgt_lang` switching).
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
            **self._saved_config(),
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

    def _saved_config(self) -> dict[str, Any]:
        """tokenizer_config.json entries a subclass adds (its class and settings) so that it reloads as itself."""
        return {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )


def _special_added_token(value: str | AddedToken) -> AddedToken:
    """A special token as transformers registers it: kept as given when already an AddedToken, else special and
    matched on the raw (unnormalized) text."""
    return value if isinstance(value, AddedToken) else AddedToken(str(value), special=True, normalized=False)


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
