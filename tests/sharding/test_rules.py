"""Axis vocabulary, presets, mesh helpers and preflight: everything that needs no compiled model."""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from sharding_helpers import LLAMA

import jaxformers as jf
from jaxformers import models
from jaxformers.core import sharding as shd
from jaxformers.core.preflight import check_mesh, preflight
from jaxformers.models import llama

# Small sizes under the HF field names the architectures use (fields a config lacks are skipped).
TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, n_embd=48, n_layer=2, n_head=6, n_inner=37, n_positions=64,
            max_position_embeddings=64)  # fmt: skip


def _all_model_classes():
    for model_type in sorted(models.MODEL_TYPES):  # a registered file that cannot be imported fails collection
        for task, cls in sorted(models.architecture(model_type).tasks(model_type).items()):
            yield model_type, task, cls


@pytest.mark.parametrize("model_type,task,cls", list(_all_model_classes()), ids=lambda x: getattr(x, "__name__", x))
def test_every_parameter_has_logical_axes(model_type, task, cls):
    config_cls = models.config_class(model_type)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    cfg = config_cls.from_hf({"model_type": model_type, **{k: v for k, v in TINY.items() if k in fields}})
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) > 0
    for path, var in params:
        axes = var.get_metadata().get("axes")
        name = ".".join(map(str, path))
        assert axes is not None, f"{cls.__name__}.{name} has no logical axes"
        assert len(axes) == len(var.shape), f"{cls.__name__}.{name}: axes {axes} for shape {var.shape}"
        bad = [a for a in axes if a not in shd.WEIGHT_AXES]
        assert not bad, f"{cls.__name__}.{name}: {bad} are not weight axis names {shd.WEIGHT_AXES}"


def test_make_mesh_shapes_and_errors():
    mesh = jf.make_mesh({"fsdp": 4, "tp": 2})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tp": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(jf.make_mesh().shape) == {"data": 1, "fsdp": 8, "tp": 1}
    assert dict(jf.make_mesh((2, -1), ("data", "tp")).shape) == {"data": 2, "fsdp": 1, "tp": 4}
    assert dict(jf.make_mesh((2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tp": 2}
    with pytest.raises(shd.ShardingError, match="needs 16 devices but 8 are available"):
        jf.make_mesh({"fsdp": 16})
    with pytest.raises(shd.ShardingError, match="knows the axes"):
        jf.make_mesh({"model": 8})


def test_unknown_axes_in_rules_are_rejected():
    mesh = jf.make_mesh({"fsdp": 8})
    with pytest.raises(shd.ShardingError, match="unknown logical axis 'embedding'"):
        shd.resolve_rules((("embedding", "fsdp"),), mesh)
    with pytest.raises(shd.ShardingError, match="names mesh axis 'fsdpp'"):
        shd.resolve_rules((("embed", "fsdpp"),), mesh)
    with pytest.raises(shd.ShardingError, match="unknown sharding preset"):
        shd.resolve_rules("zero3", mesh)
    with pytest.raises(shd.ShardingError, match="names mesh axis 'fsdpp'"), jf.use_mesh(mesh, (("embed", "fsdpp"),)):
        pass


def test_partition_specs_per_preset():
    mesh = jf.make_mesh({"fsdp": 2, "tp": 4})
    shape = dict(mesh.shape)
    q = ("layers", "embed", "heads", "head_dim")
    expected = {
        "replicated": P(None, None, None, None),
        "dp": P(None, None, None, None),
        "fsdp": P(None, "fsdp", None, None),
        "tp": P(None, None, "tp", None),
        "fsdp_tp": P(None, "fsdp", "tp", None),
    }
    for name, spec in expected.items():
        assert shd.logical_spec(q, shd.PRESETS[name], shape, (2, 64, 8, 8)) == spec, name
    # vocab and embed both map to fsdp: the first divisible one takes it, the other stays replicated
    assert shd.logical_spec(("vocab", "embed"), jf.FSDP, shape, (128, 64)) == P("fsdp", None)
    assert shd.logical_spec(("vocab", "embed"), jf.FSDP, shape, (97, 64)) == P(None, "fsdp")
    # batch over (data, fsdp); size-1 axes are dropped
    assert shd.logical_spec(("act_batch", "act_seq"), jf.FSDP, shape) == P("fsdp", None)
    assert shd.logical_spec(("act_batch",), jf.FSDP, {"data": 2, "fsdp": 4, "tp": 1}) == P(("data", "fsdp"))


def test_constrain_is_identity_without_mesh():
    x = jax.numpy.ones((3, 5))
    assert shd.constrain(x, ("act_batch", "act_embed")) is x


def _abstract_llama(**overrides):
    cfg = llama.LlamaConfig.from_hf({**LLAMA, **overrides})
    return nnx.eval_shape(lambda: llama.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))


def test_preflight_reports_what_to_change():
    model = _abstract_llama(num_attention_heads=6, num_key_value_heads=2)
    mesh = jf.make_mesh({"tp": 4})
    with pytest.raises(shd.ShardingError) as err:
        preflight(model, mesh, jf.TP, batch_size=8)
    msg = str(err.value)
    assert "heads = 6 is not divisible by mesh axis 'tp' (size 4)" in msg and "use tp in [1, 2, 3, 6]" in msg
    # kv heads below the TP degree are replicated on purpose: a warning, not an error
    report = preflight(_abstract_llama(), jf.make_mesh({"tp": 8}), jf.TP, raise_errors=False)
    assert not report.errors
    assert any("kv_heads = 4 is not divisible by mesh axis 'tp' (size 8)" in w for w in report.warnings)
    # FSDP over 8 devices: every parameter split 8 ways
    report = preflight(_abstract_llama(), jf.make_mesh({"fsdp": 8}), jf.FSDP)
    total = sum(v.size * 4 for _, v in nnx.to_flat_state(nnx.state(_abstract_llama(), nnx.Param)))
    assert report.param_bytes_per_device == total // 8


def test_preflight_batch_and_mesh_errors():
    mesh = jf.make_mesh({"data": 2, "fsdp": 4})
    with pytest.raises(shd.ShardingError, match=r"batch size 6 is not divisible by 8.*data=2, fsdp=4.*e\.g\. 8"):
        preflight(_abstract_llama(), mesh, jf.FSDP, batch_size=6)
    preflight(_abstract_llama(), mesh, jf.DP, batch_size=6)  # DP splits the batch over data only
    explicit = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))
    assert not check_mesh(explicit).errors  # runs as its Auto twin (tests/sharding/test_explicit_mesh.py)
    manual = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Manual,))
    with pytest.raises(shd.ShardingError, match="not AxisType.Auto or Explicit"), jf.use_mesh(manual, jf.FSDP):
        pass


@pytest.mark.parametrize(
    "field,name,size,mesh,rules,axis",
    [
        ("hidden_size", "embed", 60, {"fsdp": 8}, jf.FSDP, "fsdp"),
        ("intermediate_size", "mlp", 90, {"fsdp": 2, "tp": 4}, jf.FSDP_TP, "tp"),
        ("num_attention_heads", "heads", 12, {"tp": 8}, jf.TP, "tp"),
    ],
    ids=["hidden-fsdp", "mlp-tp", "heads-tp"],
)
def test_preflight_names_the_size_and_the_axis_to_change(field, name, size, mesh, rules, axis):
    """A hidden size, MLP width or head count that its mesh axis does not divide: an error naming the size, the axis
    and the axis sizes that would work, raised before anything is read or compiled."""
    mesh = jf.make_mesh(mesh)
    with pytest.raises(shd.ShardingError) as err:
        preflight(_abstract_llama(**{field: size}), mesh, rules)
    msg = str(err.value)
    assert f"{name} = {size} is not divisible by mesh axis '{axis}' (size {mesh.shape[axis]})" in msg, msg
    assert f"use {axis} in {[d for d in range(1, size + 1) if size % d == 0]}" in msg, msg
    assert f"or rules that do not map '{name}' to '{axis}'" in msg, msg


class _FakeDevice:
    def __init__(self, kind: str, process_index: int = 0):
        self.platform, self.device_kind, self.process_index = "tpu", kind, process_index

    def __repr__(self):
        return f"FakeDevice({self.device_kind})"


def test_mesh_with_mixed_device_kinds_is_rejected():
    """`check_mesh` reads only the mesh's axis names, axis types and devices, so a stand-in mesh holds fake devices."""
    devices = np.array([_FakeDevice("TPU v5e"), _FakeDevice("TPU v4")])
    mesh = types.SimpleNamespace(axis_names=("fsdp",), axis_types=(AxisType.Auto,), devices=devices)
    errors = check_mesh(mesh).errors
    assert any("mixes device kinds ['tpu:TPU v4', 'tpu:TPU v5e']" in e and "device_kind == KIND" in e for e in errors)
    assert any("devices this runtime does not know" in e for e in errors)  # fakes are not jax.devices()
    with pytest.raises(shd.ShardingError, match="mixes device kinds"), jf.use_mesh(mesh, jf.FSDP):
        pass


def test_mesh_missing_a_process_is_rejected(monkeypatch):
    """With two processes, a mesh built from one process's devices (jax.local_devices()) leaves process 1 out."""
    mesh = jf.make_mesh({"fsdp": 8})
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    errors = check_mesh(mesh).errors
    assert any("processes [1] have no device in the mesh" in e and "not jax.local_devices()" in e for e in errors)
    with pytest.raises(shd.ShardingError, match=r"processes \[1\] have no device"):
        preflight(_abstract_llama(), mesh, jf.FSDP)


def test_distributed_initialize_is_a_noop_for_one_process(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert jf.distributed.initialize() is False
    assert jf.distributed.is_primary()
