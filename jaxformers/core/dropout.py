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

The keep mask is `jax.random.bernoulli(key, 1 - rate, shape)`, bit for bit. For threefry keys (JAX's default) it is
computed here with the same Threefry-2x32 hash written out as array operations (`_threefry_bits`), because on CPU
JAX lowers the hash as a 5-step while loop whose state round-trips through memory between steps: that loop took
~0.4 s of a 3.6 s BERT-base training step (`scripts/bench_train.py --profile`), where the written-out hash fuses
into one elementwise kernel (JAX's own lowering on TPU and GPU is this same unrolled form). Other key kinds (rbg,
unsafe_rbg) and non-partitionable threefry go through `jax.random.bernoulli` itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


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


def dropout(
    x: jax.Array, rate: float, key: jax.Array | None, *, full_shape: tuple[int, ...] | None = None
) -> jax.Array:
    """Inverted dropout of `x` with probability `rate` (identity when `key` is None or `rate` is 0).

    full_shape: `x` is the leading corner (`x[:a, :b, ...]`) of a tensor of this shape that the model computes only
    in part (the last layer of an encoder whose head reads only the first token, `core.stack.run_layers`'s
    `last_rows`); the mask is that whole tensor's, so the same entries are dropped as when it is computed whole."""
    if key is None or not rate:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    if full_shape is None or tuple(full_shape) == x.shape:
        keep = keep_mask(key, 1.0 - rate, x.shape)
    else:
        if len(full_shape) != x.ndim or any(a > b for a, b in zip(x.shape, full_shape)):
            raise ValueError(f"dropout: shape {x.shape} is not a leading corner of full_shape {tuple(full_shape)}")
        keep = keep_mask(key, 1.0 - rate, tuple(full_shape))[tuple(slice(0, n) for n in x.shape)]
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry_bits(k0: jax.Array, k1: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bits(key, shape, uint32)` for a threefry key with data `(k0, k1)` and partitionable threefry:
    each element hashes its flat index (high word 0, low word the index) and XORs the two output words."""
    x0 = jnp.zeros(shape, jnp.uint32)
    x1 = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0 ^ x1


def _threefry_key_data(key: jax.Array) -> jax.Array | None:
    """The `uint32[2]` data of a threefry key (typed, or a legacy raw key under the default threefry impl), or None
    when the hash written out here would not reproduce `jax.random` for this key."""
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or "threefry" not in str(jax.random.key_impl(key)):
            return None
        return jax.random.key_data(key)
    if key.dtype == jnp.uint32 and key.shape == (2,) and "threefry" in str(jax.config.jax_default_prng_impl):
        return key
    return None


def keep_mask(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bernoulli(key, p, shape)` (True with probability `p`), identical bits, faster on CPU."""
    data = _threefry_key_data(key)
    if data is None or math.prod(shape) >= 2**32:
        return jax.random.bernoulli(key, p, shape)
    bits = _threefry_bits(data[0], data[1], tuple(shape))
    # jax.random.uniform: the top 23 bits as the mantissa of a float in [1, 2), minus 1
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
    return floats < jnp.float32(p)
