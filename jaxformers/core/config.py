"""Base class for architecture configs: frozen dataclasses whose fields keep HF `config.json` names.

Unknown `config.json` keys are kept (in `extra`) so `save_pretrained` writes back what was read; equality and hashing
go through the JSON form, so configs containing dicts (rope parameters) are still valid static jit arguments.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar


def config_class(cls):
    """Decorator for config dataclasses: frozen, keyword-only, hashed by their HF JSON."""
    return dataclasses.dataclass(frozen=True, kw_only=True, eq=False)(cls)


@config_class
class HFConfig:
    model_type: ClassVar[str] = ""
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "HFConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "model_type"}
        cfg = cls(**known, extra=extra)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError on inconsistent fields (overridden per architecture)."""

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
