"""Declarative HF <-> jaxformers weight tables: `Rule`, `Ignore` and reversible layout-only ops.

A model file ends with a table such as

    HF_WEIGHTS = (
        Rule("encoder.layer.*.attention.self.query.weight", "encoder.layers.block.attention.query.kernel",
             T(), SplitAxis(-1, "num_attention_heads")),
        Ignore("embeddings.position_ids"),
    )

`*` in a source key stands for a layer index: the per-layer tensors are stacked along a new leading `layers` axis
of the target. Ops run left to right on load (on one per-layer tensor) and are inverted right to left on save; they
only move data (transpose, reshape, chunk), so a round trip is bit-exact. Source keys are written relative to the
base model (no `bert.` / `model.` prefix) unless `head=True`, in which case they are full HF keys of a head model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


def _size(cfg, ref) -> int:
    return ref if isinstance(ref, int) else int(getattr(cfg, ref))


class Op:
    """A reversible layout op. `forward`/`inverse` act on numpy arrays; `shape` predicts forward shapes."""

    def forward(self, x: np.ndarray, cfg) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, x: np.ndarray, cfg) -> np.ndarray:
        raise NotImplementedError

    def shape(self, s: tuple[int, ...], cfg) -> tuple[int, ...]:
        return self.forward(np.empty(s, np.int8), cfg).shape


@dataclass(frozen=True)
class T(Op):
    """Transpose (default: reverse all axes, i.e. torch Linear `[out, in]` -> `[in, out]`)."""

    perm: tuple[int, ...] | None = None

    def forward(self, x, cfg):
        return np.transpose(x, self.perm)

    def inverse(self, x, cfg):
        return np.transpose(x, None if self.perm is None else np.argsort(self.perm))


@dataclass(frozen=True)
class SplitAxis(Op):
    """Split `axis` into `(parts, rest)` where `parts` is a config field name (e.g. heads) or an int."""

    axis: int
    parts: str | int

    def forward(self, x, cfg):
        ax = self.axis % x.ndim
        n = _size(cfg, self.parts)
        if x.shape[ax] % n:
            raise ValueError(f"cannot split axis of size {x.shape[ax]} into {n} ({self.parts})")
        return x.reshape(x.shape[:ax] + (n, x.shape[ax] // n) + x.shape[ax + 1 :])

    def inverse(self, x, cfg):
        ax = self.axis % (x.ndim - 1)
        return x.reshape(x.shape[:ax] + (x.shape[ax] * x.shape[ax + 1],) + x.shape[ax + 2 :])


@dataclass(frozen=True)
class Chunk(Op):
    """Take chunk `index` of `n` equal chunks along `axis` (a fused tensor feeding several targets).

    On save, the targets sharing a source key are concatenated back in chunk order.
    """

    index: int
    n: int
    axis: int = -1

    def forward(self, x, cfg):
        return np.split(x, self.n, axis=self.axis)[self.index]

    def inverse(self, x, cfg):
        raise TypeError("Chunk is inverted by concatenating all chunks; the engine does that")


@dataclass(frozen=True)
class Rule:
    """One HF tensor family -> one jaxformers parameter path.

    when / unless: name of a boolean config field that must be true / false for the rule to apply (e.g. an untied
    `lm_head` only when `tie_word_embeddings` is false). head: the source key is a full head-model key.
    layers: for a stacked rule, the HF layer indices `(start, stop)` it maps (stop None: through the last layer);
    HF layer `start + i` fills slot `i` of the target and indices outside the range do not match. For a layer whose
    parameters differ from the others' (ModernBERT's layer 0 has no `attn_norm`), so that it lives in a stack of
    its own while the rest stay one uniform, scannable stack.
    """

    source: str
    target: str
    ops: tuple[Op, ...] = ()
    when: str | None = None
    unless: str | None = None
    head: bool = False
    layers: tuple[int, int | None] | None = None
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __init__(self, source, target, *ops, when=None, unless=None, head=False, layers=None):
        if layers is not None and ("*" not in source or len(layers) != 2 or not 0 <= layers[0]
                                   or (layers[1] is not None and layers[1] <= layers[0])):  # fmt: skip
            raise ValueError(f"Rule {source!r}: layers={layers!r} needs a stacked source and a range (start, stop)")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "ops", tuple(ops))
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "unless", unless)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "layers", None if layers is None else tuple(layers))
        object.__setattr__(self, "_regex", re.compile(re.escape(source).replace(r"\*", r"(\d+)") + "$"))

    @property
    def stacked(self) -> bool:
        return "*" in self.source

    def match(self, key: str) -> int | None | bool:
        """Target slot for stacked rules (the HF layer index, minus `layers[0]`), True for plain matches, None if no
        match (or a layer index outside `layers`)."""
        m = self._regex.match(key)
        if m is None:
            return None
        if not self.stacked:
            return True
        start, stop = self.layers or (0, None)
        index = int(m.group(1))
        if index < start or (stop is not None and index >= stop):
            return None
        return index - start

    def active(self, cfg) -> bool:
        if self.when is not None and not getattr(cfg, self.when):
            return False
        return not (self.unless is not None and getattr(cfg, self.unless))

    def source_key(self, layer: int | None = None) -> str:
        start = self.layers[0] if self.layers else 0
        return self.source.replace("*", str(layer + start)) if self.stacked else self.source


@dataclass(frozen=True)
class Ignore:
    """Source keys (glob) that are known and deliberately unused, e.g. `embeddings.position_ids` buffers."""

    source: str

    def match(self, key: str) -> bool:
        return re.match(re.escape(self.source).replace(r"\*", r"[^.]+") + "$", key) is not None
