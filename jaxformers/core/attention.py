"""The one attention entry point every model calls: `dot_product_attention`, dispatching to XLA, cuDNN or Pallas.

Layouts: q `[B, T, N, H]`, k/v `[B, S, K, H]` with N a multiple of K (GQA/MQA without repeating K/V). Masks are
described structurally (causal with a query offset, key padding, segment ids, sliding window) so kernels can use
them without a dense `[T, S]` matrix; the XLA implementation materialises them. Numerics follow HF eager attention:
logits and softmax in float32, probabilities cast back to the value dtype before the weighted sum.

Implementations (`impl`):
  "xla"     the reference path below; always available, bit-identical whatever else changes.
  "cudnn"   `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs: 16-bit inputs, H <= 128, causal
            and/or sliding window with no query offset (T == S when causal), no key padding, segment ids, soft-cap,
            dense mask or bias.
  "pallas"  `jaxformers.kernels`: flash attention (TPU: Mosaic, GPU: Triton) for causal / key padding / segment
            ids / sliding window / soft-cap with no query offset, and the split-K decode kernel for up to
            `DECODE_MAX_T` new queries at a cache offset (causal, key padding, sliding window). On CPU the TPU
            kernels run in the TPU interpreter (`pltpu.InterpretParams()`): slow, for tests. Under a mesh the kernels
            run per device in `jax.shard_map` over the batch and head axes of the active sharding rules (on CPU the
            GPU kernels, interpreted: see `CPU_SHARDED_PALLAS_BACKEND`).
  "auto"    the first supported implementation in the `AUTO_TABLE` row for this platform, dtype and length.
A requested implementation that does not support a call (see `attention_plan`) falls back to "xla", so models can
pass one `attn_impl` for every attention call. Query rows with no visible key (left padding) are finite under every
implementation but their values differ between them; they are never meant to be read.
Attention-probability dropout (training: `dropout_rate` with a `dropout_key`) runs on the XLA path only, dropping the
probabilities after the softmax as transformers' eager attention does; any other implementation falls back to XLA
while dropout is active (with `dropout_key=None`, the default, nothing changes).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxformers.core import dropout

Impl = Literal["auto", "xla", "cudnn", "pallas"]

# A large finite negative instead of -inf: fully masked rows (left-padding queries) stay finite in the forward pass
# and in gradients; HF uses finfo(dtype).min the same way.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

# Up to this many new queries at a (traced) cache offset go to the decode kernel; longer chunks fall back to XLA.
DECODE_MAX_T = 16

# "auto": (platform, kind, dtype group, min kv length S, preference order). For a call, the row of its platform,
# kind ("prefill": no query offset; "decode": T <= DECODE_MAX_T at an offset) and dtype group ("16bit", "float32")
# with the largest `min_len <= S` applies; its implementations are tried in order, the first that supports the
# call wins. CPU rows are measured facts (Pallas only runs interpreted there). The GPU 16-bit prefill and the GPU
# decode rows were measured on an NVIDIA H200 (jax 0.11.2, 2026-12-04; BENCHMARKS.md) by
# `scripts/bench_attention.py --emit-table` (bf16, B=2, N=16, H=128, T=S in 1024..16384: cuDNN fastest at every
# length, the Pallas kernel ahead of XLA, whose O(T*S) logits ran out of memory at 16384) and `--decode` (bf16,
# N=32, K=8, H=128, B in {1, 8}, S in 1024..32768: the Pallas decode kernel ahead by the geometric mean over the
# batches at every length). The row at 0 extrapolates the shortest length measured. The GPU float32 rows and the TPU
# rows are PROVISIONAL (published behaviour, not our measurements; float32 at T=S=1024 did measure XLA 5x faster
# than Pallas, consistent with the row below 2048).
AUTO_TABLE: tuple[tuple[str, str, str, int, tuple[str, ...]], ...] = (
    ("cpu", "prefill", "any", 0, ("xla",)),
    ("cpu", "decode", "any", 0, ("xla",)),
    ("gpu", "prefill", "16bit", 0, ("cudnn", "pallas", "xla")),
    ("gpu", "prefill", "float32", 0, ("xla",)),
    ("gpu", "prefill", "float32", 2048, ("pallas", "xla")),
    ("gpu", "decode", "any", 0, ("pallas", "xla")),
    ("tpu", "prefill", "any", 0, ("xla",)),
    ("tpu", "prefill", "any", 1024, ("pallas", "xla")),
    ("tpu", "decode", "any", 0, ("xla",)),
)

# On CPU, impl="pallas" runs the kernels of this backend in interpret mode ("tpu": TPU semantics via pltpu).
CPU_PALLAS_BACKEND = "tpu"
# ... and this one when they run per device in `shard_map` over several devices: the TPU interpreter simulates the
# devices with blocking host callbacks and a shared barrier, which can starve XLA:CPU's thread pool (a deadlock seen
# on a 2-core machine with 8 simulated devices); the GPU interpreter lowers to plain HLO.
CPU_SHARDED_PALLAS_BACKEND = "gpu"


class Plan(NamedTuple):
    """Which implementation a call runs (`impl`: "xla" | "cudnn" | "pallas" | "pallas_decode") and why."""

    impl: str
    reason: str


def make_mask(
    t: int,
    s: int,
    *,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    key_mask: jax.Array | None = None,
    segment_ids=None,
    sliding_window: int | None = None,
    mask: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask broadcastable to `[B, 1, T, S]` (True = attend) from structural descriptions.

    `q_offset` is the key-slot index of query 0 (scalar or `[B]`), so a decode step against a cache is causal in
    slot space; `sliding_window=W` keeps keys with `q_slot - W < k_slot <= q_slot` (HF's convention).
    """
    parts = []
    if causal or sliding_window is not None:
        q_pos = jnp.arange(t)[None, :, None] + jnp.reshape(jnp.asarray(q_offset), (-1, 1, 1))  # [B|1, T, 1]
        k_pos = jnp.arange(s)[None, None, :]
        if causal:
            parts.append(k_pos <= q_pos)
        if sliding_window is not None:
            parts.append(k_pos > q_pos - sliding_window)
    if key_mask is not None:
        parts.append(key_mask.astype(bool)[:, None, :])
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        parts.append(q_seg[:, :, None] == kv_seg[:, None, :])
    if mask is not None:
        m = mask.astype(bool)
        parts.append(m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m)
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = jnp.logical_and(out, p)
    return out[:, None] if out.ndim == 3 else out  # [B, 1, T, S] or [B, N, T, S]


def xla_attention(q, k, v, *, mask=None, bias=None, scale=None, softcap=None, dropout_rate=0.0, dropout_key=None,
                  dropout_queries: int | None = None):  # fmt: skip
    """Reference attention in plain XLA. mask: bool broadcastable to [B, N, T, S]; bias: additive, same shape.

    dropout_key (with dropout_rate > 0): inverted dropout of the probabilities `[B, N, T, S]`, after their cast to
    the value dtype, as transformers does in training mode. dropout_queries: the T queries are the first T of this
    many (a self-attention computed for its first queries only): the probabilities get the rows of that whole
    attention's mask."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    scale = h**-0.5 if scale is None else scale
    qg = q.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = logits.reshape(b, n, t, -1)  # [B, N, T, S]
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    full = None if dropout_queries is None else (b, n, dropout_queries, probs.shape[-1])
    probs = dropout.dropout(probs, dropout_rate, dropout_key, full_shape=full).reshape(b, kh, n // kh, t, -1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    causal: bool = False,
    q_offset: jax.Array | int = 0,
    key_mask: jax.Array | None = None,
    segment_ids=None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    impl: Impl = "auto",
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    dropout_queries: int | None = None,
) -> jax.Array:
    """Attention over q `[B, T, N, H]`, k/v `[B, S, K, H]` -> `[B, T, N, H]`.

    Args:
      mask: optional dense boolean mask broadcastable to `[B, N, T, S]`, True where attention is allowed.
      bias: optional additive float bias (e.g. relative position bias) broadcastable to `[B, N, T, S]`.
      causal: query i (at key slot `q_offset + i`) sees keys at slots `<= q_offset + i`.
      key_mask: `[B, S]` key padding, True/1 for real tokens.
      segment_ids: `[B, T]` (self-attention) or a pair `([B, T], [B, S])`; attend only within equal ids.
      sliding_window: keep only the last `sliding_window` key slots up to the query's slot.
      scale: softmax scale, default `H ** -0.5`. softcap: Gemma-2 style `c * tanh(logits / c)`.
      impl: "xla" (always available), "cudnn", "pallas", or "auto" (choose per backend and shape).
      dropout_rate / dropout_key: attention-probability dropout (HF's `attention_probs_dropout_prob`, `attn_pdrop`,
        `attention_dropout`); active only with a key (`core.dropout`: None when deterministic), and then computed
        on the XLA path whatever `impl` says (the kernels have no dropout).
      dropout_queries: with dropout, the T queries are the first T of this many (self-attention computed for its
        first queries only, `core.stack.run_layers`'s `last_rows`): their probabilities are dropped as the whole
        attention's would be.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q [B,T,N,H], k/v [B,S,K,H]; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if impl not in ("auto", "xla", "cudnn", "pallas"):
        raise ValueError(f"unknown attention impl {impl!r}; choose 'auto', 'xla', 'cudnn' or 'pallas'")
    call = {"mask": mask, "bias": bias, "causal": causal, "q_offset": q_offset, "key_mask": key_mask}
    call |= {"segment_ids": segment_ids, "sliding_window": sliding_window, "scale": scale, "softcap": softcap}
    drop = dropout_key is not None and bool(dropout_rate)
    plan = Plan("xla", "attention dropout") if drop else attention_plan(q, k, v, impl=impl, **call)
    if plan.impl == "pallas":
        return _pallas_flash(q, k, v, **call)
    if plan.impl == "pallas_decode":
        return _pallas_decode(q, k, v, **call)
    if plan.impl == "cudnn":
        out = _cudnn(q, k, v, **call)
        if out is not None:
            return out
    full_mask = make_mask(
        q.shape[1],
        k.shape[1],
        causal=causal,
        q_offset=q_offset,
        key_mask=key_mask,
        segment_ids=segment_ids,
        sliding_window=sliding_window,
        mask=mask,
    )
    return xla_attention(
        q, k, v, mask=full_mask, bias=bias, scale=scale, softcap=softcap,
        dropout_rate=dropout_rate if drop else 0.0, dropout_key=dropout_key if drop else None,
        dropout_queries=dropout_queries,
    )  # fmt: skip


def attention_plan(q, k, v, *, impl: Impl = "auto", **call) -> Plan:
    """The implementation `dot_product_attention(q, k, v, impl=impl, **call)` runs, with the reason.

    `call` takes the mask keywords of `dot_product_attention`; values may be abstract (`jax.ShapeDtypeStruct`).
    """
    platform = target_platform()
    if impl == "xla":
        return Plan("xla", "requested")
    if impl != "auto":
        why = _unsupported(impl, platform, q, k, **call)
        return (
            Plan(_kernel_name(impl, **call), "requested") if why is None else Plan("xla", f"{impl} unsupported: {why}")
        )
    kind = "prefill" if _is_static_zero(call.get("q_offset", 0)) else "decode"
    dtype_group = "float32" if jnp.dtype(q.dtype) == jnp.float32 else "16bit"
    rows = [r for r in AUTO_TABLE if r[0] == platform and r[1] == kind and r[2] in ("any", dtype_group)]
    rows = [r for r in rows if r[3] <= k.shape[1]]
    prefs = max(rows, key=lambda r: r[3])[4] if rows else ("xla",)
    skipped = []
    for name in prefs:
        why = None if name == "xla" else _unsupported(name, platform, q, k, **call)
        if why is None:
            reason = f"AUTO_TABLE {platform}/{kind}/{dtype_group}/S={k.shape[1]}"
            return Plan(_kernel_name(name, **call), reason + (f" ({'; '.join(skipped)})" if skipped else ""))
        skipped.append(f"{name}: {why}")
    return Plan("xla", "; ".join(skipped))


def target_platform() -> str:
    """The platform attention is traced for: that of the active mesh's devices, else jax's default backend.

    A program traced under a mesh of TPU devices dispatches as on TPU even from a CPU host, which is what compiling
    ahead of time for a TPU topology (`jaxformers.aot`) needs; with no mesh, or a mesh of this host's devices, this
    is `jax.default_backend()`."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else mesh.abstract_device
    return jax.default_backend() if device is None else device.platform


def _is_static_zero(x) -> bool:
    return isinstance(x, int) and x == 0


def _kernel_name(impl: str, *, q_offset=0, causal=False, sliding_window=None, **_) -> str:
    """ "pallas" becomes "pallas_decode" when a query offset matters (causal or windowed attention into a cache)."""
    offset_matters = not _is_static_zero(q_offset) and (causal or sliding_window is not None)
    return "pallas_decode" if impl == "pallas" and offset_matters else impl


def _unsupported(impl: str, platform: str, q, k, **call) -> str | None:
    """Why `impl` cannot run this call on `platform` (None if it can); Pallas decode is reported as "pallas"."""
    q_offset, window = call.get("q_offset", 0), call.get("sliding_window")
    if call.get("mask") is not None or call.get("bias") is not None:
        return "dense mask or additive bias"
    if window is not None and not isinstance(window, int):
        return "traced sliding window"
    if impl == "cudnn":
        if platform != "gpu":
            return f"platform {platform}"
        if q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[-1] > 128 or q.shape[-1] % 8:
            return "needs 16-bit inputs and H <= 128, H % 8 == 0"
        if call.get("key_mask") is not None or call.get("segment_ids") is not None or call.get("softcap") is not None:
            return "key padding, segment ids or soft-cap"
        if not _is_static_zero(q_offset) and (call.get("causal") or window is not None):
            return "query offset"
        if call.get("causal") and q.shape[1] != k.shape[1]:
            return "causal with T != S"
        if window is not None and not call.get("causal"):
            return "sliding window without causal"
        return None
    if q.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype}"
    if platform == "gpu" and q.shape[-1] > 256:
        return "head dim > 256 on GPU"
    if _is_static_zero(q_offset) or not (call.get("causal") or window is not None):
        return None
    if not call.get("causal") or q.shape[1] > DECODE_MAX_T or call.get("segment_ids") is not None:
        return f"query offset needs causal, T <= {DECODE_MAX_T}, no segment ids"
    return None


def _kernel_backend(sharded: bool = False):
    platform = target_platform()
    if platform == "cpu":
        return (CPU_SHARDED_PALLAS_BACKEND if sharded else CPU_PALLAS_BACKEND), True
    return ("tpu" if platform == "tpu" else "gpu"), False


def _pallas_flash(q, k, v, *, causal, key_mask, segment_ids, sliding_window, scale, softcap, **_):
    """Flash kernel, key padding folded into kv segment ids (padding slots get an id no query has)."""
    from jaxformers import kernels

    ids = None
    if segment_ids is not None:
        ids = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        ids = (ids[0].astype(jnp.int32), ids[1].astype(jnp.int32))
    if key_mask is not None:
        q_ids, kv_ids = ids if ids is not None else (jnp.ones(q.shape[:2], jnp.int32), jnp.ones(k.shape[:2], jnp.int32))
        ids = (q_ids, jnp.where(key_mask.astype(bool), kv_ids, jnp.iinfo(jnp.int32).min))

    opts = {"causal": causal, "sliding_window": sliding_window, "scale": scale, "softcap": softcap}

    def run(q, k, v, *ids, backend, interpret):
        return kernels.flash_attention(q, k, v, segment_ids=ids or None, backend=backend, interpret=interpret, **opts)

    names = [_Q, _KV, _KV] + [("act_batch", None)] * (0 if ids is None else 2)
    return _per_device(run, [q, k, v, *(ids or ())], names)


def _pallas_decode(q, k, v, *, q_offset, key_mask, sliding_window, scale, softcap, **_):
    """Decode kernel: the T queries sit at slots `q_offset + i`, i.e. the last T of `q_offset + T` valid slots."""
    from jaxformers import kernels

    lengths = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32) + q.shape[1], (q.shape[0],))

    opts = {"sliding_window": sliding_window, "scale": scale, "softcap": softcap}

    def run(q, k, v, lengths, *km, backend, interpret):
        return kernels.decode_attention(
            q, k, v, lengths, key_mask=km[0] if km else None, backend=backend, interpret=interpret, **opts
        )

    km = [] if key_mask is None else [key_mask]
    names = [_Q, _KV, _KV, ("act_batch",)] + [("act_batch", None)] * len(km)
    return _per_device(run, [q, k, v, lengths, *km], names)


_Q = ("act_batch", None, "act_heads", None)
_KV = ("act_batch", None, "act_kv_heads", None)


def _per_device(kernel, args, names):
    """`kernel(*args, backend=..., interpret=...)` per device in `jax.shard_map` over the batch and head axes of the
    active mesh and rules.

    Heads are split only when query and kv heads split over the same axes (so every device keeps whole GQA
    groups); sequence axes are never split. Without a mesh (or with nothing to split) the kernel runs as is.
    """
    backend, interpret = _kernel_backend()
    fn = functools.partial(kernel, backend=backend, interpret=interpret)
    try:
        from jaxformers.core.sharding import logical_spec
    except ImportError:
        return fn(*args)
    mesh = _active_mesh()
    if mesh is None:
        return fn(*args)
    specs = [logical_spec(n, shape=x.shape) for n, x in zip(names, args)]
    if specs[0][2] != specs[1][2]:  # query and kv heads split differently: keep heads whole
        heads = ("act_heads", "act_kv_heads")
        specs = [P(*(None if n in heads else p for n, p in zip(name, spec))) for name, spec in zip(names, specs)]
    if all(p is None for spec in specs for p in spec):
        return fn(*args)
    backend, interpret = _kernel_backend(sharded=True)
    fn = functools.partial(kernel, backend=backend, interpret=interpret)
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=specs[0], check_vma=False)(*args)


def _active_mesh():
    """The concrete mesh from `sharding.get_mesh()` outside jit; inside jit (where only the abstract mesh exists and
    `jax.sharding.get_mesh` raises) the abstract mesh, which `jax.shard_map` accepts."""
    from jaxformers.core import sharding

    try:
        mesh = sharding.get_mesh() if hasattr(sharding, "get_mesh") else None
    except ValueError:
        mesh = None
    if mesh is None:
        abstract = jax.sharding.get_abstract_mesh()
        mesh = None if abstract is None or abstract.empty else abstract
    return mesh


def _cudnn(q, k, v, *, causal, sliding_window, scale, **_):
    """cuDNN fused attention, or None when it rejects the call at trace time (then the caller uses XLA)."""
    window = None if sliding_window is None else (sliding_window - 1, 0)
    try:
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal, local_window_size=window, implementation="cudnn"
        )
    except (ValueError, NotImplementedError, RuntimeError):
        return None
