"""scripts/bench_tasks.py runs end to end (one task, four inputs): the host line, the host's peak GEMM rate, and a
row with both sides' times, the ratios (the pipeline's times over jaxformers' warm time) and the ceiling; and the
flops it counts for the ceiling agree with XLA's count for the same forward."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_tasks.py"
NUM = r"(\d+\.\d+)"


def test_bench_tasks_smoke():
    run = subprocess.run([sys.executable, str(SCRIPT), "--tasks", "text-classification", "--n", "4"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^CPU: .+\(.*\); \d+ cores$", out, re.M), out
    peak = re.search(r"^peak fp32 GEMM \(XLA, BERT-base product shapes\): (\d+) GFLOP/s$", out, re.M)
    assert peak and int(peak.group(1)) > 0, out
    row = re.search(rf"^text-classification +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM}$", out, re.M)
    assert row, out
    first, warm, pipe, pipe8, ratio, ratio8, ceiling = map(float, row.groups())
    assert min(first, warm, pipe, pipe8, ceiling) > 0
    assert abs(ratio - pipe / warm) < 0.02 + 0.02 * ratio and abs(ratio8 - pipe8 / warm) < 0.02 + 0.02 * ratio8, out


def test_encoder_flops_match_xla_count():
    """The ceiling's flop count for a BERT forward is XLA's own count of that forward's products (cost analysis
    also counts elementwise work, a few percent at these sizes)."""
    import importlib.util

    import jax
    import numpy as np
    from flax import nnx

    from jaxformers.core.options import Options
    from jaxformers.models import bert

    spec = importlib.util.spec_from_file_location("bench_tasks", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bert.BertConfig.from_hf(dict(model_type="bert", vocab_size=64, hidden_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=1024, max_position_embeddings=128))
    # unrolled: XLA's cost analysis counts a scanned loop's body once
    model = bert.BertModel(cfg, options=Options(scan_layers=False), rngs=nnx.Rngs(0), add_pooling_layer=False)
    graphdef, state = nnx.split(model)
    ids = np.ones((1, 96), np.int32)
    cost = jax.jit(lambda s: nnx.merge(graphdef, s)(ids).last_hidden_state).lower(state).compile().cost_analysis()
    xla = float((cost[0] if isinstance(cost, list) else cost)["flops"])
    ours = bench.encoder_flops([96], 2, 256, 1024)
    assert ours <= xla <= 1.15 * ours, (ours, xla)
