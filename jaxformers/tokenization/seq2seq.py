"""Tokenizers of translation models whose special tokens depend on the languages: mBART and mBART-50.

Both put fairseq language codes (`en_XX`, `ro_RO`, ...) around every sequence, the source language's for inputs and
the target language's for `text_target` (labels), exactly as transformers 5's `MBartTokenizer` /
`MBart50Tokenizer`:

    mBART      inputs: X </s> src_lang      targets: X </s> tgt_lang
    mBART-50   inputs: src_lang X </s>      targets: tgt_lang X </s>

`src_lang` and `tgt_lang` come from tokenizer_config.json or from_pretrained keywords and can be set afterwards;
`lang_code_to_id` (or `convert_tokens_to_ids(code)`) gives the id a translation model must be forced to start its
output with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, processors

from jaxformers.tokenization.base import BatchEncoding, Tokenizer
from jaxformers.tokenization.convert import MBART50_LANGUAGE_CODES, MBART_LANGUAGE_CODES

__all__ = ["MBart50Tokenizer", "MBartTokenizer"]


class MBartTokenizer(Tokenizer):
    """mBART (cc25): `X </s> src_lang` for inputs, `X </s> tgt_lang` for targets; pairs are `A B </s> lang`."""

    LANGUAGE_CODES: tuple[str, ...] = MBART_LANGUAGE_CODES
    CONFIG_KEYS = ("src_lang", "tgt_lang")  # tokenizer_config.json entries the constructor takes

    def __init__(
        self,
        tokenizer_object: tokenizers.Tokenizer,
        *,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        **kwargs: Any,
    ):
        """Wrap a backend whose vocabulary holds `LANGUAGE_CODES`; keywords as for `Tokenizer`. The language codes
        become extra special tokens; `src_lang` defaults to "en_XX", `tgt_lang` to None (targets then use
        `src_lang`, as transformers does)."""
        codes = list(self.LANGUAGE_CODES)
        extra = list(kwargs.pop("extra_special_tokens", ()))  # str or AddedToken
        super().__init__(
            tokenizer_object, extra_special_tokens=self._order_extra_special_tokens(codes, extra), **kwargs
        )
        self.lang_code_to_id = {code: self.convert_tokens_to_ids(code) for code in codes}
        self.id_to_lang_code = {index: code for code, index in self.lang_code_to_id.items()}
        self.fairseq_offset = 1  # the model's ids are the SentencePiece ids shifted by one (<pad> inserted)
        self.prefix_tokens: list[int] = []
        self.suffix_tokens: list[int] = []
        self._tgt_lang = None
        self.tgt_lang = tgt_lang
        self._src_lang = "en_XX" if src_lang is None else str(src_lang)
        self.set_src_lang_special_tokens(self._src_lang)

    @staticmethod
    def _order_extra_special_tokens(codes: list[str], extra: list[str | AddedToken]) -> list[str | AddedToken]:
        """transformers' order: mBART lists the language codes first, then the other extra special tokens."""
        return [*codes, *(token for token in extra if str(token) not in codes)]

    # ------------------------------------------------------------------ languages

    @property
    def src_lang(self) -> str:
        """The source language code; setting it rewrites the input template."""
        return self._src_lang

    @src_lang.setter
    def src_lang(self, value: str) -> None:
        self._language_id(value, "src_lang")
        self._src_lang = str(value)
        self.set_src_lang_special_tokens(self._src_lang)

    @property
    def tgt_lang(self) -> str | None:
        """The target language code used for `text_target` (None: the source language)."""
        return self._tgt_lang

    @tgt_lang.setter
    def tgt_lang(self, value: str | None) -> None:
        if value is not None:
            self._language_id(value, "tgt_lang")
        self._tgt_lang = None if value is None else str(value)

    def _language_id(self, code: str, name: str) -> int:
        """The id of a language code, or a ValueError naming the codes this vocabulary knows (transformers would
        silently put <unk> in the template)."""
        index = self._tokenizer.token_to_id(str(code))
        if index is None or index == self.unk_token_id:
            raise ValueError(
                f"{name}={code!r} is not a language code of this vocabulary; use one of {sorted(self.lang_code_to_id)}."
            )
        return index

    def _set_template(self, prefix: list[int], suffix: list[int]) -> None:
        self.prefix_tokens, self.suffix_tokens = prefix, suffix
        prefix_names = [self._tokenizer.id_to_token(i) for i in prefix]
        suffix_names = [self._tokenizer.id_to_token(i) for i in suffix]
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=[*prefix_names, "$A", *suffix_names],
            pair=[*prefix_names, "$A", "$B", *suffix_names],
            special_tokens=list(zip(prefix_names + suffix_names, prefix + suffix)),
        )

    def set_src_lang_special_tokens(self, src_lang: str) -> None:
        """Input template: no prefix, suffix [eos, src_lang]."""
        self.cur_lang_code = self._language_id(src_lang, "src_lang")
        self._set_template([], [self.eos_token_id, self.cur_lang_code])

    def set_tgt_lang_special_tokens(self, lang: str) -> None:
        """Target template: no prefix, suffix [eos, tgt_lang]."""
        self.cur_lang_code = self._language_id(lang, "tgt_lang")
        self._set_template([], [self.eos_token_id, self.cur_lang_code])

    def _switch_to_input_mode(self) -> None:
        self.set_src_lang_special_tokens(self.src_lang)

    def _switch_to_target_mode(self) -> None:
        if self.tgt_lang is None:
            self.tgt_lang = self.src_lang  # as transformers, which remembers it
        self.set_tgt_lang_special_tokens(self.tgt_lang)

    def _build_translation_inputs(
        self, raw_inputs: str | Sequence[str], return_tensors: str | None, src_lang: str, tgt_lang: str, **kwargs: Any
    ) -> BatchEncoding:
        """Inputs of a translation pipeline: `raw_inputs` encoded in `src_lang` plus `forced_bos_token_id`, the id
        of `tgt_lang` that the generated text must start with."""
        if src_lang is None or tgt_lang is None:
            raise ValueError("Translation with an mBART tokenizer needs both src_lang and tgt_lang (language codes).")
        self.src_lang = src_lang
        inputs = self(raw_inputs, add_special_tokens=True, return_tensors=return_tensors, **kwargs)
        inputs["forced_bos_token_id"] = self._language_id(tgt_lang, "tgt_lang")
        return inputs

    def _saved_config(self) -> dict[str, Any]:
        # transformers rebuilds this class from the saved tokenizer.json's vocabulary, as `AutoTokenizer` does here
        return {"tokenizer_class": type(self).__name__, "src_lang": self.src_lang, "tgt_lang": self.tgt_lang}


class MBart50Tokenizer(MBartTokenizer):
    """mBART-50: `src_lang X </s>` for inputs, `tgt_lang X </s>` for targets; pairs are `lang A B </s>`."""

    LANGUAGE_CODES = MBART50_LANGUAGE_CODES

    @staticmethod
    def _order_extra_special_tokens(codes: list[str], extra: list[str | AddedToken]) -> list[str | AddedToken]:
        """transformers' order: mBART-50 keeps the other extra special tokens first and appends missing codes."""
        present = {str(token) for token in extra}
        return [*extra, *(code for code in codes if code not in present)]

    def set_src_lang_special_tokens(self, src_lang: str) -> None:
        """Input template: prefix [src_lang], suffix [eos]."""
        self.cur_lang_code_id = self._language_id(src_lang, "src_lang")
        self._set_template([self.cur_lang_code_id], [self.eos_token_id])

    def set_tgt_lang_special_tokens(self, tgt_lang: str) -> None:
        """Target template: prefix [tgt_lang], suffix [eos]."""
        self.cur_lang_code_id = self._language_id(tgt_lang, "tgt_lang")
        self._set_template([self.cur_lang_code_id], [self.eos_token_id])


def mask_token(token: str | AddedToken | None) -> str | AddedToken | None:
    """mBART's <mask> strips the space on its left, as in transformers (a plain string gets lstrip)."""
    if isinstance(token, str):
        return AddedToken(token, lstrip=True, rstrip=False, special=True, normalized=False)
    return token
