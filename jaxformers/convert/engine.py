"""The one conversion engine: runs a model file's rule table HF -> jaxformers (load) and back (export).

Load: match every checkpoint key to exactly one Rule or Ignore, check totality and shapes against the abstract
model, report every problem in one error, then build each parameter from its source tensors, placing it directly on
its target sharding with `jax.make_array_from_callback` (each device reads only the layers its slice needs).
Export: invert the ops, unstack layers, re-fuse chunked tensors, and restore HF key names.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.convert.rules import Chunk, Ignore, Rule

log = logging.getLogger("jaxformers")


class ConversionError(ValueError):
    """A checkpoint does not fit the model: every problem found, listed together."""


@dataclass
class Target:
    """A parameter of the abstract model: full dotted path, shape, dtype and (optional) sharding."""

    path: str
    shape: tuple[int, ...]
    dtype: object
    sharding: object = None


@dataclass
class Plan:
    rule_for: dict[str, Rule] = field(default_factory=dict)  # target path -> rule
    sources: dict[str, dict] = field(default_factory=dict)  # target path -> {layer index | None: source key}
    missing_head: list[str] = field(default_factory=list)  # head params absent from the checkpoint
    unused: list[str] = field(default_factory=list)  # keys of other heads / ignored buffers


def _full_target(rule: Rule, base_prefix: str | None) -> str:
    return rule.target if rule.head or not base_prefix else f"{base_prefix}.{rule.target}"


def plan_load(rules, cfg, targets: dict[str, Target], source, *, base_prefix: str | None, hf_prefix: str) -> Plan:
    """Match source keys to targets and check totality and shapes; raise one ConversionError listing all problems.

    base_prefix: attribute holding the base model in this class (None for the base model itself).
    hf_prefix: the HF key prefix of the base model in head checkpoints (`bert`, `model`, `transformer`).
    """
    plan, problems = Plan(), []
    active = [r for r in rules if isinstance(r, Rule) and r.active(cfg)]
    inactive = [r for r in rules if isinstance(r, Rule) and not r.active(cfg)]
    ignores = [r for r in rules if isinstance(r, Ignore)]
    for key in source.keys():
        stripped = key[len(hf_prefix) + 1 :] if key.startswith(hf_prefix + ".") else key
        hit = None
        for rule in active:
            idx = rule.match(key if rule.head else stripped)
            if idx is not None:
                hit = (rule, idx)
                break
        if hit is None:
            if any(r.match(key if r.head else stripped) is not None for r in inactive) or any(
                i.match(stripped) or i.match(key) for i in ignores
            ):
                plan.unused.append(key)
            else:
                problems.append(f"unexpected checkpoint tensor {key!r} (no rule maps it)")
            continue
        rule, idx = hit
        path = _full_target(rule, base_prefix)
        if path not in targets:  # belongs to another head of this architecture (e.g. cls.* for BertModel)
            plan.unused.append(key)
            continue
        layer = idx if rule.stacked else None
        slot = plan.sources.setdefault(path, {})
        if layer in slot:
            problems.append(f"{path} is filled twice: by {slot[layer]!r} and {key!r}")
        slot[layer] = key
        plan.rule_for[path] = rule
    for path, tgt in targets.items():
        if path not in plan.sources:
            head_param = base_prefix is not None and not path.startswith(base_prefix + ".")
            if head_param:
                plan.missing_head.append(path)
            else:
                problems.append(f"parameter {path} {tgt.shape} not found in the checkpoint")
            continue
        problems.extend(_check_shapes(plan.rule_for[path], plan.sources[path], tgt, source, cfg))
    if problems:
        raise ConversionError(
            f"checkpoint does not match the model ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    return plan


def _check_shapes(rule: Rule, keys: dict, tgt: Target, source, cfg) -> list[str]:
    out = []
    if rule.stacked:
        want = set(range(tgt.shape[0]))
        if set(keys) != want:
            missing = sorted(want - set(keys))
            extra = sorted(set(keys) - want)
            return [f"{tgt.path}: layers {missing} missing / {extra} unexpected (config has {tgt.shape[0]} layers)"]
    for layer, key in sorted(keys.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        shape = source.shape(key)
        try:
            got = _apply_shape(rule, shape, cfg)
        except ValueError as e:
            out.append(f"{key} {shape}: {e}")
            continue
        expected = tgt.shape[1:] if rule.stacked else tgt.shape
        if tuple(got) != tuple(expected):
            out.append(f"shape mismatch: {key} {shape} -> {tuple(got)}, but {tgt.path} expects {tuple(expected)}")
            break  # one report per family is enough
    return out


def _apply_shape(rule: Rule, shape, cfg):
    for op in rule.ops:
        shape = op.shape(tuple(shape), cfg)
    return shape


def _convert(rule: Rule, x: np.ndarray, cfg) -> np.ndarray:
    for op in rule.ops:
        x = op.forward(x, cfg)
    return x


def build_param(plan: Plan, path: str, tgt: Target, source, cfg) -> jax.Array:
    """Materialise one parameter, reading only what each shard needs when a sharding is given."""
    rule, keys = plan.rule_for[path], plan.sources[path]

    def read(layer):
        return _convert(rule, source.get(keys[layer]), cfg).astype(tgt.dtype)

    def block(index):
        if not rule.stacked:
            return read(None)[index]
        layers = range(tgt.shape[0])[index[0]]
        return np.stack([read(i)[index[1:]] for i in layers])

    if tgt.sharding is None:
        full = block(tuple(slice(None) for _ in tgt.shape))
        return jnp.asarray(full, dtype=tgt.dtype)
    return jax.make_array_from_callback(tgt.shape, tgt.sharding, block)


def export(rules, cfg, params: dict[str, np.ndarray], *, base_prefix: str | None, hf_prefix: str) -> dict:
    """Invert the table: jaxformers parameters (dotted path -> array) to HF tensors (key -> array)."""
    out: dict[str, np.ndarray] = {}
    chunks: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    chunk_axis: dict[str, int] = {}
    for rule in rules:
        if not isinstance(rule, Rule) or not rule.active(cfg):
            continue
        path = _full_target(rule, base_prefix)
        if path not in params:
            continue
        value = np.asarray(params[path])
        per_layer = {i: value[i] for i in range(value.shape[0])} if rule.stacked else {None: value}
        for layer, x in per_layer.items():
            ops = rule.ops
            first_chunk = ops and isinstance(ops[0], Chunk)
            for op in reversed(ops[1:] if first_chunk else ops):
                x = op.inverse(x, cfg)
            key = rule.source_key(layer)
            if not rule.head and base_prefix is not None:
                key = f"{hf_prefix}.{key}"
            if first_chunk:
                chunks[key][ops[0].index] = x
                chunk_axis[key] = ops[0].axis
            else:
                out[key] = np.ascontiguousarray(x)
    for key, parts in chunks.items():
        out[key] = np.concatenate([parts[i] for i in sorted(parts)], axis=chunk_axis[key])
    return out
