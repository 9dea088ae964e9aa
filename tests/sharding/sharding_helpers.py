"""Shared by the sharding tests: the tiny Llama config, and per-preset meshes."""

from __future__ import annotations

import jaxformers as jf

# Llama-style decoder: GQA (4 kv heads), every sharded size divisible by 8 (kv heads by 4: replicated when tp = 8).
LLAMA = dict(vocab_size=128, hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
             intermediate_size=128, num_hidden_layers=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip


# Axis names of a 1-D and a 2-D mesh under each preset: the axes the preset actually uses.
PRESET_AXES = {
    "replicated": (("data",), ("data", "fsdp")),
    "dp": (("data",), ("data", "fsdp")),
    "fsdp": (("fsdp",), ("data", "fsdp")),
    "tp": (("tp",), ("data", "tp")),
    "fsdp_tp": (("fsdp",), ("fsdp", "tp")),
}


def mesh_for(preset: str, shape: tuple[int, ...]):
    return jf.make_mesh(shape, PRESET_AXES[preset][len(shape) - 1])


def build_llama(directory, seed: int = 0, **overrides):
    """A tiny random HF Llama (`LlamaForCausalLM`) saved in HF layout at `directory`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**LLAMA, **overrides})
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory
