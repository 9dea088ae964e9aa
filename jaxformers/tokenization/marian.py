"""Marian (opus-mt) tokenizers: `source.spm` + `target.spm` + `vocab.json`, ids identical to transformers 5's
`MarianTokenizer`, which is a slow tokenizer running the sentencepiece library.

What transformers does, and how it is rebuilt here over the Rust `tokenizers` library (the sentencepiece package
is needed only to read the .spm files once, through its protobuf module, as for the other SentencePiece models):

- Text is split on the special tokens (</s>, <unk>, <pad>, extra ones) first; each chunk in between loses a leading
  language code (`>>fra<<`: from a leading ">>" to the first "<<") and is segmented by the source SentencePiece
  model (the target one for `text_target`). Each side's backend here is a Unigram model over that .spm file's
  pieces with SentencePiece's own normalization (precompiled charsmap, runs of spaces to one, no leading or
  trailing space, "▁" prefix; control pieces such as <s> never match text). A leading code is marked by the
  normalizer with a noncharacter (U+FDD0; U+FDD1 replaces an unknown code), split off by the pre-tokenizer and
  matched whole by an extra vocabulary entry, so codes anywhere else are segmented as SentencePiece segments them.
- Pieces become ids through vocab.json (target_vocab.json for targets when `separate_vocabs`), not through the
  SentencePiece ids: the backend ids are mapped to the model's ids after encoding (`_output_ids`). A piece missing
  from the vocabulary is <unk>; for characters the SentencePiece model does not know, SentencePiece returns the
  text itself as the piece, so its normalized surface is looked up in the vocabulary too.
- `</s>` is appended (also after a pair, with no separator); special tokens keep their source-vocabulary ids on the
  target side, as in transformers. Truncation follows transformers' Python `truncate_sequences` (`_encode_rows`).
- Decoding maps ids back through the vocabulary and runs SentencePiece's piece decoding (reimplemented in
  `_decode_pieces`), with the source model when the vocabulary is shared and the target model otherwise.

Known differences, all on inputs a Marian model never sees in practice: language codes containing whitespace, .spm
models that turn off the "▁" dummy prefix or use byte fallback, and user-defined pieces are not handled as
sentencepiece handles them; `return_overflowing_tokens=True` gives the rows and `overflow_to_sample_mapping` of the
other tokenizers (transformers' Python tokenizers return an `overflowing_tokens` list instead); `tokenize` gives
vocabulary tokens (<unk> for unknown text) and `BatchEncoding.tokens()` the backend's pieces (a leading code with its
mark), where transformers shows sentencepiece's surface pieces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

from jaxformers.tokenization.base import TOKENIZER_CONFIG_FILE, Tokenizer, _to_python, clean_up_tokenization
from jaxformers.tokenization.convert import _load_sentencepiece_proto

__all__ = ["MARIAN_FILES", "MarianTokenizer"]

MARIAN_FILES = ("source.spm", "target.spm", "vocab.json")
TARGET_VOCAB_FILE = "target_vocab.json"
# noncharacters: the normalizer writes _MARK before a known leading language code and replaces an unknown one with
# _UNKNOWN_CODE; no other text turns into them, so the vocabulary entries made of them match nothing else
_MARK = "\ufdd0"
_UNKNOWN_CODE = "\ufdd1"
_SPACE = "▁"
# SentencePiece piece types (sentencepiece_model.proto)
_UNKNOWN, _CONTROL, _UNUSED = 2, 3, 5


@dataclass
class _Side:
    """One side (source or target): its backend, vocabulary and what decoding needs from its .spm model."""

    backend: tokenizers.Tokenizer
    vocab: dict[str, int]  # vocab.json: token -> model id
    to_model: list[int]  # backend id -> model id
    unk_backend_id: int
    charsmap: normalizers.Normalizer | None  # SentencePiece's character normalization, for unknown surfaces
    piece_types: dict[str, int]  # piece -> SentencePiece type
    pieces: list[str]
    unk_piece: str
    unk_surface: str
    strip_bos_space: bool  # add_dummy_prefix or remove_extra_whitespaces
    remove_extra_whitespaces: bool


def _is_language_code(token: str) -> bool:
    """A token transformers would strip off the start of a text whole: ">>" ... "<<" with no earlier "<<"."""
    return (
        len(token) >= 4
        and token.startswith(">>")
        and token.find("<<") == len(token) - 2
        and not any(c.isspace() for c in token)
    )


def _spm_backend(proto, codes: Sequence[str], added: Sequence[AddedToken]) -> tokenizers.Tokenizer:
    """SentencePiece's segmentation of one .spm model as a `tokenizers` Unigram, plus the leading-language-code
    handling of MarianTokenizer (`codes`: the codes with an id; any other leading code becomes <unk>)."""
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    prefix = _SPACE if spec.add_dummy_prefix else ""
    # SentencePiece never matches control (<s>, </s>) or unused pieces in text: hide them behind unmatchable names
    vocab = [
        (f"{_MARK}{i}" if piece.type in (_CONTROL, _UNUSED) else piece.piece, piece.score)
        for i, piece in enumerate(proto.pieces)
    ]
    # score 0 beats any SentencePiece segmentation of the marked code (pieces have negative log-probabilities)
    vocab += [(prefix + _MARK + code, 0.0) for code in codes] + [(prefix + _UNKNOWN_CODE, 0.0)]
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback))
    alternatives = "|".join(re.escape(code[2:-2]) for code in codes)
    steps = []
    if codes:  # ">>" of a known leading code -> MARK">>"; any other leading ">>...<<" -> UNKNOWN_CODE (<unk>)
        steps.append(normalizers.Replace(tokenizers.Regex(rf"\A>>(?=(?:{alternatives})<<)"), _MARK + ">>"))
    steps.append(normalizers.Replace(tokenizers.Regex(r"\A>>[\s\S]*?<<"), _UNKNOWN_CODE))
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(tokenizers.Regex(" {2,}"), " "),
            normalizers.Replace(tokenizers.Regex(r"\A | \z"), ""),
        ]
    backend.normalizer = normalizers.Sequence(steps)
    code_pattern = (f"{_MARK}>>(?:{alternatives})<<|" if codes else "") + _UNKNOWN_CODE
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(code_pattern), behavior="isolated"),
            pre_tokenizers.Metaspace(
                replacement=_SPACE,
                prepend_scheme="always" if spec.add_dummy_prefix else "never",
                split=trainer.split_by_whitespace,
            ),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True)
    backend.add_tokens(list(added))
    return backend


def _build_side(
    spm_path: Path,
    vocab: dict[str, int],
    added_ids: Mapping[str, int],
    added: Sequence[AddedToken],
    eos: str,
    unk_id: int,
) -> _Side:
    """The backend of one .spm model and the map from its ids to the model's ids through `vocab`."""
    proto = _load_sentencepiece_proto(spm_path)

    def model_id(token: str) -> int | None:  # transformers' convert_tokens_to_ids: added tokens, then the vocab
        return added_ids[token] if token in added_ids else vocab.get(token)

    codes = list(dict.fromkeys(token for token in [*vocab, *added_ids] if _is_language_code(token)))
    backend = _spm_backend(proto, codes, added)
    prefix = _SPACE if proto.normalizer_spec.add_dummy_prefix else ""
    to_model = []
    for index in range(backend.get_vocab_size(with_added_tokens=True)):
        token = proto.pieces[index].piece if index < len(proto.pieces) else backend.id_to_token(index)
        if token is not None and token.startswith((prefix + _MARK, prefix + _UNKNOWN_CODE)):
            token = token[len(prefix) + 1 :] or None  # the code, or None for an unknown one
        found = None if token is None else model_id(token)
        to_model.append(unk_id if found is None else found)
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", "$B", eos], special_tokens=[(eos, backend.token_to_id(eos))]
    )
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    return _Side(
        backend=backend,
        vocab=vocab,
        to_model=to_model,
        unk_backend_id=trainer.unk_id,
        charsmap=normalizers.Precompiled(spec.precompiled_charsmap) if spec.precompiled_charsmap else None,
        piece_types={piece.piece: piece.type for piece in proto.pieces},
        pieces=[piece.piece for piece in proto.pieces],
        unk_piece=proto.pieces[trainer.unk_id].piece,
        unk_surface=trainer.unk_surface,  # the proto's default is sentencepiece's " ⁇ "
        strip_bos_space=spec.add_dummy_prefix or spec.remove_extra_whitespaces,
        remove_extra_whitespaces=spec.remove_extra_whitespaces,
    )


def _decode_pieces(pieces: Sequence[str], side: _Side) -> str:
    """sentencepiece's `SentencePieceProcessor.decode_pieces` (0.2): control pieces vanish, <unk> is " ⁇ ", a piece
    the model does not have is kept as it is, "▁" is a space, and the leading one(s) of the text are dropped."""
    text = ""
    is_bos_ws, bos_ws_seen = True, False
    for piece in pieces:
        if bos_ws_seen or text:
            is_bos_ws = False
        kind = side.piece_types.get(piece)
        bos_ws_seen = False
        if kind == _CONTROL:
            decoded = ""
        elif kind is None or kind == _UNKNOWN:  # unknown to the model: PieceToId gives the <unk> id
            decoded = side.unk_surface if piece == side.unk_piece else piece
        else:
            if is_bos_ws and side.strip_bos_space and piece.startswith(_SPACE):
                piece = piece[len(_SPACE) :]
                bos_ws_seen = not side.remove_extra_whitespaces  # else every leading space goes
            decoded = piece.replace(_SPACE, " ")
        text += decoded
    return text


class MarianTokenizer(Tokenizer):
    """transformers' `MarianTokenizer` over two `tokenizers` backends (source and target side).

    Build it with `AutoTokenizer.from_pretrained` on a Marian folder. `tokenizer(text, text_target=...)` encodes the
    targets with the target model and vocabulary (`labels`); `decode` uses the target side when the vocabularies
    are separate (`use_source_tokenizer=True` to decode source ids). `supported_language_codes` lists the `>>xx<<`
    codes of a multilingual target side; put one at the start of the text.
    """

    def __init__(
        self,
        source_spm: str | os.PathLike,
        target_spm: str | os.PathLike,
        vocab: Mapping[str, int],
        target_vocab: Mapping[str, int] | None = None,
        *,
        separate_vocabs: bool = False,
        source_lang: str | None = None,
        target_lang: str | None = None,
        unk_token: str = "<unk>",
        eos_token: str = "</s>",
        pad_token: str = "<pad>",
        extra_special_tokens: Sequence[str] = (),
        added_tokens: Mapping[int, str] | None = None,
        model_max_length: int | None = 512,
        **kwargs: Any,
    ):
        """`vocab` (and, with `separate_vocabs`, `target_vocab`) map tokens to model ids; `added_tokens` (id ->
        token, from a saved tokenizer_config.json) fixes the ids of added tokens. Other keywords as for
        `Tokenizer`."""
        vocab = dict(vocab)
        if str(unk_token) not in vocab:
            raise ValueError(
                f"The unknown token {str(unk_token)!r} is not in vocab.json, which MarianTokenizer requires: pass "
                "the unk_token the vocabulary uses (tokenizer_config.json or from_pretrained(unk_token=...))."
            )
        if separate_vocabs and target_vocab is None:
            raise ValueError(f"separate_vocabs is set but there is no {TARGET_VOCAB_FILE}: add the file.")
        self.separate_vocabs = bool(separate_vocabs)
        self.source_lang, self.target_lang = source_lang, target_lang
        self.spm_files = [Path(source_spm), Path(target_spm)]
        self.encoder = vocab
        self.target_encoder = dict(target_vocab) if separate_vocabs else vocab
        self._decoder = {index: token for token, index in self.target_encoder.items()}  # ids -> tokens, for decoding
        self.supported_language_codes = [] if separate_vocabs else [t for t in vocab if _is_language_code(t)]
        specials = [str(t) for t in (eos_token, unk_token, pad_token, *extra_special_tokens) if t is not None]
        # transformers: added tokens keep the ids a saved config gives, then special tokens take their vocab.json id
        # or the next free one, in order (eos, unk, pad, extras)
        self._added_ids = {str(token): int(index) for index, token in (added_tokens or {}).items()}
        for token in dict.fromkeys(specials):
            if token not in self._added_ids:
                known = {**vocab, **self._added_ids}
                self._added_ids[token] = vocab[token] if token in vocab else len(known)
        self._added_tokens = {index: token for token, index in self._added_ids.items()}
        backend_added = [AddedToken(token, special=token in specials, normalized=False) for token in self._added_ids]
        unk_id = self._added_ids[str(unk_token)]
        sides = [(self.spm_files[0], vocab), (self.spm_files[1], self.target_encoder)]
        self._source, self._target = (
            _build_side(path, side_vocab, self._added_ids, backend_added, str(eos_token), unk_id)
            for path, side_vocab in sides
        )
        self._side = self._source
        super().__init__(
            self._source.backend,
            special_tokens={"eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token},
            extra_special_tokens=extra_special_tokens,
            model_max_length=model_max_length,
            **kwargs,
        )

    # ------------------------------------------------------------------ sides

    def _switch_to_input_mode(self) -> None:
        self._side = self._source
        self._tokenizer = self._source.backend

    def _switch_to_target_mode(self) -> None:
        self._side = self._target
        self._tokenizer = self._target.backend

    def _output_ids(self, encoding: tokenizers.Encoding, source: Any) -> list[int]:
        side = self._side
        ids = [side.to_model[i] for i in encoding.ids]
        for position, backend_id in enumerate(encoding.ids):
            if backend_id == side.unk_backend_id and side.charsmap is not None:
                text = _text_of(source, encoding.sequence_ids[position], encoding.word_ids[position])
                if text is None:
                    continue
                start, end = encoding.offsets[position]
                surface = side.charsmap.normalize_str(text[start:end])
                # sentencepiece returns unknown text as its own piece, which the vocabulary may know
                found = self._added_ids.get(surface, side.vocab.get(surface))
                if found is not None:
                    ids[position] = found
        return ids

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
        """transformers truncates Marian inputs in Python (`truncate_sequences`), which differs from `tokenizers` for
        pairs: "longest_first" takes the odd token off the second text, and a text too short for "only_first" /
        "only_second" is emptied (or, missing, ignored) rather than refused. So the texts are encoded whole,
        truncated that way, then given </s> and padded. Overflowing tokens keep the backend's truncation."""
        if trunc_strategy == "do_not_truncate" or not max_length or return_overflowing_tokens:
            return super()._encode_rows(
                inputs,
                add_special_tokens=add_special_tokens,
                is_pretokenized=is_pretokenized,
                pad_strategy=pad_strategy,
                trunc_strategy=trunc_strategy,
                max_length=max_length,
                stride=stride,
                pad_to_multiple_of=pad_to_multiple_of,
                padding_side=padding_side,
                return_overflowing_tokens=return_overflowing_tokens,
            )
        backend = self._tokenizer
        backend.no_truncation()
        backend.no_padding()
        rows = []
        for item in inputs:
            first, second = item if isinstance(item, tuple) else (item, None)
            first = backend.encode(first, is_pretokenized=is_pretokenized, add_special_tokens=False)
            second = (
                None
                if second is None
                else backend.encode(second, is_pretokenized=is_pretokenized, add_special_tokens=False)
            )
            specials = backend.num_special_tokens_to_add(second is not None) if add_special_tokens else 0
            n1, n2 = len(first.ids), 0 if second is None else len(second.ids)
            remove = n1 + n2 + specials - max_length
            if remove > 0:
                keep1, keep2 = _python_truncation(n1, n2 if second is not None else None, remove, trunc_strategy)
                first.truncate(keep1, direction=self.truncation_side)
                if second is not None:
                    second.truncate(keep2, direction=self.truncation_side)
            rows.append(backend.post_process(first, second, add_special_tokens=add_special_tokens))
        if pad_strategy != "do_not_pad":
            length = max((len(e.ids) for e in rows), default=0) if pad_strategy == "longest" else max_length
            if pad_to_multiple_of and length % pad_to_multiple_of:
                length += pad_to_multiple_of - length % pad_to_multiple_of
            for encoding in rows:
                encoding.pad(
                    length,
                    direction=padding_side or self.padding_side,
                    pad_id=self._backend_pad_id(),
                    pad_type_id=0,
                    pad_token=str(self.pad_token),
                )
        return rows

    def update_post_processor(self) -> None:
        """Marian always appends </s> and nothing else; add_bos_token / add_eos_token do not apply."""

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Size of vocab.json (the source vocabulary)."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.get_vocab())

    def get_vocab(self) -> dict[str, int]:
        """The source vocabulary plus the added tokens."""
        return {**self.encoder, **self._added_ids}

    def get_src_vocab(self) -> dict[str, int]:
        return self.get_vocab()

    def get_tgt_vocab(self) -> dict[str, int]:
        return {**self.target_encoder, **self._added_ids}

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        special = set(self.all_special_tokens) if hasattr(self, "_special_tokens") else set()
        return {
            index: AddedToken(token, special=token in special, normalized=False)
            for index, token in sorted(self._added_tokens.items())
        }

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """Added tokens first, then vocab.json (the source one); unknown tokens map to the unk id."""
        if isinstance(tokens, str):
            if tokens in self._added_ids:
                return self._added_ids[tokens]
            return self.encoder.get(tokens, self._added_ids[str(self.unk_token)])
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False, use_source_tokenizer: bool | None = None
    ) -> str | list[str]:
        """Added tokens first, then the target vocabulary (the shared one unless `separate_vocabs`), then the pieces
        of the .spm model (the target one unless `use_source_tokenizer`)."""
        use_source = (not self.separate_vocabs) if use_source_tokenizer is None else use_source_tokenizer
        if isinstance(ids, (int,)) or hasattr(ids, "__index__"):
            return self._id_to_token(int(ids), use_source)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i), use_source) for i in ids if int(i) not in skip]

    def _id_to_token(self, index: int, use_source: bool) -> str:
        if index in self._added_tokens:
            return self._added_tokens[index]
        if index in self._decoder:
            return self._decoder[index]
        pieces = (self._source if use_source else self._target).pieces
        if not 0 <= index < len(pieces):
            side = "source" if use_source else "target"
            raise ValueError(
                f"Token id {index} has no token on the {side} side: it is not an added token, not in the "
                f"{'target ' if self.separate_vocabs else ''}vocabulary and not a piece of the {side} .spm model. "
                "With separate vocabularies, ids of the source vocabulary cannot be decoded."
            )
        return pieces[index] or str(self.unk_token)

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        raise NotImplementedError(
            "Adding tokens to a MarianTokenizer is not supported: its ids come from vocab.json. Add the tokens to "
            "vocab.json (and the model's embeddings) and reload."
        )

    def add_special_tokens(self, special_tokens_dict: Mapping[str, Any]) -> int:
        return self.add_tokens(special_tokens_dict)

    # ------------------------------------------------------------------ text

    def tokenize(self, text: str, pair: str | None = None, *, add_special_tokens: bool = False, **kwargs) -> list[str]:
        """The tokens of the ids of `text` (vocabulary tokens, so unknown text shows as <unk>)."""
        ids = self.encode(text, pair, add_special_tokens=add_special_tokens, **kwargs)
        return [self._id_to_token(i, use_source=True) for i in ids]

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        use_source_tokenizer: bool | None = None,
    ) -> str | list[str]:
        """Text of a sequence of ids (a 2-D batch gives a list): vocabulary tokens, special tokens kept as they are
        and followed by a space, the pieces in between decoded by the .spm model (the target one when the
        vocabularies are separate, unless `use_source_tokenizer`)."""
        token_ids = _to_python(token_ids)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and isinstance(token_ids[0], list):
            return [
                self.decode(row, skip_special_tokens, clean_up_tokenization_spaces, use_source_tokenizer)
                for row in token_ids
            ]
        use_source = (not self.separate_vocabs) if use_source_tokenizer is None else use_source_tokenizer
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens, use_source)
        side = self._source if use_source else self._target
        special = set(self.all_special_tokens)
        text, run = "", []
        for token in tokens:
            if token in special:
                text += _decode_pieces(run, side) + token + " "
                run = []
            else:
                run.append(token)
        text = (text + _decode_pieces(run, side)).replace(_SPACE, " ").strip()
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        use_source_tokenizer: bool | None = None,
    ) -> list[str]:
        return [
            self.decode(row, skip_special_tokens, clean_up_tokenization_spaces, use_source_tokenizer)
            for row in _to_python(sequences)
        ]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the Marian files (source.spm, target.spm, vocab.json, target_vocab.json) and a tokenizer_config.json
        naming MarianTokenizer, which both transformers and jaxformers load back identically."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for source, name in zip(self.spm_files, ("source.spm", "target.spm")):
            if source.resolve() != (directory / name).resolve():
                shutil.copyfile(source, directory / name)
            written.append(directory / name)
        vocabs = {"vocab.json": self.encoder}
        if self.separate_vocabs:
            vocabs[TARGET_VOCAB_FILE] = self.target_encoder
        for name, vocab in vocabs.items():
            (directory / name).write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(directory / name)
        config = {
            "tokenizer_class": "MarianTokenizer",
            "separate_vocabs": self.separate_vocabs,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "added_tokens_decoder": {
                str(index): {
                    "content": token,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": token in self.all_special_tokens,
                }
                for index, token in sorted(self._added_tokens.items())
            },
            **self.special_tokens_map,
        }
        if self.extra_special_tokens:
            config["extra_special_tokens"] = self.extra_special_tokens
        path = directory / TOKENIZER_CONFIG_FILE
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tuple(str(p) for p in [*written, path])


def _python_truncation(n1: int, n2: int | None, remove: int, strategy: str) -> tuple[int, int]:
    """Lengths transformers' Python `truncate_sequences` keeps of a text (and its pair) of `n1` (`n2`) tokens when
    `remove` tokens must go."""
    if strategy == "only_first" or (strategy == "longest_first" and n2 is None):
        return max(n1 - remove, 0), n2 or 0
    if n2 is None:  # "only_second" without a second text: nothing is truncated
        return n1, 0
    if strategy == "only_second":
        return n1, max(n2 - remove, 0)
    first_remove = min(abs(n2 - n1), remove)
    second_remove = remove - first_remove
    if n1 > n2:
        from_first, from_second = first_remove + second_remove // 2, second_remove - second_remove // 2
    else:
        from_first, from_second = second_remove // 2, first_remove + second_remove - second_remove // 2
    return max(n1 - from_first, 0), max(n2 - from_second, 0)


def _text_of(source: Any, sequence: int | None, word: int | None) -> str | None:
    """The input text an encoded token's offsets refer to: the text, one of a pair, or one pre-split word. (Only
    <unk> tokens are looked up, which come from the texts; `post_process` leaves the first text's sequence ids
    unset, hence None means the first.)"""
    if isinstance(source, tuple):
        source = source[sequence or 0]
    if isinstance(source, str):
        return source
    if isinstance(source, list) and word is not None and word < len(source):
        return source[word]
    return None
