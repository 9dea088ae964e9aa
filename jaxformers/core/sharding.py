"""Logical axis names, rule presets that map them onto mesh axes, mesh helpers, and the one `constrain` helper.

Every parameter carries logical axis names (metadata key `axes`, one name per dimension). Rules are plain tuples of
`(logical_name, mesh_axis | tuple_of_mesh_axes | None)`; the first rule naming a logical axis wins. Model code never
mentions mesh axes: it calls `constrain(x, ("act_batch", "act_seq", "act_embed"))`, which is the identity unless a
mesh and rules are active.

    mesh = make_mesh({"fsdp": 4, "tp": 2})                 # axes (data, fsdp, tp) = (1, 4, 2), AxisType.Auto
    model = jf.AutoModelForCausalLM.from_pretrained(path, mesh=mesh, rules=FSDP_TP)  # streamed onto the mesh
    with use_mesh(mesh, FSDP_TP):                           # activations follow the same rules
        logits = jax.jit(lambda m, ids: m(ids).logits)(model, ids)

Rules are read when a function is traced: a function jitted under one set of rules keeps them for that mesh, so
jit a fresh function (or clear its cache) to switch rules on the same mesh. Flax's `nnx.logical_axis_rules(rules)`
under `jax.set_mesh(mesh)` works too. A dimension whose size a mesh axis does not divide stays replicated over that
axis (reported by `jaxformers.core.preflight`), except the batch, which must divide: an indivisible batch raises.

Meshes from `jax.make_mesh(shape, names)` work as well as `make_mesh` ones, whatever their axis names (write rules
that name them) and axis types. JAX makes `AxisType.Explicit` axes by default; jaxformers runs them as `AxisType.Auto`
axes over the same devices in the same order (`auto_mesh`). Explicit mode types every array with its sharding and
asks for `out_sharding=` wherever the output layout is ambiguous: run as is, the tiny Llama's embedding lookup
already fails under plain DP (`jnp.take` of a replicated table by batch-sharded ids needs `out_sharding`), and so
would the sharded matmuls of FSDP and TP, i.e. every model file. Auto mode lets XLA propagate the layouts from the
parameters and the `constrain` points, which is what the rules describe; the compiled programs are those of the
equivalent `make_mesh` mesh. Arrays already placed on an Explicit mesh are relabelled for its Auto twin
(`to_auto`): the same buffers, no copy. Enter the mesh with `use_mesh` (not `jax.set_mesh`), which activates the
Auto twin, and place your own arrays with `shard_batch` or on the mesh `use_mesh` yields: JAX refuses to mix arrays
of an Explicit mesh and of its Auto twin in one call.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax.core import spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Mesh axes this library knows, outermost first (`tp` innermost: it needs the fastest links). `make_mesh` always
# builds all three (size 1 where unused), so every preset is valid on every mesh it makes.
MESH_AXES = ("data", "fsdp", "tp")

# Weight axes and activation axes use disjoint names (an activation's width must not inherit the weight's
# `embed -> fsdp` mapping while its batch is on `fsdp` too).
# "pos": rows of a learned absolute position table (a hard limit on positions: generation reads it); "rel_pos": rows
# of a relative position table (T5's buckets), which limit nothing
WEIGHT_AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers", "pos", "rel_pos", "type_vocab",
               "labels")  # fmt: skip
ACTIVATION_AXES = (
    "act_batch",
    "act_seq",
    "act_embed",
    "act_heads",
    "act_kv_heads",
    "act_head_dim",
    "act_mlp",
    "act_vocab",
    "act_cache_seq",
)
LOGICAL_AXES = WEIGHT_AXES + ACTIVATION_AXES
BATCH_AXIS = "act_batch"

# The activation layouts models constrain at block boundaries (`constrain(x, ACT_BTD)`), named once so that every
# architecture shards the same tensor roles the same way: hidden states [B, T, D], the MLP hidden [B, T, F], logits
# [B, T, V], and per-head projections [B, T, N, H] / [B, T, K, H] (head_dim left to the compiler).
ACT_BTD = ("act_batch", "act_seq", "act_embed")
ACT_BTF = ("act_batch", "act_seq", "act_mlp")
ACT_BTV = ("act_batch", "act_seq", "act_vocab")
ACT_BTNH = ("act_batch", "act_seq", "act_heads", None)
ACT_BTKH = ("act_batch", "act_seq", "act_kv_heads", None)

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


class ShardingError(ValueError):
    """A mesh, rule set or input shape that cannot work, with what to change."""


_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("jaxformers_rules", default=None)


def make_mesh(
    shape: Sequence[int] | Mapping[str, int] | None = None,
    axes: Sequence[str] | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A device mesh over the library's axes `("data", "fsdp", "tp")`, with `AxisType.Auto` sharding.

    Args:
      shape: `{"fsdp": 4, "tp": 2}`, or sizes matched with `axes`; one size may be -1 (all remaining devices).
        Default: every device on `fsdp`.
      axes: names for a tuple `shape`; default by length: `("fsdp",)`, `("fsdp", "tp")`, `("data", "fsdp", "tp")`.
      devices: default `jax.devices()` (all processes' devices: the same call works on one host or many).

    Returns:
      A mesh with all three axes in canonical order; unnamed ones have size 1.
    """
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        sizes = {"fsdp": -1}
    elif isinstance(shape, Mapping):
        sizes = dict(shape)
    else:
        shape = tuple(shape)
        axes = tuple(axes) if axes is not None else {1: ("fsdp",), 2: ("fsdp", "tp"), 3: MESH_AXES}.get(len(shape))
        if axes is None or len(axes) != len(shape):
            raise ShardingError(f"mesh shape {shape} needs one axis name per dimension, got axes={axes}")
        sizes = dict(zip(axes, shape))
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ShardingError(
            f"make_mesh knows the axes {MESH_AXES}, not {unknown}; for other axes build the mesh with "
            "jax.make_mesh(shape, names) and write rules that name its axes"
        )
    free = [a for a, n in sizes.items() if n == -1]
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if len(free) > 1 or any(n < 1 and n != -1 for n in sizes.values()):
        raise ShardingError(f"mesh sizes must be positive, with at most one -1; got {sizes}")
    if free:
        if len(devices) % fixed:
            raise ShardingError(f"cannot fill axis {free[0]!r}: {len(devices)} devices are not a multiple of {fixed}")
        sizes[free[0]] = len(devices) // fixed
    full = tuple(sizes.get(a, 1) for a in MESH_AXES)
    if math.prod(full) > len(devices):
        raise ShardingError(
            f"mesh {dict(zip(MESH_AXES, full))} needs {math.prod(full)} devices but {len(devices)} are available. "
            "Use smaller axis sizes; on CPU, simulate devices with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is imported."
        )
    return jax.make_mesh(full, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def get_rules() -> Rules | None:
    """The active rules: set by `use_mesh`, else Flax's `nnx.logical_axis_rules` context, else None."""
    rules = _RULES.get()
    if rules is None:
        rules = tuple(spmd.get_logical_axis_rules()) or None
    return rules


def get_mesh() -> Mesh | None:
    """The concrete mesh set by `use_mesh` / `jax.set_mesh` (as `auto_mesh` of it), or None."""
    mesh = jax.sharding.get_mesh()
    return None if mesh is None or mesh.empty else auto_mesh(mesh)


def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with its `AxisType.Explicit` axes made `AxisType.Auto` (same devices, order and names); a mesh without
    Explicit axes is returned as is. Why jaxformers runs Explicit meshes this way: see this module's docstring."""
    types = getattr(mesh, "axis_types", None)
    if not types or AxisType.Explicit not in types:
        return mesh
    auto = tuple(AxisType.Auto if t == AxisType.Explicit else t for t in types)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def to_auto(tree):
    """Relabel every array of `tree` that lives on a mesh with Explicit axes for that mesh's Auto twin
    (`auto_mesh`): the same buffers and layout, no copy. Other leaves are returned as they are."""

    def relabel(x):
        sharding = getattr(x, "sharding", None)
        if not isinstance(x, jax.Array) or not isinstance(sharding, NamedSharding):
            return x
        mesh = auto_mesh(sharding.mesh)
        if mesh is sharding.mesh:
            return x
        shards = [s.data for s in x.addressable_shards]  # this process's buffers, reused as they are
        return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(mesh, sharding.spec), shards)

    return jax.tree.map(relabel, tree)


@contextlib.contextmanager
def auto_context():
    """Inside `jax.set_mesh(mesh)` with Explicit axes, make the mesh's Auto twin the active one (the rules stay);
    otherwise do nothing. Lets jaxformers' own jitted steps run under a user's Explicit mesh context."""
    mesh = jax.sharding.get_mesh()
    if mesh is None or mesh.empty or auto_mesh(mesh) is mesh:
        yield
        return
    with jax.set_mesh(auto_mesh(mesh)):
        yield


def _active_mesh_shape() -> dict[str, int] | None:
    """Axis sizes of the active mesh, concrete or (inside jit) abstract."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return dict(mesh.shape)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules | str = FSDP):
    """Make `mesh` and `rules` active for `constrain`, jitted forwards and `shard_batch`; yields the active mesh.

    A mesh with Explicit axes (`jax.make_mesh`'s default) is entered as its Auto twin (`auto_mesh`), which is the mesh
    yielded. Validates both first (unknown axis names, mixed device kinds raise `ShardingError`).
    """
    from jaxformers.core.preflight import check_mesh

    mesh = auto_mesh(mesh)
    rules = resolve_rules(rules, mesh)
    check_mesh(mesh).raise_errors()
    token = _RULES.set(rules)
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _RULES.reset(token)


def mesh_axes_of(ax) -> tuple[str, ...]:
    """A rule's right-hand side (`None`, one axis, or a tuple of axes) as a tuple of mesh axis names."""
    return (ax,) if isinstance(ax, str) else tuple(ax or ())


def resolve_rules(rules: Rules | str, mesh: Mesh | None = None) -> Rules:
    """A preset name or rule tuple, validated.

    Raises `ShardingError` for an unknown logical name, or for a mesh axis that is neither on `mesh` nor one of the
    library's axes `("data", "fsdp", "tp")` (those are size 1 when the mesh lacks them).
    """
    if isinstance(rules, str):
        if rules.lower() not in PRESETS:
            raise ShardingError(f"unknown sharding preset {rules!r}; choose one of {sorted(PRESETS)}")
        rules = PRESETS[rules.lower()]
    try:
        rules = tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in rules)
    except (TypeError, ValueError) as e:
        raise ShardingError(f"rules must be (logical_name, mesh_axes) pairs or a preset name, got {rules!r}") from e
    known_mesh_axes = set(MESH_AXES) | (set(mesh.axis_names) if mesh is not None else set())
    for name, ax in rules:
        if name not in LOGICAL_AXES:
            raise ShardingError(f"sharding rule names unknown logical axis {name!r}; known axes: {LOGICAL_AXES}")
        for a in mesh_axes_of(ax):
            if a not in known_mesh_axes:
                where = f"the mesh axes {tuple(mesh.axis_names)}" if mesh is not None else f"{MESH_AXES}"
                raise ShardingError(
                    f"sharding rule ({name!r} -> {a!r}) names mesh axis {a!r}, which is not one of {where}; "
                    "fix the rule or build the mesh with that axis"
                )
    return rules


def logical_spec(
    names: Sequence[str | None],
    rules: Rules | None = None,
    mesh_shape: Mapping[str, int] | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical `names` under `rules` (default: the active ones).

    Mesh axes absent from `mesh_shape` or of size 1 are dropped; a mesh axis is used at most once per spec; with
    `shape`, an axis that does not divide its dimension is skipped (that dimension stays replicated over it, and a
    later dimension may use the axis instead).
    """
    rules = get_rules() if rules is None else rules
    mesh_shape = _active_mesh_shape() if mesh_shape is None else mesh_shape
    table: dict[str, object] = {}
    for name, ax in rules or ():
        table.setdefault(name, ax)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        chosen, size = [], 1
        for a in mesh_axes_of(table.get(name) if name is not None else None):
            n = mesh_shape.get(a, 1) if mesh_shape is not None else 1
            if a in used or n == 1 or (shape is not None and shape[i] % (size * n)):
                continue
            chosen.append(a)
            size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*out)


def named_sharding(
    names: Sequence[str | None], mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None
) -> NamedSharding:
    """NamedSharding of a parameter with logical axes `names` (see `logical_spec` for indivisible dimensions), on
    `auto_mesh(mesh)`."""
    return NamedSharding(auto_mesh(mesh), logical_spec(names, rules, dict(mesh.shape), shape))


def batch_axes(rules: Rules, mesh_shape: Mapping[str, int]) -> tuple[tuple[str, ...], int]:
    """The mesh axes (of size > 1) that shard the batch under `rules`, and their product."""
    table = dict(reversed(rules))
    axes = tuple(a for a in mesh_axes_of(table.get(BATCH_AXIS)) if mesh_shape.get(a, 1) > 1)
    return axes, math.prod(mesh_shape[a] for a in axes)


def check_batch(batch_size: int, rules: Rules, mesh_shape: Mapping[str, int]) -> None:
    """Raise `ShardingError` unless `batch_size` divides evenly over the batch's mesh axes."""
    axes, n = batch_axes(rules, mesh_shape)
    if batch_size % n:
        sizes = ", ".join(f"{a}={mesh_shape[a]}" for a in axes)
        raise ShardingError(
            f"batch size {batch_size} is not divisible by {n}, the number of devices the batch is split over "
            f"(mesh axes {sizes} under these rules). Pad or trim the batch to a multiple of {n} (e.g. "
            f"{-(-batch_size // n) * n}), or use a mesh whose batch axes multiply to a divisor of {batch_size}."
        )


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; the identity without an active mesh and rules.

    Raises `ShardingError` (at trace time, before compiling) when the `act_batch` dimension is not divisible by the
    mesh axes that shard it.
    """
    rules, mesh_shape = get_rules(), _active_mesh_shape()
    if not rules or mesh_shape is None:
        return x
    if BATCH_AXIS in names:
        check_batch(x.shape[list(names).index(BATCH_AXIS)], rules, mesh_shape)
    return jax.lax.with_sharding_constraint(x, logical_spec(names, rules, mesh_shape, x.shape))


def shard_batch(batch, mesh: Mesh | None = None, rules: Rules | str | None = None):
    """Turn each process's local batch (a pytree of host arrays, batch first) into global arrays on the mesh.

    With several processes, each passes the rows it loaded (its `1/process_count` of the global batch, in process
    order); on one process the local batch is the global batch. The batch dimension is split over the mesh axes of
    `act_batch` under `rules`; other dimensions are replicated. Defaults: the active mesh and rules (`use_mesh`).
    The arrays live on `auto_mesh(mesh)`, as the parameters `load` places.
    """
    mesh = get_mesh() if mesh is None else auto_mesh(mesh)
    if mesh is None:
        raise ShardingError("shard_batch needs a mesh: pass mesh= or call it inside `with use_mesh(mesh, rules):`")
    rules = resolve_rules((get_rules() or ()) if rules is None else rules, mesh)
    mesh_shape = dict(mesh.shape)
    axes, n = batch_axes(rules, mesh_shape)
    sharding = NamedSharding(mesh, PartitionSpec(axes or None))
    local_shards = len({idx[0].start for idx in sharding.addressable_devices_indices_map((n,)).values()})

    def put(x):
        x = np.asarray(x)
        if jax.process_count() == 1:
            check_batch(x.shape[0], rules, mesh_shape)
        elif x.shape[0] % local_shards:
            raise ShardingError(
                f"this process holds {local_shards} of the {n} batch shards, so its local batch ({x.shape[0]} rows) "
                f"must be a multiple of {local_shards}"
            )
        global_shape = (x.shape[0] // local_shards * n, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)
