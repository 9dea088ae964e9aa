"""Thin NNX layers that require logical axis names on every parameter, and the stacked-layer container.

Numerics follow PyTorch/HF: LayerNorm and RMSNorm compute in float32 and cast back; `Dense` kernels are stored
`[in..., out...]` (the transpose of torch's Linear weight), so head-shaped projections are plain reshapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
        return jax.lax.optimization_barrier(jnp.dot(x, self.embedding[...].astype(self.dtype).T))


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

    def scan(self, fn: Callable, carry, xs=None, *, remat: bool = False):
        """`fn(layer, carry, x) -> (carry, y)` over the layers, with per-layer `xs` (e.g. a KV cache slice)."""
        graphdef, state = nnx.split(self.block)

        def body(c, inp):
            st, x = inp
            return fn(nnx.merge(graphdef, st), c, x)

        if remat:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, carry, (state, xs))

    def unstacked(self) -> Unstacked:
        """The same layers as separate modules with their own arrays (a copy of each layer's slice)."""
        return Unstacked([self.layer(i) for i in range(self.n)])


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


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

    Offers `Stacked`'s unrolled interface (`n`, `layer(i)`); it cannot `scan`. Built by `Stacked.unstacked()` or
    `unstack_layers(model)`; parameters keep their logical axis names without the `layers` axis.
    """

    def __init__(self, layers: list[nnx.Module]):
        self.n = len(layers)
        self.blocks = nnx.List(layers)

    def layer(self, i: int) -> nnx.Module:
        return self.blocks[i]

    def scan(self, *args, **kwargs):
        raise TypeError("Unstacked layers cannot be scanned; run the model with scan_layers=False")


def set_kernel_layout(model: nnx.Module, out_first: bool) -> nnx.Module:
    """Store every `Dense` kernel of `model` as `[*out, *in]` (`out_first=True`) or `[*in, *out]`, in place.

    Same numbers, different memory order: on XLA:CPU a one-row product (batch-1 decoding) streams `[out, in]` rows
    about 25% faster, while skinny multi-row products prefer `[in, out]` (scripts/bench_generate.py, BENCHMARKS.md).
    Meant, like `unstack_layers`, for a decoding copy of the model; checkpoints always use `[*in, *out]`. Quantized
    kernels keep their layout (`core.quant.matmul` reads `[in, out]` codes as fast).
    """
    for _, module in list(nnx.iter_modules(model)):
        if isinstance(module, Dense) and module.out_first != out_first and module.quant is None:
            n_in, n_out = len(module.in_shape), len(module.out_shape)
            first, second = (n_in, n_out) if not module.out_first else (n_out, n_in)
            perm = tuple(range(first, first + second)) + tuple(range(first))
            var = module.kernel
            axes = var.get_metadata().get("axes")
            new = var.replace(value=jnp.transpose(var[...], perm))
            if axes:
                new.set_metadata(axes=tuple(axes[i] for i in perm))
            module.kernel = new
            module.out_first = out_first
    return model


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """`model` with every `Stacked` replaced by `Unstacked` and unrolled execution (`scan = False`), in place.

    Meant for a fresh copy (e.g. `nnx.merge(graphdef, state)` inside a jitted decoding function): slicing the stacked
    arrays once before a loop lets each step read per-layer arrays instead of slicing a stacked one per step.
    """
    for _, module in list(nnx.iter_modules(model)):
        for name, value in list(vars(module).items()):
            if isinstance(value, Stacked):
                setattr(module, name, value.unstacked())
        if hasattr(module, "scan") and isinstance(getattr(module, "scan"), bool):
            module.scan = False
    return model
