"""The planner on real public sizes: what fits which TPU, per-chip memory that matches the compiled program, the
time/MFU estimate's depth extrapolation, and the `jaxformers plan` command."""

from __future__ import annotations

import argparse
import json

import jax
import pytest
from public_configs import BERT_LARGE, GEMMA_7B, LLAMA3_8B

from jaxformers import aot
from jaxformers.core import quant
from jaxformers.core.options import Options

GiB = 2**30


def llama_params(c: dict) -> int:
    """Parameter count of a Llama config from its fields alone (embeddings, untied head, layers, final norm)."""
    d, f, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    h = d // c["num_attention_heads"]
    attn = d * h * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    return 2 * v * d + layers * (attn + 3 * d * f + 2 * d) + d


def quantized_weight_bytes(c: dict, bits: int, group: int | None) -> int:
    """Bytes of a Llama/Gemma config's weights with every decoder-layer projection quantized (codes: 1 byte per
    weight for int8, half for int4; one float32 scale per output channel and input group) and the rest (embeddings,
    untied LM head, norms) in bfloat16: computed from the config's fields alone."""
    d, f, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    n, k = c["num_attention_heads"], c["num_key_value_heads"]
    h = c.get("head_dim", d // n)
    # (in, out) of q, k, v, o, gate, up, down
    kernels = [(d, n * h), (d, k * h), (d, k * h), (n * h, d), (d, f), (d, f), (f, d)]
    codes = sum(i * o for i, o in kernels) * bits // 8
    scales = sum((1 if group is None else i // group) * o for i, o in kernels) * 4
    heads = 1 if c.get("tie_word_embeddings", c["model_type"] == "gemma") else 2  # HF's defaults: Gemma ties
    return layers * (codes + scales + 2 * d * 2) + (heads * v * d + d) * 2


@pytest.mark.slow  # ~60 s of CPU compile each: run with -m slow (figures in BENCHMARKS.md)
def test_llama3_8b_fsdp_training_fits_v5p_8(tpu):
    """AdamW training with float32 master weights, bf16 compute, batch 8 x 2048, FSDP over the 4 chips of v5p-8."""
    tpu("v5p-8")
    p = aot.plan(LLAMA3_8B, topology="v5p-8", preset="fsdp", task="train", batch=8, seq=2048, timing=False)
    assert p.fits, p.format()
    assert p.num_devices == 4 and p.mesh["fsdp"] == 4
    n = llama_params(LLAMA3_8B)
    assert 8.0e9 < n < 8.1e9
    m = p.memory
    assert m.weights == 4 * n // 4, "float32 weights split 4 ways"
    assert abs(m.optimizer - 2 * m.weights) < 1024, "Adam's mu and nu sharded like the weights"
    # the planner's own figures against the compiled program's memory analysis: every argument byte accounted for
    assert abs(m.arguments - (m.weights + m.optimizer + m.inputs)) < 64 * 1024, m
    assert m.outputs < 1024 * 1024, "the state is donated: only the metrics are new outputs"
    assert 0 < m.temporaries and m.peak <= p.chip.hbm_bytes, m
    assert "FITS" in p.format()


@pytest.mark.parametrize("name,config", [("Gemma-7B", GEMMA_7B), ("Llama-3-8B", LLAMA3_8B)])
def test_7b_bf16_generation_does_not_fit_v5e_1(tpu, name, config):
    """bf16 weights alone are 15-16 GiB; with a 2048-token prompt's cache and workspace the compiler refuses."""
    tpu("v5e-1")
    p = aot.plan(config, name=name, topology="v5e-1", preset="replicated", task="generate", batch=1, seq=2048,
                 max_new_tokens=128, timing=False)  # fmt: skip
    assert not p.fits, p.format()
    assert "exceeds available HBM" in p.compiler_message
    assert p.memory.needed > p.chip.hbm_bytes >= p.memory.weights * 0.95
    assert p.memory.kv_cache > 0 and p.memory.arguments is None
    assert any("int8" in s for s in p.suggestions), p.suggestions
    assert "DOES NOT FIT" in p.format()


@pytest.mark.parametrize(
    "name,config,quantization,bits,group",
    [
        # 17-30 s of CPU compile each (a full compile: the program fits): the headline case runs by
        # default, the others with -m slow
        pytest.param("Llama-3-8B", LLAMA3_8B, "int8", 8, None),
        pytest.param("Gemma-7B", GEMMA_7B, "int8", 8, None, marks=pytest.mark.slow),
        pytest.param("Llama-3-8B", LLAMA3_8B, "int4", 4, 128, marks=pytest.mark.slow),
    ],
)
def test_7b_quantized_generation_fits_v5e_1(tpu, name, config, quantization, bits, group):
    """The same generation as above with weight-only quantized decoder layers (embeddings and LM head in bf16, as
    `from_pretrained(quantization=...)` loads them): the compiler accepts it on one v5e chip, and the planner's
    weight bytes are the quantized ones, those of the compiled program's arguments."""
    tpu("v5e-1")
    p = aot.plan(config, name=name, topology="v5e-1", preset="replicated", task="generate", batch=1, seq=2048,
                 max_new_tokens=128, timing=False, quantization=quantization)  # fmt: skip
    assert p.fits, p.format()
    m = p.memory
    assert m.weights == quantized_weight_bytes(config, bits, group)
    bf16 = aot.per_chip_bytes(aot.abstract_model(config, task="causal-lm", options=Options(param_dtype="bfloat16")))
    assert m.weights < (0.6 if bits == 8 else 0.4) * bf16
    # the program's arguments: the weights as the planner counts them, and the prompt's ids (int32)
    assert abs(m.arguments - m.weights - p.batch * p.seq * 4) < 1e-4 * m.weights, m
    assert m.kv_cache > 0 and m.peak <= p.chip.hbm_bytes
    assert f"{p.quantization} weights" in p.format() and "FITS" in p.format()


def test_quantized_plan_that_does_not_fit_suggests_fewer_bits_not_int8(tpu):
    """16 rows of 8192 tokens need a 16 GiB KV cache: int8 weights do not help, and the suggestions say so."""
    tpu("v5e-1")
    kwargs = dict(topology="v5e-1", preset="replicated", task="generate", batch=16, seq=8192, max_new_tokens=64,
                  timing=False)  # fmt: skip
    p = aot.plan(LLAMA3_8B, quantization="int8", **kwargs)
    assert not p.fits and p.memory.kv_cache > p.chip.hbm_bytes, p.format()
    assert not any("int8" in s for s in p.suggestions), p.suggestions
    assert any("--quant int4" in s for s in p.suggestions) and any("--batch" in s for s in p.suggestions)
    p = aot.plan(LLAMA3_8B, quantization=quant.QuantizationConfig(bits=4, group_size=64), **kwargs)
    assert not p.fits and p.quantization == "int4 (group 64)"
    assert not any("int8" in s or "int4" in s for s in p.suggestions), p.suggestions


@pytest.mark.slow  # ~60 s of CPU compile each: run with -m slow (figures in BENCHMARKS.md)
def test_bert_large_fine_tuning_fits_v5e_1(tpu):
    """Sequence classification at the BERT paper's GLUE settings (batch 32 x 128), Adam, one v5e chip."""
    tpu("v5e-1")
    config = dict(BERT_LARGE, architectures=["BertForSequenceClassification"])
    p = aot.plan(config, topology="v5e-1", preset="replicated", task="train", batch=32, seq=128, timing=False)
    assert p.fits, p.format()
    assert 330e6 * 4 < p.memory.weights < 340e6 * 4
    # TPU layouts pad small arrays (biases, norm scales) to whole tiles: under 0.05% here
    m = p.memory
    assert abs(m.arguments - (m.weights + m.optimizer + m.inputs)) < 5e-4 * m.arguments, m
    assert m.peak < p.chip.hbm_bytes


TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "rope_theta": 10000.0}  # fmt: skip


def test_depth_extrapolation_matches_the_unrolled_program(tpu):
    """The compiler's cost model counts a loop body once, so costs come from 1- and 2-layer twins: the linear
    extrapolation to 3 layers must equal the unrolled 3-layer program's own cost."""
    mesh = aot.topology_mesh(tpu("v5e-4"), "fsdp")

    def compile_at(cfg, scan=False):
        model = aot.abstract_model(cfg, options=Options(dtype="bfloat16", scan_layers=scan), mesh=mesh, rules="fsdp")
        return aot.compile_forward(model, mesh, "fsdp", batch=8, seq=256)

    flops, seconds = aot._depth_cost(TINY, 3, compile_at)
    true_flops, true_seconds = aot._cost(compile_at(TINY))
    assert flops == pytest.approx(true_flops, rel=0.02)
    assert seconds == pytest.approx(true_seconds, rel=0.05)
    scanned = aot._cost(compile_at(TINY, scan=True))
    assert scanned[0] < 0.8 * true_flops, "the scanned program's cost counts its loop body once"


T5_TINY = {"model_type": "t5", "vocab_size": 512, "d_model": 256, "d_kv": 32, "d_ff": 512, "num_layers": 2,
           "num_heads": 8, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}  # fmt: skip


def test_seq2seq_generation_plan(tpu):
    """An encoder-decoder generates from its source: the cache holds 1 start token + the new ones, plus every decoder
    layer's cross-attention K/V over the source; the time estimate adds the encoder prefill and the decode steps."""
    tpu("v5e-1")
    b, s, new = 4, 128, 8
    p = aot.plan(T5_TINY, topology="v5e-1", preset="replicated", task="generate", batch=b, seq=s, max_new_tokens=new)
    assert p.fits, p.format()
    c = T5_TINY
    per_token = 2 * c["num_layers"] * c["num_heads"] * c["d_kv"] * 2  # K and V of every decoder layer, bf16
    cache = b * (1 + new) * (per_token + 1) + 4  # + the slot mask (bool) and the write index (int32)
    cross = b * s * (per_token + 1)  # + the encoder mask (bool)
    assert p.memory.kv_cache == cache + cross
    assert abs(p.memory.arguments - p.memory.weights - b * s * 4) < 1e-3 * p.memory.weights, p.memory
    # the flops of the encoder prefill and of every decode step (2 N per token for the weights' products, plus
    # attention), or the time estimate: on this compiler the cost model gives a seq2seq decode step no time (its
    # slices of the stacked cross-attention K/V are not costed), which the plan must say rather than make one up
    assert p.model_flops_per_chip < p.flops_per_chip < 4 * p.model_flops_per_chip
    if p.decode_seconds is None:
        assert p.step_seconds is None and p.mfu is None and any("gave no time" in w for w in p.warnings), p.warnings
    else:
        assert p.step_seconds > new * p.decode_seconds > 0 and "per decode step" in p.format()


def _cli(argv: list[str]) -> tuple[int, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="jaxformers")
    aot.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    cache_on = jax.config.jax_enable_compilation_cache
    status = args.func(args)  # the plan's compile-only programs skip the persistent cache; the caller keeps it
    assert jax.config.jax_enable_compilation_cache == cache_on
    return status, args


def test_plan_command(tpu, tmp_path, capsys):
    tpu("v5e-4")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    status, _ = _cli(["plan", str(path), "--topology", "v5e-4", "--preset", "fsdp", "--task", "forward",
                      "--batch", "8", "--seq", "256"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "4 x TPU v5 lite, preset fsdp (fsdp=4)" in out and "FITS" in out
    assert "activations etc." in out and "estimated MFU" in out and "estimated step time" in out
    mfu = float(out.split("estimated MFU: ")[1].split("%")[0]) / 100
    assert 0 < mfu <= 1

    status, _ = _cli(["plan", str(path), "--topology", "v5e-1", "--task", "generate", "--batch", "2", "--seq", "64",
                      "--max-new-tokens", "8", "--json", "--no-timing"])  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert status == 0 and record["fits"] and record["memory"]["kv_cache"] > 0 and record["step_seconds"] is None
    assert record["quantization"] is None
    bf16_weights = record["memory"]["weights"]

    status, _ = _cli(["plan", str(path), "--topology", "v5e-1", "--task", "generate", "--batch", "2", "--seq", "64",
                      "--max-new-tokens", "8", "--json", "--no-timing", "--quant", "int4",
                      "--group-size", "64"])  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert status == 0 and record["fits"] and record["quantization"] == "int4 (group 64)"
    m = record["memory"]
    assert m["weights"] == quantized_weight_bytes(TINY, 4, 64) < bf16_weights
    # the compiled program holds these int4 codes and scales and the prompt's ids; TPU layouts pad this tiny model's
    # small arrays (scales of shape [layers, groups, out]) to whole tiles: 1.7% here
    assert 0 <= m["arguments"] - m["weights"] - 2 * 64 * 4 < 0.02 * m["weights"], m
    with pytest.raises(ValueError, match="--group-size applies to quantized weights"):
        _cli(["plan", str(path), "--topology", "v5e-1", "--task", "generate", "--group-size", "64"])


def test_plan_command_exit_status_when_it_does_not_fit(tpu, tmp_path, capsys):
    tpu("v5e-1")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BERT_LARGE))
    status, _ = _cli(["plan", str(path), "--topology", "v5e-1", "--preset", "replicated", "--batch", "32",
                      "--seq", "512"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 2 and "DOES NOT FIT" in out and "--remat" in out


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"topology": "v9x-8"}, "unknown TPU topology"),
        ({"topology": "v5e-3"}, "no v5e slice named"),
        ({"topology": "v5e-4", "task": "serve"}, "unknown task"),
        ({"topology": "v5e-4", "batch": 0}, "batch must be a positive integer"),
        ({"topology": "v5e-4", "preset": "zero3"}, "unknown sharding preset"),
        ({"topology": "v5e-4", "batch": 6}, "not divisible by 4"),
        ({"topology": "v5e-4", "quantization": "int8"}, "quantized weights are frozen"),
        ({"topology": "v5e-4", "task": "generate", "quantization": "int3"}, "quantization='int3'"),
        ({"topology": "v5e-4", "task": "generate", "quantization": "gguf"}, "GGUF file's own formats"),
        ({"topology": "v5e-4", "task": "generate", "quantization": {"bits": 4, "group_size": 100}},
         "group_size=100 does not fit the input dimension 256 of model.layers.block.self_attn.q_proj"),
    ],
)
def test_plan_rejects_bad_input(tpu, kwargs, match):
    tpu("v5e-4")
    with pytest.raises(ValueError, match=match):
        aot.plan(TINY, timing=False, **{"seq": 64, **kwargs})
