"""Weight-only int8 / int4 quantization: the storage format, the one quantized matmul, and `quantize(model, config)`.

Storage. A quantized `Dense` with kernel `[*in, *out]` holds `kernel`: integer codes `[K', *out]` over the flattened
input `K = prod(in)` (`int8`: K' = K; 4 bits: K' = K / 2, two codes per `uint8`), `kernel_scale` `[G, *out]` in
float32 and, for formats with a minimum (GGUF's Q4_1, Q4_K, Q5_1, Q5_K), `kernel_zero` of the same shape. The input
rows are cut into `G` contiguous groups of `group_size` (one group, i.e. one scale per output channel, when it is
None), and

    W[k, n] = code[k, n] * scale[k // group_size, n] (+ zero[k // group_size, n])

4-bit codes are nibbles: `code = nibble - 8` (signed, our own and GGUF's Q4_0) or `nibble` (`unsigned`: Q4_1, Q4_K),
packed as GGUF packs a block: within each group, byte t holds row t (low nibble) and row t + group_size / 2 (high
nibble). A token `Embed` table `[V, D]` is quantized the same way along D (`embedding` `[V, D']`, `embedding_scale`
`[V, G]`), so looked-up rows dequantize and a tied head contracts over the codes. Codes carry the kernel's axes (the
flattened input takes its first input axis's name), so the sharding rules split them like float kernels; scales
carry the output axes (their group axis stays unnamed: its size, e.g. 576 / 32 = 18, rarely divides a mesh axis).

Compute (`QuantSpec.compute`), measured on XLA:CPU (jax 0.10; BENCHMARKS.md, "Quantized weights"):
  "weight_only": dequantize to the activation dtype, then the float dot. XLA:CPU does not fuse the dequantization
      into the dot: it writes the float weights to memory first (a convert fusion feeding the dot), so each product
      streams more bytes than the float model's. Exact: the same weight values as the dequantized float model.
  "int8": quantize the activations to int8 on the fly (one scale per row and weight group) and run int8 x int8 ->
      int32 dots, which XLA:CPU hands to YNNPACK reading the int8 codes directly: the fewest bytes per product. A
      one-row product is padded to two rows (XLA:CPU sends [1, K] x [K, N] to a matrix-vector loop that first
      widens the whole weight to int32). 4-bit codes are unpacked to int8 (materialised) first: XLA:CPU has no
      int4 dot, and converting `jnp.int4` arrays (which it does store packed) ran about 2x slower than these shifts.
  "pallas": weight-only in registers: the Pallas GPU kernel `jaxformers.kernels.quant_matmul_gpu` reads the codes
      tile by tile, dequantizes them in registers and never writes float weights (interpreted, slowly, on CPU;
      "weight_only" on TPU, where the kernel has no tiles for the shapes, for a transposed table, or under a
      multi-device mesh, which cannot partition a kernel call).
  "auto": "int8" on CPU; elsewhere "weight_only", except on GPUs for products of at most `GPU_KERNEL_MAX_ROWS` rows
      (decoding) of grouped or 4-bit codes, which take "pallas" (1.4-1.75x XLA's form on an H200, see below).
Measured on an NVIDIA H200 (jax 0.11.2, `scripts/bench_quant_matmul.py`, BENCHMARKS.md): XLA:GPU does not fuse the
dequantization `code * scale` into the product either (a separate fusion writes the bf16 weight: 0.26-0.46x the
speed of the bf16 product), but it does fuse a bare `convert` of the codes into its Triton GEMM. So on GPUs a
weight-only product of per-channel int8 codes (one group, no zero) runs as `(x @ codes.astype(dtype)) * scale`
(`SCALE_AFTER_PLATFORMS`): the same function up to rounding (the codes are exact in bf16; the scale is applied to the
product instead of the weight), reading the int8 codes directly, 0.66x the bf16 product's speed with one row and
0.99-1.01x with 8 or 64 (a 16-layer program of [M, 2048] x [2048, 5632] products). Grouped and 4-bit codes keep the
dequantize-then-dot form in XLA. No XLA formulation measured beats the bf16 product on that GPU, so int8 there saves
memory, not time; "int8" compute was 0.38-0.53x. For grouped and 4-bit codes the Pallas kernel ("pallas") reads the
codes and dequantizes in registers: 1.4-1.75x XLA's form at 1-32 rows, about the bf16 product's speed with a quarter
of its bytes (the products of a 1.1B model's shapes are latency-bound there, not bandwidth-bound); per-channel int8
stays on XLA's scale-after form, which the kernel only ties at one row (`GPU_KERNEL_MAX_ROWS`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformers.core import xla_cpu

COMPUTE_MODES = ("auto", "weight_only", "int8", "pallas")
# Backends where weight-only products of per-channel int8 codes apply the scale after the product (module docstring).
SCALE_AFTER_PLATFORMS = ("gpu",)
# "auto" on a GPU sends products of at most this many rows (decoding: one row per sequence) to the Pallas kernel
# `jaxformers.kernels.quant_matmul_gpu`, except per-channel int8 codes, whose `(x @ codes) * scale` form XLA already
# runs from the int8 codes. Measured on an NVIDIA H200 (jax 0.11.2, `scripts/bench_quant_matmul.py`, 16 different
# [2048, 5632] weights per program, bf16 activations; BENCHMARKS.md): int4 in groups of 128 ran 1.55 / 1.41 / 1.37 /
# 1.38 / 0.95x XLA's dequantize-then-GEMM at 1 / 8 / 16 / 32 / 64 rows, int8 in groups of 32 (GGUF's Q8_0) 1.75 /
# 1.51 / 1.00x at 1 / 8 / 64; per-channel int8 0.99x at 1 row and 0.55-0.72x at 8-32 against the scale-after form.
GPU_KERNEL_MAX_ROWS = 32


@dataclass(frozen=True)
class QuantSpec:
    """How one module's weights are stored and multiplied (a static, hashable module attribute).

    bits: 8 (`int8` codes) or 4 (nibbles, two per `uint8`). group_size: input rows sharing one scale (None: all of
    them, one scale per output channel). zero: a per-group additive term. unsigned: 4-bit codes are the nibbles
    0..15 (else nibble - 8). compute: "auto" | "weight_only" | "int8" | "pallas" (module docstring).
    """

    bits: int
    group_size: int | None = None
    zero: bool = False
    unsigned: bool = False
    compute: str = "auto"

    @property
    def qmax(self) -> int:
        return 127 if self.bits == 8 else 7

    def groups(self, k: int, where: str = "") -> int:
        """Number of groups along an input of size `k`. A group size that does not divide it is a ValueError, and so
        is an odd group for 4 bits (they pack the two halves of a group into one byte)."""
        size = k if self.group_size is None else self.group_size
        if k % size == 0 and (self.bits == 8 or size % 2 == 0):
            return k // size
        skip = "or list the module in modules_to_not_convert"
        if self.group_size is None:
            raise ValueError(f"4-bit codes pack two input rows per byte: the odd input dimension {k}{where} cannot "
                             f"be packed. Quantize it to 8 bits, {skip}")  # fmt: skip
        divisors = [d for d in (16, 32, 64, 128, 256) if k % d == 0 and (self.bits == 8 or d % 2 == 0)]
        some = f"a group size that divides {k} (e.g. {divisors}), " if divisors else ""
        raise ValueError(
            f"group_size={self.group_size} does not fit the input dimension {k}{where}: groups must be whole "
            f"(and even, for 4 bits). Use {some}group_size=None (one scale per output channel), {skip}"
        )


@dataclass(frozen=True)
class QuantizationConfig:
    """`load(..., quantization=QuantizationConfig(...))`: which weights to quantize, and how.

    bits: 8 (int8, one scale per output channel by default) or 4 (int4, one scale per `group_size` input rows);
      None keeps a GGUF file's own block formats (`quantization="gguf"`, see `jaxformers.convert.gguf`).
    group_size: input rows per scale, or None for one scale per output channel; "auto" (the default): None for 8
      bits, 128 for 4 bits. It must divide every quantized layer's input size (a ValueError names the layer).
    quantize_embeddings: also quantize the token embedding tables (per row); a tied LM head then multiplies by the
      quantized table.
    modules_to_not_convert: module names left in floating point, matched against the module path as whole
      dot-separated parts ("lm_head", "mlp.down_proj"; stacked layers cannot be told apart by index). None (the
      default) leaves the task head (everything outside the base model: lm_head, classifier, ...) in floating
      point, as transformers' quantizers do; () quantizes it too.
    compute: "auto" | "weight_only" | "int8" | "pallas": how the quantized matmul runs (see `jaxformers.core.quant`).
      "int8" (the CPU default) also rounds the activations, as llama.cpp does: SmolLM2-135M's Q4_1 file gave a mean
      KL of 0.03 to its float32 logits over a 30-token text (80% top-1 agreement), where "weight_only" is exact.
      "pallas" (the GPU default for decoding) dequantizes in a GPU kernel's registers: exact weights, float32 sums.
    """

    bits: int | None = 8
    group_size: int | str | None = "auto"
    quantize_embeddings: bool = False
    modules_to_not_convert: tuple[str, ...] | None = None
    compute: str = "auto"

    def __post_init__(self):
        if self.bits not in (8, 4, None):
            raise ValueError(
                f"QuantizationConfig: bits must be 8 or 4 (or None: a GGUF file's own formats), got {self.bits!r}"
            )
        if self.group_size == "auto":
            object.__setattr__(self, "group_size", 128 if self.bits == 4 else None)
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(
                f"QuantizationConfig: group_size must be a positive int, None or 'auto', got {self.group_size!r}"
            )
        if self.compute not in COMPUTE_MODES:
            raise ValueError(f"QuantizationConfig: compute must be one of {COMPUTE_MODES}, got {self.compute!r}")
        names = self.modules_to_not_convert
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"QuantizationConfig: modules_to_not_convert must be a list of module names, got {names!r}"
                )
            object.__setattr__(self, "modules_to_not_convert", tuple(names))

    @classmethod
    def coerce(cls, value) -> QuantizationConfig | None:
        """A config from what `load(quantization=...)` accepts: a config, a dict of its fields, "int8", "int4",
        "gguf" (keep a GGUF file's formats), or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        named = {"int8": cls(bits=8), "int4": cls(bits=4), "gguf": cls(bits=None)}
        if isinstance(value, str) and value in named:
            return named[value]
        raise ValueError(
            f"quantization={value!r}: pass a jaxformers QuantizationConfig, a dict of its fields, or one of "
            f"{sorted(named)}"
        )

    def spec(self) -> QuantSpec:
        """The per-module spec this config gives every layer it quantizes."""
        if self.bits is None:
            raise ValueError("bits=None keeps a GGUF file's own formats: it applies to GGUF files only")
        return QuantSpec(self.bits, self.group_size, compute=self.compute)


# ---------------------------------------------------------------------------------------------------------------------
# Quantize / dequantize arrays


def quantize_grouped(wg: jax.Array, spec: QuantSpec, axis: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric absmax quantization of `wg`, whose groups run along `axis` (a group-index dimension precedes it).

    Returns the stored codes (`axis` halved for 4 bits) and the float32 scales (`wg`'s shape without `axis`)."""
    wf = wg.astype(jnp.float32)
    scale = jnp.max(jnp.abs(wf), axis=axis) / spec.qmax
    safe = jnp.expand_dims(jnp.where(scale == 0, 1.0, scale), axis)
    return pack(jnp.clip(jnp.round(wf / safe), -spec.qmax, spec.qmax), spec, axis), scale


def pack(values, spec: QuantSpec, axis: int):
    """Integer code values (grouped, groups along `axis`) -> stored codes: int8, or for 4 bits one byte per pair
    (row t, row t + group / 2) of each group, low nibble first (llama.cpp's block order). numpy or jax arrays."""
    xp = jnp if isinstance(values, jax.Array) else np
    if spec.bits == 8:
        return values.astype(xp.int8)
    nibbles = (values + (0 if spec.unsigned else 8)).astype(xp.uint8)
    lo, hi = xp.split(nibbles, 2, axis=axis)
    return lo | (hi << 4)


def code_parts(stored: jax.Array, spec: QuantSpec) -> list[jax.Array]:
    """The int8 code values of grouped stored codes: `[codes]` for 8 bits; for 4 bits `[first half, second half]`
    of each group (low and high nibbles), each shaped like `stored`."""
    if spec.bits == 8:
        return [stored]
    shift = 0 if spec.unsigned else 8
    return [(stored & 15).astype(jnp.int8) - shift, (stored >> 4).astype(jnp.int8) - shift]


def dequantize_grouped(stored, scale, zero, spec: QuantSpec, axis: int, dtype) -> jax.Array:
    """`code * scale (+ zero)` of grouped stored codes (groups along `axis`), in `dtype`.

    Multiply and add are separate float32 operations, as `gguf` dequantizes; XLA:CPU may contract them into one
    fused multiply-add, which gives the same value for GGUF's formats (an integer code times a scale built from a
    float16 is exact in float32)."""
    w = jnp.concatenate(code_parts(stored, spec), axis=axis).astype(jnp.float32)
    w = w * jnp.expand_dims(scale, axis)
    if zero is not None:
        w = w + jnp.expand_dims(zero, axis)
    return w.astype(dtype)


def _split(shape, lead: int, n_in: int) -> tuple[tuple, tuple, tuple]:
    return tuple(shape[:lead]), tuple(shape[lead : lead + n_in]), tuple(shape[lead + n_in :])


def quantize_kernel(w: jax.Array, spec: QuantSpec, *, lead: int, n_in: int) -> tuple[jax.Array, jax.Array]:
    """A Dense kernel `[*lead, *in, *out]` (lead: stacked layer dims) -> codes `[*lead, K', *out]`, scale
    `[*lead, G, *out]`."""
    lead_s, in_s, out_s = _split(w.shape, lead, n_in)
    k, n = math.prod(in_s), math.prod(out_s)
    g = spec.groups(k)
    codes, scale = quantize_grouped(w.reshape(*lead_s, g, k // g, n), spec, axis=-2)
    return codes.reshape(*lead_s, -1, *out_s), scale.reshape(*lead_s, g, *out_s)


def dequantize_kernel(codes, scale, zero, spec: QuantSpec, *, lead: int, in_shape, dtype=jnp.float32) -> jax.Array:
    """The float kernel `[*lead, *in_shape, *out]` of codes `[*lead, K', *out]` and scales `[*lead, G, *out]`."""
    lead_s, g, out_s = scale.shape[:lead], scale.shape[lead], scale.shape[lead + 1 :]
    flat = (*lead_s, g, math.prod(out_s))
    zero = None if zero is None else zero.reshape(flat)
    w = dequantize_grouped(codes.reshape(*lead_s, g, -1, flat[-1]), scale.reshape(flat), zero, spec, -2, dtype)
    return w.reshape(*lead_s, *in_shape, *out_s)


def quantize_rows(table: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """An embedding table `[V, D]` -> codes `[V, D']`, scale `[V, G]` (groups along D)."""
    v, d = table.shape
    g = spec.groups(d)
    codes, scale = quantize_grouped(table.reshape(v, g, d // g), spec, axis=-1)
    return codes.reshape(v, -1), scale


def dequantize_rows(codes, scale, zero, spec: QuantSpec, dtype=jnp.float32) -> jax.Array:
    """Rows `[..., D]` of a quantized table from their codes `[..., D']` and `[..., G]` scales (and zeros)."""
    *batch, d = codes.shape
    g = scale.shape[-1]
    w = dequantize_grouped(codes.reshape(*batch, g, d // g), scale, zero, spec, -1, dtype)
    return w.reshape(*batch, -1)


# ---------------------------------------------------------------------------------------------------------------------
# The quantized matmul


def resolve_compute(compute: str) -> str:
    """"auto" -> "int8" on CPU (XLA:CPU does not fuse weight dequantization into the dot), else "weight_only"."""
    if compute != "auto":
        return compute
    return "int8" if jax.default_backend() == "cpu" else "weight_only"


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def matmul(x, codes, scale, zero, spec: QuantSpec, dtype, transposed: bool = False) -> jax.Array:
    """`x [M, K] @ W` for quantized `W`: the one quantized product every `Dense` (and a quantized tied head) calls.

    codes `[K', N]` with scale/zero `[G, N]`; `transposed`: codes `[N, K']` with scale/zero `[N, G]` (an embedding
    table used as the output projection). Returns `[M, N]` in `dtype`. Gradient: with respect to `x` only, that of
    `x @ W` with the dequantized `W` in either compute mode (so adapters train over frozen quantized weights, also
    through the rounded "int8" activations); the codes and scales get none.
    """
    mode = resolve_compute(spec.compute)
    if _use_kernel(mode, spec, x.shape[0], codes, scale, transposed):
        return _kernel_matmul(x.astype(dtype), codes, scale, zero, spec).astype(dtype)
    if mode in ("weight_only", "pallas"):
        if _scale_after(codes, scale, zero, spec, transposed):
            return (jnp.dot(x.astype(dtype), codes.astype(dtype)) * scale.astype(dtype)).astype(dtype)
        if transposed:  # a tied head: the float head's own product (`Embed.attend`), on the dequantized table
            return xla_cpu.table_product(x.astype(dtype), dequantize_rows(codes, scale, zero, spec, dtype))
        return jnp.dot(x.astype(dtype), _weights(codes, scale, zero, spec, dtype, transposed))
    return _int8_matmul(x, codes, scale, zero, spec, transposed).astype(dtype)


def _use_kernel(mode: str, spec: QuantSpec, rows: int, codes, scale, transposed: bool) -> bool:
    """Whether this product runs in the Pallas kernel: compute "pallas" (on a GPU; interpreted on CPU; not on TPU), or
    "auto" on a GPU for at most `GPU_KERNEL_MAX_ROWS` rows of codes other than per-channel int8; never for a
    transposed table, shapes the kernel has no tiles for, or under a mesh of several devices (XLA cannot partition a
    kernel call: it would gather the weights)."""
    if transposed or mode not in ("pallas", "weight_only") or (mode == "weight_only" and spec.compute != "auto"):
        return False
    from jaxformers.core import attention

    platform = attention.target_platform()
    if platform not in ("gpu", "cpu"):
        return False  # a Triton kernel: TPUs keep XLA's form
    if mode == "weight_only" and (platform != "gpu" or rows > GPU_KERNEL_MAX_ROWS or _scale_after_form(spec, scale,
                                                                                                        transposed)):
        return False
    mesh = attention._active_mesh()
    if mesh is not None and mesh.size > 1:
        return False
    from jaxformers.kernels import quant_matmul_gpu

    k = codes.shape[0] * (2 if spec.bits == 4 else 1)
    return quant_matmul_gpu.supports(rows, k, codes.shape[1], spec.bits, scale.shape[0])


def _kernel_matmul(x, codes, scale, zero, spec: QuantSpec) -> jax.Array:
    from jaxformers.core import attention
    from jaxformers.kernels import quant_matmul_gpu

    interpret = attention.target_platform() != "gpu"
    return quant_matmul_gpu.quant_matmul(x, codes, scale, zero, bits=spec.bits, unsigned=spec.unsigned,
                                         interpret=interpret)  # fmt: skip


def _scale_after_form(spec: QuantSpec, scale, transposed: bool) -> bool:
    """Whether codes admit the `(x @ codes) * scale` form: per-channel int8 (one group, no zero, not transposed)."""
    return spec.bits == 8 and not spec.zero and scale.shape[0] == 1 and not transposed


def _scale_after(codes, scale, zero, spec: QuantSpec, transposed: bool) -> bool:
    """Whether a weight-only product takes the `(x @ codes) * scale` form: per-channel int8 codes (one group, no zero,
    not a transposed table) on a backend in `SCALE_AFTER_PLATFORMS`."""
    one_group = scale.shape[0] == 1 and not transposed
    return spec.bits == 8 and zero is None and one_group and jax.default_backend() in SCALE_AFTER_PLATFORMS


def _weights(codes, scale, zero, spec: QuantSpec, dtype, transposed: bool) -> jax.Array:
    """The dequantized `[K, N]` weight of `matmul`'s operands (transposed codes: the table's `.T`, as `Embed.attend`
    multiplies a float table)."""
    if transposed:
        return dequantize_rows(codes, scale, zero, spec, dtype).T
    k = codes.shape[0] * (2 if spec.bits == 4 else 1)
    return dequantize_kernel(codes, scale, zero, spec, lead=0, in_shape=(k,), dtype=dtype)


def _matmul_fwd(x, codes, scale, zero, spec, dtype, transposed):
    return matmul(x, codes, scale, zero, spec, dtype, transposed), (x, codes, scale, zero)


def _matmul_bwd(spec, dtype, transposed, residuals, dy):
    x, codes, scale, zero = residuals
    dx = jnp.dot(dy.astype(dtype), _weights(codes, scale, zero, spec, dtype, transposed).T)
    return dx.astype(x.dtype), None, None, None


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _int8_matmul(x, codes, scale, zero, spec: QuantSpec, transposed: bool) -> jax.Array:
    """Dynamic int8 activations x int8 codes -> int32, rescaled in float32 (see the module docstring)."""
    m = x.shape[0]
    xf = x.astype(jnp.float32)
    if m == 1:  # [1, K] x [K, N] takes XLA:CPU's matrix-vector loop, which widens the weight to int32 first
        xf = jnp.concatenate([xf, jnp.zeros_like(xf)])
    rows, k = xf.shape
    g = scale.shape[-1] if transposed else scale.shape[0]
    xg = xf.reshape(rows, g, k // g)
    x_scale = jnp.max(jnp.abs(xg), axis=-1) / 127  # [R, G]
    xq = jnp.round(xg / jnp.where(x_scale == 0, 1.0, x_scale)[..., None]).astype(jnp.int8)
    grouped = codes.reshape(codes.shape[0], g, -1) if transposed else codes.reshape(g, -1, codes.shape[1])
    parts = code_parts(grouped, spec)
    x_parts = jnp.split(xq, len(parts), axis=-1)  # 4 bits: the two halves of each group
    if g == 1:
        dims = ((1,), (1,)) if transposed else ((1,), (0,))
        acc = sum(
            jax.lax.dot_general(xp[:, 0], (qp[:, 0] if transposed else qp[0]), (dims, ((), ())),
                                preferred_element_type=jnp.int32)
            for xp, qp in zip(x_parts, parts)
        )  # fmt: skip
        y = acc.astype(jnp.float32) * x_scale * (scale.T if transposed else scale)
    else:
        eq = "mgk,ngk->gmn" if transposed else "mgk,gkn->gmn"
        acc = sum(jnp.einsum(eq, xp, qp, preferred_element_type=jnp.int32) for xp, qp in zip(x_parts, parts))
        y = jnp.einsum("gmn,mg,gn->mn", acc.astype(jnp.float32), x_scale, scale.T if transposed else scale)
    if zero is not None:  # sum_k x_k * zero_g over each group, with the float activations
        y = y + xg.sum(-1) @ (zero.T if transposed else zero)
    return y[:m]


# ---------------------------------------------------------------------------------------------------------------------
# Models


def path_matches(path: tuple[str, ...], name: str) -> bool:
    """Whether a module path contains the dot-separated `name` as whole consecutive parts ("mlp.down_proj")."""
    parts = tuple(name.split("."))
    return any(path[i : i + len(parts)] == parts for i in range(len(path) - len(parts) + 1))


def default_specs(model: nnx.Module, config: QuantizationConfig) -> dict[tuple[str, ...], QuantSpec]:
    """`{module path: spec}` of the layers `config` quantizes in `model` (module paths as `nnx.iter_modules`)."""
    from jaxformers.core.layers import Dense, Embed

    spec, base = config.spec(), getattr(model, "base_attr", None)
    out = {}
    for path, module in nnx.iter_modules(model):
        path = tuple(str(p) for p in path)
        if config.modules_to_not_convert is None:
            if base is not None and path[:1] != (base,):
                continue
        elif any(path_matches(path, name) for name in config.modules_to_not_convert):
            continue
        if isinstance(module, Dense) or (
            isinstance(module, Embed) and config.quantize_embeddings and module.embedding.get_metadata()["axes"][0]
            == "vocab"
        ):
            out[path] = spec
    return out


def apply_specs(model: nnx.Module, specs: dict[tuple[str, ...], QuantSpec]) -> nnx.Module:
    """Quantize the `Dense` / `Embed` modules at `specs`' paths (their current float weights), in place; returns
    `model`. Under `nnx.eval_shape` this gives the abstract quantized model a loader fills. Group sizes that do not
    fit layers' inputs are one ValueError naming every such layer.
    """
    from jaxformers.core.layers import Dense, Embed

    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    problems = []
    for path, spec in specs.items():  # every layer's group size first: one error lists them all
        module = modules.get(path)
        if not isinstance(module, (Dense, Embed)):
            raise ValueError(f"no Dense or Embed layer at {'.'.join(path)} to quantize")
        try:
            spec.groups(math.prod(module.in_shape) if isinstance(module, Dense) else module.embedding.shape[-1],
                        f" of {'.'.join(path)}")  # fmt: skip
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("cannot quantize these layers as asked:\n  " + "\n  ".join(problems))
    for path, spec in specs.items():
        module = modules[path]
        if isinstance(module, Dense):
            var = module.kernel
            axes = tuple(var.get_metadata()["axes"])
            n_in = len(module.in_shape)
            lead = var.ndim - n_in - len(module.out_shape)
            codes, scale = quantize_kernel(var[...], spec, lead=lead, n_in=n_in)
            scale_axes = axes[:lead] + (None,) + axes[lead + n_in :]
            module.kernel_axes = axes  # the float kernel's, for `dequantize`
            module.kernel = nnx.Param(codes, axes=axes[: lead + 1] + axes[lead + n_in :])
            module.kernel_scale = nnx.Param(scale, axes=scale_axes)
            module.kernel_zero = nnx.Param(jnp.zeros_like(scale), axes=scale_axes) if spec.zero else None
        else:
            var = module.embedding
            axes = tuple(var.get_metadata()["axes"])
            codes, scale = quantize_rows(var[...], spec)
            module.embedding = nnx.Param(codes, axes=axes)
            module.embedding_scale = nnx.Param(scale, axes=(axes[0], None))
            module.embedding_zero = nnx.Param(jnp.zeros_like(scale), axes=(axes[0], None)) if spec.zero else None
        module.quant = spec
    return model


def quantize(model: nnx.Module, config: QuantizationConfig | str = "int8") -> nnx.Module:
    """Quantize an in-memory float model in place (and return it): `jf.load(..., quantization=config)` after the
    fact. Peak memory is the float model plus its quantized copy; for a model on a mesh, prefer `load(...,
    quantization=...)`, which places every quantized array on the sharding its axes give."""
    config = QuantizationConfig.coerce(config)
    return apply_specs(model, default_specs(model, config))


def quantized_modules(model: nnx.Module) -> dict[tuple[str, ...], QuantSpec]:
    """`{module path: spec}` of every quantized layer of `model` (empty for a float model)."""
    return {
        tuple(str(p) for p in path): m.quant
        for path, m in nnx.iter_modules(model)
        if getattr(m, "quant", None) is not None
    }


def set_compute(model: nnx.Module, compute: str) -> nnx.Module:
    """Switch every quantized layer of `model` to another compute mode (one of `COMPUTE_MODES`), in place;
    returns `model`. The stored weights are unchanged (e.g. "weight_only" for a GGUF file's exact logits, "int8"
    for speed on CPU); jitted functions retrace, since the mode is part of the module's static structure."""
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {COMPUTE_MODES}, got {compute!r}")
    for _, module in nnx.iter_modules(model):
        if getattr(module, "quant", None) is not None:
            module.quant = dataclasses.replace(module.quant, compute=compute)
    return model


def dequantize(model: nnx.Module, dtype=jnp.float32) -> nnx.Module:
    """Replace every quantized layer's codes by float weights (in `dtype`), in place; returns `model`. The values
    are exactly those the weight-only matmul multiplies by (used to export a quantized model, e.g. to HF files)."""
    from jaxformers.core.layers import Dense

    for _, module in nnx.iter_modules(model):
        spec = getattr(module, "quant", None)
        if spec is None:
            continue
        if isinstance(module, Dense):
            var = module.kernel
            lead = var.ndim - 1 - len(module.out_shape)
            zero = None if module.kernel_zero is None else module.kernel_zero[...]
            w = dequantize_kernel(var[...], module.kernel_scale[...], zero, spec, lead=lead, in_shape=module.in_shape,
                                  dtype=dtype)  # fmt: skip
            module.kernel = nnx.Param(w, axes=module.kernel_axes)
            del module.kernel_scale, module.kernel_zero, module.kernel_axes
        else:
            var = module.embedding
            zero = None if module.embedding_zero is None else module.embedding_zero[...]
            w = dequantize_rows(var[...], module.embedding_scale[...], zero, spec, dtype)
            module.embedding = nnx.Param(w, axes=tuple(var.get_metadata()["axes"]))
            del module.embedding_scale, module.embedding_zero
        module.quant = None
    return model


def param_bytes(model_or_tree) -> int:
    """Total bytes of a model's parameters (or of a pytree of arrays)."""
    tree = nnx.state(model_or_tree, nnx.Param) if isinstance(model_or_tree, nnx.Module) else model_or_tree
    return sum(x.nbytes for x in jax.tree.leaves(tree))
