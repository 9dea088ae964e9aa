"""`dot_product_attention(impl="auto")` traced under a mesh of TPU devices plans as on TPU, and every plan its TPU
rows make compiles (the kernels through Mosaic, the rest through XLA), over dtypes, head sizes and mask kinds."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import pytest

from jaxformers import aot
from jaxformers.core import attention
from jaxformers.core import sharding as shd

DTYPES = (jnp.bfloat16, jnp.float32, jnp.float16)
HEADS = ((8, 2, 64), (4, 4, 128), (4, 1, 256))  # (N, K, H): GQA 4, MHA, MQA with Gemma's head size


def _calls(n, k, h, dtype):
    """(name, q shape, kv shape, keyword arguments) of the call kinds models make, at lengths where TPU rows differ."""
    yield "prefill-causal-1024", (2, 1024, n, h), (2, 1024, k, h), {"causal": True}
    yield "prefill-causal-short", (2, 256, n, h), (2, 256, k, h), {"causal": True}
    yield "prefill-padded-window", (2, 1500, n, h), (2, 1500, k, h), {"causal": True, "key_mask": "mask",
                                                                     "sliding_window": 700}
    yield "encoder-padded", (2, 1100, n, h), (2, 1100, k, h), {"key_mask": "mask"}
    yield "decode-at-offset", (2, 1, n, h), (2, 2048, k, h), {"causal": True, "q_offset": "offset",
                                                            "key_mask": "mask"}


def _params():
    """bf16 with GQA and MQA and float16 with MHA by default; every other (dtype, heads) pair under `-m slow`."""
    default = {(jnp.bfloat16, HEADS[0]), (jnp.bfloat16, HEADS[2]), (jnp.float16, HEADS[1])}
    for dtype, heads in itertools.product(DTYPES, HEADS):
        marks = () if (dtype, heads) in default else (pytest.mark.slow,)
        yield pytest.param(dtype, heads, marks=marks, id=f"{jnp.dtype(dtype).name}-{heads[0]}x{heads[1]}x{heads[2]}")


@pytest.mark.parametrize("dtype,heads", list(_params()))
def test_auto_dispatch_compiles_for_tpu(tpu, dtype, heads):
    chips = tpu("v5e-1")
    mesh = aot.topology_mesh(chips, "fsdp")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    planned = set()
    n, k, h = heads
    for name, q_shape, kv_shape, kw in _calls(n, k, h, dtype):
        q = jax.ShapeDtypeStruct(q_shape, dtype, sharding=sharding)
        kv = jax.ShapeDtypeStruct(kv_shape, dtype, sharding=sharding)
        mask = jax.ShapeDtypeStruct(kv_shape[:2], jnp.bool_, sharding=sharding)
        offset = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)

        def attend(q, k, v, key_mask, q_offset, kw=kw):
            extra = {"key_mask": key_mask} if "key_mask" in kw else {}
            extra |= {"q_offset": q_offset} if "q_offset" in kw else {}
            fixed = {a: b for a, b in kw.items() if a not in ("key_mask", "q_offset")}
            plan = attention.attention_plan(q, k, v, impl="auto", **fixed, **extra)
            planned.add((name, plan.impl))
            return attention.dot_product_attention(q, k, v, impl="auto", **fixed, **extra)

        with shd.use_mesh(mesh, shd.FSDP):
            compiled = jax.jit(attend).lower(q, kv, kv, mask, offset).compile()
        kernel = "tpu_custom_call" in compiled.as_text()
        impl = dict(planned)[name]
        assert kernel == impl.startswith("pallas"), f"{name} {(n, k, h)}: planned {impl}, Mosaic kernel: {kernel}"
    impls = dict(planned)
    # the TPU rows: flash kernel from S = 1024 on, XLA below and for decoding (AUTO_TABLE)
    assert impls["prefill-causal-1024"] == "pallas", planned
    assert impls["prefill-padded-window"] == "pallas", planned
    assert impls["prefill-causal-short"] == "xla", planned
    assert impls["decode-at-offset"] == "xla", planned
