"""Pallas kernels for jaxformers (installed as `jaxformers.kernels`): attention for TPU (Mosaic) and GPU (Triton),
and the GPU quantized matmul.

One family per file and backend, each ending with its pure-JAX `reference`:
  flash_attention_tpu.py, flash_attention_gpu.py    training / prefill attention, forward + backward
  decode_attention_tpu.py, decode_attention_gpu.py  a few new queries against a KV cache (split-K)
  quant_matmul_gpu.py                               weight-only int8 / 4-bit products, dequantized in registers
Models never import this package: `jaxformers.core.attention.dot_product_attention` and `jaxformers.core.quant.matmul`
dispatch to it.
"""

from __future__ import annotations

from typing import Any, Literal

import jax

from jaxformers.kernels import decode_attention_gpu, decode_attention_tpu, flash_attention_gpu, flash_attention_tpu

Backend = Literal["tpu", "gpu"]
_FLASH = {"tpu": flash_attention_tpu, "gpu": flash_attention_gpu}
_DECODE = {"tpu": decode_attention_tpu, "gpu": decode_attention_gpu}


def _module(table, backend: str):
    if backend not in table:
        raise ValueError(f"unknown kernel backend {backend!r}; choose 'tpu' or 'gpu'")
    return table[backend]


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    segment_ids=None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: Backend = "tpu",
    interpret: Any = False,
    block_sizes=None,
) -> jax.Array:
    """Flash attention (FlashAttention-2), differentiable in q, k, v, with O(T) memory.

    Args:
      q: `[B, T, N, H]`; k, v: `[B, S, K, H]`, N a multiple of K (GQA/MQA; K/V are never repeated). float32 or
        bfloat16 or float16 (TPU: float16 is computed in float32); matmuls accumulate in float32, float32 inputs use
        full-precision matmuls.
      causal: query i sees keys `j <= i` (positions within q and k, top-left aligned when T != S).
      segment_ids: `[B, T]` (self-attention, T == S) or a pair `(q_ids [B, T], kv_ids [B, S])`; attend only within
        equal ids (packed sequences, key padding).
      sliding_window: W keeps keys `j > i - W` (HF's convention; with causal, the last W positions).
      scale: softmax scale, default `H ** -0.5`. softcap: Gemma-2 `c * tanh(logits / c)`, applied before masking.
      backend: "tpu" (Pallas/Mosaic) or "gpu" (Pallas/Triton).
      interpret: run on CPU in the Pallas interpreter; for "tpu", True means TPU semantics
        (`pltpu.InterpretParams()`), and an `InterpretParams` instance is passed through.
      block_sizes: the backend module's `BlockSizes`; default `BlockSizes.default_for(...)`.
    Returns:
      `[B, T, N, H]` in q's dtype. Query rows with no visible key get finite but unspecified values (and finite
      gradients); any sequence length works (inputs are padded to block multiples inside).
    """
    return _module(_FLASH, backend).flash_attention(
        q,
        k,
        v,
        causal=causal,
        segment_ids=segment_ids,
        sliding_window=sliding_window,
        scale=scale,
        softcap=softcap,
        interpret=interpret,
        block_sizes=block_sizes,
    )


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: Backend = "tpu",
    interpret: Any = False,
    block_sizes=None,
) -> jax.Array:
    """Attention of a few new queries against a KV cache (generation), split-K over the cache.

    Args:
      q: `[B, T, N, H]` with T small (1 for plain decoding, a few for speculative decoding).
      k_cache, v_cache: `[B, S, K, H]`.
      lengths: `[B]` int. Keys at slots `[0, lengths[b])` are valid; the T queries occupy the last T valid slots
        (query i at slot `lengths[b] - T + i`) and attend causally, i.e. query i sees slots `<= lengths[b] - T + i`.
      key_mask: optional `[B, S]`, nonzero/True where a slot holds a real token (e.g. left-padded prompts).
      sliding_window, scale, softcap: as in `flash_attention`.
      backend, interpret, block_sizes: as in `flash_attention`.
    Returns:
      `[B, T, N, H]` in q's dtype; rows with no visible key are zero. Differentiable (the backward pass uses the
      dense reference).
    """
    return _module(_DECODE, backend).decode_attention(
        q,
        k_cache,
        v_cache,
        lengths,
        key_mask=key_mask,
        sliding_window=sliding_window,
        scale=scale,
        softcap=softcap,
        interpret=interpret,
        block_sizes=block_sizes,
    )


__all__ = ["decode_attention", "flash_attention"]
