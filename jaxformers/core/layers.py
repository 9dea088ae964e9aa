"""Thin NNX layers that require logical axis names on every parameter, and the stacked-layer container.

Numerics follow PyTorch/HF: LayerNorm and RMSNorm compute in float32 and cast back; `Dense` kernels are stored
`[in..., out...]` (the transpose of torch's Linear weight), so head-shaped projections are plain reshapes.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformers.core import xla_cpu
from jaxformers.core.quant import QuantSpec, dequantize_rows, matmul as quantized_matmul
from jaxformers.core.options import Options

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], dtype, axes: Axes) -> nnx.Param:
    """A Param with logical `axes` metadata (one name per dimension)."""
    if len(axes) != len(shape):
        raise ValueError(f"parameter of shape {tuple(shape)} needs {len(shape)} axis names, got {axes}")
    return nnx.Param(init(next_key(rngs) if rngs is not None else None, tuple(shape), dtype), axes=tuple(axes))


def next_key(rngs: nnx.Rngs) -> jax.Array:
    """`rngs.params()` (the same key, the same count update), in time independent of how much was traced before.

    flax's `RngStream.__call__` bumps its counter with `count[...] += 1`; that indexed update compares the old and
    new values' `.sharding`, and under tracing (`nnx.eval_shape` building the abstract model, a jitted init) a tracer
    answers `.sharding` with an AttributeError whose message JAX builds by walking every equation traced so far. So
    each draw cost O(model traced so far) and an L-layer model O(L^2): 96 tiny layers took seconds to build
    abstractly (issue 13). Replacing the counter whole (`set_value`) skips that comparison; `_check_can_update`
    keeps flax's error for a stream updated from another trace level.
    """
    stream = rngs.params  # the "params" stream, or flax's fallback to "default"
    count = getattr(stream, "count", None)
    known = isinstance(stream, nnx.RngStream) and isinstance(count, nnx.Variable) and not getattr(count, "hijax", False)
    if not known or not hasattr(count, "_check_can_update"):
        return stream()  # a stream (or flax version) this shortcut does not know: flax's own path
    count._check_can_update()
    key = jax.random.fold_in(stream.key[...], count[...])
    count.set_value(count[...] + 1)
    return key


def normal(stddev: float = 0.02):
    return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)


def zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def _tuple(x) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


class Dense(nnx.Module):
    """`y = x @ W + b` contracting the last `len(in_shape)` dims of x; kernel `[*in_shape, *out_shape]`.

    Quantized (`core.quant.apply_specs` sets `quant`): `kernel` holds integer codes of the same shape and axes, with
    `kernel_scale` (and `kernel_zero`) beside it, and the product is `core.quant.matmul`.
    """

    def __init__(
        self,
        in_shape,
        out_shape,
        *,
        axes: Axes,
        use_bias: bool = True,
        opts: Options,
        rngs: nnx.Rngs,
        stddev: float = 0.02,
    ):
        self.in_shape, self.out_shape = _tuple(in_shape), _tuple(out_shape)
        self.dtype = opts.compute_dtype
        self.kernel = param(rngs, normal(stddev), self.in_shape + self.out_shape, opts.param_dtype, axes)
        n_in = len(self.in_shape)
        self.bias = param(rngs, zeros, self.out_shape, opts.param_dtype, axes[n_in:]) if use_bias else None

    out_first = False  # kernel stored `[*out_shape, *in_shape]` (see `set_kernel_layout`)
    quant: QuantSpec | None = None  # quantized storage (see `core.quant`)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        batch = x.shape[: x.ndim - n_in]
        x2 = x.astype(self.dtype).reshape(-1, math.prod(self.in_shape))
        n_out = math.prod(self.out_shape)
        if self.quant is not None:
            zero = None if self.kernel_zero is None else self.kernel_zero[...].reshape(-1, n_out)
            codes = self.kernel[...].reshape(-1, n_out)
            y = quantized_matmul(x2, codes, self.kernel_scale[...].reshape(-1, n_out), zero, self.quant, self.dtype)
            return self._add_bias(y.reshape(batch + self.out_shape))
        k = self.kernel[...].astype(self.dtype)
        if self.out_first:  # y = x @ k.T as dot products over contiguous kernel rows (fast GEMV on XLA:CPU)
            k2 = k.reshape(math.prod(self.out_shape), -1)
            y = jax.lax.dot_general(x2, k2, (((1,), (1,)), ((), ())))
        else:
            y = jnp.dot(x2, k.reshape(-1, n_out))
        return self._add_bias(y.reshape(batch + self.out_shape))

    def _add_bias(self, y: jax.Array) -> jax.Array:
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class Embed(nnx.Module):
    """Token/position embedding table `[num, features]`; `attend` gives tied output logits.

    Quantized (`quant` set): `embedding` holds integer codes, `embedding_scale` `[num, G]` one scale per row and
    group of features; looked-up rows are dequantized, and `attend` is `core.quant.matmul` over the codes.
    """

    quant: QuantSpec | None = None

    def __init__(self, num: int, features: int, *, axes: Axes = ("vocab", "embed"), opts: Options, rngs: nnx.Rngs):
        self.dtype = opts.compute_dtype
        self.embedding = param(rngs, normal(0.02), (num, features), opts.param_dtype, axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        if self.quant is not None:
            zero = None if self.embedding_zero is None else jnp.take(self.embedding_zero[...], ids, axis=0)
            codes, scale = jnp.take(self.embedding[...], ids, axis=0), jnp.take(self.embedding_scale[...], ids, axis=0)
            return dequantize_rows(codes, scale, zero, self.quant, self.dtype)
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits `x @ table.T` of a tied head. The product is fenced by optimization barriers: XLA:CPU otherwise
        fuses a neighbouring elementwise op into it (T5's `d_model ** -0.5` scale on `x`, BART's
        `final_logits_bias` or an MLM bias on the logits) and then wants the `[V, D]` table transposed, which it
        copies (66 MB for t5-small, 150 MB for BART-base) on every call: in a decode step that copy cost up to 4x
        the step (scripts/bench_generate.py --arch t5 bart, BENCHMARKS.md). Values are unchanged."""
        x = jax.lax.optimization_barrier(x.astype(self.dtype))
        if self.quant is not None:
            zero = None if self.embedding_zero is None else self.embedding_zero[...]
            x2 = x.reshape(-1, x.shape[-1])
            y = quantized_matmul(x2, self.embedding[...], self.embedding_scale[...], zero, self.quant, self.dtype, True)
            return jax.lax.optimization_barrier(y.reshape(*x.shape[:-1], -1))
        x2 = x.reshape(-1, x.shape[-1])  # (`core.xla_cpu.table_product`: the orientation for few rows on CPU)
        y = xla_cpu.table_product(x2, self.embedding[...].astype(self.dtype))
        return jax.lax.optimization_barrier(y.reshape(*x.shape[:-1], -1))


class LayerNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float, use_bias: bool = True, opts: Options, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, ones, (features,), opts.param_dtype, ("embed",))
        self.bias = param(rngs, zeros, (features,), opts.param_dtype, ("embed",)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm (`w * x_normed.to(dtype)`) or, with `unit_offset`, Gemma's `(1 + w) * x_normed` in float32."""

    def __init__(self, features: int, *, eps: float, unit_offset: bool = False, opts: Options, rngs: nnx.Rngs):
        self.eps, self.unit_offset = eps, unit_offset
        self.scale = param(rngs, zeros if unit_offset else ones, (features,), opts.param_dtype, ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        if self.unit_offset:  # Gemma: multiply in float32, then cast (HF GemmaRMSNorm)
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)  # Llama: cast, then multiply


ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Stacked(nnx.Module):
    """`n` identical layers stored as one module whose parameters have a leading `layers` axis.

    `scan(fn, carry, xs)` runs them with `jax.lax.scan` (compile time flat in depth); `layer(i)` returns layer i as
    an ordinary module (slices of the stacked arrays) for unrolled execution. Nothing is mutated.
    """

    def __init__(self, make: Callable[[nnx.Rngs], nnx.Module], n: int, *, rngs: nnx.Rngs):
        layers = [make(rngs) for _ in range(n)]
        graphdef, first = nnx.split(layers[0])
        states = [first] + [nnx.split(layer)[1] for layer in layers[1:]]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        for _, v in nnx.to_flat_state(stacked):
            v.set_metadata(axes=("layers",) + tuple(v.get_metadata()["axes"]))
        self.n = n
        self.block = nnx.merge(graphdef, stacked)

    def layer(self, i: int) -> nnx.Module:
        graphdef, state = nnx.split(self.block)
        return nnx.merge(graphdef, jax.tree.map(lambda v: _layer_slice(v, i), state, is_leaf=_is_var))

    def all_layers(self) -> list[nnx.Module]:
        """Every layer as an ordinary module, from one `split` of each stacked array (unrolled execution).

        Same values as `[layer(i) for i in range(n)]`, but differentiated as one op: the gradient of a `split` is
        one `concatenate`, while the gradient of `n` separate slices is `n` zero-padded full-size arrays summed
        (XLA:CPU does not fold them), which cost a BERT-base training step ~40% of its time.
        """
        graphdef, state = nnx.split(self.block)
        parts = jax.tree.map(lambda v: _layer_parts(v, self.n), state, is_leaf=_is_var)
        return [nnx.merge(graphdef, jax.tree.map(lambda p, i=i: p[i], parts, is_leaf=lambda x: isinstance(x, list)))
                for i in range(self.n)]

    def scan(self, fn: Callable, carry, xs=None, *, remat: bool = False):
        """`fn(layer, carry, x) -> (carry, y)` over the layers, with per-layer `xs` (e.g. a KV cache slice)."""
        graphdef, state = nnx.split(self.block)

        def body(c, inp):
            st, x = inp
            return fn(nnx.merge(graphdef, st), c, x)

        if remat:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, carry, (state, xs))


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _layer_parts(v, n: int) -> list:
    """The `n` layers of a stacked Variable (or array) from one split, each without the leading `layers` axis."""
    value = v[...] if isinstance(v, nnx.Variable) else v
    parts = [jnp.squeeze(p, 0) for p in jnp.split(value, n, axis=0)]
    if not isinstance(v, nnx.Variable):
        return parts
    axes = v.get_metadata().get("axes")
    out = []
    for p in parts:
        var = v.replace(value=p)
        if axes and axes[0] == "layers":
            var.set_metadata(axes=tuple(axes[1:]))
        out.append(var)
    return out


def _layer_slice(v, i: int):
    """Layer `i` of a stacked Variable (or array), with the leading `layers` axis name dropped."""
    if not isinstance(v, nnx.Variable):
        return v[i]
    axes = v.get_metadata().get("axes")
    out = v.replace(value=v[...][i])
    if axes and axes[0] == "layers":
        out.set_metadata(axes=tuple(axes[1:]))
    return out


class Unstacked(nnx.Module):
    """Layers held as separate modules (per-layer arrays): the layout decoding loops run fastest on.

    Offers `Stacked`'s unrolled interface (`n`, `layer(i)`); it cannot `scan`. Built by `unstack_layers(model)` or
    `decode_layout(model)`; parameters keep their logical axis names without the `layers` axis.
    """

    def __init__(self, layers: list[nnx.Module]):
        self.n = len(layers)
        self.blocks = nnx.List(layers)

    def layer(self, i: int) -> nnx.Module:
        return self.blocks[i]

    def all_layers(self) -> list[nnx.Module]:
        return list(self.blocks)

    def scan(self, *args, **kwargs):
        raise TypeError("Unstacked layers cannot be scanned; run the model with scan_layers=False")


def _kernel_perm(module: nnx.Module, out_first: bool) -> tuple[int, ...] | None:
    """The transpose taking a float `Dense` kernel (stacked or not) to `out_first` order; None when it has that
    order already, is quantized (`core.quant.matmul` reads `[in, out]` codes as fast) or is not a `Dense`."""
    if not isinstance(module, Dense) or module.quant is not None or module.out_first == out_first:
        return None
    n_in, n_out = len(module.in_shape), len(module.out_shape)
    first, second = (n_out, n_in) if module.out_first else (n_in, n_out)
    lead = module.kernel.ndim - n_in - n_out  # 1 inside a `Stacked` block
    return tuple(range(lead)) + tuple(lead + i for i in (*range(first, first + second), *range(first)))


def _with_value(var: nnx.Variable, value, perm: tuple[int, ...] | None = None, drop_layers: bool = False):
    """`var` holding `value`, its axis names without the leading `layers` (`drop_layers`) and permuted by `perm`."""
    axes = var.get_metadata().get("axes")
    out = var.replace(value=value)
    if axes:
        axes = tuple(axes[1:]) if drop_layers and axes[0] == "layers" else tuple(axes)
        out.set_metadata(axes=tuple(axes[i] for i in perm) if perm else axes)
    return out


def set_kernel_layout(model: nnx.Module, out_first: bool, keep_order: Sequence[nnx.Module] = ()) -> nnx.Module:
    """Store every `Dense` kernel of `model` as `[*out, *in]` (`out_first=True`) or `[*in, *out]`, in place, one
    kernel at a time (the model releases each old kernel as soon as its transpose exists); kernels inside the
    submodules `keep_order` keep theirs.

    Same numbers, different memory order: on XLA:CPU a one-row product (batch-1 decoding) streams `[out, in]` rows
    about 25% faster, while skinny multi-row products prefer `[in, out]` (scripts/bench_generate.py, BENCHMARKS.md).
    Checkpoints always use `[*in, *out]`: generation reorders a model's kernels (`decode_layout`) and
    `canonical_layout` orders them back. Quantized kernels keep their layout (`core.quant.matmul` reads `[in, out]`
    codes as fast).
    """
    keep = {id(m) for k in keep_order for _, m in nnx.iter_modules(k)}
    for _, module in list(nnx.iter_modules(model)):
        if id(module) not in keep:
            _order_kernel(module, out_first)
    return model


def _order_kernel(module: nnx.Module, out_first: bool) -> None:
    """Store `module`'s kernel `[*out, *in]` or `[*in, *out]` (`set_kernel_layout`), where it is a float `Dense`."""
    perm = _kernel_perm(module, out_first)
    if perm is not None:
        var = module.kernel  # changed in place: a reference to the Variable stays attached to the model
        axes = var.get_metadata().get("axes")
        var.set_value(jnp.transpose(var[...], perm))
        if axes:
            var.set_metadata(axes=tuple(axes[i] for i in perm))
        _set_out_first(module, out_first)


def _set_out_first(module: Dense, out_first: bool) -> None:
    """Set `module.out_first`; False as the class default (no instance attribute), so a layer reordered and back
    has the graph (and so reuses the compiled programs) of one never reordered."""
    if out_first:
        module.out_first = True
    elif "out_first" in vars(module):
        del module.out_first


def _host_views(x) -> bool:
    """Whether `x`'s layer slices can be views of its buffer: a concrete array on one CPU device."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or len(x.sharding.device_set) != 1:
        return False
    return next(iter(x.sharding.device_set)).platform == "cpu" and x.is_fully_addressable


def _layer_values(x: jax.Array, n: int) -> tuple[list[jax.Array], bool]:
    """The `n` layers of a stacked array, and whether they are views of its buffer.

    On one CPU device they are: numpy's view of the buffer, sliced and handed back to the same device, is aliased
    by XLA:CPU without a copy (the stacked buffer then lives as long as any of its slices). Elsewhere, copies."""
    if _host_views(x):
        # committed to the device only if `x` is: a jitted call's cache key tells committed arrays from others
        host, device = np.asarray(x), next(iter(x.sharding.device_set)) if x.committed else None
        return jax.device_put([host[i] for i in range(n)], device), True
    return [x[i] for i in range(n)], False


def _unstack_in_place(parent: nnx.Module, name: str, out_first: bool | None, release: bool) -> Callable[[], None]:
    """Replace `parent.<name>` (a `Stacked`) by an `Unstacked` of the same layers, one array at a time, its float
    kernels ordered for `out_first` (None: as they are). Returns the function that puts a `Stacked` back (to be
    called with every kernel in `[*in, *out]` order again).

    Memory: the model holds each stacked array until its layers exist, then only the layers, so the peak is the
    weights plus one stacked array. On one CPU device the layers of an array that is not reordered are views of it
    (no copy at all), and the restore puts the stacked array back when its layers are still those views; other
    arrays are stacked again, each per-layer array released once it has been copied.

    release: drop the stacked arrays by emptying their Variables (refilled by the restore, so references to the
    block's modules and Variables stay valid). Only for a layout that is surely restored (`generate` restores in a
    `finally`): a Variable shared with another module (`nnx.merge` of the model's state shares them) reads empty
    meanwhile. Without it nothing of the original block is modified; its arrays stay alive while it is held."""
    stacked = getattr(parent, name)
    n = stacked.n
    perms, flipped = {}, []
    if out_first is not None:
        for path, module in nnx.iter_modules(stacked.block):
            perm = _kernel_perm(module, out_first)
            if perm is not None:  # per layer: without the leading layers axis
                perms[(*path, "kernel")] = tuple(i - 1 for i in perm[1:])
                flipped.append((module, module.out_first))
    # the layers' graph: the block's, with the reordered kernels' `out_first` (set on the block only meanwhile)
    for module, _ in flipped:
        _set_out_first(module, out_first)
    graphdef, state = nnx.split(stacked.block)
    for module, was in flipped:
        _set_out_first(module, was)
    flat = list(nnx.to_flat_state(state))  # the block's own Variable objects
    del state
    delattr(parent, name)  # `stacked` and its block stay, detached: the restore puts them back as they were
    per_layer: list[list] = [[] for _ in range(n)]
    kept = []  # per array: its path, a template Variable, and (weakly) the stacked array and its views if reusable
    for k in range(len(flat)):
        path, var = flat[k]
        flat[k] = None
        value = var.get_value()
        if release:  # the block's reference to the stacked array, dropped (its Variable is refilled on restore)
            var.set_value(np.zeros((), var.dtype))
        perm = perms.get(path)
        if perm is not None:  # the whole stack transposed at once (then sliced into views, where it can be)
            value = _transpose(value, (0, *(i + 1 for i in perm)))
        parts, views = _layer_values(value, n)
        for i in range(n):
            per_layer[i].append((path, _with_value(var, parts[i], perm, drop_layers=True)))
        reuse = views
        # put back as it came: committed to its sharding, or not (a jitted call's cache key tells the two apart, so
        # an uncommitted array put back committed would recompile every program of the model's next call)
        committed = not isinstance(value, jax.core.Tracer) and value.committed  # (laid out inside a trace: no)
        sharding = value.sharding if committed else None
        kept.append((path, var, sharding, perm,
                     (weakref.ref(value), tuple(map(weakref.ref, parts))) if reuse else None))  # fmt: skip
        del var, value, parts
    layers = [nnx.merge(graphdef, nnx.from_flat_state(items)) for items in per_layer]
    del per_layer
    setattr(parent, name, Unstacked(layers))
    del layers

    def restore() -> None:
        unstacked = getattr(parent, name)
        blocks = list(unstacked.blocks)
        delattr(parent, name)
        del unstacked
        for path, var, sharding, perm, reusable in kept:
            # each layer's Variable at `path`, and the transpose taking its kernel back to `[*in, *out]` (None when
            # it has that order): read by attribute, not by walking the layers' graphs (~0.1 ms per module)
            owners = [_at(block, path[:-1]) for block in blocks]
            current = [getattr(m, path[-1]) if isinstance(path[-1], str) else m[path[-1]] for m in owners]
            back = tuple(_kernel_perm(m, out_first=False) if path[-1] == "kernel" else None for m in owners)
            del owners
            value = None if reusable is None else reusable[0]()  # alive while any of its views is
            if value is not None and all(v.get_value() is r() for v, r in zip(current, reusable[1])):
                if perm is not None:  # the stack these views slice, transposed back at once
                    value = _transpose(value, (0, *(int(i) + 1 for i in np.argsort(perm))))
            else:
                # stack again (kernels back in `[*in, *out]` order) in one compiled program, the model releasing
                # each per-layer array as it is handed over
                parts = []
                for v in current:
                    parts.append(v.get_value())
                    v.set_value(np.zeros((), v.dtype))
                value = _stack_transposed(tuple(parts), back)
                value = value if sharding is None else jax.device_put(value, sharding)
                del parts
            var.set_value(value)  # the original Variable objects: references users hold stay attached
            del current, value
        blocks.clear()
        setattr(parent, name, stacked)

    return restore


def _at(node, path: tuple):
    """The submodule (or container entry) of `node` at `path`, a Variable path's keys: attributes or indices."""
    for key in path:
        node = getattr(node, key) if isinstance(key, str) else node[key]
    return node


@functools.partial(jax.jit, static_argnums=1)
def _transpose(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    """`jnp.transpose(x, perm)` of a whole stacked `[L, ...]` array: XLA:CPU splits one large transpose over its
    threads (~16 GB/s read + write on 2 cores of an AMD EPYC, against ~8 GB/s for the same bytes as L per-layer
    transposes), and on one CPU device the layers are then views of its buffer (`_layer_values`)."""
    return jnp.transpose(x, perm)


@functools.partial(jax.jit, static_argnums=1)
def _stack_transposed(parts: tuple[jax.Array, ...], perms: tuple[tuple[int, ...] | None, ...]) -> jax.Array:
    """`stack(parts)`, each part first transposed by its entry of `perms` (None: as it is), in one program."""
    return jnp.stack([p if perm is None else jnp.transpose(p, perm) for p, perm in zip(parts, perms)])


# model -> the functions (last first) that restore its original layout, for models `decode_layout` laid out
_LAID_OUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decode_layout(model: nnx.Module, *, out_first: bool | None, release: bool = False,
                  keep_order: Sequence[nnx.Module] = ()) -> nnx.Module:  # fmt: skip
    """Lay `model` out for a decode loop, in place, and return it: every `Stacked` becomes `Unstacked` (per-layer
    arrays, run unrolled: `scan` flags off) and, unless `out_first` is None, every float `Dense` kernel outside the
    submodules `keep_order` (an encoder-decoder's encoder, which runs once per call on many rows) is stored
    `[*out, *in]` (`out_first=True`) or `[*in, *out]`. The layout stays until `canonical_layout(model)`; calling
    again only reorders kernels as `out_first` asks. `release`: empty the stacked arrays' Variables instead of
    leaving them holding the arrays (see `_unstack_in_place`; only when a restore is certain).

    Why: on XLA:CPU a decode step over per-layer arrays runs at twice the speed of one over scanned `[L, ...]`
    arrays, and one-row products read `[out, in]` kernels faster (BENCHMARKS.md). Why in place: the model keeps one
    copy of its weights (each stacked array is released as soon as its layers exist; on one CPU device the layers
    of an array that keeps its order are views of it, no copy). The laid-out model computes the same numbers, but
    its parameter tree differs (`.../blocks/<i>/...` paths, transposed kernels): `canonical_layout` restores it for
    whatever reads parameters by path (saving, training, adapters). Arrays held outside the model (an earlier
    `nnx.split`) are never modified: they stay alive, so their memory is not freed.
    """
    if model in _LAID_OUT:  # laid out already: only the kernels' order may change
        if out_first is not None:
            set_kernel_layout(model, out_first, keep_order)
        return model
    # one walk over the model (a graph walk costs ~0.1 ms per module): where the stacks are, which modules run
    # scanned, which kernels lie outside any stack, and which lie in `keep_order`
    walk = list(nnx.iter_modules(model))
    stacks = [path for path, m in walk if isinstance(m, Stacked)]
    kept_ids = {id(m) for m in keep_order}
    kept_paths = [path for path, m in walk if id(m) in kept_ids]

    def under(path, prefixes) -> bool:
        return any(path[: len(p)] == p for p in prefixes)

    # parents only: a list holding the `Stacked` modules would keep their arrays alive while they are replaced
    targets = [(m, path, k) for path, m in walk for k, v in vars(m).items() if isinstance(v, Stacked)]
    scanned = [m for _, m in walk if getattr(m, "scan", None) is True]
    loose = [(m, under(path, kept_paths)) for path, m in walk if isinstance(m, Dense) and not under(path, stacks)]
    del walk, stacks
    undo: list[Callable[[], None]] = [lambda: [_order_kernel(m, False) for m, _ in loose]]  # undone last
    undo += [_unstack_in_place(parent, name, None if under(path, kept_paths) else out_first, release)
             for parent, path, name in targets]  # fmt: skip
    del targets
    for module in scanned:
        module.scan = False
        undo.append(lambda m=module: setattr(m, "scan", True))
    _LAID_OUT[model] = undo  # (holds submodules, never `model` itself: the entry goes when the model does)
    if out_first is not None:  # kernels outside any stack (an untied LM head)
        for module, kept in loose:
            if not kept:
                _order_kernel(module, out_first)
    return model


def canonical_layout(model: nnx.Module) -> nnx.Module:
    """Undo `decode_layout(model)` in place (a no-op for a model it did not lay out), and return `model`: stacked
    `[L, ...]` arrays, scanned layers as built, `[*in, *out]` kernels, the parameter paths of a loaded checkpoint.

    One array at a time, as `decode_layout`: the peak is the weights plus one stacked array, and on one CPU device
    arrays whose layers were views of a stacked array (and were not replaced since) get that array back, no copy."""
    undo = _LAID_OUT.pop(model, None)
    while undo:  # stacked again with their kernels in checkpoint order; then the kernels outside any stack
        undo.pop()()
    return model


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """`model` with every `Stacked` replaced by `Unstacked` and unrolled execution (`scan = False`), in place, one
    array at a time: `decode_layout` without reordering kernels (`canonical_layout` undoes it)."""
    return decode_layout(model, out_first=None)
