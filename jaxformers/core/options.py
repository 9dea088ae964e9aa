"""Runtime knobs that are not architecture: compute/param dtypes, attention implementation, layer execution."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax.numpy as jnp


@dataclass(frozen=True)
class Options:
    """How a model runs, separate from what it is (the config), so configs stay hashable static arguments.

    dtype: compute dtype of activations and matmuls (None: the parameter dtype). Norms, softmax and losses stay in
      float32 whatever this is.
    param_dtype: storage dtype of parameters (float32 by default; weights are cast on load).
    attn_impl: "auto" | "xla" | "cudnn" | "pallas", passed to `core.attention.dot_product_attention`.
    scan_layers: run the stacked layers with `jax.lax.scan` (compile time flat in depth) instead of a Python loop.
    remat: rematerialise each layer in the backward pass (training memory).
    """

    dtype: Any = None
    param_dtype: Any = jnp.float32
    attn_impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False

    def __post_init__(self):
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        if self.attn_impl not in ("auto", "xla", "cudnn", "pallas"):
            raise ValueError(f"attn_impl must be 'auto', 'xla', 'cudnn' or 'pallas', got {self.attn_impl!r}")

    @property
    def compute_dtype(self):
        return self.param_dtype if self.dtype is None else self.dtype

    def replace(self, **kw) -> "Options":
        return replace(self, **kw)
