"""`jaxformers.core.attention`: what `attention_plan` picks (AUTO_TABLE, fallbacks with reasons), Pallas == XLA on
CPU through `dot_product_attention`, and clear errors for bad input.

Other platforms are simulated by patching `jax.default_backend` (planning only looks at shapes, dtypes and flags).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import assert_close, keep_mask, normal

from jaxformers.core import attention

F32, BF16 = jnp.float32, jnp.bfloat16


def _abstract(b, t, s, n, k, h, dtype):
    return jax.ShapeDtypeStruct((b, t, n, h), dtype), *(jax.ShapeDtypeStruct((b, s, k, h), dtype),) * 2


def _on(monkeypatch, platform: str) -> None:
    monkeypatch.setattr(jax, "default_backend", lambda: platform)


TRACED_INT = jax.ShapeDtypeStruct((), jnp.int32)


@pytest.mark.parametrize("row", attention.AUTO_TABLE, ids=lambda r: "-".join(map(str, r[:4])))
def test_auto_picks_the_table_row(monkeypatch, row):
    """At S = the row's min length, a call every implementation supports gets the row's first choice."""
    platform, kind, group, min_len, prefs = row
    _on(monkeypatch, platform)
    s = max(min_len, 1)
    dtype = F32 if group == "float32" else BF16
    if kind == "prefill":
        q, k, v = _abstract(1, s, s, 8, 2, 64, dtype)
        plan = attention.attention_plan(q, k, v, causal=True)
    else:  # a traced cache offset, as during generation
        q, k, v = _abstract(1, 1, s, 8, 2, 64, dtype)
        plan = attention.attention_plan(q, k, v, causal=True, q_offset=TRACED_INT)
    cudnn_ok = kind == "prefill" and dtype != F32  # cuDNN takes 16-bit inputs and no query offset
    expected = next(p for p in prefs if p != "cudnn" or cudnn_ok)
    expected = "pallas_decode" if expected == "pallas" and kind == "decode" else expected
    assert plan.impl == expected, plan
    assert f"AUTO_TABLE {platform}/{kind}/" in plan.reason, plan


def test_auto_row_selection_and_fallback_chain(monkeypatch):
    """The row with the largest `min_len <= S` applies; unsupported choices are skipped with their reasons."""
    table = (
        ("cpu", "prefill", "any", 0, ("xla",)),
        ("cpu", "prefill", "any", 64, ("pallas", "xla")),
        ("cpu", "prefill", "float32", 128, ("cudnn", "pallas", "xla")),
    )
    monkeypatch.setattr(attention, "AUTO_TABLE", table)
    _on(monkeypatch, "cpu")

    def plan(s, dtype, **call):
        return attention.attention_plan(*_abstract(1, s, s, 4, 2, 16, dtype), causal=True, **call)

    assert plan(63, F32).impl == "xla"
    assert plan(64, F32).impl == "pallas"
    assert plan(128, BF16).impl == "pallas"  # the float32 row does not apply to bfloat16
    p = plan(128, F32)
    assert p.impl == "pallas" and "cudnn: platform cpu" in p.reason, p
    p = plan(64, F32, bias=jax.ShapeDtypeStruct((1, 4, 64, 64), F32))
    assert p.impl == "xla" and "pallas: dense mask or additive bias" in p.reason, p
    q, k, v = _abstract(1, 1, 200, 4, 2, 16, F32)  # no decode row in this table: plain XLA
    assert attention.attention_plan(q, k, v, causal=True, q_offset=TRACED_INT).impl == "xla"


@pytest.mark.parametrize(
    "impl,expected,call",
    [
        ("xla", "xla", {"causal": True}),
        ("pallas", "pallas", {"causal": True}),
        ("pallas", "pallas", {"key_mask": jax.ShapeDtypeStruct((2, 40), bool), "segment_ids": None}),
        ("pallas", "pallas", {"q_offset": 7}),  # an offset without causal / window does not matter
        ("pallas", "pallas_decode", {"causal": True, "q_offset": TRACED_INT}),
        ("pallas", "pallas_decode", {"causal": True, "q_offset": 3, "sliding_window": 5}),
    ],
    ids=["xla", "pallas-causal", "pallas-key-mask", "pallas-unused-offset", "decode-traced-offset", "decode-window"],
)
def test_requested_impl_runs_when_supported(impl, expected, call):
    t = 3 if expected == "pallas_decode" else 40
    q, k, v = _abstract(2, t, 40, 6, 2, 16, F32)
    assert attention.attention_plan(q, k, v, impl=impl, **call) == (expected, "requested")


@pytest.mark.parametrize(
    "platform,impl,shape,dtype,call,why",
    [
        ("cpu", "pallas", (1, 8, 8), F32, {"mask": jax.ShapeDtypeStruct((1, 1, 8, 8), bool)}, "dense mask"),
        ("cpu", "pallas", (1, 8, 8), F32, {"bias": jax.ShapeDtypeStruct((1, 6, 8, 8), F32)}, "additive bias"),
        ("cpu", "pallas", (1, 8, 8), F32, {"causal": True, "sliding_window": TRACED_INT}, "traced sliding window"),
        ("cpu", "pallas", (1, 17, 40), F32, {"causal": True, "q_offset": TRACED_INT}, "T <= 16"),
        ("cpu", "pallas", (1, 2, 40), F32, {"causal": True, "q_offset": 5, "segment_ids": TRACED_INT}, "segment ids"),
        ("cpu", "pallas", (1, 8, 8), jnp.int8, {}, "dtype int8"),
        ("cpu", "cudnn", (1, 8, 8), BF16, {"causal": True}, "platform cpu"),
        ("gpu", "pallas", (1, 8, 8), F32, {"h": 512}, "head dim > 256"),
        ("gpu", "cudnn", (1, 8, 8), F32, {}, "16-bit inputs"),
        ("gpu", "cudnn", (1, 8, 8), BF16, {"h": 256}, "H <= 128"),
        ("gpu", "cudnn", (1, 8, 8), BF16, {"key_mask": jax.ShapeDtypeStruct((1, 8), bool)}, "key padding"),
        ("gpu", "cudnn", (1, 8, 8), BF16, {"softcap": 30.0}, "soft-cap"),
        ("gpu", "cudnn", (1, 4, 8), BF16, {"causal": True}, "causal with T != S"),
        ("gpu", "cudnn", (1, 1, 8), BF16, {"causal": True, "q_offset": TRACED_INT}, "query offset"),
        ("gpu", "cudnn", (1, 8, 8), BF16, {"sliding_window": 4}, "sliding window without causal"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_unsupported_request_falls_back_to_xla_with_reason(monkeypatch, platform, impl, shape, dtype, call, why):
    _on(monkeypatch, platform)
    call = dict(call)
    b, t, s = shape
    q, k, v = _abstract(b, t, s, 6, 2, call.pop("h", 16), dtype)
    plan = attention.attention_plan(q, k, v, impl=impl, **call)
    assert plan.impl == "xla", plan
    assert plan.reason.startswith(f"{impl} unsupported:") and why in plan.reason, plan


def _left_padded_key_mask(b, s, pads):
    return jnp.asarray(np.arange(s)[None, :] >= np.asarray(pads)[:, None])


def _pallas_vs_xla(q, k, v, live_rows, *, grads: bool, impl: str = "pallas", **call):
    """`impl` ("pallas", or "auto" where it picks Pallas) runs the flash kernel and agrees with impl="xla" within the
    tolerance of q's dtype: outputs on live rows, optionally q/k/v gradients of a cotangent that is zero on dead rows."""
    assert attention.attention_plan(q, k, v, impl=impl, **call).impl == "pallas"
    ct = jnp.where(jnp.asarray(live_rows)[:, :, None, None], normal(9, q.shape, q.dtype), 0.0)

    def run(impl):
        def f(q, k, v):
            return attention.dot_product_attention(q, k, v, impl=impl, **call)

        if not grads:
            return f(q, k, v), ()
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(ct)

    (out, dqkv), (ref, ref_dqkv) = jax.jit(lambda: run(impl))(), jax.jit(lambda: run("xla"))()
    assert_close(out, ref, q.dtype, "output", rows=live_rows)
    for name, g, rg in zip("qkv", dqkv, ref_dqkv):
        assert_close(g, rg, q.dtype, f"d{name}")


def test_pallas_equals_xla_causal_with_left_padding():
    b, t, n, kh, h = 2, 37, 6, 2, 16
    q, k, v = normal(0, (b, t, n, h), F32), normal(1, (b, t, kh, h), F32), normal(2, (b, t, kh, h), F32)
    key_mask = _left_padded_key_mask(b, t, (0, 9))
    live = keep_mask(b, t, t, causal=True) & np.asarray(key_mask)[:, None, :]
    _pallas_vs_xla(q, k, v, live.any(-1), grads=True, causal=True, key_mask=key_mask)


def test_pallas_equals_xla_segment_ids_and_sliding_window():
    b, t, n, kh, h = 1, 45, 6, 1, 16
    q, k, v = normal(3, (b, t, n, h), F32), normal(4, (b, t, kh, h), F32), normal(5, (b, t, kh, h), F32)
    ids = jnp.asarray(np.repeat([[0, 1, 2]], 15, axis=1), jnp.int32)  # three packed sequences
    _pallas_vs_xla(q, k, v, np.ones((b, t), bool), grads=False, causal=True, segment_ids=ids, sliding_window=7)


def test_pallas_equals_xla_segment_id_pair_with_key_padding_and_softcap():
    b, t, s, n, kh, h = 2, 19, 33, 6, 6, 16
    q, k, v = normal(6, (b, t, n, h), F32), normal(7, (b, s, kh, h), F32), normal(8, (b, s, kh, h), F32)
    q_ids, kv_ids = np.zeros((b, t), np.int32), (np.arange(s)[None] >= 11).astype(np.int32).repeat(b, 0)
    key_mask = _left_padded_key_mask(b, s, (4, 0))
    pair = (jnp.asarray(q_ids), jnp.asarray(kv_ids))
    _pallas_vs_xla(q, k, v, np.ones((b, t), bool), grads=False, segment_ids=pair, key_mask=key_mask, softcap=2.0)


@pytest.mark.parametrize("impl", ["pallas", "auto"])
def test_bf16_dispatch_stays_within_the_bf16_tolerance(monkeypatch, impl):
    """bfloat16 through the dispatcher: "pallas", and "auto" under a table row preferring Pallas (the GPU/TPU rows do
    at long lengths), agree with "xla" within 2e-2 (outputs and q/k/v gradients, GQA, causal with key padding)."""
    if impl == "auto":
        monkeypatch.setattr(attention, "AUTO_TABLE", (("cpu", "prefill", "16bit", 0, ("pallas", "xla")),))
    b, t, n, kh, h = 2, 29, 6, 2, 16
    q, k, v = normal(20, (b, t, n, h), BF16), normal(21, (b, t, kh, h), BF16), normal(22, (b, t, kh, h), BF16)
    key_mask = _left_padded_key_mask(b, t, (0, 5))
    live = keep_mask(b, t, t, causal=True) & np.asarray(key_mask)[:, None, :]
    _pallas_vs_xla(q, k, v, live.any(-1), grads=True, impl=impl, causal=True, key_mask=key_mask)


def test_bf16_auto_on_cpu_is_xla():
    """The measured CPU rows choose XLA: "auto" is then bit-identical to "xla" in bfloat16."""
    q, k, v = normal(23, (1, 17, 4, 16), BF16), normal(24, (1, 17, 2, 16), BF16), normal(25, (1, 17, 2, 16), BF16)
    assert attention.attention_plan(q, k, v, causal=True).impl == "xla"
    out, ref = (attention.dot_product_attention(q, k, v, causal=True, impl=i) for i in ("auto", "xla"))
    assert out.dtype == BF16 and np.array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


@pytest.mark.parametrize("t", [1, 3])
def test_pallas_decode_equals_xla_at_a_cache_offset(t):
    """T new queries at a per-row traced cache offset against a left-padded cache (the generation step)."""
    b, s, n, kh, h = 2, 40, 6, 2, 16
    q, k, v = normal(10, (b, t, n, h), F32), normal(11, (b, s, kh, h), F32), normal(12, (b, s, kh, h), F32)
    key_mask = _left_padded_key_mask(b, s, (0, 6))
    offsets = jnp.asarray([21, 9], jnp.int32)
    call = {"causal": True, "key_mask": key_mask, "sliding_window": 12}
    plan = attention.attention_plan(q, k, v, impl="pallas", q_offset=offsets, **call)
    assert plan.impl == "pallas_decode", plan

    @jax.jit
    def both(offsets):
        return tuple(
            attention.dot_product_attention(q, k, v, q_offset=offsets, impl=impl, **call) for impl in ("pallas", "xla")
        )

    out, ref = both(offsets)
    assert_close(out, ref, F32, "output")
    for i in range(b):  # also what each row alone at a scalar offset gives
        row = attention.dot_product_attention(
            q[i : i + 1], k[i : i + 1], v[i : i + 1], q_offset=int(offsets[i]), impl="xla", causal=True,
            key_mask=key_mask[i : i + 1], sliding_window=12,
        )  # fmt: skip
        assert_close(out[i : i + 1], row, F32, f"row {i}")


@pytest.mark.parametrize(
    "q_shape,kv_shape,impl,match",
    [
        ((2, 8, 16), (2, 8, 2, 16), "xla", "attention expects"),
        ((2, 8, 6, 16), (2, 8, 16), "pallas", "attention expects"),
        ((2, 8, 6, 16), (2, 8, 4, 16), "pallas", r"query heads \(6\) must be a multiple of key/value heads \(4\)"),
        ((2, 8, 6, 16), (2, 8, 2, 16), "flash", "unknown attention impl 'flash'"),
    ],
    ids=["q-rank", "kv-rank", "heads", "impl"],
)
def test_bad_input_raises_a_clear_error(q_shape, kv_shape, impl, match):
    q, kv = jnp.zeros(q_shape, F32), jnp.zeros(kv_shape, F32)
    with pytest.raises(ValueError, match=match):
        attention.dot_product_attention(q, kv, kv, causal=True, impl=impl)
