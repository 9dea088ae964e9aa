"""scripts/bench_quant_matmul.py: the smoke run, and its reading of compiled HLO (which operand types the product
instruction consumes) on programs whose answer is known on XLA:CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.core import quant

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_quant_matmul.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_quant_matmul", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_product_reads_int_codes_only_in_int8_compute_on_cpu():
    bench = _load_script()
    w = jnp.asarray(np.random.RandomState(0).standard_normal((64, 96)), jnp.float32)
    x = jnp.ones((4, 64), jnp.float32)
    codes, scale = quant.quantize_kernel(w, quant.QuantSpec(8, None), lead=0, n_in=1)
    reads = {}
    for mode in ("weight_only", "int8"):
        spec = quant.QuantSpec(8, None, compute=mode)
        reads[mode] = bench.product_reads(_hlo(lambda x, c, s, spec=spec: quant.matmul(x, c, s, None, spec,
                                                                                       jnp.float32), x, codes, scale))
    float_reads = bench.product_reads(_hlo(lambda x, w: x @ w, x, w))
    # exactly one product each; XLA:CPU converts the codes to a float weight first in weight_only mode (BENCHMARKS.md)
    assert len(float_reads) == 1 and float_reads[0][1] is False, float_reads
    assert len(reads["weight_only"]) == 1 and reads["weight_only"][0][1] is False, reads
    assert len(reads["int8"]) == 1 and reads["int8"][0][1] is True, reads


def test_smoke_run_prints_a_row_per_product():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.split() and ln.split()[0].isdigit()]
    impls = ("float32", "weight_only", "int8", "scale_after")
    assert [(r[0], r[1]) for r in rows] == [(m, i) for m in ("1", "4") for i in impls]
    for r in rows:
        assert float(r[2]) > 0 and r[4].endswith("x"), r
    assert all("int codes" in " ".join(r) for r in rows if r[1] == "int8"), rows
