"""Rotary position embeddings in HF's rotate-half layout, with the rope_type variants of `rope_parameters`.

References: HF transformers `modeling_rope_utils.py` (default, linear, dynamic, llama3). inv_freq is computed in
float32 as HF does; cos/sin come from float32 `positions * inv_freq`, then cast to the activation dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def rope_parameters(hf: dict) -> dict:
    """Normalise old (`rope_theta` + `rope_scaling`) and new (`rope_parameters`) config styles into one dict."""
    params = dict(hf.get("rope_parameters") or {})
    if hf.get("rope_scaling"):
        params.update(hf["rope_scaling"])
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    params.pop("type", None)
    if params["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {params['rope_type']!r}; supported: {ROPE_TYPES}")
    return params


def _base_inv_freq(base, dim: int):
    return 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def inv_freq(params: dict, dim: int, max_position_embeddings: int, seq_len=None):
    """Inverse frequencies `[dim // 2]` (float32). `seq_len` (traced ok) is only used by "dynamic"."""
    kind, base = params["rope_type"], params["rope_theta"]
    if kind == "default":
        return _base_inv_freq(np.float32(base), dim)
    if kind == "linear":
        return _base_inv_freq(np.float32(base), dim) / params["factor"]
    if kind == "dynamic":
        factor = params["factor"]
        orig = params.get("original_max_position_embeddings", max_position_embeddings)
        seq = jnp.maximum(jnp.asarray(orig, jnp.float32), jnp.asarray(seq_len if seq_len is not None else orig, jnp.float32))
        scaled_base = base * ((factor * seq / orig) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(scaled_base.astype(jnp.float32), dim)
    # llama3
    freq = _base_inv_freq(np.float32(base), dim)
    factor, lo, hi = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_ctx = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / lo, old_ctx / hi
    wavelen = 2 * math.pi / freq
    llama = jnp.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * llama / factor + smooth * llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return jnp.where(medium, smoothed, llama)


def cos_sin(positions: jax.Array, freq: jax.Array, dtype, scaling: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables `[B, T, dim]` for integer `positions [B, T]`."""
    angles = positions.astype(jnp.float32)[..., None] * freq  # [B, T, dim/2]
    emb = jnp.concatenate([angles, angles], axis=-1)
    return (jnp.cos(emb) * scaling).astype(dtype), (jnp.sin(emb) * scaling).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on `x [B, T, N, H]` with cos/sin `[B, T, H]`."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
