"""core.dropout's keep mask: bit for bit `jax.random.bernoulli`, without the rolled threefry loop on CPU.

The masks must not change with the implementation (a fine-tune's result is deterministic and documented), so every
case compares against `jax.random.bernoulli` itself; the speed property (the reason for the written-out hash) is
checked on the compiled program: no `while` loop is left in a dropout on XLA:CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformers.core import dropout

SHAPES = [(1,), (7,), (3, 5, 11), (2, 12, 16, 16), (4, 128, 96)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.9, 0.5, 0.1, 0.999])
def test_keep_mask_is_bernoulli_bit_for_bit(shape, p):
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(seed), 7 + seed)
        want = np.asarray(jax.random.bernoulli(key, p, shape))
        got = np.asarray(jax.jit(dropout.keep_mask, static_argnums=(1, 2))(key, p, shape))
        np.testing.assert_array_equal(got, want)


def test_legacy_raw_keys_and_per_layer_keys_match_bernoulli():
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(dropout.keep_mask(raw, 0.8, (9, 33)), jax.random.bernoulli(raw, 0.8, (9, 33)))
    keys = dropout.layer_keys(jax.random.key(0), 4)  # as the layer stacks index them, unrolled or scanned

    def masks(ks):
        return jax.lax.map(lambda k: dropout.keep_mask(k, 0.9, (16, 8)), ks)

    want = np.stack([np.asarray(jax.random.bernoulli(keys[i], 0.9, (16, 8))) for i in range(4)])
    np.testing.assert_array_equal(jax.jit(masks)(keys), want)


def test_other_key_kinds_and_non_partitionable_threefry_fall_back_to_jax_random():
    rbg = jax.random.key(1, impl="rbg")
    np.testing.assert_array_equal(dropout.keep_mask(rbg, 0.7, (40,)), jax.random.bernoulli(rbg, 0.7, (40,)))
    key = jax.random.key(2)
    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
        np.testing.assert_array_equal(dropout.keep_mask(key, 0.6, (50,)), jax.random.bernoulli(key, 0.6, (50,)))
    finally:
        jax.config.update("jax_threefry_partitionable", before)


def test_dropout_keeps_the_rate_and_rescales():
    x = jnp.ones((64, 1024), jnp.float32)
    y = np.asarray(dropout.dropout(x, 0.1, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    assert dropout.dropout(x, 0.1, None) is x and dropout.dropout(x, 0.0, jax.random.key(0)) is x


def test_compiled_dropout_has_no_rolled_hash_loop_on_cpu():
    # the device is read inside the test, never at collection: starting JAX's backend while collecting would fix
    # the device count before tests/training/test_sharded_train.py asks for 8 CPU devices
    x = jax.device_put(jnp.ones((8, 128, 64), jnp.float32), jax.devices("cpu")[0])

    def loss(x, key):
        return jnp.sum(jnp.tanh(dropout.dropout(x, 0.1, key)))

    text = jax.jit(jax.grad(loss)).lower(x, jax.random.key(0)).compile().as_text()
    assert "while" not in text
    # and the reference implementation does compile to that loop here (what the written-out hash avoids)
    ref = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (8, 128, 64))).lower(jax.random.key(0)).compile().as_text()
    assert "while" in ref
