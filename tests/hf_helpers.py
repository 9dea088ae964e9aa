"""Helpers the per-architecture parity tests share (importable from tests/models/ test files)."""

from __future__ import annotations


def randomize_vectors(model) -> None:
    """Give every bias and every 1-D weight (norm scales, standalone biases) of a torch `model` random values, in
    place: weights near 1, biases near 0. Freshly initialised HF models have ones and zeros there, which would let a
    swapped or missing rule for those tensors pass unnoticed."""
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
