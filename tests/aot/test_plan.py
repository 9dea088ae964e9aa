"""The planner on real public sizes: what fits which TPU, per-chip memory that matches the compiled program, the
time/MFU estimate's depth extrapolation, and the `jaxformers plan` command."""

from __future__ import annotations

import argparse
import json

import pytest
from public_configs import BERT_LARGE, GEMMA_7B, LLAMA3_8B

from jaxformers import aot
from jaxformers.core.options import Options

GiB = 2**30


def llama_params(c: dict) -> int:
    """Parameter count of a Llama config from its fields alone (embeddings, untied head, layers, final norm)."""
    d, f, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    h = d // c["num_attention_heads"]
    attn = d * h * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    return 2 * v * d + layers * (attn + 3 * d * f + 2 * d) + d


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


def _cli(argv: list[str]) -> tuple[int, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="jaxformers")
    aot.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args), args


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
    ],
)
def test_plan_rejects_bad_input(tpu, kwargs, match):
    tpu("v5e-4")
    with pytest.raises(ValueError, match=match):
        aot.plan(TINY, timing=False, **{"seq": 64, **kwargs})
