"""Models compile for real TPU topologies from shapes alone: forward, the generation loop and a training step, for
v5e-1 (Colab), v5e-8 (2x4) and v5p-8 under the sharding presets that divide them, and over 2 slices (the data axis
across the data-center network). Tiny configs sized so that 4-way tensor parallelism divides heads and MLP.
Encoder-decoders generate as `jf.generate` runs them: the encoder once, then the decoder loop on the cached
cross-attention K/V."""

from __future__ import annotations

import pytest

from jaxformers import aot
from jaxformers.core.options import Options

_DEC = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 512, "rope_theta": 10000.0,
        "pad_token_id": 0, "eos_token_id": 2}  # fmt: skip
_ENC = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 8, "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0}  # fmt: skip
DECODERS = {
    "llama": {"model_type": "llama", **_DEC},
    "mistral": {"model_type": "mistral", **_DEC, "sliding_window": 64},
    "qwen2": {"model_type": "qwen2", **_DEC, "use_sliding_window": False},
    "gemma": {"model_type": "gemma", **_DEC, "head_dim": 64, "hidden_act": "gelu_pytorch_tanh"},
    "gpt2": {"model_type": "gpt2", "vocab_size": 512, "n_embd": 256, "n_layer": 2, "n_head": 8, "n_positions": 512,
             "n_inner": 512, "eos_token_id": 2, "pad_token_id": 0},
}
ENCODERS = {
    "bert": {"model_type": "bert", **_ENC},
    "roberta": {"model_type": "roberta", **_ENC, "pad_token_id": 1, "max_position_embeddings": 514},
    "electra": {"model_type": "electra", **_ENC, "embedding_size": 128},
    "distilbert": {"model_type": "distilbert", "vocab_size": 512, "dim": 256, "hidden_dim": 512, "n_layers": 2,
                   "n_heads": 8, "max_position_embeddings": 512},
    "deberta-v2": {"model_type": "deberta-v2", **_ENC, "relative_attention": True, "position_buckets": 32,
                   "max_relative_positions": 64, "pos_att_type": ["p2c", "c2p"], "type_vocab_size": 0},
    "modernbert": {"model_type": "modernbert", **_ENC, "global_attn_every_n_layers": 2, "local_attention": 64,
                   "pad_token_id": 0},
}
_S2S = {"vocab_size": 512, "d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 8,
        "decoder_attention_heads": 8, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512,
        "max_position_embeddings": 512}  # fmt: skip
SEQ2SEQ = {
    "t5": {"model_type": "t5", "vocab_size": 512, "d_model": 256, "d_kv": 32, "d_ff": 512, "num_layers": 2,
           "num_heads": 8, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "bart": {"model_type": "bart", **_S2S},
    "mbart": {"model_type": "mbart", **_S2S},
    "marian": {"model_type": "marian", **_S2S, "pad_token_id": 511, "decoder_start_token_id": 511, "eos_token_id": 0},
}
TOPOLOGIES = {"v5e-1": ("replicated",), "v5e-8": ("fsdp_tp", "fsdp", "tp", "dp"), "v5p-8": ("fsdp", "fsdp_tp")}
BATCH, SEQ = 8, 128


def _compile(task, config, topology, preset, num_slices=1):
    mesh = aot.topology_mesh(topology, preset)
    head = aot.generation_task(config) if task == "generate" else None
    model = aot.abstract_model(config, task=head, options=Options(dtype="bfloat16"), mesh=mesh, rules=preset)
    if task == "train":
        compiled = aot.compile_train_step(model, mesh, preset, batch=BATCH, seq=SEQ)
    elif task == "generate":
        compiled = aot.compile_generate(model, mesh, preset, batch=BATCH, prompt_len=SEQ, max_new_tokens=16)
    else:
        compiled = aot.compile_forward(model, mesh, preset, batch=BATCH, seq=SEQ)
    stats = compiled.memory_analysis()
    weights = aot.per_chip_bytes(model)
    full = aot.per_chip_bytes(aot.abstract_model(config, task=head, options=Options(dtype="bfloat16")))
    # each device holds its shard of the weights among the program's arguments (the donated state counted once)
    assert stats.argument_size_in_bytes >= weights > 0
    if preset in ("replicated", "dp"):
        assert weights == full
    else:
        assert weights < full, "the preset splits the weights"
    return compiled


def _grid():
    for topo, presets in TOPOLOGIES.items():
        for preset in presets:
            for name, cfg in DECODERS.items():
                for task in ("forward", "generate", "train"):
                    yield pytest.param(task, cfg, topo, preset, id=f"{topo}-{preset}-{name}-{task}")
            for name, cfg in SEQ2SEQ.items():
                for task in ("forward", "generate", "train"):
                    yield pytest.param(task, cfg, topo, preset, id=f"{topo}-{preset}-{name}-{task}")
            for name, cfg in ENCODERS.items():
                for task in ("forward", "train"):
                    yield pytest.param(task, cfg, topo, preset, id=f"{topo}-{preset}-{name}-{task}")


@pytest.mark.parametrize("task", ["forward", "generate", "train"])
def test_llama_compiles_for_v5e_8_fsdp_tp(tpu, task):
    _compile(task, DECODERS["llama"], tpu("v5e-8"), "fsdp_tp")


def test_bert_training_compiles_for_v5p_8_fsdp(tpu):
    _compile("train", ENCODERS["bert"], tpu("v5p-8"), "fsdp")


def test_t5_generation_compiles_for_v5e_8_fsdp_tp(tpu):
    """The seq2seq loop: encoder once, cross-attention K/V into the cache, decoder steps from the start token."""
    compiled = _compile("generate", SEQ2SEQ["t5"], tpu("v5e-8"), "fsdp_tp")
    ids = compiled.out_info  # the generated ids buffer: the start token then max_new_tokens
    assert ids.shape == (BATCH, 1 + 16), ids


def test_bart_training_compiles_for_v5p_8_fsdp(tpu):
    _compile("train", SEQ2SEQ["bart"], tpu("v5p-8"), "fsdp")


def test_training_over_two_slices(tpu):
    """Two v5p-8 slices: the data axis spans the slices (DCN), FSDP within each slice."""
    chips = tpu("v5p-8", num_slices=2)
    assert chips.num_devices == 8 and {d.slice_index for d in chips.devices} == {0, 1}
    mesh = aot.topology_mesh(chips, "fsdp")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tp": 1}
    assert {d.slice_index for d in mesh.devices[0].flat} == {0} and {d.slice_index for d in mesh.devices[1].flat} == {1}
    _compile("train", DECODERS["llama"], chips, "fsdp", num_slices=2)


@pytest.mark.slow
@pytest.mark.parametrize("task,config,topology,preset", list(_grid()))
def test_every_architecture_compiles(tpu, task, config, topology, preset):
    _compile(task, config, tpu(topology), preset)
