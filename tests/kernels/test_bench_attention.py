"""scripts/bench_attention.py: the --smoke run end to end (CPU, kernels interpreted) and the AUTO_TABLE derivation."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from jaxformers.core import attention

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_attention.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_timings_errors_and_table_rows():
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--emit-table"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("64", c, p) for c in ("False", "True") for p in ("fwd", "fwd+bwd")]
    for r in rows:
        float(r[3]), float(r[5])  # pallas and xla times are numbers
        assert r[7] == "n/a", r  # no cuDNN on CPU: reported per row, not a crash
        if r[2] == "fwd":
            assert float(r[-1]) < 2e-2, r  # bf16 forward error of the interpreted kernel against XLA
    assert "cuDNN" in proc.stderr  # the reason for n/a is shown
    table = [ast.literal_eval(ln.strip().rstrip(",")) for ln in lines if ln.startswith('    ("')]
    assert table and table[0][:4] == ("cpu", "prefill", "16bit", 0)
    for row in table:
        assert len(row) == len(attention.AUTO_TABLE[0]) and row[4][-1] == "xla" and "cudnn" not in row[4], row


def test_decode_smoke_run_prints_bandwidth_error_and_decode_rows():
    cmd = [sys.executable, str(SCRIPT), "--decode", "--smoke", "--emit-table"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("64", "1"), ("64", "2")]
    for r in rows:
        pallas_ms, pallas_gbs, xla_ms, xla_gbs = map(float, r[2:6])
        assert pallas_ms > 0 and xla_ms > 0 and pallas_gbs >= 0 and xla_gbs >= 0, r
        assert float(r[7]) < 2e-2, r  # bf16 error of the interpreted decode kernel against XLA
        assert r[8] == "pallas_decode", r  # the dispatcher really ran the decode kernel
    table = [ast.literal_eval(ln.strip().rstrip(",")) for ln in lines if ln.startswith('    ("')]
    assert table and table[0][:4] == ("cpu", "decode", "any", 0) and table[0][4][-1] == "xla"


def test_tune_smoke_run_prints_every_candidate_with_its_error():
    tune = SCRIPT.parent / "tune_attention.py"
    spec = importlib.util.spec_from_file_location("tune_attention", tune)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    proc = subprocess.run([sys.executable, str(tune), "--smoke"], check=False, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("fwd (", "bwd (", "decode ("))]
    # --smoke keeps the first two candidates of each kind: the default first, its relative-speed cell "-"
    expected = [f"{kind} {cands[i]}" for kind, cands in (("fwd", module.FWD), ("bwd", module.BWD),
                                                          ("decode", module.DECODE)) for i in (0, 1)]  # fmt: skip
    assert [ln[: len(e)] for ln, e in zip(lines, expected)] == expected, proc.stdout
    for i, ln in enumerate(lines):
        cells = ln.rsplit("err", 1)
        assert float(cells[1]) < 2e-2, ln  # every candidate computes the default's function (bf16 rounding apart)
        assert (cells[0].split()[-1] == "-") == (i % 2 == 0), ln


def test_derive_table_for_decode_rows():
    bench = _load_script()
    results = {(1024, 1): {"pallas": 2.0, "xla": 1.0}, (1024, 8): {"pallas": 2.0, "xla": 1.5},
               (8192, 1): {"pallas": 1.0, "xla": 3.0}, (8192, 8): {"pallas": 1.0, "xla": "OOM"}}  # fmt: skip
    rows = bench.derive_table(results, [1024, 8192], "gpu", "any", "decode", [(1,), (8,)], bench.DECODE_IMPLS)
    assert rows == [("gpu", "decode", "any", 0, ("xla",)), ("gpu", "decode", "any", 8192, ("pallas", "xla"))]


def test_derive_table_ranks_merges_and_drops_failures():
    bench = _load_script()
    timings = {  # per length: pallas, xla, cudnn seconds (or failures)
        1024: (2.0, 1.0, 3.0),
        4096: (1.0, 2.0, 0.5),
        8192: (1.0, 3.0, 0.5),
        16384: (1.0, "OOM", "n/a"),
    }
    results = {
        (length, causal, mode): dict(zip(bench.IMPLS, ts))
        for length, ts in timings.items()
        for causal in (False, True)
        for mode in bench.PASSES
    }
    results[(8192, True, "fwd")]["cudnn"] = "n/a"  # one failing configuration removes cudnn at that length
    rows = bench.derive_table(results, list(timings), "gpu", "16bit")
    assert rows == [
        ("gpu", "prefill", "16bit", 0, ("xla",)),
        ("gpu", "prefill", "16bit", 4096, ("cudnn", "pallas", "xla")),
        ("gpu", "prefill", "16bit", 8192, ("pallas", "xla")),
    ]


def test_flop_count():
    bench = _load_script()
    assert bench.flops(2, 16, 1024, 1024, 128, False, "fwd") == 4 * 2 * 16 * 1024 * 1024 * 128
    assert bench.flops(2, 16, 1024, 1024, 128, True, "fwd+bwd") == 3.5 * 2 * 2 * 16 * 1024 * 1024 * 128
