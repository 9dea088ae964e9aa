"""A tiny Llama-family model gives the same logits with attn_impl="pallas" (kernels in the TPU interpreter on CPU)
as with attn_impl="xla": a left-padded prefill without cache, and prefill + one decode step through the KV cache."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxformers as jf
from jaxformers.core import attention

TOL = 1e-5  # float32, relative to max |xla logits| over real tokens


def _left_padded(lengths=(9, 6, 3), t: int = 9, seed: int = 0):
    rng = np.random.RandomState(seed)
    mask = (np.arange(t)[None, :] >= t - np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask == 1, rng.randint(3, 97, (len(lengths), t)), 0).astype(np.int32)
    return ids, mask


def _assert_close(ours, ref, valid):
    a, b = np.asarray(ours)[valid], np.asarray(ref)[valid]
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL, f"max|pallas - xla| / max|xla| = {err:.2e}"


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the Pallas paths, so a silent fallback to XLA fails the test."""
    calls = {"_pallas_flash": 0, "_pallas_decode": 0}

    def counting(attr):
        fn = getattr(attention, attr)

        def counted(*args, **kw):
            calls[attr] += 1
            return fn(*args, **kw)

        return counted

    for attr in calls:
        monkeypatch.setattr(attention, attr, counting(attr))
    return calls


def test_pallas_model_matches_xla(tiny_hf, kernel_calls):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")  # vocab 97, hidden 48, 6 heads, 2 kv heads, head_dim 10
    models = {
        impl: jf.AutoModelForCausalLM.from_pretrained(directory, options=jf.Options(attn_impl=impl))
        for impl in ("pallas", "xla")
    }
    ids, mask = _left_padded()
    valid = mask.astype(bool)
    with jax.default_matmul_precision("highest"):
        out = {impl: m(ids, mask).logits for impl, m in models.items()}
        assert kernel_calls["_pallas_flash"] > 0, "the pallas model never reached the flash kernel"
        _assert_close(out["pallas"], out["xla"], valid)

        steps = {}  # prefill 6 tokens into a 12-slot cache, then decode one token: both run the decode kernel
        for impl, m in models.items():
            first = m(ids[:, :6], mask[:, :6], cache=m.init_cache(ids.shape[0], 12))
            second = m(ids[:, 6:7], mask[:, 6:7], cache=first.cache)
            steps[impl] = np.concatenate([np.asarray(first.logits), np.asarray(second.logits)], axis=1)
        assert kernel_calls["_pallas_decode"] > 0, "the cached pallas model never reached the decode kernel"
        _assert_close(steps["pallas"], steps["xla"], valid[:, :7])
        _assert_close(steps["xla"], np.asarray(out["xla"])[:, :7], valid[:, :7])  # cache path == full forward
