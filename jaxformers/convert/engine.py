"""The one conversion engine: runs a model file's rule table HF -> jaxformers (load) and back (export).

Load: match every checkpoint key to exactly one Rule or Ignore, check totality and shapes against the abstract
model, report every problem in one error, then build each parameter from its source tensors: for each distinct
device block of its target sharding, read only that block from the checkpoint (through the layout ops), copy it to
the devices holding it, and assemble the global array with `jax.make_array_from_single_device_arrays`. Only head
tensors the model class does not build (another head's classifier, a base model's missing pooler) may go unused.
Export: invert the ops, unstack layers, re-fuse chunked tensors, and restore HF key names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import jax
import numpy as np

from jaxformers.convert.rules import Chunk, Ignore, Rule, SplitAxis, T

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
    unused: list[str] = field(default_factory=list)  # keys of heads (or optional parts) this class does not build
    ignored: list[str] = field(default_factory=list)  # keys an `Ignore` names (buffers, pretraining-only heads)


def _full_target(rule: Rule, base_prefix: str | None) -> str:
    return rule.target if rule.head or not base_prefix else f"{base_prefix}.{rule.target}"


def plan_load(
    rules, cfg, targets: dict[str, Target], source, *, base_prefix: str | None, hf_prefix: str, optional=()
) -> Plan:
    """Match source keys to targets and check totality and shapes; raise one ConversionError listing all problems.

    base_prefix: attribute holding the base model in this class (None for the base model itself).
    hf_prefix: the HF key prefix of the base model in head checkpoints (`bert`, `model`, `transformer`).
    optional: base-model path prefixes that may be absent and are then freshly initialised (BERT's pooler,
      which masked-LM checkpoints do not have); head parameters are always optional.

    Checkpoint tensors with nowhere to go: those of heads (or `optional` parts) this class does not build are
    listed in `plan.unused` for the caller to log; any other one is a problem, named with the config flag that most
    likely contradicts the weights (`attention_bias=false?`), since dropping it would silently change the outputs.
    """
    plan, problems = Plan(), []
    active = [r for r in rules if isinstance(r, Rule) and r.active(cfg)]
    inactive = [r for r in rules if isinstance(r, Rule) and not r.active(cfg)]
    ignores = [r for r in rules if isinstance(r, Ignore)]
    unbuilt: dict[tuple[Rule, str | None], list[str]] = defaultdict(list)  # (rule, target path) -> keys, in order
    for key in source.keys():
        stripped = key[len(hf_prefix) + 1 :] if key.startswith(hf_prefix + ".") else key
        hits = [(r, i) for r in active for i in [r.match(key if r.head else stripped)] if i is not None]
        if not hits:
            off = [r for r in inactive if r.match(key if r.head else stripped) is not None]
            if off and not off[0].head:  # the config switched this parameter off, but the checkpoint has it
                unbuilt[(off[0], None)].append(key)
            elif off:  # e.g. an lm_head while the config ties embeddings: HF ties (ignores it) too
                plan.unused.append(key)
            elif any(i.match(stripped) or i.match(key) for i in ignores):
                plan.ignored.append(key)
            else:
                problems.append(f"unexpected checkpoint tensor {key!r} (no rule maps it)")
            continue
        if len(hits) > 1 and not all(r.ops and isinstance(r.ops[0], Chunk) for r, _ in hits):
            problems.append(f"{key!r} matches several rules: {[r.source for r, _ in hits]} (table bug)")
            continue
        for rule, idx in hits:  # several only for a fused tensor chunked into several targets
            path = _full_target(rule, base_prefix)
            if path not in targets:
                if rule.head or rule.target.startswith(tuple(optional)):  # another head (cls.* for BertModel)
                    if key not in plan.unused:
                        plan.unused.append(key)
                else:  # a base-model tensor the model does not build: dropping it would change the outputs
                    unbuilt[(rule, path)].append(key)
                continue
            layer = idx if rule.stacked else None
            slot = plan.sources.setdefault(path, {})
            if layer in slot:
                problems.append(f"{path} is filled twice: by {slot[layer]!r} and {key!r}")
            slot[layer] = key
            plan.rule_for[path] = rule
    for (rule, path), keys in unbuilt.items():
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        where = "the config builds no such parameter" if path is None else f"the model has no parameter {path}"
        problems.append(f"checkpoint has {keys[0]}{more} but {where} ({_flag_hint(rule, cfg)})")
    for path, tgt in targets.items():
        if path not in plan.sources:
            head_param = base_prefix is not None and not path.startswith(base_prefix + ".")
            rel = path[len(base_prefix) + 1 :] if base_prefix and not head_param else path
            if head_param or rel.startswith(tuple(optional)):
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


def _flag_hint(rule: Rule, cfg) -> str:
    """The config.json field that most likely contradicts the weights, for a base-model tensor with no target."""
    aliases = getattr(cfg, "flag_fields", {})  # derived flags (Llama's qkv_bias) -> the config.json field behind them
    if rule.when is not None:
        return f"{aliases.get(rule.when, rule.when)}=false?"
    if rule.unless is not None:
        return f"{aliases.get(rule.unless, rule.unless)}=true?"
    return "a config field contradicts the weights, or the conversion table lacks a `when=` flag"


def _check_shapes(rule: Rule, keys: dict, tgt: Target, source, cfg) -> list[str]:
    out = []
    if rule.stacked:
        want = set(range(tgt.shape[0]))
        if set(keys) != want:
            start = rule.layers[0] if rule.layers else 0  # slots of a `Rule(layers=...)` stack start at HF `start`
            missing = [i + start for i in sorted(want - set(keys))]
            extra = [i + start for i in sorted(set(keys) - want)]
            n = tgt.shape[0]
            held = f"config has {n} layers" if not start else f"this stack holds HF layers {start}..{start + n - 1}"
            out.append(f"{tgt.path}: layers {missing} missing / {extra} unexpected ({held})")
    for layer, key in sorted(keys.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        shape = source.shape(key)
        try:
            got = _apply_shape(rule, shape, cfg)
        except ValueError as e:
            out.append(f"{key} {shape}: {e}")
            continue
        expected = tgt.shape[1:] if rule.stacked else tgt.shape
        if tuple(got) != tuple(expected):
            out.append(
                f"shape mismatch: {key} {shape} -> {tuple(got)}, but {tgt.path} expects {tuple(expected)}"
                + _size_hint(cfg, got, expected)
            )
            break  # one report per family is enough
    return out


def _size_hint(cfg, got, expected) -> str:
    """Name the config fields that set the sizes the checkpoint contradicts (`config vocab_size=101, checkpoint
    97`), so the error says what to fix rather than only which shapes differ."""
    if len(got) != len(expected) or not dataclasses.is_dataclass(cfg):
        return ""
    sizes = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "extra"}
    sizes["num_labels"] = getattr(cfg, "num_labels", None)  # from id2label / num_labels, a property
    parts = []
    for g, e in zip(got, expected):
        names = [n for n, v in sizes.items() if g != e and isinstance(v, int) and not isinstance(v, bool) and v == e]
        if names:
            parts.append(f"config {' / '.join(f'{n}={e}' for n in names)}, checkpoint {g}")
    if not parts:
        return ""
    return f" ({'; '.join(parts)}: fix config.json or the from_pretrained overrides, or load the matching checkpoint)"


def _apply_shape(rule: Rule, shape, cfg):
    for op in rule.ops:
        shape = op.shape(tuple(shape), cfg)
    return shape


Box = tuple[tuple[int, int], ...]


def _full(shape) -> Box:
    return tuple((0, n) for n in shape)


def _box(index: tuple[slice, ...], shape) -> Box:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _back(op, in_shape, out_shape, want: Box) -> tuple[Box, Box]:
    """For `op` mapping `in_shape` to `out_shape`: the input box to read for output box `want`, and the output box
    (containing `want`) that forwarding that input block gives. Unknown ops need their whole input."""
    if isinstance(op, T):
        perm = op.perm if op.perm is not None else tuple(reversed(range(len(in_shape))))
        src = [None] * len(in_shape)
        for j, i in enumerate(perm):
            src[i] = want[j]
        return tuple(src), want
    if isinstance(op, SplitAxis):
        ax = op.axis % len(in_shape)
        (a, b), (c, d), m = want[ax], want[ax + 1], out_shape[ax + 1]
        if (c, d) != (0, m) and b - a > 1:  # rows of several heads, partial inside each: read whole heads
            c, d = 0, m
        cover = want[: ax + 1] + ((c, d),) + want[ax + 2 :]
        return want[:ax] + ((a * m + c, (b - 1) * m + d),) + want[ax + 2 :], cover
    if isinstance(op, Chunk):
        ax = op.axis % len(in_shape)
        base = op.index * out_shape[ax]
        (a, b) = want[ax]
        return want[:ax] + ((base + a, base + b),) + want[ax + 1 :], want
    return _full(in_shape), _full(out_shape)


def _forward(op, block: np.ndarray, cover: Box, cfg) -> np.ndarray:
    """Apply `op` to a block so that the result is the output region `cover`."""
    if isinstance(op, T):
        return np.transpose(block, op.perm)
    if isinstance(op, SplitAxis):
        ax = op.axis % block.ndim
        parts = (cover[ax][1] - cover[ax][0], cover[ax + 1][1] - cover[ax + 1][0])
        return block.reshape(block.shape[:ax] + parts + block.shape[ax + 1 :])
    if isinstance(op, Chunk):
        return block
    return op.forward(block, cfg)


class _Reader:
    """Reads boxes of one target parameter from its source tensors, through the rule's layout ops.

    Sources with `read(key, box)` (safetensors) are read slice by slice; others (GGUF, torch `.bin`) are read whole
    once per tensor and sliced.
    """

    def __init__(self, rule: Rule, keys: dict, tgt: Target, source, cfg):
        self.rule, self.keys, self.tgt, self.source, self.cfg = rule, keys, tgt, source, cfg
        self._whole: tuple[str, np.ndarray] | None = None

    def block(self, box: Box) -> np.ndarray:
        if not self.rule.stacked:
            return self._read(self.keys[None], box)
        (l0, l1), inner = box[0], box[1:]
        out = np.empty(tuple(b - a for a, b in box), self.tgt.dtype)
        for i, layer in enumerate(range(l0, l1)):
            out[i] = self._read(self.keys[layer], inner)
        return out

    def _read(self, key: str, box: Box) -> np.ndarray:
        shapes = [tuple(self.source.shape(key))]
        for op in self.rule.ops:
            shapes.append(tuple(op.shape(shapes[-1], self.cfg)))
        wants, covers = [box], []
        for k in reversed(range(len(self.rule.ops))):
            want, cover = _back(self.rule.ops[k], shapes[k], shapes[k + 1], wants[0])
            wants.insert(0, want)
            covers.insert(0, cover)
        x = self._source_block(key, wants[0])
        for op, want, cover in zip(self.rule.ops, wants[1:], covers):
            x = _forward(op, x, cover, self.cfg)
            x = x[tuple(slice(w0 - c0, w1 - c0) for (w0, w1), (c0, _) in zip(want, cover))]
        return x.astype(self.tgt.dtype, copy=False)

    def _source_block(self, key: str, box: Box) -> np.ndarray:
        if hasattr(self.source, "read"):
            return self.source.read(key, box)
        if self._whole is None or self._whole[0] != key:
            self._whole = (key, self.source.get(key))
        return self._whole[1][tuple(slice(a, b) for a, b in box)]


def build_param(plan: Plan, path: str, tgt: Target, source, cfg) -> jax.Array:
    """Materialise one parameter on `tgt.sharding` (default device if None).

    Each distinct device block is read from the checkpoint (only the bytes it needs), copied to its devices and
    freed before the next, so the transient host memory is one block, never the whole tensor or model.
    """
    reader = _Reader(plan.rule_for[path], plan.sources[path], tgt, source, cfg)
    if tgt.sharding is None:
        return jax.device_put(reader.block(_full(tgt.shape)))
    index_map = tgt.sharding.addressable_devices_indices_map(tgt.shape)
    by_box = defaultdict(list)
    for device, index in index_map.items():
        by_box[_box(index, tgt.shape)].append(device)
    shards = {}
    for box, devices in by_box.items():
        block = reader.block(box)
        placed = [jax.device_put(block, d) for d in devices]
        jax.block_until_ready(placed)  # the copies are done: `block` can go
        shards.update(zip(devices, placed))
    return jax.make_array_from_single_device_arrays(tgt.shape, tgt.sharding, [shards[d] for d in index_map])


def read_slots(plan: Plan, path: str, tgt: Target, source, cfg):
    """Yield target `path` read whole on the host through its rule's layout ops, one stacked layer at a time
    (`tgt.shape[1:]` each; one array `tgt.shape` for an unstacked target), cast to `tgt.dtype`. For callers that
    transform every layer before placing the result (quantization), so that no float copy of a whole stack exists."""
    rule = plan.rule_for[path]
    reader = _Reader(rule, plan.sources[path], tgt, source, cfg)
    if not rule.stacked:
        yield reader.block(_full(tgt.shape))
        return
    for layer in range(tgt.shape[0]):
        yield reader._read(reader.keys[layer], _full(tgt.shape[1:]))


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
