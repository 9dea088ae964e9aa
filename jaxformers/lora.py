"""LoRA / QLoRA adapters that move between jaxformers and PEFT (`adapter_config.json` + `adapter_model.safetensors`).

    import jaxformers as jf
    from jaxformers import lora
    model = jf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora.inject(model, jf.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]), seed=0)
    state = jf.training.TrainState.create(model, optimizer, trainable=lora.trainable(model))
    train_step, eval_step = jf.training.make_train_step(model, optimizer)    # unchanged: only the adapters train
    ...
    jf.training.update_model(model, state)
    lora.save_adapter(model, "out/adapter")        # PEFT loads it: PeftModel.from_pretrained(hf_model, "out/adapter")
    lora.merge_and_unload(model).save_pretrained("out/merged")                 # a plain model, for transformers

Design. `inject` turns each targeted `Dense` into a `LoraDense` (the same module and parameters, plus `lora_A`
`[*lead, *in, r]` and `lora_B` `[*lead, r, *out]`, `lead` being the stacked `layers` axis), which adds the PEFT
branch `scaling * (x @ A) @ B` to the layer's output; `scaling = lora_alpha / r` (`lora_alpha / sqrt(r)` with
`use_rslora`). The adapters are ordinary parameters, so `TrainState.create(..., trainable=lora.trainable(model))`
puts them (and `modules_to_save`, e.g. a fresh classifier) in `state.params` and every base weight in
`state.frozen`: the optimizer state holds only the adapters, and `make_train_step`, `eval_step` and `generate` need
no change. The base weights are never copied or merged during training.

QLoRA: inject into a quantized model (`from_pretrained(..., quantization=...)` or `core.quant.quantize`): the base
product stays the quantized matmul over the int8 / int4 codes and only the small adapter branch is float; the state,
the optimizer and the checkpoints hold the codes, never a float copy. Training needs the quantized product's gradient
with respect to its input: the "weight_only" compute gives the exact one, by differentiating the dequantized weights
(which the backward pass then keeps per layer, unless `core.quant.matmul` defines its own VJP); the dynamic "int8"
activation quantization ("auto" on CPU) has no correct gradient of its own, and `inject` warns about it.
`merge_and_unload` of a quantized layer dequantizes it (a float kernel, the layer is no longer quantized): export only.

Saving. `save_adapter` writes PEFT's two files (what `PeftModel.save_pretrained` writes), and so does
`Trainer.save_model` on an adapted model (with the tokenizer's files). `model.save_pretrained` of a model that still
has adapters raises: a transformers checkpoint has no place for them; `merge_and_unload` first for a full export.

Names. `target_modules` and `modules_to_save` use PEFT's matching on the transformers module names (a list: a name
equal to an entry or ending with `.entry`; a string: a regular expression matched against the whole name), which
the model's conversion table maps to jaxformers layers, so `["query", "value"]` (BERT) or `["q_proj", "v_proj"]`
(Llama) mean what they mean in PEFT. Saved keys are PEFT's: `base_model.model.<module>.lora_A.weight` `[r, in]` and
`lora_B.weight` `[out, r]`; `modules_to_save` tensors under their transformers names. The task type and its heads to
save follow PEFT: a sequence / token classification head adds `classifier` / `score` to `modules_to_save`.

Differences from PEFT, stated: `lora_dropout` is written to `adapter_config.json` but not applied when training here
(jaxformers layers receive no dropout key; a warning says so); it changes nothing at inference. Linear layers only
(no embedding or convolution adapters, no DoRA, no per-module `rank_pattern`), `bias="none"`, and every layer of a
stack gets the adapter (no `layers_to_transform`); each of these is a clear error. A fused transformers module that
jaxformers splits (GPT-2's `c_attn` into q/k/v) loads from PEFT but cannot be a training target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxformers import hub
from jaxformers.convert import engine
from jaxformers.convert.rules import Chunk, Rule
from jaxformers.convert.safetensors_io import SafetensorsSource, save_safetensors, write_text_atomically
from jaxformers.core import quant
from jaxformers.core.layers import Dense

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# jaxformers head -> PEFT task_type, and the head modules PEFT adds to `modules_to_save` for it.
_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS",
               "question-answering": "QUESTION_ANS", "causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM",
               "base": "FEATURE_EXTRACTION"}  # fmt: skip
_HEADS_TO_SAVE = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                  "QUESTION_ANS": ("qa_outputs",)}  # fmt: skip
# adapter_config.json fields this implementation does not support, with the value that means "not used".
_UNSUPPORTED = {"use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
                "layers_pattern": None, "target_parameters": None, "lora_bias": False,
                "trainable_token_indices": None, "layer_replication": None, "use_qalora": False,
                "use_bdlora": None, "alora_invocation_tokens": None}  # fmt: skip


@dataclass(frozen=True)
class LoraConfig:
    """PEFT's `LoraConfig` fields (same names, defaults and meaning) that jaxformers implements.

    r: adapter rank. lora_alpha: scaling numerator (`scaling = lora_alpha / r`, or `lora_alpha / sqrt(r)` with
      `use_rslora`). target_modules: transformers module names (list: exact name or `.name` suffix; str: regex on the
      whole name; "all-linear": every linear layer of the base model). exclude_modules: the same matching, removed.
    lora_dropout: recorded for PEFT; not applied in jaxformers training (module docstring). bias: "none" only.
    modules_to_save: modules trained in full and saved with the adapter (PEFT adds the head for SEQ_CLS /
      TOKEN_CLS / QUESTION_ANS task types). init_lora_weights: True (PEFT's default: A Kaiming-uniform, B zero, so
      the adapted model starts equal to the base), "gaussian" (A normal with std 1/r), or False (B random too).
    task_type: PEFT's task type; None: taken from the model's head when injecting.
    """

    r: int = 8
    lora_alpha: float = 8
    target_modules: tuple[str, ...] | str | None = None
    exclude_modules: tuple[str, ...] | str | None = None
    lora_dropout: float = 0.0
    bias: str = "none"
    modules_to_save: tuple[str, ...] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    fan_in_fan_out: bool = False

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraConfig: r (the adapter rank) must be a positive int, got {self.r!r}")
        if not self.target_modules:
            raise ValueError('LoraConfig: pass target_modules, e.g. ["query", "value"] (BERT), ["q_proj", "v_proj"] '
                             '(Llama) or "all-linear"')
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
                object.__setattr__(self, name, tuple(sorted(value) if isinstance(value, (set, frozenset)) else value))
            elif value is not None and not (isinstance(value, str) and name != "modules_to_save"):
                raise ValueError(f"LoraConfig: {name} must be a list of module names, got {value!r}")
        if self.bias != "none":
            raise ValueError(f"LoraConfig: bias={self.bias!r} is not supported (biases stay frozen): use "
                             'bias="none", and list a module in modules_to_save to train it whole')
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig: lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(f"LoraConfig: init_lora_weights={self.init_lora_weights!r} is not supported: use True, "
                             'False or "gaussian" (PiSSA / OLoRA / LoftQ initialisations rewrite the base weights)')

    @property
    def scaling(self) -> float:
        """The factor on the adapter branch: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft(self) -> dict:
        """The `adapter_config.json` content PEFT reads (`peft_type` LORA, inference mode)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return {**out, "peft_type": "LORA", "inference_mode": True, **_UNSUPPORTED}

    @classmethod
    def from_peft(cls, data: dict, where: str = "adapter_config.json") -> LoraConfig:
        """A config from PEFT's `adapter_config.json`; features jaxformers does not implement raise a ValueError."""
        if data.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{where}: peft_type={data.get('peft_type')!r}; jaxformers loads LoRA adapters only")
        used = {k: data[k] for k in _UNSUPPORTED if data.get(k) not in (None, _UNSUPPORTED[k], {}, [], False)}
        if used:
            raise ValueError(f"{where}: PEFT features jaxformers does not implement: {used}. Only plain LoRA on "
                             "linear layers (one rank for all, every layer of a stack) loads here")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class LoraDense(Dense):
    """A `Dense` (float or quantized) plus a LoRA branch: `y = dense(x) + scaling * (x @ lora_A) @ lora_B`.

    `inject` makes one from a `Dense` in place (same parameters and paths, two more); `merge_and_unload` folds the
    branch into the kernel and makes it a `Dense` again."""

    lora_scaling: float = 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        k, n = math.prod(self.in_shape), math.prod(self.out_shape)
        r = self.lora_A.shape[-1]
        x2 = x.astype(self.dtype).reshape(-1, k)
        h = jnp.dot(x2, self.lora_A[...].astype(self.dtype).reshape(k, r))
        delta = jnp.dot(h, self.lora_B[...].astype(self.dtype).reshape(r, n)) * self.lora_scaling
        return y + delta.reshape(y.shape).astype(y.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Where adapters can go: the model's Dense layers, named as transformers names their modules


@dataclass(frozen=True)
class _Site:
    """A `Dense` the conversion table maps from a transformers linear module.

    names: the transformers module name of each stacked layer (one name when not stacked). in_of_k / out_of_n: the
    transformers input (output) index of each row (column) of the flattened `[K, N]` kernel. fan_in / fan_out: the
    transformers module's sizes (fan_out counts every part of a fused module). head: outside the base model.
    """

    path: tuple[str, ...]
    names: tuple[str, ...]
    in_of_k: np.ndarray
    out_of_n: np.ndarray
    fan_in: int
    fan_out: int
    fused: bool
    head: bool
    stacked: bool


def _full_target(model, rule: Rule) -> str:
    return rule.target if rule.head or model.base_attr is None else f"{model.base_attr}.{rule.target}"


def _hf_names(model, rule: Rule, n_layers: int | None) -> tuple[str, ...]:
    """The transformers parameter key(s) `rule` reads in this model's own checkpoint layout."""
    keys = [rule.source_key(i) for i in range(n_layers)] if rule.stacked else [rule.source_key()]
    if not rule.head and model.base_attr is not None:
        keys = [f"{model.hf_prefix}.{k}" for k in keys]
    return tuple(keys)


def _layout(rule: Rule, module: Dense, cfg) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(in_of_k, out_of_n, fan_in, fan_out) of a kernel, found by running the rule's layout ops backwards on the
    kernel's element indices: whatever transposes and head splits the table does, the adapter factors follow."""
    k, n = math.prod(module.in_shape), math.prod(module.out_shape)
    ops = rule.ops
    chunk = ops[0] if ops and isinstance(ops[0], Chunk) else None
    idx = np.arange(k * n).reshape(module.in_shape + module.out_shape)
    for op in reversed(ops[1:] if chunk else ops):
        idx = op.inverse(idx, cfg)
    if idx.ndim != 2:
        raise ValueError(f"{rule.source}: a {idx.ndim}-D source tensor is not a linear layer's weight")
    rows, cols = idx // n, idx % n
    if (rows == rows[:1]).all() and (cols == cols[:, :1]).all():  # torch Linear: weight [out, in]
        in_of_k, out_of_n, out_axis = np.argsort(rows[0]), np.argsort(cols[:, 0]), 0
    elif (rows == rows[:, :1]).all() and (cols == cols[:1]).all():  # transformers Conv1D: weight [in, out]
        in_of_k, out_of_n, out_axis = np.argsort(rows[:, 0]), np.argsort(cols[0]), 1
    else:
        raise ValueError(f"{rule.source}: the table's layout ops mix input and output features")
    fan_out = n
    if chunk is not None:
        if chunk.axis % 2 != out_axis:
            raise ValueError(f"{rule.source}: a module fused along its input features cannot hold an adapter")
        out_of_n, fan_out = out_of_n + chunk.index * n, n * chunk.n
    return in_of_k, out_of_n, k, fan_out


def _sites(model) -> dict[tuple[str, ...], _Site]:
    """Every `Dense` of `model` that a transformers linear module maps to, by module path."""
    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    out = {}
    for rule in model.hf_weights:
        if not (isinstance(rule, Rule) and rule.active(model.config) and rule.target.endswith(".kernel")
                and rule.source.endswith(".weight")):  # fmt: skip
            continue
        path = tuple(_full_target(model, rule).split(".")[:-1])
        module = modules.get(path)
        if not isinstance(module, Dense):
            continue
        keys = _hf_names(model, rule, module.kernel.shape[0] if rule.stacked else None)
        in_of_k, out_of_n, fan_in, fan_out = _layout(rule, module, model.config)
        out[path] = _Site(path, tuple(k.removesuffix(".weight") for k in keys), in_of_k, out_of_n, fan_in, fan_out,
                          bool(rule.ops) and isinstance(rule.ops[0], Chunk), rule.head, rule.stacked)  # fmt: skip
    return out


def _strip(model, name: str) -> str:
    """A transformers module name without the base-model prefix (an adapter made on `BertModel` says
    `encoder.layer.0...`, one made on `BertForSequenceClassification` says `bert.encoder.layer.0...`)."""
    prefix = model.hf_prefix + "."
    return name[len(prefix) :] if name.startswith(prefix) else name


def _matches(pattern: tuple[str, ...] | str, name: str) -> bool:
    """PEFT's rule: a string is a regex matched against the whole name; a list matches a name equal to an entry or
    ending with `.entry`."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == t or name.endswith("." + t) for t in pattern)


def _name_hit(model, pattern, name: str) -> bool:
    return _matches(pattern, name) or _matches(pattern, _strip(model, name))


def _module_names(model) -> set[str]:
    """Every transformers module name of the model's table (linear or not), for error messages."""
    names = set()
    for rule in model.hf_weights:
        if isinstance(rule, Rule) and rule.active(model.config):
            n = 2 if rule.stacked else None
            names.update(k.rsplit(".", 1)[0] for k in _hf_names(model, rule, n))
    return names


def _select(model, config: LoraConfig, *, for_training: bool) -> dict[tuple[str, ...], _Site]:
    """The sites `config.target_modules` picks, or a ValueError naming what is wrong and what the model has."""
    sites, chosen = _sites(model), {}
    targets = config.target_modules
    for path, site in sites.items():
        if targets == "all-linear":
            flags = [not site.head] * len(site.names)
        else:
            flags = [_name_hit(model, targets, n) for n in site.names]
        if config.exclude_modules:
            flags = [f and not _name_hit(model, config.exclude_modules, n) for f, n in zip(flags, site.names)]
        if all(flags):
            chosen[path] = site
        elif any(flags):
            raise ValueError(f"target_modules={targets!r} selects only some layers of {'.'.join(path)} "
                             f"({sum(flags)} of {len(flags)}); jaxformers adapts every layer of a stack. Target "
                             "module names without a layer index")
    linear = sorted({n.rsplit(".", 1)[-1] for s in sites.values() for n in s.names})
    if targets != "all-linear" and not isinstance(targets, str):
        unmatched = [t for t in targets if not any(_name_hit(model, (t,), n) for s in sites.values() for n in s.names)]
        if unmatched:
            others = [t for t in unmatched if any(_name_hit(model, (t,), n) for n in _module_names(model))]
            why = (f"{others} name modules that are not linear layers (LoRA here adapts linear layers only); "
                   if others else "")  # fmt: skip
            raise ValueError(f"target_modules {unmatched} not found in {type(model).__name__}: {why}its linear "
                             f"modules are {linear}")
    if not chosen:
        raise ValueError(f"target_modules={targets!r} matches no linear module of {type(model).__name__}; its linear "
                         f"modules are {linear}")
    fused = sorted({s.names[0].rsplit(".", 1)[-1] for s in chosen.values() if s.fused})
    if for_training and fused:
        raise ValueError(f"{fused} are fused modules that jaxformers splits into several layers; an adapter trained "
                         "here could not be saved in PEFT's format. Target other modules (adapters made with PEFT "
                         "on them load with lora.load_adapter)")
    return chosen


def _saved_params(model, config: LoraConfig) -> dict[str, Rule]:
    """`{jaxformers dotted parameter path: rule}` of the `modules_to_save` parameters (a ValueError for a name that
    matches nothing, except the heads PEFT adds by task type, which a model may lack)."""
    names = config.modules_to_save or ()
    defaults = _HEADS_TO_SAVE.get(config.task_type, ())
    own = {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out, used = {}, set()
    for rule in model.hf_weights:
        if not isinstance(rule, Rule) or not rule.active(model.config):
            continue
        path = _full_target(model, rule)
        if path not in own:
            continue
        n = _layers_of(model, path) if rule.stacked else None
        modules = [k.rsplit(".", 1)[0] for k in _hf_names(model, rule, n)]
        for name in names:
            flags = [_name_hit(model, (name,), m) for m in modules]
            if all(flags):
                out[path] = rule
                used.add(name)
            elif any(flags):
                raise ValueError(f"modules_to_save entry {name!r} selects only some layers of {path}; name a module "
                                 "without a layer index")
    missing = [n for n in names if n not in used and n not in defaults]
    if missing:
        raise ValueError(f"modules_to_save {missing} not found in {type(model).__name__}")
    return out


def _layers_of(model, dotted_path: str) -> int:
    """Leading (stacked layers) size of the parameter at `dotted_path`."""
    node = model
    for part in dotted_path.split("."):
        node = getattr(node, part)
    return node.shape[0]


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def lora_modules(model) -> dict[tuple[str, ...], LoraDense]:
    """`{module path: LoraDense}` of the layers carrying an adapter (empty when the model has none)."""
    return {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model) if isinstance(m, LoraDense)}


def check_no_adapters(model, action: str) -> None:
    """Raise a ValueError naming the fix when `model` has LoRA adapters: `action` (e.g. "save_pretrained") writes
    a transformers checkpoint of the base weights, which has no place for them and would drop them silently."""
    adapted = lora_modules(model)
    if adapted:
        raise ValueError(f"{type(model).__name__} has LoRA adapters on {len(adapted)} layers, which {action} cannot "
                         "write (a transformers checkpoint holds the base weights only: the adapters would be lost). "
                         "Save the adapter in PEFT's format with jf.lora.save_adapter(model, directory), or fold it "
                         "into the weights with jf.lora.merge_and_unload(model) and then call save_pretrained")


def _with_task(config: LoraConfig, model) -> LoraConfig:
    """`config` with PEFT's task type (from the model's head when unset) and the head modules PEFT saves for it."""
    task_type = config.task_type or _TASK_TYPES.get(type(model).task)
    heads = _HEADS_TO_SAVE.get(task_type, ())
    to_save = tuple(config.modules_to_save or ()) + tuple(h for h in heads if h not in (config.modules_to_save or ()))
    return dataclasses.replace(config, task_type=task_type, modules_to_save=to_save or None)


def _attach(module: Dense, a: jax.Array, b: jax.Array, scaling: float, stacked: bool) -> None:
    """Give `module` the adapter `(a, b)` and make it a `LoraDense` (same parameters, same paths).

    Axis names: A takes the kernel's layer and input axes, B its layer and output axes (the rank axis is unnamed).
    On a mesh the factors are replicated (they are small), whatever the kernel's sharding."""
    if module.out_first:
        raise ValueError("this Dense holds a decoding layout ([out, in]); add adapters to the model itself")
    kernel = module.kernel
    lead, n_in, n_out = int(stacked), len(module.in_shape), len(module.out_shape)
    axes = tuple(kernel.get_metadata().get("axes") or (None,) * kernel.ndim)
    float_axes = getattr(module, "kernel_axes", None)  # a quantized kernel keeps its float kernel's axes here
    if float_axes is not None:
        axes = tuple(float_axes)
    in_axes = axes[lead : lead + n_in] if len(axes) == lead + n_in + n_out else (None,) * n_in
    sharding = getattr(kernel[...], "sharding", None)
    if isinstance(sharding, NamedSharding):
        a, b = (jax.device_put(x, NamedSharding(sharding.mesh, PartitionSpec())) for x in (a, b))
    module.lora_A = nnx.Param(a, axes=axes[:lead] + in_axes + (None,))
    module.lora_B = nnx.Param(b, axes=axes[:lead] + (None,) + axes[len(axes) - n_out :])
    module.lora_scaling = float(scaling)
    module.__class__ = LoraDense


def _init_factors(config: LoraConfig, rng: np.random.Generator, module: Dense, site: _Site):
    """PEFT's initialisation: A uniform in +-1/sqrt(fan_in) (Kaiming-uniform with a=sqrt(5)), or normal with std
    1/r ("gaussian"); B zero (or, init_lora_weights=False, uniform in +-1/sqrt(r) like an untouched nn.Linear).
    Drawn on the host (numpy): nothing to compile, and the factors are small."""
    lead = (module.kernel.shape[0],) if site.stacked else ()
    a_shape, b_shape = lead + module.in_shape + (config.r,), lead + (config.r,) + module.out_shape
    if config.init_lora_weights == "gaussian":
        a = rng.normal(0.0, 1.0 / config.r, a_shape)
    else:
        bound = 1.0 / math.sqrt(site.fan_in)
        a = rng.uniform(-bound, bound, a_shape)
    if config.init_lora_weights is False:
        bound = 1.0 / math.sqrt(config.r)
        b = rng.uniform(-bound, bound, b_shape)
    else:
        b = np.zeros(b_shape)
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)


def inject(model, config: LoraConfig, *, seed: int = 0):
    """Add fresh adapters to the layers `config.target_modules` names, in place (PEFT's `get_peft_model`); returns
    `model`. The adapted model computes exactly the base model's outputs until it trains (B starts at zero)."""
    if lora_modules(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters; merge_and_unload it first")
    config = _with_task(config, model)
    if config.lora_dropout:
        warnings.warn(f"lora_dropout={config.lora_dropout} is saved for PEFT but not applied when training in "
                      "jaxformers: its layers receive no dropout key (adapters train without dropout)", stacklevel=2)
    sites = _select(model, config, for_training=True)
    _warn_int8_gradients(model)
    _saved_params(model, config)  # an unknown modules_to_save name fails now, not when saving
    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    for i, (path, site) in enumerate(sorted(sites.items())):
        a, b = _init_factors(config, np.random.default_rng([seed, i]), modules[path], site)
        _attach(modules[path], a, b, config.scaling, site.stacked)
    model.lora_config = config
    return model


def _warn_int8_gradients(model) -> None:
    """Warn when quantized layers compute with dynamic int8 activations and `core.quant.matmul` has no VJP of its
    own: autodiff through the rounding then gives wrong input gradients, so adapters below them would train on
    wrong gradients."""
    specs = quant.quantized_modules(model).values()
    if isinstance(quant.matmul, jax.custom_vjp) or all(quant.resolve_compute(s.compute) != "int8" for s in specs):
        return
    warnings.warn("the quantized layers compute with dynamic int8 activations, which have no exact gradient: for "
                  "QLoRA training load with QuantizationConfig(..., compute=\"weight_only\")", stacklevel=3)


def trainable(model):
    """The `trainable=` predicate for `TrainState.create`: the adapters and the `modules_to_save` parameters."""
    config = _config_of(model)
    saved = {p.replace(".", "/") for p in _saved_params(model, config)}

    def predicate(path: str, _) -> bool:
        return path.endswith(("/lora_A", "/lora_B")) or path in saved

    return predicate


def _config_of(model) -> LoraConfig:
    config = getattr(model, "lora_config", None)
    if config is None or not lora_modules(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters: add them with lora.inject(model, config) or "
                         "lora.load_adapter(model, directory)")
    return config


def save_adapter(model, directory) -> Path:
    """Write the model's adapters as PEFT does: `adapter_config.json` and `adapter_model.safetensors` (float32),
    loadable with `peft.PeftModel.from_pretrained(transformers_model, directory)`. Returns the directory."""
    config = _config_of(model)
    sites = _sites(model)
    parts: dict[str, list] = {}
    for path, module in sorted(lora_modules(model).items()):
        site = sites[path]
        a = np.asarray(jax.device_get(module.lora_A[...]), np.float32)
        b = np.asarray(jax.device_get(module.lora_B[...]), np.float32)
        layers = range(a.shape[0]) if site.stacked else [None]
        for layer, name in zip(layers, site.names):
            a_l, b_l = (a, b) if layer is None else (a[layer], b[layer])
            r = a_l.shape[-1]
            a_hf = np.empty((r, site.fan_in), np.float32)
            a_hf[:, site.in_of_k] = a_l.reshape(-1, r).T
            parts.setdefault(name, []).append((a_hf, site, b_l.reshape(r, -1).T))
    tensors = {}
    for name, pieces in parts.items():
        a_hf, site, _ = pieces[0]
        if any(not np.array_equal(p[0], a_hf) for p in pieces[1:]):
            raise ValueError(f"{name} is one fused transformers module but its jaxformers parts hold different "
                             "lora_A factors; PEFT's format has one")
        b_hf = np.zeros((site.fan_out, a_hf.shape[0]), np.float32)
        for _, s, b_part in pieces:
            b_hf[s.out_of_n] = b_part
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a_hf
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b_hf
    saved = _saved_params(model, config)
    if saved:
        params = {p: np.asarray(jax.device_get(v)) for p, v in _flat_params(model).items() if p in saved}
        heads = engine.export(model.hf_weights, model.config, params, base_prefix=model.base_attr,
                              hf_prefix=model.hf_prefix)  # fmt: skip
        tensors.update({PEFT_PREFIX + k: v for k, v in heads.items()})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, directory / ADAPTER_WEIGHTS)
    write_text_atomically(directory / ADAPTER_CONFIG, json.dumps(config.to_peft(), indent=2, sort_keys=True) + "\n")
    return directory


def _flat_params(model) -> dict[str, nnx.Variable]:
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_adapter(model, directory, *, revision: str | None = None):
    """Load a PEFT LoRA adapter (a local directory or hub repo with `adapter_config.json` +
    `adapter_model.safetensors`) into `model`, in place (PEFT's `PeftModel.from_pretrained`); returns `model`.

    Modules the adapter names that the model lacks, a rank that differs from the config's, or PEFT features not
    implemented here raise a ValueError before the model changes."""
    if lora_modules(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters; merge_and_unload it first")
    opts = hub.HubOptions(revision=revision)
    config_path = hub.resolve_file(directory, ADAPTER_CONFIG, opts)
    config = LoraConfig.from_peft(json.loads(config_path.read_text()), str(config_path))
    source = SafetensorsSource([hub.resolve_file(directory, ADAPTER_WEIGHTS, opts)])
    try:
        tensors = {k: source.get(k) for k in source.keys()}
    finally:
        source.close()
    bad = [k for k in tensors if not k.startswith(PEFT_PREFIX)]
    if bad:
        raise ValueError(f"{ADAPTER_WEIGHTS}: keys {bad[:3]} lack PEFT's {PEFT_PREFIX!r} prefix; not a PEFT adapter")
    tensors = {k[len(PEFT_PREFIX) :]: v for k, v in tensors.items()}
    factors = {k: v for k, v in tensors.items() if re.search(r"\.lora_[AB]\.weight$", k)}
    other = [k for k in tensors if k not in factors]
    sites = _select(model, config, for_training=False)
    found = _collect(model, config, sites, factors)
    heads = _head_values(model, config, {k: tensors[k] for k in other})
    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    for path, (a, b) in found.items():
        _attach(modules[path], jnp.asarray(a), jnp.asarray(b), config.scaling, sites[path].stacked)
    params = _flat_params(model)
    for path, value in heads.items():
        var = params[path]
        old = var[...]
        var.set_value(jax.device_put(jnp.asarray(value, old.dtype), old.sharding))
    model.lora_config = config
    return model


def _collect(model, config: LoraConfig, sites: dict, factors: dict) -> dict:
    """`{module path: (A, B)}` in jaxformers layout from PEFT's per-module `[r, in]` / `[out, r]` tensors."""
    factors = {_strip(model, k): v for k, v in factors.items()}
    by_name = {_strip(model, n): (site, i) for site in sites.values() for i, n in enumerate(site.names)}
    unknown = sorted({k.rsplit(".", 2)[0] for k in factors} - set(by_name))
    if unknown:
        raise ValueError(f"the adapter has LoRA weights for {unknown[:5]}{' ...' if len(unknown) > 5 else ''}, which "
                         f"{type(model).__name__} does not adapt (target_modules={config.target_modules!r}); it was "
                         "made for another architecture or head")
    out = {}
    for site in sites.values():
        a_layers, b_layers = [], []
        for name in site.names:
            key = _strip(model, name)
            a_hf, b_hf = factors.get(f"{key}.lora_A.weight"), factors.get(f"{key}.lora_B.weight")
            if a_hf is None or b_hf is None:
                raise ValueError(f"the adapter's config targets {name} but its weights lack {key}.lora_A/B.weight")
            if a_hf.shape != (config.r, site.fan_in) or b_hf.shape != (site.fan_out, config.r):
                raise ValueError(f"{key}: lora_A {a_hf.shape} / lora_B {b_hf.shape} do not fit r={config.r} and the "
                                 f"module's [out={site.fan_out}, in={site.fan_in}]")
            module_in, module_out = _shapes(model, site.path)
            a_layers.append(a_hf.astype(np.float32).T[site.in_of_k].reshape(module_in + (config.r,)))
            b_layers.append(b_hf.astype(np.float32)[site.out_of_n].T.reshape((config.r,) + module_out))
        out[site.path] = (np.stack(a_layers), np.stack(b_layers)) if site.stacked else (a_layers[0], b_layers[0])
    return out


def _shapes(model, path: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    node = model
    for part in path:
        node = getattr(node, part)
    return node.in_shape, node.out_shape


def _head_values(model, config: LoraConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """jaxformers values of the `modules_to_save` tensors of an adapter file (through the conversion table)."""
    saved = _saved_params(model, config)
    by_key = {}
    for path, rule in saved.items():
        n = _layers_of(model, path) if rule.stacked else None
        for i, key in enumerate(_hf_names(model, rule, n)):
            by_key[_strip(model, key)] = (path, rule, i if rule.stacked else None)
    extra = sorted(k for k in tensors if _strip(model, k) not in by_key)
    if extra:
        raise ValueError(f"the adapter holds {extra[:5]}, which are neither LoRA factors nor parameters of its "
                         f"modules_to_save {list(config.modules_to_save or ())} in {type(model).__name__} (embedding "
                         "adapters and trained biases are not supported)")
    values: dict[str, dict] = {}
    for key, x in tensors.items():
        path, rule, layer = by_key[_strip(model, key)]
        for op in rule.ops:
            x = op.forward(x, model.config)
        values.setdefault(path, {})[layer] = x
    out = {}
    for path, per_layer in values.items():
        rule = saved[path]
        out[path] = np.stack([per_layer[i] for i in sorted(per_layer)]) if rule.stacked else per_layer[None]
    return out


def merge_and_unload(model, dtype=jnp.float32):
    """Fold every adapter into its kernel (`W + scaling * A @ B`) and drop the adapters, in place; returns `model`,
    a plain model for `save_pretrained` / export. A quantized layer is dequantized first (to `dtype`), so it ends as
    a float layer; float kernels keep their dtype."""
    for module in lora_modules(model).values():
        a, b = module.lora_A[...].astype(jnp.float32), module.lora_B[...].astype(jnp.float32)
        lead = a.ndim - len(module.in_shape) - 1
        r = a.shape[-1]
        delta = jnp.matmul(a.reshape(a.shape[:lead] + (-1, r)), b.reshape(b.shape[:lead] + (r, -1)))
        del module.lora_A, module.lora_B
        scaling = module.lora_scaling
        del module.lora_scaling
        module.__class__ = Dense
        if module.quant is not None:
            quant.dequantize(module, dtype)  # this layer only: a float kernel of the same values
        var = module.kernel
        w = var[...].astype(jnp.float32) + scaling * delta.reshape(var.shape)
        module.kernel = var.replace(value=w.astype(var.dtype))
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
