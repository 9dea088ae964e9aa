"""Sentence embeddings: a jitted mean-pool (+ L2 normalise) core and a host-side wrapper.

Matches sentence-transformers' `Pooling(mean) -> Normalize` used by all-MiniLM-L6-v2 and friends, including its
truncation: texts are cut to `max_seq_length` tokens (sentence_bert_config.json, 256 for MiniLM) and never past the
model's position table. The jitted core cannot refuse an over-long batch itself (under jit an out-of-range position
gives NaN for the whole batch, see `core.modeling`), so the host wrapper guarantees it.
"""

from __future__ import annotations

import json
from functools import partial

import jax
import numpy as np

from jaxformers.core.functional import pure
from jaxformers.tasks.feature_extraction import pool


def mean_pool(hidden: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Average `hidden [B, T, D]` over real tokens (`mask [B, T]`), optionally L2-normalised (eps 1e-12): the
    feature-extraction task's `pool` in mean mode (`jf.task("feature-extraction", ..., pooling="auto")` reads the
    mode, normalisation and truncation from a sentence-transformers folder)."""
    return pool(hidden, mask, ("mean",), normalize)


@partial(jax.jit, static_argnames=("apply", "normalize"))
def _embed(apply, params, input_ids, attention_mask, token_type_ids, normalize):
    hidden = apply(params, input_ids, attention_mask, token_type_ids).last_hidden_state
    return mean_pool(hidden, attention_mask, normalize)


DEFAULT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2 and most MiniLM/MPNet models


class SentenceEmbedder:
    """`embedder(texts) -> np.ndarray [N, D]`, batched and padded to a multiple of 16 tokens (few compilations).

    max_length: tokens kept per text (sentence-transformers' `max_seq_length`); None: 256 capped at the model's
    `max_position_embeddings`. A value above the position table is refused (those positions do not exist)."""

    def __init__(self, model, tokenizer, *, normalize: bool = True, batch_size: int = 32,
                 max_length: int | None = None):  # fmt: skip
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length is None:
            max_length = DEFAULT_MAX_LENGTH if limit is None else min(DEFAULT_MAX_LENGTH, limit)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got {max_length!r}")
        if limit is not None and max_length > limit:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_position_embeddings={limit}: longer texts have no "
                f"position embeddings; pass max_length <= {limit} (or None for min({DEFAULT_MAX_LENGTH}, {limit}))"
            )
        self.apply, self.params = pure(model)
        self.tokenizer, self.normalize = tokenizer, normalize
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> "SentenceEmbedder":
        """Model + tokenizer of a sentence-transformers checkpoint, truncating at its `sentence_bert_config.json`
        `max_seq_length` as sentence-transformers does (an explicit `max_length=` wins)."""
        import jaxformers as jf
        from jaxformers.hub import resolve_file

        if kwargs.get("max_length") is None:
            st_config = resolve_file(name_or_path, "sentence_bert_config.json", required=False)
            if st_config is not None:
                kwargs["max_length"] = json.loads(st_config.read_text()).get("max_seq_length")
        model, tok = jf.AutoModel.from_pretrained(name_or_path), jf.AutoTokenizer.from_pretrained(name_or_path)
        return cls(model, tok, **kwargs)

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                pad_to_multiple_of=16, return_token_type_ids=True,
            )  # fmt: skip
            # rounding up to 16 may pass max_length (and a position table that is not a multiple of 16): the columns
            # beyond max_length are padding of every row, so dropping them changes nothing
            ids, mask, types = (np.asarray(enc[k])[:, : self.max_length]
                                for k in ("input_ids", "attention_mask", "token_type_ids"))  # fmt: skip
            out.append(np.asarray(_embed(self.apply, self.params, ids, mask, types, self.normalize)))
        return np.concatenate(out)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T
