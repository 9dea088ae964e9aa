"""A tiny Llama loaded onto 8 CPU devices under every preset: same logits, really sharded, same training step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sharding_helpers import LLAMA, build_llama, mesh_for

import jaxformers as jf
from jaxformers.convert import safetensors_io
from jaxformers.convert.engine import ConversionError
from jaxformers.core import sharding as shd

SHAPES = [(8,), (2, 4), (4, 2)]
IDS = np.random.RandomState(0).randint(0, LLAMA["vocab_size"], (8, 16)).astype(np.int32)


def _logits(params, apply, ids):
    return apply(params, ids).logits


@pytest.fixture(scope="module")
def reference(llama_dir):
    apply, params = jf.pure(jf.AutoModelForCausalLM.from_pretrained(llama_dir))
    return np.asarray(jax.jit(_logits, static_argnums=1)(params, apply, IDS))


def _expected_split(preset: str, mesh, name: str) -> int:
    """How many ways the big matrices are split under each preset (written out, not derived from the rules)."""
    fsdp, tp = mesh.shape["fsdp"], mesh.shape["tp"]
    kv_tp = tp if LLAMA["num_key_value_heads"] % tp == 0 else 1  # 4 kv heads: replicated over tp = 8
    by_preset = {"replicated": 1, "dp": 1, "fsdp": fsdp, "tp": kv_tp if "k_proj" in name else tp}
    by_preset["fsdp_tp"] = fsdp * by_preset["tp"]
    return by_preset[preset]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("preset", sorted(shd.PRESETS))
def test_sharded_forward_matches_unsharded(llama_dir, reference, preset, shape):
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    model = jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=rules)
    params = dict(jf.loading.model_params(model))
    for name in ("model.embed_tokens.embedding", "lm_head.kernel", "model.layers.block.self_attn.q_proj.kernel",
                 "model.layers.block.self_attn.k_proj.kernel", "model.layers.block.mlp.down_proj.kernel"):  # fmt: skip
        x = params[name]
        for shard in x.addressable_shards:
            assert shard.data.size * _expected_split(preset, mesh, name) == x.size, (name, x.sharding)
    if preset == "fsdp" and shape == (8,):  # every matrix: 1/8 on each device
        for name, x in params.items():
            assert all(s.data.size * 8 == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = jax.jit(_logits, static_argnums=1)(tree, apply, jf.shard_batch(IDS))
    batch_split = math.prod(mesh.shape[a] for a in shd.batch_axes(rules, dict(mesh.shape))[0])
    assert out.addressable_shards[0].data.shape[0] == 8 // batch_split
    np.testing.assert_allclose(np.asarray(out), reference, rtol=1e-5, atol=1e-5)


def _loss(params, apply, ids):
    logits = apply(params, ids[:, :-1]).logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def _train_step(params, opt_state, apply, ids):
    loss, grads = jax.value_and_grad(_loss)(params, apply, ids)
    updates, opt_state = _OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


_OPT = optax.adamw(1e-3, weight_decay=0.1)  # small lr: Adam scales fp noise in near-zero grads up to ~lr
_STEP = jax.jit(_train_step, static_argnums=2, donate_argnums=(0, 1))


@pytest.fixture(scope="module")
def reference_step(llama_dir):
    apply, params = jf.pure(jf.AutoModelForCausalLM.from_pretrained(llama_dir))
    params, _, loss = _STEP(params, _OPT.init(params), apply, IDS)
    return jax.tree.map(np.asarray, params), float(loss)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp"])
def test_sharded_train_step_matches_unsharded(llama_dir, reference_step, preset, shape):
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    apply, params = jf.pure(jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=rules))
    shardings = jax.tree.map(lambda x: x.sharding, params)
    with jf.use_mesh(mesh, rules):
        new, _, loss = _STEP(params, _OPT.init(params), apply, jf.shard_batch(IDS))
    ref_params, ref_loss = reference_step
    assert abs(float(loss) - ref_loss) < 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5), new, ref_params)
    for x, sharding in zip(jax.tree.leaves(new), jax.tree.leaves(shardings)):  # parameters stay where they were
        assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)


def test_each_device_reads_only_its_slice(llama_dir, monkeypatch):
    reads = []
    original = safetensors_io.SafetensorsSource.read

    def spy(self, key, box):
        reads.append((key, math.prod(b - a for a, b in box), math.prod(self.shape(key))))
        return original(self, key, box)

    monkeypatch.setattr(safetensors_io.SafetensorsSource, "read", spy)
    jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=jf.make_mesh({"fsdp": 8}), rules=jf.FSDP)
    assert {key for key, _, _ in reads} >= {"model.embed_tokens.weight", "lm_head.weight"}
    for key, got, total in reads:  # each read is one device's 1/8 slice of one tensor
        assert got * 8 == total, key


def test_batch_not_divisible_by_data_axes(llama_dir):
    mesh = jf.make_mesh({"data": 2, "fsdp": 4})
    apply, params = jf.pure(jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=mesh, rules=jf.FSDP))
    with pytest.raises(shd.ShardingError, match="batch size 6 is not divisible by 8"), jf.use_mesh(mesh, jf.FSDP):
        jax.jit(_logits, static_argnums=1)(params, apply, IDS[:6])
    with pytest.raises(shd.ShardingError, match="batch size 6 is not divisible by 8"):
        jf.shard_batch(IDS[:6], mesh, jf.FSDP)


def test_mis_sized_mesh_fails_before_loading(llama_dir):
    with pytest.raises(shd.ShardingError, match="heads = 8 is not divisible by mesh axis 'tp'"):
        jf.AutoModelForCausalLM.from_pretrained(llama_dir, mesh=jf.make_mesh({"data": 2, "tp": 3}), rules=jf.TP)


def test_checkpoint_shapes_must_match_config(tmp_path):
    build_llama(tmp_path, intermediate_size=96)
    cfg = (tmp_path / "config.json").read_text().replace('"intermediate_size": 96', '"intermediate_size": 128')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ConversionError, match=r"shape mismatch: .*mlp\.gate_proj\.weight \(96, 64\)"):
        jf.AutoModelForCausalLM.from_pretrained(tmp_path, mesh=jf.make_mesh({"fsdp": 8}))


def test_load_inside_use_mesh_takes_its_mesh_and_rules(llama_dir):
    mesh = jf.make_mesh({"fsdp": 2, "tp": 4})
    with jf.use_mesh(mesh, jf.FSDP_TP):
        model = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
    kernel = nnx.state(model, nnx.Param)["lm_head"]["kernel"][...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tp")
