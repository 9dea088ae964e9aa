"""Checks run before anything compiles: mesh, rules, parameter shapes and batch against each other.

A mis-sized mesh otherwise surfaces as an XLA error deep in a traceback, or silently as a replicated weight. The
checks here say what is wrong and what to change:

- the mesh: Auto or Explicit axes (Explicit ones run as Auto: `sharding.auto_mesh`), one device kind, every
  process taking part;
- the rules: known logical names and mesh axes (`sharding.resolve_rules`);
- parameters: every one has logical axes; a dimension whose size the mesh axis it is mapped to does not divide is
  an error for `heads`, `mlp` and `embed` (a mis-sized tensor-parallel or FSDP axis), a warning for the others
  (`kv_heads` below the TP degree and odd vocabulary sizes are replicated on purpose in common setups);
- memory: parameter bytes per device against the device's memory, where the backend reports it;
- the batch: divisible by the mesh axes that split it.

`load(..., mesh=...)` runs the mesh and parameter checks; `use_mesh` the mesh checks; `constrain` the batch check
at trace time. Call `preflight(model, mesh, rules, batch_size=...)` to run them all up front.

Memory estimates for work that allocates inside a compiled program (`jf.generate`'s KV cache and prefill), where an
allocation failure otherwise surfaces as an unreadable runtime error after compiling, or as a dispatch error:
`available_memory_bytes` (what a device can still allocate), `estimate_kv_cache_bytes`, `estimate_attention_bytes`,
and `InsufficientMemoryError` for callers that refuse a run up front.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, Mesh

from jaxformers.core import sharding as shd

STRICT_AXES = ("heads", "mlp", "embed")


@dataclass
class PreflightReport:
    """Problems found: `errors` stop the run (`raise_errors`), `warnings` are worth reading."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    param_bytes_per_device: int | None = None

    def extend(self, other: PreflightReport) -> PreflightReport:
        self.errors += other.errors
        self.warnings += other.warnings
        if other.param_bytes_per_device is not None:
            self.param_bytes_per_device = other.param_bytes_per_device
        return self

    def raise_errors(self) -> PreflightReport:
        """Raise one `ShardingError` listing every error; returns self when there are none."""
        if self.errors:
            raise shd.ShardingError(
                f"sharding preflight found {len(self.errors)} problem(s):\n  - " + "\n  - ".join(self.errors)
            )
        return self


def check_mesh(mesh: Mesh) -> PreflightReport:
    """Axis types, device kinds and process coverage of `mesh`."""
    report = PreflightReport()
    mesh = shd.auto_mesh(mesh)  # Explicit axes run as Auto ones (`sharding.auto_mesh`)
    manual = [a for a, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Auto]
    if manual:
        report.errors.append(
            f"mesh axes {manual} are not AxisType.Auto or Explicit; jaxformers shards by logical rules over Auto "
            "axes: build the mesh with jf.make_mesh(...) or jax.make_mesh(shape, names)"
        )
    devices = list(mesh.devices.flat)
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    if len(kinds) > 1:
        report.errors.append(
            f"mesh mixes device kinds {kinds}; build it from one kind, e.g. "
            "jf.make_mesh(..., devices=[d for d in jax.devices() if d.device_kind == KIND])"
        )
    if all(map(is_compile_only, devices)):  # a TPU topology compiled for ahead of time (`jaxformers.aot`)
        return report
    known = set(jax.devices())
    foreign = [d for d in devices if d not in known]
    if foreign:
        report.errors.append(
            f"mesh holds devices this runtime does not know ({foreign[:4]}); rebuild it from jax.devices()"
        )
    if jax.process_count() > 1:
        absent = sorted(set(range(jax.process_count())) - {d.process_index for d in devices})
        if absent:
            report.errors.append(
                f"processes {absent} have no device in the mesh; every process must take part: build the mesh from "
                "jax.devices() (all processes), not jax.local_devices()"
            )
    if len(devices) < jax.device_count():
        report.warnings.append(f"mesh uses {len(devices)} of {jax.device_count()} devices")
    return report


def is_compile_only(device: jax.Device) -> bool:
    """Whether `device` only compiles (a device of `jax.experimental.topologies`, as `jaxformers.aot` uses): it has
    no memory to run on, and the runtime's own device list does not hold it."""
    return type(getattr(device, "client", None)).__name__ == "CompileOnlyPyClient"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_params(model: nnx.Module, mesh: Mesh, rules: shd.Rules) -> PreflightReport:
    """Every parameter has known logical axes, and the rules can split it on `mesh` as they intend."""
    report = PreflightReport()
    mesh_shape = dict(mesh.shape)
    table: dict[str, object] = {}
    for name, ax in rules:
        table.setdefault(name, ax)
    unsplit: dict[tuple, list[str]] = defaultdict(list)  # (logical name, size, mesh axis) -> parameter paths
    per_device = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = ".".join(str(p) for p in path)
        shape, axes = tuple(var.shape), var.get_metadata().get("axes")
        if axes is None or len(axes) != len(shape):
            report.errors.append(f"parameter {key} {shape} has no logical axis names per dimension (model bug): {axes}")
            continue
        unknown = [a for a in axes if a is not None and a not in shd.LOGICAL_AXES]
        if unknown:
            report.errors.append(f"parameter {key} uses unknown logical axes {unknown}; known: {shd.WEIGHT_AXES}")
        spec = shd.logical_spec(axes, rules, mesh_shape, shape)
        used = {a for part in spec if part is not None for a in shd.mesh_axes_of(part)}
        for name, size in zip(axes, shape):
            for a in shd.mesh_axes_of(table.get(name)):
                if mesh_shape.get(a, 1) > 1 and a not in used:
                    unsplit[(name, size, a)].append(key)
        shard = shd.named_sharding(axes, mesh, rules, shape).shard_shape(shape)
        per_device += math.prod(shard) * var.dtype.itemsize
    for (name, size, a), keys in sorted(unsplit.items()):
        n = mesh_shape[a]
        msg = (
            f"{name} = {size} is not divisible by mesh axis {a!r} (size {n}), so {len(keys)} parameter(s) stay "
            f"replicated over {a!r} (e.g. {keys[0]}); use {a} in {_divisors(size)} or rules that do not map {name!r} "
            f"to {a!r}"
        )
        (report.errors if name in STRICT_AXES else report.warnings).append(msg)
    report.param_bytes_per_device = per_device
    first = mesh.devices.flat[0]
    runs_here = first.process_index == jax.process_index() and not is_compile_only(first)
    stats = first.memory_stats() if runs_here else None
    limit = (stats or {}).get("bytes_limit")
    if limit and per_device > 0.9 * limit:
        report.errors.append(
            f"parameters alone need {per_device / 2**30:.1f} GiB per device but a device has {limit / 2**30:.1f} GiB; "
            "shard them further (FSDP or FSDP_TP with a larger fsdp axis) or load a smaller dtype"
        )
    return report


def preflight(
    model: nnx.Module,
    mesh: Mesh | None = None,
    rules: shd.Rules | str | None = None,
    *,
    batch_size: int | None = None,
    raise_errors: bool = True,
) -> PreflightReport:
    """Check `model` (concrete or from `nnx.eval_shape`) against `mesh`, `rules` and a global `batch_size`.

    Args:
      model: the model whose parameters will be sharded.
      mesh / rules: default: the active ones (`use_mesh`); rules default to FSDP when only a mesh is given.
      batch_size: the global batch a step will see; checked against the mesh axes that split the batch.
      raise_errors: raise one `ShardingError` listing every error (default) instead of only returning them.

    Returns:
      The report (errors, warnings, parameter bytes per device).
    """
    mesh = shd.get_mesh() if mesh is None else mesh
    if mesh is None:
        raise shd.ShardingError("preflight needs a mesh: pass mesh= or call it inside `with jf.use_mesh(...)`")
    rules = shd.resolve_rules((shd.get_rules() or shd.FSDP) if rules is None else rules, mesh)
    report = check_mesh(mesh).extend(check_params(model, mesh, rules))
    if batch_size is not None:
        try:
            shd.check_batch(batch_size, rules, dict(mesh.shape))
        except shd.ShardingError as e:
            report.errors.append(str(e))
    return report.raise_errors() if raise_errors else report


# ------------------------------------------------------------------------------------------------ memory estimates


class InsufficientMemoryError(MemoryError, ValueError):
    """An estimate says a run needs more memory than is available: raised before anything is compiled or allocated.

    A `MemoryError`, and a `ValueError` because the cause is an argument (a length, a batch) the caller can change."""


def available_memory_bytes(device: jax.Device | None = None) -> int | None:
    """Bytes a new allocation on `device` (default: the first local device) can still get, or None when unknown.

    Accelerators: `memory_stats()["bytes_limit"] - ["bytes_in_use"]` (the allocator's view: what XLA can still hand
    out). CPU (whose `memory_stats()` is None): the host's `MemAvailable` from /proc/meminfo (free memory plus the
    page cache the kernel can reclaim, which is what a large allocation can really use), else free pages from
    `os.sysconf`. Container memory limits (cgroups) are not read."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else max(0, int(limit) - int(stats.get("bytes_in_use", 0)))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX, or the name is unknown (macOS lacks SC_AVPHYS_PAGES)
        return None


def estimate_kv_cache_bytes(layers: int, batch: int, cache_len: int, kv_heads: int, head_dim: int, dtype) -> int:
    """Bytes of a `KVCache`: `layers` x keys and values `[batch, cache_len, kv_heads, head_dim]`, plus its slot mask."""
    itemsize = jnp.dtype(dtype).itemsize
    return 2 * layers * batch * cache_len * kv_heads * head_dim * itemsize + batch * cache_len


def estimate_attention_bytes(
    batch: int, heads: int, q_len: int, kv_len: int, impl: str = "xla", dtype=jnp.float32, *, head_dim: int = 128
) -> int:
    """Peak bytes of the intermediates of one `core.attention.dot_product_attention` call (one layer: layers run one
    after the other, so this is also a forward pass's attention peak), not counting q/k/v themselves.

    `impl` is the implementation that runs (`attention_plan(...).impl`): "xla" materialises `[B, N, T, S]` arrays,
    so its memory grows as T * S: the logits and their softmax in float32, the probabilities in `dtype`, plus the
    `[B, 1, T, S]` boolean mask (XLA:CPU's compiled temporaries, `memory_analysis()`, measured 12 bytes per logit in
    float32 and in bfloat16; a 64k-token prompt needs 48 GiB per head). Flash kernels ("pallas", "pallas_decode",
    "cudnn") keep blocks of logits on chip: their output `[B, T, N, H]` and float32 softmax statistics per query.
    "auto" is not a plan: resolve it with `attention_plan` first."""
    itemsize = jnp.dtype(dtype).itemsize
    if impl == "xla":
        return batch * heads * q_len * kv_len * (2 * 4 + itemsize) + batch * q_len * kv_len
    if impl in ("pallas", "pallas_decode", "cudnn"):
        return batch * heads * q_len * (head_dim * itemsize + 2 * 4)
    raise ValueError(
        f"unknown attention implementation {impl!r}; pass the one that runs: 'xla', 'pallas', 'pallas_decode' or "
        "'cudnn' (resolve 'auto' with jaxformers.core.attention.attention_plan)"
    )


def format_bytes(n: float) -> str:
    """`n` bytes for a message: GiB above 1 GiB, else MiB, else KiB / bytes."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"
