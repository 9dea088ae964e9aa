"""Base class for architecture configs: frozen dataclasses whose fields keep HF `config.json` names.

Unknown `config.json` keys are kept (in `extra`) so `save_pretrained` writes back what was read; equality and hashing
go through the JSON form, so configs containing dicts (rope parameters) are still valid static jit arguments.

`from_hf` validates before any array is built: a zero or negative size in config.json would otherwise surface as a
ZeroDivisionError, an IndexError or NaN outputs far from its cause. Each config class declares its size fields
(`positive_fields`: integers >= 1; `nonnegative_fields`: numbers >= 0 such as norm epsilons; `rate_fields`: dropout
probabilities in [0, 1); a None value means "unset" and is skipped) and `check_fields` checks them all in one place;
`validate()` adds the per-architecture rules. The classifier size (`num_labels`, from `id2label` or `num_labels`) is
read and checked here for every architecture (`HFConfig.num_labels`), never per model file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, ClassVar

import numpy as np


def config_class(cls):
    """Decorator for config dataclasses: frozen, keyword-only, hashed by their HF JSON."""
    return dataclasses.dataclass(frozen=True, kw_only=True, eq=False)(cls)


@config_class
class HFConfig:
    model_type: ClassVar[str] = ""
    positive_fields: ClassVar[tuple[str, ...]] = ()  # integer sizes/counts that must be >= 1 (None = unset)
    nonnegative_fields: ClassVar[tuple[str, ...]] = ()  # numbers that must be finite and >= 0 (epsilons)
    rate_fields: ClassVar[tuple[str, ...]] = ()  # dropout probabilities in [0, 1) (None = unset)
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "HFConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "model_type"}
        cfg = cls(**known, extra=extra)
        cfg.check_fields()
        cfg.validate()
        return cfg

    def check_fields(self) -> None:
        """Raise ValueError naming the first declared size field that is not a positive integer (or epsilon < 0,
        or dropout rate outside [0, 1)), or a classifier size (`id2label` / `num_labels`) below one class."""
        num_labels_from(self.extra)
        for name in self.positive_fields:
            check_positive_int(name, getattr(self, name))
        for name in self.nonnegative_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"config.json: {name}={value!r} must be a finite number >= 0; fix {name} in config.json"
                )
        for name in self.rate_fields:
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 <= value < 1):
                # a rate of 1 would zero every activation and divide by 0 in the kept-value scaling
                raise ValueError(
                    f"config.json: dropout rate {name}={value!r} must lie in [0, 1); fix {name} in config.json "
                    "(0 disables it)"
                )

    def validate(self) -> None:
        """Raise ValueError on inconsistent fields (overridden per architecture)."""

    @property
    def num_labels(self) -> int:
        """Classifier outputs, HF's rule: `len(id2label)` when config.json has one, else `num_labels` (default 2)."""
        return num_labels_from(self.extra)

    def to_hf(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        d["model_type"] = self.model_type
        return d

    def replace(self, **kw) -> "HFConfig":
        return dataclasses.replace(self, **kw)

    def _key(self) -> str:
        return json.dumps(self.to_hf(), sort_keys=True, default=str)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))


def _is_number(value) -> bool:
    """A real number that is not a bool (numpy scalars from GGUF metadata count; True/False do not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_positive_int(name: str, value, *, where: str = "config.json") -> None:
    """Raise ValueError unless `value` is None (unset) or an integer >= 1 (bools and floats such as 768.0 refused)."""
    if value is None:
        return
    if not _is_number(value) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: {name}={value!r} must be a positive integer; fix {name} in {where}")


def num_labels_from(extra: dict) -> int:
    """Number of classifier outputs from a config's `id2label` (preferred, as in HF) or `num_labels` (default 2);
    an empty `id2label` or a `num_labels` below 1 would build a 0-wide classifier, so both are refused."""
    id2label = extra.get("id2label")
    if id2label is not None:  # null in config.json: unset, as in HF
        if not isinstance(id2label, dict) or not id2label:
            raise ValueError(
                f"config.json: id2label={id2label!r} must map at least one class id to a label (an empty one means "
                "num_labels=0); give it one entry per class, e.g. {\"0\": \"NEGATIVE\", \"1\": \"POSITIVE\"}"
            )
        return len(id2label)
    n = extra.get("num_labels")
    n = 2 if n is None else n  # HF's default
    check_positive_int("num_labels", n)
    return int(n)
