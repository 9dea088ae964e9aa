"""impl="pallas" under a mesh: the kernels run per device in `shard_map` over batch and head axes (interpreted on CPU)
and agree with impl="xla"; a tiny Llama loaded onto a mesh with attn_impl="pallas" gives the unsharded XLA logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharding_helpers import LLAMA

import jaxformers as jf
from jaxformers import kernels
from jaxformers.core import attention
from jaxformers.core import sharding as shd

TOL = 1e-5  # float32, relative to max |xla|


def _normal(seed, shape):
    return jnp.asarray(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def _assert_close(got, ref, what):
    got, ref = np.asarray(got), np.asarray(ref)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= TOL, f"{what}: max|pallas - xla| / max|xla| = {err:.2e}"


@pytest.fixture
def kernel_shapes(monkeypatch):
    """Records the `(q, k)` shapes each kernel call sees (per-device shapes prove the `shard_map` split), and checks
    that on CPU the per-device kernels are the interpreted GPU ones (`attention.CPU_SHARDED_PALLAS_BACKEND`)."""
    shapes = []

    def spy(name):
        original = getattr(kernels, name)

        def run(q, k, *args, **kw):
            shapes.append((tuple(q.shape), tuple(k.shape)))
            assert (kw["backend"], kw["interpret"]) == (attention.CPU_SHARDED_PALLAS_BACKEND, True), kw
            return original(q, k, *args, **kw)

        return run

    for name in ("flash_attention", "decode_attention"):
        monkeypatch.setattr(kernels, name, spy(name))
    return shapes


# (mesh sizes, rules, kv heads, per-device (B, N, K)) for q [B=4, T, N=8, H], k/v [B, S, K, H]
CASES = {
    "data2-tp4": ({"data": 2, "tp": 4}, shd.TP, 4, (2, 2, 1)),  # GQA groups of 2 split over tp
    "fsdp2-tp4": ({"fsdp": 2, "tp": 4}, shd.FSDP_TP, 4, (2, 2, 1)),
    "fsdp4": ({"fsdp": 4}, shd.FSDP, 4, (1, 8, 4)),  # batch only (a mesh of 4 of the 8 devices)
    "data2-tp4-kv2": ({"data": 2, "tp": 4}, shd.TP, 2, (2, 8, 2)),  # 2 kv heads cannot split 4 ways: heads whole
    "data2-fsdp4-dp": ({"data": 2, "fsdp": 4}, shd.DP, 4, (2, 8, 4)),  # batch over data; replicated over fsdp
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])  # concrete mesh / abstract mesh inside jit
@pytest.mark.parametrize("case", list(CASES))
def test_pallas_runs_per_device_and_matches_xla(kernel_shapes, case, jit):
    sizes, rules, kh, (lb, ln, lk) = CASES[case]
    b, t, n, h = 4, 12, 8, 8
    q, k, v = _normal(0, (b, t, n, h)), _normal(1, (b, t, kh, h)), _normal(2, (b, t, kh, h))
    key_mask = jnp.asarray(np.arange(t)[None, :] < np.array([12, 9, 12, 7])[:, None])  # right padding: no dead rows
    call = {"causal": True, "key_mask": key_mask}
    mesh = jf.make_mesh(sizes)
    with jf.use_mesh(mesh, rules):
        f = lambda impl: attention.dot_product_attention(q, k, v, impl=impl, **call)
        out = jax.jit(f, static_argnums=0)("pallas") if jit else f("pallas")
        ref = attention.dot_product_attention(q, k, v, impl="xla", **call)
    assert kernel_shapes == [((lb, t, ln, h), (lb, t, lk, h))], kernel_shapes
    assert out.sharding.device_set == set(mesh.devices.flat)
    _assert_close(out, ref, case)


def test_pallas_gradients_under_a_mesh(kernel_shapes):
    """The custom VJP of the kernel inside `shard_map`: q, k, v gradients equal XLA's (GQA heads split over tp)."""
    b, t, n, kh, h = 4, 12, 8, 4, 8
    q, k, v = _normal(3, (b, t, n, h)), _normal(4, (b, t, kh, h)), _normal(5, (b, t, kh, h))
    ct = _normal(6, (b, t, n, h))

    def grads(impl):
        _, vjp = jax.vjp(lambda *x: attention.dot_product_attention(*x, causal=True, impl=impl), q, k, v)
        return vjp(ct)

    with jf.use_mesh(jf.make_mesh({"data": 2, "tp": 4}), shd.TP):
        got = jax.jit(grads, static_argnums=0)("pallas")
    ref = jax.jit(grads, static_argnums=0)("xla")
    assert kernel_shapes and all(s == ((2, t, 2, h), (2, t, 1, h)) for s in kernel_shapes), kernel_shapes
    for name, g, r in zip("qkv", got, ref):
        _assert_close(g, r, f"d{name}")


def test_pallas_decode_under_a_mesh(kernel_shapes):
    """The decode kernel (a few queries at a traced cache offset) per device, inside jit: the abstract mesh."""
    b, t, s, n, kh, h = 4, 2, 20, 8, 4, 8
    q, k, v = _normal(7, (b, t, n, h)), _normal(8, (b, s, kh, h)), _normal(9, (b, s, kh, h))
    offsets = jnp.asarray([17, 3, 9, 0], jnp.int32)

    def f(impl, offsets):
        return attention.dot_product_attention(q, k, v, q_offset=offsets, causal=True, impl=impl)

    with jf.use_mesh(jf.make_mesh({"fsdp": 2, "tp": 4}), shd.FSDP_TP):
        got = jax.jit(f, static_argnums=0)("pallas", offsets)
    ref = jax.jit(f, static_argnums=0)("xla", offsets)
    assert kernel_shapes == [((2, t, 2, h), (2, s, 1, h))], kernel_shapes
    _assert_close(got, ref, "decode")


def test_sharded_pallas_llama_matches_unsharded_xla(llama_dir, kernel_shapes):
    ids = np.random.RandomState(0).randint(0, LLAMA["vocab_size"], (2, 10)).astype(np.int32)
    apply, params = jf.pure(jf.AutoModelForCausalLM.from_pretrained(llama_dir, options=jf.Options(attn_impl="xla")))
    ref = jax.jit(lambda p, x: apply(p, x).logits)(params, ids)
    mesh = jf.make_mesh({"fsdp": 2, "tp": 4})
    options = jf.Options(attn_impl="pallas")
    model = jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=jf.FSDP_TP, options=options)
    apply, params = jf.pure(model)
    with jf.use_mesh(mesh, jf.FSDP_TP):
        out = jax.jit(lambda p, x: apply(p, x).logits)(params, jf.shard_batch(ids))
    heads, kv_heads, head_dim = LLAMA["num_attention_heads"], LLAMA["num_key_value_heads"], LLAMA["head_dim"]
    per_device = ((1, 10, heads // 4, head_dim), (1, 10, kv_heads // 4, head_dim))
    assert kernel_shapes and set(kernel_shapes) == {per_device}, kernel_shapes  # batch over fsdp, heads over tp
    _assert_close(out, ref, "logits")
