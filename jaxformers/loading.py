"""The one loading path: `load()` (HF directory, hub repo id, GGUF file or Orbax checkpoint) and the savers.

Steps: resolve files -> read config -> choose the model class -> build the model abstractly (`nnx.eval_shape`, no
random init of real weights) -> plan the conversion (totality + shapes, all errors at once) -> stream each tensor onto
its target sharding -> merge. Auto classes and `Model.from_pretrained` are façades over this function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformers import hub, models
from jaxformers.convert import engine, orbax_io
from jaxformers.convert.safetensors_io import (
    SAFE_INDEX,
    SAFE_SINGLE,
    TORCH_INDEX,
    TORCH_SINGLE,
    open_checkpoint,
    read_weight_map,
    remove_superseded_weights,
    save_safetensors,
    write_text_atomically,
)
from jaxformers.core import quant
from jaxformers.core import sharding as shd
from jaxformers.core.layers import Dense
from jaxformers.core.options import Options
from jaxformers.core.preflight import check_mesh, check_params

log = logging.getLogger("jaxformers")


def load(
    name_or_path,
    *,
    model_class=None,
    task: str | None = None,
    dtype=None,
    param_dtype=None,
    options: Options | None = None,
    mesh=None,
    rules=None,
    allow_pickle: bool = False,
    gguf_file: str | None = None,
    verify: bool = True,
    quantization=None,
    **kwargs,
):
    """Load a model.

    Args:
      name_or_path: local HF directory, jaxformers Orbax checkpoint directory, or hub repo id.
      model_class / task: which class to build (e.g. `BertForMaskedLM` or "masked-lm"); default: the checkpoint's
        `architectures[0]`, else the base model.
      dtype / param_dtype / options: compute dtype, storage dtype, or a full `Options`.
      torch_dtype: transformers' name for the weights' dtype, accepted for familiarity: it sets `param_dtype` (the
        compute dtype follows it), as "float32" / "bfloat16" / "float16", a torch dtype (`torch.bfloat16`; torch
        is not imported for it) or "auto": the checkpoint's own dtype (config.json's `dtype` / `torch_dtype`, else
        its first floating-point tensor's, as transformers). Not together with `dtype` or `param_dtype`.
      mesh / rules: stream every parameter directly onto its `NamedSharding` (rules: preset name or tuple; FSDP if
        a mesh is given without rules; default: the mesh and rules of an enclosing `use_mesh`). The mesh and the
        parameter shapes are checked first (`core.preflight`): a mis-sized mesh raises before anything is read.
      allow_pickle: permit pickled `pytorch_model.bin` (read with `torch.load(weights_only=True)`).
      gguf_file: a GGUF file name inside `name_or_path` (Llama family). Its tensors are dequantised to float32
        unless `quantization="gguf"` keeps them quantized.
      quantization: weight-only quantization of the linear layers (`jaxformers.core.quant`): a
        `QuantizationConfig`, a dict of its fields, "int8", "int4", or "gguf" (a GGUF file's block formats kept as
        they are where they map exactly, see `jaxformers.convert.gguf`). Each weight is quantized as it is read, one
        layer at a time, and placed on its sharding; no float copy of the model is made. A jaxformers Orbax
        checkpoint of a quantized model restores quantized without it.
      verify: for a jaxformers Orbax checkpoint, check its files against the sha256 checksums recorded at save
        before reading them (about 0.2 s per 100 MB; a mismatch is a ValueError naming the file).
      revision, cache_dir, local_files_only, token: hub options.
    """
    hub_opts = hub.HubOptions.pop_from(kwargs)
    quantization = quant.QuantizationConfig.coerce(quantization)
    if "torch_dtype" in kwargs:
        param_dtype = _torch_dtype(kwargs.pop("torch_dtype"), dtype, param_dtype)
    overrides = _config_overrides(kwargs)
    options = options or Options()
    if dtype is not None:
        options = options.replace(dtype=dtype)
    auto_dtype = isinstance(param_dtype, str) and param_dtype == "auto"  # known once the checkpoint is open
    if param_dtype is not None and not auto_dtype:
        options = options.replace(param_dtype=param_dtype)
    if mesh is None and shd.get_mesh() is not None:  # inside `use_mesh` / `jax.set_mesh`: load onto that mesh
        mesh, rules = shd.get_mesh(), shd.get_rules() if rules is None else rules
    if mesh is not None:
        rules = shd.resolve_rules(shd.FSDP if rules is None else rules, mesh)

    if isinstance(name_or_path, (str, Path)) and orbax_io.is_checkpoint(name_or_path):
        if auto_dtype:
            options = options.replace(param_dtype=_orbax_dtype(name_or_path))
        return _load_orbax(Path(name_or_path), model_class, task, options, mesh, rules, verify=verify,
                           quantization=quantization)  # fmt: skip

    if gguf_file is not None:
        from jaxformers.convert import gguf

        path = hub.resolve_file(name_or_path, gguf_file, hub_opts)
        config, source = gguf.config_from_gguf(path), gguf.GGUFSource(path)
        generation = {**config, **gguf.generation_config_from_gguf(path)}
    else:
        if quantization is not None and quantization.bits is None:
            raise ValueError(
                f'quantization="gguf" (bits=None) keeps a GGUF file\'s own formats, but {name_or_path} is not loaded '
                "from a GGUF file (gguf_file=...). Pass bits=8 or bits=4 to quantize its weights"
            )
        config = _read_json(hub.resolve_file(name_or_path, "config.json", hub_opts))
        source = _weights_source(name_or_path, hub_opts, allow_pickle)
        gen_file = hub.resolve_file(name_or_path, GENERATION_CONFIG, hub_opts, required=False)
        generation = config if gen_file is None else _read_json(gen_file)  # HF: the file replaces config.json's ids
    try:
        if auto_dtype:
            options = options.replace(param_dtype=_checkpoint_dtype(config, source))
        cls = _choose_class(config, model_class, task)
        cfg = cls.config_class.from_hf({**config, **overrides})
        model = _build(cls, cfg, source, options, mesh, rules, quantization)
    finally:
        source.close()
    return _with_generation_config(model, generation)


def _torch_dtype(value, dtype, param_dtype):
    """`load(torch_dtype=...)` as a `param_dtype`: a floating dtype, or "auto"; given with `dtype`/`param_dtype`, or
    anything else, a ValueError saying what to pass."""
    if dtype is not None or param_dtype is not None:
        other = f"dtype={dtype!r}" if dtype is not None else f"param_dtype={param_dtype!r}"
        raise ValueError(
            f"load() got both torch_dtype={value!r} and {other}. torch_dtype is transformers' name for the weights' "
            "dtype (param_dtype here; the compute dtype follows it unless dtype is given): pass only one of them"
        )
    text = str(value)  # a torch dtype prints as "torch.bfloat16": read by name, so torch need not be imported
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        dt = jnp.dtype(text.removeprefix("torch.") if isinstance(value, str) or text.startswith("torch.") else value)
    except (TypeError, ValueError):
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"torch_dtype={value!r} is not a floating-point dtype; pass 'float32', 'bfloat16', 'float16', a torch "
            "dtype such as torch.bfloat16, or 'auto' (the checkpoint's own dtype)"
        )
    return dt


def _checkpoint_dtype(config: dict, source) -> np.dtype:
    """transformers' `dtype="auto"`: config.json's `dtype` (`torch_dtype` before transformers 5), else the dtype of
    the first floating-point tensor of the checkpoint (else of its last tensor)."""
    from jaxformers.convert.safetensors_io import _DTYPES

    named = config.get("dtype") or config.get("torch_dtype")
    if isinstance(named, str):
        return _torch_dtype(named, None, None)
    found = None
    for key in source.keys():
        raw = source.dtype(key)  # "BF16" (safetensors), "torch.bfloat16" (pickle) or a numpy dtype (GGUF)
        if isinstance(raw, str):
            raw = _DTYPES.get(raw) or raw.removeprefix("torch.")
        found = np.dtype(raw)
        if jnp.issubdtype(found, jnp.floating):
            return found
    return found if found is not None else np.dtype(np.float32)


def _orbax_dtype(directory) -> np.dtype:
    """The dtype a jaxformers Orbax checkpoint stores (of its first floating-point array), for `torch_dtype="auto"`."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(orbax_io.resolve(directory) / "params")
    leaves = [np.dtype(x.dtype) for x in jax.tree.leaves(getattr(saved, "item_metadata", saved))]
    return next((d for d in leaves if jnp.issubdtype(d, jnp.floating)), leaves[-1] if leaves else np.float32)


GENERATION_CONFIG = "generation_config.json"


def _with_generation_config(model, settings: dict):
    """Attach the checkpoint's generation settings (`generation_config.json` if present, else the model config, as
    transformers reads them) to the classes that declare `can_generate`, where `jf.generate` picks them up."""
    if model.can_generate:
        from jaxformers.generation.config import GenerationConfig

        model.generation_config = GenerationConfig.from_model_config(settings)
    return model


_HEAD_KEYS = ("num_labels", "id2label", "label2id")


def _config_overrides(kwargs: dict) -> dict:
    """HF-style config overrides for new heads (`num_labels=5`, `id2label={...}`); anything else is a TypeError."""
    unknown = sorted(k for k in kwargs if k not in _HEAD_KEYS)
    if unknown:
        raise TypeError(f"load() got unexpected keyword arguments {unknown}")
    out = dict(kwargs)
    if "num_labels" in out and "id2label" not in out:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(out["num_labels"])}
    if "id2label" in out:
        out["id2label"] = {str(k): v for k, v in out["id2label"].items()}
        out.setdefault("label2id", {v: int(k) for k, v in out["id2label"].items()})
    out.pop("num_labels", None)
    return out


def _read_json(path: Path) -> dict:
    """The JSON object in `path` (config.json, generation_config.json): anything else is a ValueError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({e}). Re-download it or fix it.") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a JSON object ({{...}}), but it holds {json.dumps(data)[:80]}. "
            "Re-download it or fix it."
        )
    return data


def _weights_source(name_or_path, hub_opts: hub.HubOptions, allow_pickle: bool):
    # read_weight_map refuses shard names outside the model (`..`, absolute) before anything is downloaded;
    # open_checkpoint then refuses shards that resolve outside the directory through symlinks.
    index = hub.resolve_file(name_or_path, SAFE_INDEX, hub_opts, required=False)
    if index is not None:
        for shard in sorted(set(read_weight_map(index).values())):
            hub.resolve_file(name_or_path, shard, hub_opts)
        return open_checkpoint(index.parent)
    single = hub.resolve_file(name_or_path, SAFE_SINGLE, hub_opts, required=False)
    if single is not None:
        return open_checkpoint(single.parent)
    if hub.is_local(name_or_path):
        return open_checkpoint(Path(name_or_path).expanduser(), allow_pickle=allow_pickle)
    if not allow_pickle:
        raise FileNotFoundError(
            f"{name_or_path} has no safetensors weights ({SAFE_SINGLE} / {SAFE_INDEX}). If it only has "
            "pytorch_model.bin, pass allow_pickle=True (pickle files can run code; prefer safetensors)."
        )
    path = hub.first_existing(name_or_path, [TORCH_INDEX, TORCH_SINGLE], hub_opts)
    if path is None:
        raise FileNotFoundError(f"{name_or_path} has no weights (safetensors or pytorch_model.bin)")
    if path.name == TORCH_INDEX:
        for shard in sorted(set(read_weight_map(path).values())):
            hub.resolve_file(name_or_path, shard, hub_opts)
    return open_checkpoint(path.parent, allow_pickle=True)


def _choose_class(config: dict, model_class, task):
    """The class to build, from the registry's record for the checkpoint's `model_type`: `model_class` if given (it
    must be one of that model type's config), else the class of `task`, else the one config.json's `architectures`
    names, else the base model."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ValueError("config.json has no 'model_type'; cannot tell which architecture this checkpoint is")
    tasks = models.architecture(model_type).tasks(model_type)
    if model_class is not None:
        if getattr(model_class, "config_class", None) is not tasks["base"].config_class:
            names = ", ".join(c.__name__ for c in tasks.values())
            raise ValueError(
                f"checkpoint is a {model_type!r} model but {getattr(model_class, '__name__', model_class)} was "
                f"requested; use the Auto classes or a {model_type} class ({names})"
            )
        return model_class
    if task is not None:
        return models.model_class(model_type, task)
    for arch in config.get("architectures") or ():
        for cls in tasks.values():
            if arch in (cls.hf_architecture, cls.__name__):
                return cls
    return tasks["base"]


def abstract_model(cls, cfg, options: Options):
    return nnx.eval_shape(lambda: cls(cfg, options=options, rngs=nnx.Rngs(0)))


def _targets(abs_state, mesh, rules) -> dict[str, engine.Target]:
    out = {}
    for path, var in nnx.to_flat_state(abs_state):
        key = ".".join(str(p) for p in path)
        axes = var.get_metadata().get("axes")
        if axes is None:
            raise ValueError(f"parameter {key} has no logical axis names (model bug)")
        sharding = shd.named_sharding(axes, mesh, rules, var.shape) if mesh is not None else None
        out[key] = engine.Target(key, tuple(var.shape), var.dtype, sharding)
    return out


def _preflight(abstract, mesh, rules) -> None:
    """Mesh and parameter checks before anything is read or compiled (errors raise, warnings are logged)."""
    if mesh is None:
        return
    report = check_mesh(mesh).extend(check_params(abstract, mesh, rules)).raise_errors()
    for warning in report.warnings:
        log.warning("sharding: %s", warning)


def _build(cls, cfg, source, options: Options, mesh, rules, quantization=None):
    if not cls.hf_weights:  # bound by the model file's `ARCHITECTURE` record (`core.modeling.Architecture`)
        raise TypeError(
            f"{cls.__name__} has no HF weight table: it is not listed in its model file's ARCHITECTURE record. "
            "List it there (classes={model_type: {task: cls}}), or subclass a listed class"
        )
    abstract = abstract_model(cls, cfg, options)
    graphdef, abs_state = nnx.split(abstract)
    targets = _targets(abs_state, mesh, rules)
    plan = engine.plan_load(
        cls.hf_weights, cfg, targets, source, base_prefix=cls.base_attr, hf_prefix=cls.hf_prefix,
        optional=cls.init_if_missing,
    )  # fmt: skip
    if plan.unused:  # as transformers: expected (info) when loading another class than the checkpoint's own
        own = cls.hf_architecture in (cfg.extra.get("architectures") or ())
        shown = plan.unused[:10] + ([f"... {len(plan.unused) - 10} more"] if len(plan.unused) > 10 else [])
        (log.warning if own else log.info)(
            "%s: checkpoint tensors not used (heads or parts this class does not build): %s",
            cls.__name__,
            ", ".join(shown),
        )
    if plan.missing_head:
        log.warning(
            "%s: newly initialised (not in the checkpoint, train before use): %s",
            cls.__name__,
            ", ".join(plan.missing_head),
        )
    specs = _quant_specs(abstract, quantization, plan, source)
    if specs:  # the quantized model's structure; its float kernels are read and quantized layer by layer below
        abstract = nnx.eval_shape(lambda m: quant.apply_specs(m, specs), abstract)
    _preflight(abstract, mesh, rules)
    qgraphdef, qstate = nnx.split(abstract)
    qtargets = _targets(qstate, mesh, rules)
    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(abstract)}
    key = jax.random.key(0)
    values = {}
    from_codes = quantization is not None and quantization.bits is None
    for path, spec in specs.items():
        key, sub = jax.random.split(key)
        prefix, module = ".".join(path), modules[path]
        values.update(_quantized_layer(prefix, module, spec, from_codes, plan, targets, qtargets, source, cfg, sub))
    flat = []
    for path, var in nnx.to_flat_state(qstate):
        name = ".".join(str(p) for p in path)
        tgt = qtargets[name]
        if name in values:
            value = values.pop(name)
        elif name in plan.sources:
            value = engine.build_param(plan, name, tgt, source, cfg)
        else:
            key, sub = jax.random.split(key)
            value = _init_head_param(name, tgt, sub)
        flat.append((path, var.replace(value=value)))
    return nnx.merge(qgraphdef, nnx.from_flat_state(flat))


def _quant_specs(abstract, config, plan, source) -> dict:
    """`{module path: QuantSpec}` of the layers to quantize: the config's choice, or for `bits=None` (GGUF) each
    layer's file format where every tensor of it (all stacked layers) has one (`gguf.common_format`)."""
    if config is None:
        return {}
    if config.bits is not None:
        return quant.default_specs(abstract, config)
    from jaxformers.convert import gguf

    specs = {}
    skip = config.modules_to_not_convert or ()
    for path, module in nnx.iter_modules(abstract):
        path = tuple(str(p) for p in path)
        name = ".".join(path) + (".kernel" if isinstance(module, Dense) else ".embedding")
        if name in plan.sources and not any(quant.path_matches(path, n) for n in skip):
            spec = gguf.common_format([source.quantized_format(k) for k in plan.sources[name].values()])
            if spec is not None:
                specs[path] = dataclasses.replace(spec, compute=config.compute)
    return specs


class _CodeView:
    """A GGUF source seen through its kept codes: `get(key)` is the code values (`part="codes"`), or the scales or
    zeros repeated over their groups (so the tensor's shape), so that the conversion table's layout ops apply to
    them unchanged."""

    def __init__(self, source, spec: quant.QuantSpec, part: str):
        self.source, self.spec, self.part = source, spec, part

    def shape(self, key: str):
        return self.source.shape(key)

    def get(self, key: str) -> np.ndarray:
        codes, scale, zero = self.source.get_quantized(key, self.spec)
        if self.part == "codes":
            return codes
        per_group = scale if self.part == "scale" else zero
        return np.repeat(per_group, codes.shape[-1] // per_group.shape[-1], axis=-1)


def _quantized_layer(prefix, module, spec, from_codes, plan, targets, qtargets, source, cfg, key) -> dict:
    """Stored codes, scales (and zeros) of the quantized layer at `prefix`, built on the host one stacked layer at
    a time and placed on their targets' shardings: quantized from its float weights, or (`from_codes`) repacked from
    a GGUF file's own codes and scales."""
    dense = isinstance(module, Dense)
    leaf = "kernel" if dense else "embedding"
    name = f"{prefix}.{leaf}"
    shape = targets[name].shape
    n_in = len(module.in_shape) if dense else 0
    if from_codes:
        parts = ("codes", "scale", "zero")[: 3 if spec.zero else 2]
        readers = [
            engine.read_slots(plan, name, engine.Target(name, shape, np.int8 if part == "codes" else np.float32),
                              _CodeView(source, spec, part), cfg)
            for part in parts
        ]  # fmt: skip
        slots = [_pack_slot(spec, n_in, *slot) for slot in zip(*readers)]
    else:
        if name in plan.sources:
            floats = engine.read_slots(plan, name, engine.Target(name, shape, np.float32), source, cfg)
        else:  # a head the checkpoint lacks: fresh random weights, then quantized
            floats = [np.asarray(_init_head_param(name, engine.Target(name, shape, np.float32), key))]
        slots = [_quantize_slot(spec, n_in, w) for w in floats]
    stacked = name in plan.sources and plan.rule_for[name].stacked
    out = {}
    for suffix, arrays in zip(("", "_scale", "_zero"), zip(*slots)):
        tgt = qtargets[name + suffix]
        value = np.stack(arrays) if stacked else arrays[0]
        if value.shape != tgt.shape or value.dtype != tgt.dtype:
            raise ValueError(f"{tgt.path}: built {value.shape} {value.dtype}, model expects {tgt.shape} {tgt.dtype}")
        out[tgt.path] = jax.device_put(value, tgt.sharding) if tgt.sharding is not None else jax.device_put(value)
    return out


def _quantize_slot(spec: quant.QuantSpec, n_in: int, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Quantize one layer's float weights on the host CPU (`n_in` input dims of a Dense kernel; 0: a table)."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        w = jnp.asarray(w)
        out = quant.quantize_kernel(w, spec, lead=0, n_in=n_in) if n_in else quant.quantize_rows(w, spec)
    return tuple(np.asarray(x) for x in out)


def _pack_slot(spec: quant.QuantSpec, n_in: int, values, scale, zero=None) -> tuple[np.ndarray, ...]:
    """One layer's code values and per-element scales (and zeros), in the target layout, -> stored codes and one
    scale (and zero) per group (`n_in` input dims of a Dense kernel; 0: a table, grouped along its rows)."""
    if n_in:  # [*in, *out]: groups along the flattened input
        k, n = math.prod(values.shape[:n_in]), math.prod(values.shape[n_in:])
        g, out_shape = spec.groups(k), values.shape[n_in:]
        codes = quant.pack(values.reshape(g, k // g, n), spec, axis=1).reshape(-1, *out_shape)
        per_group = [x.reshape(g, k // g, n)[:, 0].reshape(g, *out_shape) for x in (scale, zero) if x is not None]
    else:  # [V, D]: groups along D
        v, d = values.shape
        g = spec.groups(d)
        codes = quant.pack(values.reshape(v, g, d // g), spec, axis=-1).reshape(v, -1)
        per_group = [x.reshape(v, g, d // g)[..., 0] for x in (scale, zero) if x is not None]
    return (codes, *per_group)


def _init_head_param(name: str, tgt: engine.Target, key) -> jax.Array:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "scale":
        value = jnp.ones(tgt.shape, tgt.dtype)
    elif leaf == "bias":
        value = jnp.zeros(tgt.shape, tgt.dtype)
    else:
        value = 0.02 * jax.random.normal(key, tgt.shape, tgt.dtype)
    return jax.device_put(value, tgt.sharding) if tgt.sharding is not None else value


def model_params(model) -> dict[str, jax.Array]:
    """Flat `{dotted.path: array}` of a model's parameters."""
    return {".".join(str(p) for p in path): var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def save_pretrained(model, directory) -> None:
    """HF layout: config.json + model.safetensors (+ generation_config.json), written so that `transformers` loads it
    unchanged.

    Each file is replaced atomically (temp file, fsync, rename). Once the new model.safetensors is complete, the
    weight files of an earlier save it supersedes are removed, as transformers' save_pretrained cleans up: a sharded
    checkpoint's index (first) and shards, pytorch_model*.bin and its index; other files stay. The folder as a whole
    is not replaced atomically (a crash between files can pair new weights with the old config.json): for that, use
    `save_checkpoint`. A jaxformers Orbax checkpoint directory is refused (`load` would keep reading the checkpoint).
    """
    from jaxformers import lora

    lora.check_no_adapters(model, "save_pretrained")  # the adapters have no place in a transformers checkpoint
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save_pretrained writes a directory. Choose another path.")
    if (directory / orbax_io.MARKER).is_file():
        raise FileExistsError(
            f"{directory} is a jaxformers Orbax checkpoint ({orbax_io.MARKER}); HF files saved into it would be "
            "ignored, since `load` reads the checkpoint. Save to another directory, or use save_checkpoint here."
        )
    directory.mkdir(parents=True, exist_ok=True)
    if quant.quantized_modules(model):  # HF files hold float weights: the values the quantized layers multiply by
        log.warning("save_pretrained: %s is quantized; writing its dequantized float32 weights", type(model).__name__)
        graphdef, state = nnx.split(model)
        model = quant.dequantize(nnx.merge(graphdef, state))  # a copy: `model` itself stays quantized
    params = {k: np.asarray(jax.device_get(v)) for k, v in model_params(model).items()}
    tensors = engine.export(
        model.hf_weights, model.config, params, base_prefix=model.base_attr, hf_prefix=model.hf_prefix
    )
    config = model.config.to_hf()
    config["architectures"] = [model.hf_architecture]
    dtypes = {str(v.dtype) for v in params.values()}
    config["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    save_safetensors(tensors, directory / SAFE_SINGLE)
    removed = remove_superseded_weights(directory, keep={SAFE_SINGLE})
    if removed:
        log.info("save_pretrained: removed weight files that %s supersedes: %s", SAFE_SINGLE, ", ".join(removed))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        defaults = type(generation)().to_dict()  # like HF, write only what differs from the defaults
        changed = {k: v for k, v in generation.to_dict().items() if v != defaults[k]}
        write_text_atomically(directory / GENERATION_CONFIG, json.dumps(changed, indent=2) + "\n")
    write_text_atomically(directory / "config.json", json.dumps(config, indent=2, sort_keys=True))


def save_checkpoint(model, directory, *, overwrite: bool = False) -> Path:
    """Orbax checkpoint (sharded arrays stay sharded; every host writes its own shards); atomic, with checksums.

    `directory` may be new, empty, or an earlier checkpoint (replaced atomically); anything else raises
    FileExistsError before anything is written. `overwrite=True` also replaces a non-empty directory that is not a
    checkpoint (never a file). A concurrent save to the same directory raises RuntimeError. See `orbax_io`.
    """
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    config = model.config.to_hf()
    config["architectures"] = [model.hf_architecture]  # the head this checkpoint holds
    meta = {"model_type": model.config.model_type, "architecture": model.hf_architecture}
    specs = quant.quantized_modules(model)
    if specs:  # restored quantized: `_load_orbax` rebuilds these layers before reading the codes
        meta["quantization"] = {".".join(path): dataclasses.asdict(spec) for path, spec in specs.items()}
    return orbax_io.save(state, config, meta, directory, overwrite=overwrite)


def _load_orbax(directory: Path, model_class, task, options: Options, mesh, rules, *, verify: bool = True,
                quantization=None):  # fmt: skip
    """Restore an Orbax checkpoint; `verify` first checks its files against the checksums recorded at save. A
    quantized checkpoint restores quantized; `quantization` quantizes a float one after it is read."""
    meta, config = orbax_io.read_meta(directory)
    if verify:  # before anything else is read, so that a corrupt file is reported as such
        orbax_io.verify_checksums(directory)
    config.setdefault("architectures", [meta["architecture"]])
    cls = _choose_class(config, model_class, task)
    cfg = cls.config_class.from_hf(config)
    saved = {tuple(k.split(".")): quant.QuantSpec(**v) for k, v in meta.get("quantization", {}).items()}
    if saved and quantization is not None:
        raise ValueError(
            f"{directory} holds a quantized model already; load it without quantization= (it restores quantized)"
        )
    if quantization is not None and quantization.bits is None:
        raise ValueError(f'quantization="gguf" applies to GGUF files; {directory} is an Orbax checkpoint')
    abstract_mdl = abstract_model(cls, cfg, options)
    if saved:
        abstract_mdl = nnx.eval_shape(lambda m: quant.apply_specs(m, saved), abstract_mdl)
    _preflight(abstract_mdl, mesh, rules)
    graphdef, abs_state = nnx.split(abstract_mdl)
    targets = _targets(abs_state, mesh, rules)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {}
    for path, var in nnx.to_flat_state(abs_state):
        tgt = targets[".".join(str(p) for p in path)]
        node = abstract
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jax.ShapeDtypeStruct(tgt.shape, tgt.dtype, sharding=tgt.sharding or local)
    try:
        restored = orbax_io.restore(directory, abstract, verify=False)  # verified above
    except ValueError as e:
        raise ValueError(f"checkpoint {directory} does not match the {cls.__name__} built from its config: {e}") from e
    nnx.replace_by_pure_dict(abs_state, restored)
    model = nnx.merge(graphdef, abs_state)
    if quantization is None:
        return model
    model = quant.quantize(model, quantization)
    if mesh is None:
        return model
    _preflight(model, mesh, rules)
    graphdef, state = nnx.split(model)  # the quantized arrays onto the shardings their axes give
    placed = jax.tree.map(
        lambda v: v.replace(value=jax.device_put(v[...], shd.named_sharding(v.get_metadata()["axes"], mesh, rules,
                                                                            v.shape))),
        state, is_leaf=lambda x: isinstance(x, nnx.Variable),
    )  # fmt: skip
    return nnx.merge(graphdef, placed)
