"""Logical axis names, rule presets that map them onto mesh axes, and the one activation `constrain` helper.

Every parameter carries logical axis names (metadata key `axes`, one name per dimension). Rules are plain tuples of
`(logical_name, mesh_axis | tuple_of_mesh_axes | None)`; the first rule naming a logical axis wins. Model code never
mentions mesh axes: it calls `constrain(x, ("act_batch", "act_seq", "act_embed"))`, which is the identity unless a
mesh and rules are active (`with use_mesh(mesh, FSDP): ...`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes this library knows. A mesh may use any subset, in any order.
MESH_AXES = ("data", "fsdp", "tp")

# Weight axes and activation axes use disjoint names (an activation's width must not inherit the weight's
# `embed -> fsdp` mapping while its batch is on `fsdp` too).
WEIGHT_AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers", "pos", "type_vocab", "labels")
ACTIVATION_AXES = ("act_batch", "act_seq", "act_embed", "act_heads", "act_kv_heads", "act_mlp", "act_vocab")
LOGICAL_AXES = WEIGHT_AXES + ACTIVATION_AXES

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

REPLICATED: Rules = ()
DP: Rules = (("act_batch", "data"),)
FSDP: Rules = (("act_batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", "fsdp"))
TP: Rules = (
    ("act_batch", "data"),
    ("mlp", "tp"),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("vocab", "tp"),
    ("act_heads", "tp"),
    ("act_kv_heads", "tp"),
    ("act_mlp", "tp"),
    ("act_vocab", "tp"),
)
FSDP_TP: Rules = (("act_batch", ("data", "fsdp")), ("embed", "fsdp")) + tuple(r for r in TP if r[0] != "act_batch")
PRESETS = {"replicated": REPLICATED, "dp": DP, "fsdp": FSDP, "tp": TP, "fsdp_tp": FSDP_TP}

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("jaxformers_rules", default=None)


def get_rules() -> Rules | None:
    return _RULES.get()


def get_mesh() -> Mesh | None:
    """The mesh set by `use_mesh` / `jax.set_mesh`, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    concrete = getattr(jax.sharding, "get_mesh", None)
    if concrete is not None:
        m = concrete()
        if m is not None and not m.empty:
            return m
    return mesh


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules | str = FSDP):
    """Make `mesh` and `rules` active for model construction, loading and `constrain`."""
    rules = resolve_rules(rules, mesh)
    token = _RULES.set(rules)
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _RULES.reset(token)


def resolve_rules(rules: Rules | str, mesh: Mesh | None = None) -> Rules:
    """A preset name or rule tuple, validated: unknown logical names or mesh axes raise a clear error."""
    if isinstance(rules, str):
        if rules.lower() not in PRESETS:
            raise ValueError(f"unknown sharding preset {rules!r}; choose one of {sorted(PRESETS)}")
        rules = PRESETS[rules.lower()]
    rules = tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in rules)
    for name, ax in rules:
        if name not in LOGICAL_AXES:
            raise ValueError(f"sharding rule names unknown logical axis {name!r}; known axes: {LOGICAL_AXES}")
        if mesh is not None:
            for a in (ax,) if isinstance(ax, str) else ax or ():
                if a not in mesh.axis_names:
                    raise ValueError(
                        f"sharding rule ({name!r} -> {a!r}) names mesh axis {a!r}, but the mesh has axes "
                        f"{tuple(mesh.axis_names)}; build the mesh with that axis or change the rule"
                    )
    return rules


def logical_spec(names: Sequence[str | None], rules: Rules | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical `names` under `rules` (default: the active ones). Mesh axes absent from `mesh`
    are dropped, and a mesh axis is used at most once per spec."""
    rules = get_rules() if rules is None else rules
    mesh = get_mesh() if mesh is None else mesh
    table = {}
    for name, ax in rules or ():
        table.setdefault(name, ax)
    used: set[str] = set()
    out = []
    for name in names:
        ax = table.get(name) if name is not None else None
        axes = (ax,) if isinstance(ax, str) else tuple(ax or ())
        axes = tuple(a for a in axes if a not in used and (mesh is None or a in mesh.axis_names))
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def named_sharding(
    names: Sequence[str | None], mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None
) -> NamedSharding:
    """NamedSharding for a parameter; mesh axes that do not divide a dimension leave it replicated."""
    spec = list(logical_spec(names, rules, mesh))
    if shape is not None:
        for i, ax in enumerate(spec):
            if ax is None:
                continue
            size = 1
            for a in (ax,) if isinstance(ax, str) else ax:
                size *= mesh.shape[a]
            if shape[i] % size:
                spec[i] = None
    return NamedSharding(mesh, PartitionSpec(*spec))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; the identity without an active mesh and rules."""
    rules = get_rules()
    if not rules or get_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names, rules))
