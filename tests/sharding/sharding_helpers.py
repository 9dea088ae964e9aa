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


# BERT and GPT-2 with sizes tensor parallelism of 4 (and FSDP of 2) divides: 8 heads, widths of 64.
BERT = dict(vocab_size=96, hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=2,
            max_position_embeddings=64, type_vocab_size=2)  # fmt: skip
GPT2 = dict(vocab_size=96, n_embd=64, n_head=8, n_layer=2, n_positions=64, n_inner=128, bos_token_id=1,
            eos_token_id=2)  # fmt: skip


def build_hf(config_class: str, model_class: str, directory, seed: int = 0, **config):
    """A tiny random `transformers` model saved at `directory`, with random (not zero) biases and norm weights so a
    mis-split fused projection (GPT-2's c_attn) or bias cannot hide."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or ".ln_" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(directory)
    return directory
