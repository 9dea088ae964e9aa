"""Dropout: one convention for every model, pure like the rest of the forward pass.

Every model `__call__` takes `deterministic: bool = True` and `dropout_rng: jax.Array | None = None` (keyword-only).
`deterministic=True` (the default: inference, evaluation, parity with transformers' `model.eval()`) never drops.
`deterministic=False` needs an explicit PRNG key; nothing is stored on the module and no RNG state is mutated, so a
training step is a pure function of `(params, batch, key)`:

    out = model(**batch, deterministic=False, dropout_rng=jax.random.key(step))

Inside a model the key travels as a plain value that is `None` when dropout is off, so every helper below is the
identity then (and costs nothing in the compiled program). Sites derive their own keys with `fold_in` (a fixed site
number per call site, `layer_keys` for the layers of a stack, scanned or unrolled alike), never by splitting a
shared stream in call order, so the mask of a site does not depend on which other sites ran before it.
Rates come from the HF config fields (`hidden_dropout_prob`, `attention_probs_dropout_prob`, ...); like
transformers, kept activations are scaled by `1 / (1 - rate)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def key_for(deterministic: bool, dropout_rng: jax.Array | None) -> jax.Array | None:
    """The model-level dropout key: None when `deterministic`; a clear error when training without a key."""
    if deterministic:
        return None
    if dropout_rng is None:
        raise ValueError(
            "deterministic=False applies dropout and needs a PRNG key: pass dropout_rng=jax.random.key(seed) "
            "(a new key per step), or leave deterministic=True for inference"
        )
    if isinstance(dropout_rng, int):
        return jax.random.key(dropout_rng)
    return dropout_rng


def fold(key: jax.Array | None, site: int) -> jax.Array | None:
    """The key of dropout site number `site` under `key` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, site)


def layer_keys(key: jax.Array | None, n: int) -> jax.Array | None:
    """`[n]` keys, one per layer of a stack (scan them as `xs`, or index them when unrolled); None stays None."""
    return None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout of `x` with probability `rate` (identity when `key` is None or `rate` is 0)."""
    if key is None or not rate:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
