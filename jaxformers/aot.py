"""Ahead-of-time compilation for real TPU topologies from any host, and the planner behind `jaxformers plan`.

With `libtpu` importable (`pip install "jaxformers[tpu-aot]"`), JAX can build compile-only TPU devices for a named
topology on a machine without a TPU (`jax.experimental.topologies`). A program lowered onto a mesh of those devices
from `jax.ShapeDtypeStruct`s (shapes and shardings, no data) compiles with the real TPU compiler: Mosaic kernels,
SPMD partitioning, the HBM check. Its `memory_analysis()` is the per-chip memory of the real program and its
`cost_analysis()` the compiler's flop count and roofline time estimate (`optimal_seconds`).

    chips = tpu_topology("v5e-8")                               # or "v5e:2x4"; num_slices=2 for two slices
    mesh = topology_mesh(chips, "fsdp_tp")
    model = abstract_model(LLAMA3_8B_CONFIG, task="causal-lm", mesh=mesh, rules="fsdp_tp")   # no weights
    compiled = compile_train_step(model, mesh, "fsdp_tp", batch=8, seq=2048)
    report = plan(LLAMA3_8B_CONFIG, topology="v5p-8", preset="fsdp", task="train", batch=8, seq=2048)
    print(report.format())

Nothing here allocates a weight: models are built with `nnx.eval_shape`, and every input is a `ShapeDtypeStruct`
carrying its `NamedSharding`. Two limits of the compiler's cost model shape the planner: a loop body (`lax.scan`
over stacked layers, the decode `while_loop`) is counted once, so step times and flops come from shallow unrolled
twins of the model (1 and 2 layers, extrapolated linearly in depth, exact for identical layers); and a program that
does not fit is rejected at compile time, so "does not fit" is the compiler's own verdict and figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxformers import models
from jaxformers.core import quant
from jaxformers.core import sharding as shd
from jaxformers.core.options import Options
from jaxformers.core.preflight import check_mesh, check_params, format_bytes
from jaxformers.training import state as train_state
from jaxformers.training.optim import create_optimizer
from jaxformers.training.step import make_train_step


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, per chip (one JAX device: v4 and v5p run their two TensorCores as one megacore device).

    hbm_bytes: HBM a program may use, as the TPU compiler reports it when a program does not fit (a little under
    the physical size). peak_flops: dense bf16 matmul peak (Google Cloud TPU documentation, system architecture
    pages), the denominator of MFU.
    """

    generation: str
    device_kind: str
    hbm_bytes: int
    peak_flops: float


CHIPS = {
    "v5e": Chip("v5e", "TPU v5 lite", int(15.75 * 2**30), 197e12),
    "v5p": Chip("v5p", "TPU v5", int(95.74 * 2**30), 459e12),
}
# "v5e-N" counts chips; "v5p-N" counts TensorCores (two per chip), as Cloud TPU names its slices.
_CHIP_LAYOUTS = {
    "v5e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    "v5p": {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8"},
}


class LibtpuNotFoundError(ImportError):
    """No TPU compiler (`libtpu`) in this environment: nothing can be compiled for a TPU topology."""


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    """Compile-only TPU devices of a named topology (`tpu_topology`)."""

    name: str  # as the user wrote it ("v5e-8", "v5e:2x4")
    topology_name: str  # libtpu's name ("v5e:2x4")
    chip: Chip
    num_slices: int
    devices: tuple

    @property
    def num_devices(self) -> int:
        return len(self.devices)


def load_libtpu(path: str | os.PathLike | None = None) -> str:
    """Load the TPU compiler plugin once per process (compile-only: no TPU needs to be attached); returns its path.

    Where: `path`, else `TPU_LIBRARY_PATH`, else the `libtpu` package (`pip install "jaxformers[tpu-aot]"`). JAX's own
    backends are initialised first, so the process keeps its CPU (or GPU) backend as the default.
    """
    from jax._src.lib import xla_client

    jax.devices()
    if xla_client.pjrt_plugin_loaded("tpu"):
        return path or "(already loaded)"
    path = path or os.environ.get("TPU_LIBRARY_PATH")
    if path is None:
        spec = importlib.util.find_spec("libtpu")
        if spec is None or not spec.submodule_search_locations:
            raise LibtpuNotFoundError(
                "compiling for a TPU topology needs the TPU compiler, the `libtpu` package matching your jax: "
                "pip install 'jaxformers[tpu-aot]' (or set TPU_LIBRARY_PATH to a libtpu.so)"
            )
        path = os.path.join(spec.submodule_search_locations[0], "libtpu.so")
    if not os.path.isfile(path):
        raise LibtpuNotFoundError(f"libtpu not found at {path}; reinstall it with pip install 'jaxformers[tpu-aot]'")
    # libtpu looks for the TPU VM it runs on unless told the host is alone; these only silence that probe
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    # compile-only use holds no chip, so several processes (pytest -n 2, two planners) may load libtpu at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    xla_client.load_pjrt_plugin_dynamically("tpu", str(path))
    return str(path)


def parse_topology(name: str) -> tuple[Chip, str, dict]:
    """`"v5e-8"`, `"v5p-8"` or libtpu's `"v5e:2x4"` / `"v5p:2x2x1"` -> (chip, libtpu topology name, kwargs)."""
    m = re.fullmatch(r"(v5e|v5p)-(\d+)", name) or re.fullmatch(r"(v5e|v5p):(\d+(?:x\d+)+)", name)
    if m is None:
        raise ValueError(
            f"unknown TPU topology {name!r}: use a slice name such as v5e-1, v5e-8, v5p-8 or a layout such as "
            f"v5e:2x4, v5p:2x2x1 (known generations: {sorted(CHIPS)})"
        )
    gen, size = m.groups()
    if ":" in name:
        layout = size
    else:
        layout = _CHIP_LAYOUTS[gen].get(int(size))
        if layout is None:
            raise ValueError(f"no {gen} slice named {name!r}; known: {[f'{gen}-{n}' for n in _CHIP_LAYOUTS[gen]]}")
    dims = [int(d) for d in layout.split("x")]
    kwargs = {"chips_per_host_bounds": (1, 1, 1)} if math.prod(dims) == 1 else {}
    return CHIPS[gen], f"{gen}:{layout}", kwargs


def tpu_topology(name: str, *, num_slices: int = 1, libtpu: str | None = None) -> TpuTopology:
    """Compile-only devices of a TPU slice (`num_slices` > 1: several slices joined by data-center network)."""
    chip, topo_name, kwargs = parse_topology(name)
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    load_libtpu(libtpu)
    from jax.experimental import topologies

    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    devices = topologies.get_topology_desc(topology_name=topo_name, platform="tpu", **kwargs).devices
    return TpuTopology(name, topo_name, chip, num_slices, tuple(devices))


def mesh_shape(preset: str, num_devices: int, tp: int | None = None) -> dict[str, int]:
    """Axis sizes of one slice's mesh for a sharding preset: all devices on the preset's axis; `fsdp_tp` puts `tp`
    (default: the largest power of two <= sqrt(devices)) on the tensor axis and the rest on fsdp."""
    preset = preset.lower()
    if preset not in shd.PRESETS:
        raise ValueError(f"unknown sharding preset {preset!r}; choose one of {sorted(shd.PRESETS)}")
    if preset == "fsdp_tp":
        tp = tp or 2 ** int(math.log2(max(1, math.isqrt(num_devices))))
        if num_devices % tp:
            raise ValueError(f"tp={tp} does not divide the {num_devices} devices of the slice")
        return {"fsdp": num_devices // tp, "tp": tp}
    axis = {"dp": "data", "tp": "tp"}.get(preset, "fsdp")
    return {axis: num_devices}


def topology_mesh(topology: TpuTopology, preset: str, shape: Mapping[str, int] | None = None) -> Mesh:
    """A `("data", "fsdp", "tp")` mesh over the topology's devices (Auto axes, as `core.sharding.make_mesh`).

    shape: axis sizes within one slice (default `mesh_shape(preset, devices per slice)`). Several slices are joined
    on the `data` axis, the one whose traffic (a gradient all-reduce per step) crosses the slower network.
    """
    per_slice = topology.num_devices // topology.num_slices
    sizes = dict(shape or mesh_shape(preset, per_slice))
    ici = tuple(sizes.get(a, 1) for a in shd.MESH_AXES)
    if math.prod(ici) != per_slice:
        raise ValueError(f"mesh {sizes} has {math.prod(ici)} devices per slice; {topology.name} has {per_slice}")
    devices = list(topology.devices)
    if topology.num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, (topology.num_slices, 1, 1), devices)
    else:
        grid = mesh_utils.create_device_mesh(ici, devices)
    return Mesh(grid, shd.MESH_AXES, axis_types=(AxisType.Auto,) * len(shd.MESH_AXES))


# ---------------------------------------------------------------------------------------------------- models
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_decoder_layers", "encoder_layers",
                "decoder_layers")  # fmt: skip


def num_layers(config: Mapping[str, Any]) -> int:
    """The depth of a config.json dict (the first layer-count field it has)."""
    for name in LAYER_FIELDS:
        if name in config:
            return int(config[name])
    raise ValueError(f"config has no layer count (one of {LAYER_FIELDS})")


def with_layers(config: Mapping[str, Any], n: int) -> dict:
    """`config` with every layer-count field (and `layer_types`) cut to `n` layers."""
    out = dict(config)
    for name in LAYER_FIELDS:
        if name in out:
            out[name] = n
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:n]
    return out


def model_class(config: Mapping[str, Any], task: str | None = None) -> type:
    """The class to build: the registry's class for `task`, else the one config.json's `architectures` names,
    else a head with a loss (the causal LM of a decoder, the seq2seq LM of an encoder-decoder, the masked LM of an
    encoder), else the base model."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ValueError("the config has no 'model_type'; pass a config.json dict or a checkpoint directory")
    if task is not None:
        return models.model_class(model_type, task)
    tasks = models.architecture(model_type).tasks(model_type)
    for arch in config.get("architectures") or ():
        for cls in tasks.values():
            if arch == cls.hf_architecture:
                return cls
    return tasks.get("causal-lm") or tasks.get("seq2seq-lm") or tasks.get("masked-lm") or tasks["base"]


def generation_task(config: Mapping[str, Any]) -> str:
    """The head generation runs for a config.json dict: "seq2seq-lm" for an encoder-decoder, else "causal-lm"."""
    return "seq2seq-lm" if model_class(config).is_encoder_decoder else "causal-lm"


def tpu_quantization(quantization: quant.QuantizationConfig | str | dict | None) -> quant.QuantizationConfig | None:
    """`QuantizationConfig.coerce(quantization)`, with compute "auto" resolved as on a TPU ("weight_only": the TPU
    compiler fuses the dequantization into the dot) rather than as on this compile host's CPU."""
    config = quant.QuantizationConfig.coerce(quantization)
    if config is not None and config.bits is None:
        raise ValueError("quantization: bits=None keeps a GGUF file's own formats; plan with 'int8' or 'int4'")
    if config is not None and config.compute == "auto":
        config = dataclasses.replace(config, compute="weight_only")
    return config


def abstract_model(config: Mapping[str, Any], *, task: str | None = None, options: Options = Options(),
                   mesh: Mesh | None = None, rules: shd.Rules | str = "fsdp",
                   quantization: quant.QuantizationConfig | str | None = None) -> nnx.Module:  # fmt: skip
    """A model built from a config.json dict with no weights: every parameter a `ShapeDtypeStruct`, sharded over
    `mesh` by `rules` when a mesh is given (what `from_pretrained(..., mesh=, rules=, quantization=)` would place).

    quantization: "int8", "int4" or a `QuantizationConfig`: the layers it selects hold integer codes and float32
    scales (`core.quant`), multiplied as on a TPU (`tpu_quantization`)."""
    cls = model_class(config, task)
    cfg = cls.config_class.from_hf(dict(config))
    qconfig = tpu_quantization(quantization)

    def build():
        model = cls(cfg, options=options, rngs=nnx.Rngs(0))
        return model if qconfig is None else quant.quantize(model, qconfig)

    model = nnx.eval_shape(build)
    if mesh is None:
        return model
    rules = shd.resolve_rules(rules, mesh)
    graphdef, state = nnx.split(model)
    flat = []
    for path, var in nnx.to_flat_state(state):
        sharding = shd.named_sharding(var.get_metadata()["axes"], mesh, rules, var.shape)
        flat.append((path, var.replace(value=jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _batch_sharding(mesh: Mesh, rules: shd.Rules, ndim: int) -> NamedSharding:
    axes, _ = shd.batch_axes(rules, dict(mesh.shape))
    return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def abstract_batch(model: nnx.Module, mesh: Mesh, rules, batch: int, seq: int, *, labels: bool,
                   decoder_len: int | None = None) -> dict:  # fmt: skip
    """`ShapeDtypeStruct`s of a tokenized batch for `model` (input ids, mask, token types where the model takes
    them; labels shaped for its head), split over the batch axes of `rules`. An encoder-decoder reads `seq` source
    tokens; without labels (which it shifts into its decoder inputs) it also gets `decoder_input_ids` of
    `decoder_len` tokens (default `seq`)."""
    rules = shd.resolve_rules(rules, mesh)
    shd.check_batch(batch, rules, dict(mesh.shape))
    row, rows = _batch_sharding(mesh, rules, 1), _batch_sharding(mesh, rules, 2)
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=rows)
    out = {"input_ids": tokens, "attention_mask": tokens}
    from jaxformers.training.step import model_input_names

    if "token_type_ids" in model_input_names(model):
        out["token_type_ids"] = tokens
    if model.is_encoder_decoder and not labels:
        out["decoder_input_ids"] = jax.ShapeDtypeStruct((batch, decoder_len or seq), jnp.int32, sharding=rows)
    if labels:
        task = getattr(type(model), "task", "")
        if task == "question-answering":
            out |= {"start_positions": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=row)}
            out |= {"end_positions": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=row)}
        elif task == "sequence-classification":
            out["labels"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=row)
        else:
            out["labels"] = tokens
    return out


def compile_forward(model: nnx.Module, mesh: Mesh, rules, *, batch: int, seq: int,
                    decoder_len: int | None = None) -> jax.stages.Compiled:  # fmt: skip
    """The model's forward pass (inference, dropout off) on a `[batch, seq]` batch, compiled for the mesh (an
    encoder-decoder: `seq` source tokens, `decoder_len` decoder tokens, default `seq`)."""
    rules = shd.resolve_rules(rules, mesh)
    graphdef, state = nnx.split(model)
    inputs = abstract_batch(model, mesh, rules, batch, seq, labels=False, decoder_len=decoder_len)

    def forward(state, inputs):
        return nnx.merge(graphdef, state)(**inputs)

    with shd.use_mesh(mesh, rules):
        return jax.jit(forward).lower(state, inputs).compile()


def abstract_train_state(model: nnx.Module, optimizer, mesh: Mesh) -> train_state.TrainState:
    """The `TrainState` `TrainState.create(model, optimizer)` would build, as sharded `ShapeDtypeStruct`s: Adam's
    per-parameter slots sharded like their parameters, step counts and the key replicated."""
    from jaxformers.core.functional import pure

    _, params = pure(model)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = jax.eval_shape(optimizer.init, params)
    slots = train_state._slot_shardings(opt, params, replicated)
    opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt, slots)
    return train_state.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params,
        opt_state=opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
        frozen={},
    )


def compile_train_step(model: nnx.Module, mesh: Mesh, rules, *, batch: int, seq: int, optimizer=None,
                       compute_dtype=None) -> jax.stages.Compiled:  # fmt: skip
    """`make_train_step(model, optimizer)`'s step (AdamW by default: `create_optimizer`) on a `[batch, seq]` batch,
    compiled as it runs: state donated, outputs sharded like the inputs."""
    rules = shd.resolve_rules(rules, mesh)
    optimizer = optimizer or create_optimizer(1e-4, 1000, weight_decay=0.01)[0]
    state = abstract_train_state(model, optimizer, mesh)
    inputs = abstract_batch(model, mesh, rules, batch, seq, labels=True)
    step, _ = make_train_step(model, optimizer, compute_dtype=compute_dtype)
    with shd.use_mesh(mesh, rules):
        return step.lower(state, inputs).compile()


def compile_generate(model: nnx.Module, mesh: Mesh, rules, *, batch: int, prompt_len: int,
                     max_new_tokens: int) -> jax.stages.Compiled:  # fmt: skip
    """Greedy generation as `jf.generate` runs it on an accelerator (prefill into a static KV cache, then the
    decode `while_loop` over the scanned layers), in one program: its peak covers both phases.

    An encoder-decoder's `prompt_len` tokens are its source: the encoder runs once, every decoder layer's
    cross-attention K/V go into the cache, and the decoder starts from `decoder_start_token_id` (as `jf.generate`)."""
    from jaxformers.generation import decode
    from jaxformers.generation.config import GenerationConfig

    rules = shd.resolve_rules(rules, mesh)
    graphdef, state = nnx.split(model)
    tokens = abstract_batch(model, mesh, rules, batch, prompt_len, labels=False)["input_ids"]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=0)
    seq2seq = model.is_encoder_decoder
    # mBART has no start id (it starts from a language id): the value is a constant that never changes the program
    start = getattr(model.config, "decoder_start_token_id", None) or 0
    cache_len = (1 if seq2seq else prompt_len) + max_new_tokens

    def generate(state, ids):
        rows = ids.shape[0]
        src = (ids, jnp.ones_like(ids)) if seq2seq else ()
        if seq2seq:
            ids = jnp.full((rows, 1), start, jnp.int32)
        st = decode.greedy_start(
            graphdef, state, ids, jnp.ones_like(ids), jnp.zeros((rows,), jnp.int32), jnp.ones((rows,), bool), 0,
            jax.random.key(0), max_new_tokens, *src, cfg=cfg, cache_len=cache_len, buf_len=cache_len, unroll=False,
        )  # fmt: skip
        return decode.greedy_run(graphdef, state, st, max_new_tokens, cfg=cfg).hist.ids

    with shd.use_mesh(mesh, rules):
        return jax.jit(generate).lower(state, tokens).compile()


def compile_decode_step(model: nnx.Module, mesh: Mesh, rules, *, batch: int, cache_len: int,
                        source_len: int | None = None) -> jax.stages.Compiled:  # fmt: skip
    """One decode step (one new token per row against a full `cache_len` KV cache): the unit of generation time.
    An encoder-decoder runs its decoder only, against the cross-attention K/V of `source_len` source tokens."""
    rules = shd.resolve_rules(rules, mesh)
    graphdef, state = nnx.split(model)
    ids = abstract_batch(model, mesh, rules, batch, 1, labels=False)["input_ids"]
    cache = abstract_cache(model, mesh, rules, batch, cache_len, source_len=source_len)

    def step(state, ids, cache):
        model = nnx.merge(graphdef, state)
        call = model.decode if model.is_encoder_decoder else model
        out = call(ids, jnp.ones_like(ids), cache=cache, logits_to_keep=1)
        return out.logits, out.cache

    with shd.use_mesh(mesh, rules):
        return jax.jit(step, donate_argnums=2).lower(state, ids, cache).compile()


def abstract_cache(model: nnx.Module, mesh: Mesh, rules, batch: int, cache_len: int, *, source_len: int | None = None):
    """The model's empty KV cache as `ShapeDtypeStruct`s: rows split like the batch, kv heads like the attention
    activations (`act_kv_heads`) where the rules split them and the mesh divides them. An encoder-decoder's cache
    also holds every decoder layer's cross-attention K/V over `source_len` source tokens (`core.seq2seq`)."""
    rules = shd.resolve_rules(rules, mesh)
    shape = dict(mesh.shape)
    names = {5: (None, "act_batch", None, "act_kv_heads", None), 2: ("act_batch", None), 0: ()}

    def place(x):
        spec = shd.logical_spec(names[x.ndim], rules, shape, x.shape)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    if model.is_encoder_decoder:
        if source_len is None:
            raise ValueError("an encoder-decoder's cache holds the cross-attention K/V: pass source_len")
        graphdef, state = nnx.split(model)

        def init(state, src):  # the cross K/V's shapes come from the encoder's output and the decoder's projections
            m = nnx.merge(graphdef, state)
            return m.init_cache(batch, cache_len, m.encode(src).last_hidden_state)

        cache = jax.eval_shape(init, state, jax.ShapeDtypeStruct((batch, source_len), jnp.int32))
    else:
        cache = jax.eval_shape(lambda: model.init_cache(batch, cache_len))
    return jax.tree.map(place, cache)


def per_chip_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded `ShapeDtypeStruct`s / arrays (its shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


# ---------------------------------------------------------------------------------------------------- planner
TASKS = ("train", "generate", "forward")
_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds available HBM")
_SIZES = re.compile(r"\(([\d.]+)([KMGT])\)[^(]*\(([\d.]+)([KMGT])\)")


@dataclasses.dataclass
class MemoryBreakdown:
    """Per-chip bytes. weights/optimizer/kv_cache/inputs: from shapes and shardings (what each device holds);
    the compiled figures: `memory_analysis()` of the program (arguments, outputs not aliased to an argument,
    temporaries = activations and workspace), or, for a program the compiler rejected, its reported need."""

    weights: int = 0
    optimizer: int = 0
    kv_cache: int = 0
    inputs: int = 0
    arguments: int | None = None
    outputs: int | None = None
    temporaries: int | None = None
    needed: int | None = None  # the compiler's total when it rejected the program

    @property
    def peak(self) -> int | None:
        """Bytes the program needs on a chip (`arguments + outputs + temporaries`, donated outputs counted once)."""
        if self.arguments is None:
            return self.needed
        return self.arguments + self.outputs + self.temporaries


@dataclasses.dataclass
class Plan:
    """What `plan` found: per-chip memory, whether it fits, and the compiler's time estimate."""

    model: str
    topology: str
    chip: Chip
    num_devices: int
    mesh: dict
    preset: str
    task: str
    batch: int
    seq: int
    dtype: str
    remat: bool
    memory: MemoryBreakdown
    fits: bool
    quantization: str | None = None  # "int8" / "int4 (group 128)": the weight-only format of the linear layers
    compiler_message: str | None = None
    step_seconds: float | None = None  # train/forward: one step; generate: prefill + every decode step
    decode_seconds: float | None = None  # generate: one decode step
    flops_per_chip: float | None = None
    model_flops_per_chip: float | None = None  # 6 N per token (train) / 2 N per token (inference)
    warnings: list[str] = dataclasses.field(default_factory=list)
    suggestions: list[str] = dataclasses.field(default_factory=list)

    @property
    def mfu(self) -> float | None:
        """Compiler flops per chip / (estimated step time x the chip's bf16 peak)."""
        if not self.flops_per_chip or not self.step_seconds:
            return None
        return self.flops_per_chip / (self.step_seconds * self.chip.peak_flops)

    def format(self) -> str:
        """The human-readable report `jaxformers plan` prints."""
        m = self.memory
        mesh = ", ".join(f"{a}={n}" for a, n in self.mesh.items() if n > 1) or "one device"
        lines = [
            f"{self.model}: {self.task}, batch {self.batch} x {self.seq} tokens, {self.dtype}"
            + (f", {self.quantization} weights" if self.quantization else "") + (", remat" if self.remat else ""),
            f"{self.topology}: {self.num_devices} x {self.chip.device_kind}, preset {self.preset} ({mesh})",
            "per-chip HBM:",
            f"  weights          {format_bytes(m.weights):>12}",
        ]
        if self.task == "train":
            lines.append(f"  optimizer state  {format_bytes(m.optimizer):>12}")
        if self.task == "generate":
            lines.append(f"  KV cache         {format_bytes(m.kv_cache):>12}")
        lines.append(f"  batch            {format_bytes(m.inputs):>12}")
        if m.temporaries is not None:
            lines.append(f"  activations etc. {format_bytes(m.temporaries):>12}  (compiler temporaries)")
        peak = "unknown" if m.peak is None else format_bytes(m.peak)
        lines.append(f"  total            {peak:>12}  of {format_bytes(self.chip.hbm_bytes)}")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines.append(verdict + (f": {self.compiler_message}" if self.compiler_message else ""))
        if self.step_seconds is not None:
            what = "generation (prefill + decode)" if self.task == "generate" else "step"
            lines.append(f"estimated {what} time: {self.step_seconds * 1e3:.1f} ms (compiler roofline)")
            if self.decode_seconds:
                lines.append(f"  per decode step {self.decode_seconds * 1e3:.2f} ms: "
                             f"{self.batch / self.decode_seconds:,.0f} tokens/s")
        if self.mfu is not None:
            model_mfu = self.model_flops_per_chip / (self.step_seconds * self.chip.peak_flops)
            lines.append(f"estimated MFU: {self.mfu:.1%} of {self.chip.peak_flops / 1e12:.0f} TFLOP/s "
                         f"(compiler flops; {model_mfu:.1%} counting {6 if self.task == 'train' else 2}N "
                         "flops per token) -- an upper bound: the roofline assumes perfect overlap")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"suggestion: {s}" for s in self.suggestions]
        return "\n".join(lines)


def _count_params(model: nnx.Module, part: str | None = None) -> int:
    """Parameters of `model`, or of those whose path has a module named `part` (e.g. "encoder")."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return sum(math.prod(v.shape) for path, v in flat if part is None or part in map(str, path))


def _quant_name(config: quant.QuantizationConfig | None) -> str | None:
    if config is None:
        return None
    return f"int{config.bits}" + ("" if config.group_size is None else f" (group {config.group_size})")


def _compile(task: str, model, mesh, rules, batch: int, seq: int, max_new_tokens: int):
    if task == "train":
        return compile_train_step(model, mesh, rules, batch=batch, seq=seq)
    if task == "generate":
        return compile_generate(model, mesh, rules, batch=batch, prompt_len=seq, max_new_tokens=max_new_tokens)
    return compile_forward(model, mesh, rules, batch=batch, seq=seq)


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", 0.0))


def _depth_cost(config, depth: int, compile_at) -> tuple[float, float | None]:
    """(flops, seconds) of a `depth`-layer program from unrolled 1- and 2-layer twins: the compiler's cost model
    counts a loop body once, so the scanned full-depth program cannot be costed directly. The twins run without
    dropout (random bits cost little time, and the TPU compiler spent minutes on unrolled dropout layers); seconds
    is None when the cost model gives no time for the program (it reports a negative `optimal_seconds` then)."""
    quiet = {k: 0.0 for k, v in config.items() if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float))}
    (f1, t1), (f2, t2) = (_cost(compile_at(with_layers({**config, **quiet}, n))) for n in (1, 2))
    seconds = t1 + (depth - 1) * (t2 - t1) if min(t1, t2) > 0 else None
    return f1 + (depth - 1) * (f2 - f1), seconds


def plan(config: Mapping[str, Any], *, topology: str, preset: str = "fsdp", task: str = "train", batch: int = 8,
         seq: int = 2048, dtype: str = "bfloat16", remat: bool = False, max_new_tokens: int = 128,
         num_slices: int = 1, mesh: Mapping[str, int] | None = None, timing: bool = True,
         name: str | None = None, libtpu: str | None = None,
         quantization: quant.QuantizationConfig | str | None = None) -> Plan:  # fmt: skip
    """Compile `task` for `topology` from the config alone and report per-chip HBM, fit and estimated time.

    train: `make_train_step` with AdamW, float32 master weights, `dtype` compute. generate: greedy decoding of
    `max_new_tokens` after a `seq`-token prompt (an encoder-decoder's source), weights stored in `dtype`. forward:
    one inference forward pass. timing: also compile 1- and 2-layer twins for the step-time and MFU estimates.
    quantization: "int8", "int4" or a `QuantizationConfig` (generate / forward): the linear layers' weights stored
    as integer codes with float32 scales, as `from_pretrained(..., quantization=)` loads them; the rest in `dtype`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    qconfig = tpu_quantization(quantization)
    if qconfig is not None and task == "train":
        raise ValueError(
            "quantized weights are frozen (weight-only quantization has no gradient for its codes): plan "
            "--task generate or forward with --quant, or train the float model (LoRA adapters over quantized "
            "weights are not planned yet)"
        )
    for what, n in (("batch", batch), ("seq", seq), ("max_new_tokens", max_new_tokens)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{what} must be a positive integer, got {n!r}")
    chips = tpu_topology(topology, num_slices=num_slices, libtpu=libtpu)
    grid = topology_mesh(chips, preset, mesh)
    rules = shd.resolve_rules(preset, grid)
    param_dtype = jnp.float32 if task == "train" else jnp.dtype(dtype)
    options = Options(dtype=dtype, param_dtype=param_dtype, remat=remat)
    task_head = generation_task(config) if task == "generate" else None
    model = abstract_model(config, task=task_head, options=options, mesh=grid, rules=rules, quantization=qconfig)
    report = check_mesh(grid).extend(check_params(model, grid, rules))
    report.raise_errors()
    memory = MemoryBreakdown(weights=per_chip_bytes(nnx.state(model, nnx.Param)))
    inputs = abstract_batch(model, grid, rules, batch, seq, labels=task == "train")
    memory.inputs = per_chip_bytes(inputs)
    if task == "train":
        memory.optimizer = per_chip_bytes(abstract_train_state(model, create_optimizer(1e-4, 1000)[0], grid).opt_state)
    if task == "generate":
        seq2seq = model.is_encoder_decoder  # its cache: 1 start token + new ones, and the source's cross K/V
        memory.kv_cache = per_chip_bytes(abstract_cache(model, grid, rules, batch, (1 if seq2seq else seq) +
                                                        max_new_tokens, source_len=seq))  # fmt: skip
    out = Plan(
        model=name or str(config.get("_name_or_path") or config.get("model_type")), topology=chips.name,
        chip=chips.chip, num_devices=chips.num_devices, mesh=dict(grid.shape), preset=preset, task=task, batch=batch,
        seq=seq, dtype=jnp.dtype(dtype).name, remat=remat, memory=memory, fits=True, warnings=list(report.warnings),
        quantization=_quant_name(qconfig),
    )  # fmt: skip
    try:
        compiled = _compile(task, model, grid, rules, batch, seq, max_new_tokens)
    except Exception as e:  # the TPU compiler's HBM check: RESOURCE_EXHAUSTED with its own figures
        if not _OOM.search(str(e)):
            raise
        out.fits, out.compiler_message = False, str(e).strip().splitlines()[0]
        sizes = _SIZES.search(out.compiler_message)
        if sizes:
            value, unit = float(sizes.group(1)), sizes.group(2)
            memory.needed = int(value * 1024 ** "KMGT".index(unit) * 1024)
    else:
        stats = compiled.memory_analysis()
        memory.arguments = stats.argument_size_in_bytes
        memory.outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
        memory.temporaries = stats.temp_size_in_bytes
    if timing and out.fits:
        _estimate_time(out, config, task_head, options, grid, rules, max_new_tokens, qconfig)
    out.suggestions = _suggestions(out)
    return out


def _estimate_time(out: Plan, config, task_head, options: Options, grid: Mesh, rules, max_new_tokens: int,
                   qconfig: quant.QuantizationConfig | None) -> None:  # fmt: skip
    depth = num_layers(config)
    unrolled = options.replace(scan_layers=False)
    float_model = abstract_model(config, task=task_head, options=unrolled)
    n_params = _count_params(float_model)  # float: N of the 2N / 6N
    tokens = out.batch * out.seq

    def twin(cfg):
        return abstract_model(cfg, task=task_head, options=unrolled, mesh=grid, rules=rules, quantization=qconfig)

    if out.task == "generate":
        seq2seq = model_class(config, task_head).is_encoder_decoder
        decoder_len = 1 if seq2seq else None  # a seq2seq prefill: the encoder and the start token

        def prefill_at(c):
            return compile_forward(twin(c), grid, rules, batch=out.batch, seq=out.seq, decoder_len=decoder_len)

        def decode_at(c):
            cache_len = (1 if seq2seq else out.seq) + max_new_tokens
            return compile_decode_step(twin(c), grid, rules, batch=out.batch, cache_len=cache_len, source_len=out.seq)

        prefill, decode = _depth_cost(config, depth, prefill_at), _depth_cost(config, depth, decode_at)
        out.decode_seconds = decode[1]
        if prefill[1] is not None and decode[1] is not None:
            out.step_seconds = prefill[1] + max_new_tokens * decode[1]
        out.flops_per_chip = prefill[0] + max_new_tokens * decode[0]
        # 2 N per token; an encoder-decoder's source tokens run through the encoder's N, the generated ones through
        # the rest (decoder, embeddings, head)
        n_enc = _count_params(float_model, "encoder") if seq2seq else 0
        per_row = n_enc * out.seq + (n_params - n_enc) * max_new_tokens if seq2seq else \
            n_params * (out.seq + max_new_tokens)
        out.model_flops_per_chip = 2 * per_row * out.batch / out.num_devices
    else:
        compile_at = (lambda c: compile_train_step(twin(c), grid, rules, batch=out.batch, seq=out.seq)) if \
            out.task == "train" else (lambda c: compile_forward(twin(c), grid, rules, batch=out.batch, seq=out.seq))
        out.flops_per_chip, out.step_seconds = _depth_cost(config, depth, compile_at)
        out.model_flops_per_chip = (6 if out.task == "train" else 2) * n_params * tokens / out.num_devices
    if out.step_seconds is None:
        out.warnings.append("the TPU compiler's cost model gave no time for this program: no step time or MFU")


def _suggestions(out: Plan) -> list[str]:
    if out.fits:
        return []
    tips = []
    if out.task == "train" and not out.remat:
        tips.append("rematerialise layers in the backward pass (--remat): activations shrink to one layer's")
    if out.preset in ("replicated", "dp") and out.num_devices > 1:
        tips.append("shard the weights and optimizer state: --preset fsdp (or fsdp_tp)")
    if out.task != "train" and out.quantization is None:
        tips.append("store the weights in int8 (weight-only quantization, --quant int8) to halve their bytes")
    elif out.task != "train" and out.quantization.startswith("int8"):
        tips.append("store the weights in 4 bits (--quant int4) to halve them again")
    if out.task == "generate":
        tips.append("split the weights over more chips: --preset tp or fsdp_tp" + (" on a larger slice" if
                                                                                 out.num_devices == 1 else ""))
    tips.append(f"a larger slice (more chips than {out.topology}) to spread the weights"
                + (" and optimizer state" if out.task == "train" else ""))
    if out.batch > 1:
        tips.append(f"a smaller --batch (now {out.batch})")
    return tips


# ---------------------------------------------------------------------------------------------------- command line
def read_config(model_or_config: str) -> tuple[dict, str]:
    """A config.json dict (and a display name) from a config.json path, a model directory or a hub repo id (only
    its config.json is read)."""
    from jaxformers import hub

    path = Path(model_or_config).expanduser()
    if path.is_file():
        file, name = path, path.parent.name or path.name
    else:
        file, name = hub.resolve_file(model_or_config, "config.json"), model_or_config
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read a config.json from {file}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return config, name


def _mesh_arg(text: str) -> dict[str, int]:
    try:
        sizes = {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh takes AXIS=SIZE pairs such as fsdp=2,tp=4, got {text!r}") from None
    return sizes


def _quant_arg(args: argparse.Namespace) -> quant.QuantizationConfig | None:
    """`--quant` / `--group-size` as a `QuantizationConfig` (group size "auto": per channel for int8, 128 for int4)."""
    if args.quant is None:
        if args.group_size is not None:
            raise ValueError("--group-size applies to quantized weights: add --quant int8 or --quant int4")
        return None
    group = "auto" if args.group_size is None else args.group_size
    return quant.QuantizationConfig(bits=8 if args.quant == "int8" else 4, group_size=group)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `jaxformers plan` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "plan",
        help="compile for a TPU topology from the config alone: per-chip HBM, fits or not, step time, MFU",
        description="Compile a training step, generation or forward pass for a TPU slice on this machine (no TPU, "
        "no weights: needs libtpu, pip install 'jaxformers[tpu-aot]') and report what each chip would hold. Exit "
        "status 2 when the program does not fit.",
    )
    p.add_argument("model", help="config.json, a model directory, or a hub repo id (only its config.json is read)")
    p.add_argument("--topology", required=True, help="v5e-1, v5e-8, v5p-8, ... or a layout such as v5e:2x4")
    p.add_argument("--preset", default="fsdp", choices=sorted(shd.PRESETS), help="sharding preset (default fsdp)")
    p.add_argument("--task", default="train", choices=TASKS)
    p.add_argument("--batch", type=int, default=8, help="global batch (rows)")
    p.add_argument("--seq", type=int, default=2048, help="tokens per row (generate: the prompt)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generate: tokens generated after the prompt")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (generate: also the weights' dtype)")
    p.add_argument("--remat", action="store_true", help="train: rematerialise each layer in the backward pass")
    p.add_argument("--quant", choices=("int8", "int4"), default=None,
                   help="generate/forward: weight-only quantized linear layers (as from_pretrained(quantization=))")
    p.add_argument("--group-size", type=int, default=None,
                   help="--quant: input rows per scale (default: one scale per output channel for int8, 128 for int4)")
    p.add_argument("--num-slices", type=int, default=1, help="slices joined over the data-center network (data axis)")
    p.add_argument("--mesh", type=_mesh_arg, default=None, help="axis sizes within a slice, e.g. fsdp=2,tp=4")
    p.add_argument("--no-timing", action="store_true", help="skip the step-time / MFU estimate (two small compiles)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`jaxformers plan`: print the plan; returns the exit status (0 fits, 2 does not fit)."""
    try:  # never probe for a TPU to run on: every device here is compile-only
        jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS") or "cpu")
    except RuntimeError:  # backends already initialised (an embedding program): they stay as they are
        pass
    # a compile-only TPU program cannot be loaded back from JAX's persistent cache (it has no TPU client): writing
    # it there would only fill the user's cache and warn on the next run. Off for the plan only: a program that
    # calls `run` keeps its cache afterwards
    config, name = read_config(args.model)
    cache_was_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        result = plan(
            config, name=name, topology=args.topology, preset=args.preset, task=args.task, batch=args.batch,
            seq=args.seq, dtype=args.dtype, remat=args.remat, max_new_tokens=args.max_new_tokens,
            num_slices=args.num_slices, mesh=args.mesh, timing=not args.no_timing, quantization=_quant_arg(args),
        )  # fmt: skip
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was_on)
    if args.json:
        record = dataclasses.asdict(result) | {"mfu": result.mfu, "peak_bytes": result.memory.peak}
        print(json.dumps(record, indent=1, default=str))
    else:
        print(result.format())
    return 0 if result.fits else 2
