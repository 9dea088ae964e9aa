"""Sentence embeddings: a jitted mean-pool (+ L2 normalise) core and a host-side wrapper.

Matches sentence-transformers' `Pooling(mean) -> Normalize` used by all-MiniLM-L6-v2 and friends.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.core.functional import pure


def mean_pool(hidden: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Average `hidden [B, T, D]` over real tokens (`mask [B, T]`), optionally L2-normalised (eps 1e-12)."""
    m = mask.astype(jnp.float32)[..., None]
    pooled = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


@partial(jax.jit, static_argnames=("apply", "normalize"))
def _embed(apply, params, input_ids, attention_mask, token_type_ids, normalize):
    hidden = apply(params, input_ids, attention_mask, token_type_ids).last_hidden_state
    return mean_pool(hidden, attention_mask, normalize)


class SentenceEmbedder:
    """`embedder(texts) -> np.ndarray [N, D]`, batched and padded to a multiple of 16 tokens (few compilations)."""

    def __init__(self, model, tokenizer, *, normalize: bool = True, batch_size: int = 32, max_length: int = 256):
        self.apply, self.params = pure(model)
        self.tokenizer, self.normalize = tokenizer, normalize
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                pad_to_multiple_of=16, return_token_type_ids=True,
            )  # fmt: skip
            out.append(np.asarray(_embed(self.apply, self.params, enc["input_ids"], enc["attention_mask"],
                                         enc["token_type_ids"], self.normalize)))  # fmt: skip
        return np.concatenate(out)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T
