"""Meshes built by `jax.make_mesh(shape, names)` (AxisType.Explicit axes, JAX's default), with our axis names or
the user's own: loading, `use_mesh`, `shard_batch`, forward, generate and the train step work as on `jf.make_mesh`
meshes, over the mesh's Auto twin (`core.sharding.auto_mesh`)."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from sharding_helpers import LLAMA

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params
from jaxformers.training import TrainState, create_optimizer, make_train_step

IDS = np.random.RandomState(0).randint(3, LLAMA["vocab_size"], (8, 12)).astype(np.int32)
# FSDP+TP written for a mesh whose axes are called "batch" and "model"
OWN_RULES = (("act_batch", "batch"), ("embed", "batch"), ("vocab", "model"), ("mlp", "model"), ("heads", "model"),
             ("kv_heads", "model"), ("act_heads", "model"), ("act_kv_heads", "model"), ("act_mlp", "model"),
             ("act_vocab", "model"))  # fmt: skip


def _explicit(shape, names):
    mesh = jax.make_mesh(shape, names)
    assert set(mesh.axis_types) == {AxisType.Explicit}, mesh  # what a JAX user gets by default
    return mesh


@pytest.fixture(scope="module")
def reference(llama_dir):
    model = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
    logits = np.asarray(jax.jit(lambda m, ids: m(ids).logits)(model, IDS))
    return model, logits


def test_auto_twin_and_zero_copy_relabel():
    """The Auto twin keeps devices, order and names; arrays on the Explicit mesh are relabelled onto it in place;
    `use_mesh` enters (and yields) the twin."""
    mesh = _explicit((2, 4), ("fsdp", "tp"))
    auto = shd.auto_mesh(mesh)
    assert auto.axis_names == mesh.axis_names and set(auto.axis_types) == {AxisType.Auto}
    assert (auto.devices == mesh.devices).all()
    ours = jf.make_mesh()
    assert shd.auto_mesh(auto) is auto and shd.auto_mesh(ours) is ours  # nothing to convert
    x = jax.device_put(np.arange(64.0).reshape(8, 8), NamedSharding(mesh, PartitionSpec("fsdp", "tp")))
    plain = jax.device_put(np.ones(3))
    y, same = shd.to_auto((x, plain))
    assert same is plain
    assert y.sharding == NamedSharding(auto, PartitionSpec("fsdp", "tp"))
    pointers = lambda a: [s.data.unsafe_buffer_pointer() for s in a.addressable_shards]  # noqa: E731
    assert pointers(y) == pointers(x)  # the same buffers: no copy
    with jf.use_mesh(mesh, jf.FSDP_TP) as active:
        assert active == auto and shd.get_mesh() == auto


def test_from_pretrained_and_forward_on_jax_make_mesh(llama_dir, reference):
    """`from_pretrained(mesh=jax.make_mesh(...))` places every parameter as on the equivalent `jf.make_mesh` mesh, and
    the forward under `use_mesh` gives the unsharded logits."""
    mesh = _explicit((2, 4), ("fsdp", "tp"))
    model = jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=jf.FSDP_TP)
    same = jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=jf.make_mesh({"fsdp": 2, "tp": 4}), rules=jf.FSDP_TP)
    ours, theirs = model_params(model), model_params(same)
    assert ours.keys() == theirs.keys()
    for key, x in ours.items():
        assert x.sharding.mesh == shd.auto_mesh(mesh), key
        assert x.sharding.is_equivalent_to(theirs[key].sharding, x.ndim), (key, x.sharding, theirs[key].sharding)
    q = ours["model.layers.block.self_attn.q_proj.kernel"]
    assert all(s.data.size * 8 == q.size for s in q.addressable_shards)
    with jf.use_mesh(mesh, jf.FSDP_TP):
        logits = jax.jit(lambda m, ids: m(ids).logits)(model, jf.shard_batch(IDS))
    assert logits.sharding.spec[0] == "fsdp"  # the batch stayed split
    np.testing.assert_allclose(np.asarray(logits), reference[1], rtol=1e-5, atol=1e-5)


def test_own_axis_names_load_and_generate(llama_dir, reference):
    """A mesh with the user's axis names ("batch", "model") and rules naming them: the model loads inside `use_mesh`
    onto that mesh, `shard_batch` splits over "batch", and greedy generation gives the unsharded tokens."""
    mesh = _explicit((2, 4), ("batch", "model"))
    with jf.use_mesh(mesh, OWN_RULES):
        model = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
        q = model_params(model)["model.layers.block.self_attn.q_proj.kernel"]
        assert q.sharding == NamedSharding(shd.auto_mesh(mesh), PartitionSpec(None, "batch", "model", None))
        assert jf.shard_batch(IDS).sharding.spec == PartitionSpec("batch")
        tokens = jf.generate(model, IDS, max_new_tokens=4, do_sample=False)
    expected = jf.generate(reference[0], IDS, max_new_tokens=4, do_sample=False)
    np.testing.assert_array_equal(tokens, expected)


def test_train_step_with_explicit_arrays_and_context(llama_dir):
    """The train step on a model loaded onto an Explicit mesh: fed batches the user placed on that mesh, inside
    `use_mesh` and inside a plain `jax.set_mesh` with Flax's rules context, it gives the unsharded losses and keeps
    the parameters' shardings."""
    mesh = _explicit((4, 2), ("fsdp", "tp"))
    optimizer, schedule = create_optimizer(1e-3, 10, warmup_steps=1)
    ids = [np.roll(IDS, i, axis=1) for i in range(3)]

    @contextlib.contextmanager
    def plain_jax():
        with jax.set_mesh(mesh), nnx.logical_axis_rules(jf.FSDP_TP):
            yield

    def run(model, batches, contexts):
        state = TrainState.create(model, optimizer)
        train_step, _ = make_train_step(model, optimizer, schedule=schedule)
        before, losses = [x.sharding for x in jax.tree.leaves(state)], []
        for batch, context in zip(batches, contexts):
            with context():
                state, metrics = train_step(state, batch)
            losses.append(float(metrics["loss"]))
            assert [x.sharding for x in jax.tree.leaves(state)] == before
        return losses, state

    unsharded = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
    ref, _ = run(unsharded, [{"input_ids": x} for x in ids], [contextlib.nullcontext] * 3)
    with jf.use_mesh(mesh, jf.FSDP_TP):
        model = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
    placed = [{"input_ids": jax.device_put(x, NamedSharding(mesh, PartitionSpec("fsdp")))} for x in ids]
    losses, state = run(model, placed, [lambda: jf.use_mesh(mesh, jf.FSDP_TP), plain_jax, plain_jax])
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    kernel = state.params["model"]["layers"]["block"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding == NamedSharding(shd.auto_mesh(mesh), PartitionSpec(None, "fsdp", "tp"))
