"""Time attention forward and forward+backward: the Pallas flash kernel vs jax.nn.dot_product_attention (XLA, cuDNN).

    python scripts/bench_attention.py                   # bf16, B=2, N=16, H=128, T=S in 1024..16384 (GPU)
    python scripts/bench_attention.py --emit-table      # also print AUTO_TABLE rows derived from the timings
    python scripts/bench_attention.py --smoke           # tiny shapes on CPU, kernels interpreted (tests the script)
    python scripts/bench_attention.py --decode --heads 32 --kv-heads 8 --emit-table
                                                        # one new token against a KV cache of S in 1024..32768,
                                                        # batch 1 and 8: the Pallas decode kernel vs XLA

One line per (T=S, causal, pass): the median of --repeats timed runs after --warmup runs (each ended by
block_until_ready); TFLOP/s counting 4*B*N*T*S*H per forward (half when causal) and 2.5x that for the backward
(FlashAttention's convention); the speedups of Pallas over XLA and over cuDNN (>1: Pallas is faster); and the
forward error of Pallas, max |pallas - ref| / max |ref| against XLA (cuDNN if XLA failed). A configuration that
fails prints OOM (out of memory) or n/a (unsupported; the error goes to stderr) and the run goes on.

`--decode` times what a generation step does instead: one query per row at the end of a full KV cache of S slots
(causal, the offset a traced argument), through `jaxformers.core.attention.dot_product_attention` with
impl="pallas" (the split-K decode kernel) and impl="xla"; it prints the time, the bandwidth reached reading the cache
(2*B*S*K*H*itemsize bytes per call), their ratio and the kernel's error, and with --emit-table the gpu/decode rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout this script belongs to
IMPLS = ("pallas", "xla", "cudnn")
PASSES = ("fwd", "fwd+bwd")


def flops(b: int, n: int, t: int, s: int, h: int, causal: bool, mode: str) -> float:
    fwd = 4 * b * n * t * s * h * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def import_kernels():
    """`jaxformers.kernels` of this checkout, installed or not.

    The package lives in `kernels/` and only an install (`pip install -e .`, setuptools' package-dir mapping) makes
    it `jaxformers.kernels`. From a plain or copied checkout this puts the checkout first on `sys.path` and maps
    `jaxformers.kernels` to its `kernels/` directly, so neither a missing install nor an editable install of another
    copy (whose finder would supply that copy's kernels) decides which kernels run.
    """
    name, directory = "jaxformers.kernels", ROOT / "kernels"
    if not (directory / "__init__.py").is_file():  # not run from a checkout: the installed package
        from jaxformers import kernels

        return kernels
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import jaxformers

    module = sys.modules.get(name)
    if module is None or Path(module.__file__).resolve().parent != directory:
        spec = importlib.util.spec_from_file_location(
            name, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        jaxformers.kernels = module
    return module


def attention_fn(impl: str, causal: bool, backend: str, interpret: bool):
    import jax

    if impl == "pallas":
        kernels = import_kernels()

        return lambda q, k, v: kernels.flash_attention(q, k, v, causal=causal, backend=backend, interpret=interpret)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)


def compiled(fn, mode: str):
    """Jitted forward `(q, k, v) -> out`, or forward+backward `(q, k, v, do) -> (dq, dk, dv)`."""
    import jax

    if mode == "fwd":
        return jax.jit(lambda q, k, v, do: fn(q, k, v))

    def fwd_bwd(q, k, v, do):
        _, vjp = jax.vjp(fn, q, k, v)
        return vjp(do)

    return jax.jit(fwd_bwd)


def measure(fn, args, warmup: int, repeats: int, label: str):
    """`(median seconds, last output)`, or `("OOM" | "n/a", None)` when compiling or running fails."""
    import jax

    try:
        for _ in range(max(warmup, 1)):  # the first call compiles
            out = jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out
    except Exception as e:  # noqa: BLE001 - one failing configuration must not end the sweep
        msg = str(e)
        oom = "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
        print(f"# {label}: {type(e).__name__}: {msg.splitlines()[0] if msg else ''}"[:300], file=sys.stderr)
        return ("OOM" if oom else "n/a"), None


def fmt_time(x) -> str:
    return f"{x * 1e3:10.3f}" if isinstance(x, float) else f"{x:>10}"


def fmt_tflops(x, fl: float) -> str:
    return f"{fl / x / 1e12:8.2f}" if isinstance(x, float) else f"{'':>8}"


def fmt_ratio(num, den) -> str:
    return f"{num / den:11.2f}x" if isinstance(num, float) and isinstance(den, float) else f"{'-':>12}"


def rel_error(out, ref) -> str:
    import numpy as np

    if out is None or ref is None:
        return f"{'-':>9}"
    a, b = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    return f"{np.abs(a - b).max() / np.abs(b).max():9.1e}"


def derive_table(results, lengths, platform: str, group: str, kind: str = "prefill", configs=None, impls=IMPLS):
    """AUTO_TABLE rows `(platform, kind, group, min_len, prefs)`: per length, the implementations that ran every
    configuration (default: each (causal, pass); `results` is keyed `(length, *config)`), fastest first by
    geometric-mean time, cut after "xla" (always supported, so nothing after it is ever tried) or ended by it; equal
    consecutive orders merge, and the first row starts at 0.
    """
    configs = configs or [(c, m) for c in (False, True) for m in PASSES]
    rows = []
    for length in sorted(lengths):
        scores = {}
        for impl in impls:
            ts = [results[(length, *config)][impl] for config in configs]
            if all(isinstance(t, float) for t in ts):
                scores[impl] = math.exp(sum(map(math.log, ts)) / len(ts))
        order = sorted(scores, key=scores.get)
        order = order[: order.index("xla") + 1] if "xla" in order else [*order, "xla"]
        if not rows or rows[-1][4] != tuple(order):
            rows.append((platform, kind, group, 0 if not rows else length, tuple(order)))
    return rows


DECODE_IMPLS = ("pallas", "xla")


def decode_sweep(args, dtype) -> None:
    """`--decode`: one new query per row against a full cache of each length, Pallas decode kernel vs XLA."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import_kernels()  # the dispatcher's `from jaxformers import kernels` then finds this checkout's kernels
    from jaxformers.core.attention import attention_plan, dot_product_attention

    n, kh, h = args.heads, args.kv_heads or args.heads, args.head_dim
    print(f"{'S':>6} {'B':>3}" + "".join(f" {impl + ' ms':>10} {'GB/s':>8}" for impl in DECODE_IMPLS)
          + f" {'pallas/xla':>12} {'err':>9}  plan")  # fmt: skip
    results = {}
    for length in args.lengths:
        for b in args.decode_batches:
            rng = np.random.RandomState(length + b)
            q = jnp.asarray(rng.standard_normal((b, 1, n, h)), dtype)
            k, v = (jnp.asarray(rng.standard_normal((b, length, kh, h)), dtype) for _ in range(2))
            offset = jnp.int32(length - 1)  # the new token fills the last slot: every slot is read
            times, outs = {}, {}
            for impl in DECODE_IMPLS:
                def step(q, k, v, offset, impl=impl):
                    return dot_product_attention(q, k, v, causal=True, q_offset=offset, impl=impl)

                label = f"decode {impl} S={length} B={b}"
                times[impl], outs[impl] = measure(jax.jit(step), (q, k, v, offset), args.warmup, args.repeats, label)
            results[(length, b)] = times
            cache_bytes = 2 * b * length * kh * h * dtype.itemsize
            gbs = "".join(f" {fmt_time(times[i])} "
                          + (f"{cache_bytes / times[i] / 1e9:8.1f}" if isinstance(times[i], float) else f"{'':>8}")
                          for i in DECODE_IMPLS)  # fmt: skip
            plan = attention_plan(q, k, v, impl="pallas", causal=True, q_offset=offset).impl
            print(f"{length:>6} {b:>3}{gbs} {fmt_ratio(times['xla'], times['pallas'])} "
                  f"{rel_error(outs['pallas'], outs['xla'])}  {plan}", flush=True)  # fmt: skip
            del q, k, v, outs
    if args.emit_table:
        platform, device = jax.default_backend(), jax.devices()[0].device_kind
        print(f"\n# Measured by scripts/bench_attention.py --decode on {device}: {dtype.name}, N={n} K={kh} H={h}, "
              f"B in {args.decode_batches}, S in {args.lengths};\n# ranked by the geometric mean over the batches. "
              f"Paste over the {platform}/decode rows of AUTO_TABLE in jaxformers/core/attention.py.")  # fmt: skip
        configs = [(b,) for b in args.decode_batches]
        for row in derive_table(results, args.lengths, platform, "any", "decode", configs, DECODE_IMPLS):
            print(f"    {row!r},".replace("'", '"'))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192, 16384], help="T = S values")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--backend", default="gpu", choices=["gpu", "tpu"], help="Pallas kernel family")
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--emit-table", action="store_true", help="print AUTO_TABLE rows derived from the timings")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, Pallas in interpret mode")
    ap.add_argument("--decode", action="store_true", help="time one-token decoding against a KV cache instead")
    ap.add_argument("--kv-heads", type=int, default=None, help="--decode: K/V heads (default: --heads)")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8], help="--decode: batch sizes")
    args = ap.parse_args()
    if args.decode and args.lengths == ap.get_default("lengths"):
        args.lengths = [1024, 4096, 8192, 16384, 32768]
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
        args.lengths, args.batch, args.heads, args.head_dim, args.warmup, args.repeats = [64], 1, 2, 32, 1, 2
        args.kv_heads, args.decode_batches = 1 if args.decode else None, [1, 2]

    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = jnp.dtype(args.dtype)
    b, n, h = args.batch, args.heads, args.head_dim
    platform, device = jax.default_backend(), jax.devices()[0].device_kind
    mode = " (interpret)" if args.smoke else ""
    if args.decode:
        print(f"# {device} ({platform}), jax {jax.__version__}, {args.dtype}, decode: one query per row, N={n} "
              f"K={args.kv_heads or n} H={h}, through jaxformers' dispatcher{mode}, median of {args.repeats} after "
              f"{args.warmup} warmup")  # fmt: skip
        return decode_sweep(args, dtype)
    print(f"# {device} ({platform}), jax {jax.__version__}, {args.dtype}, B={b} N={n} H={h}, Pallas backend "
          f"{args.backend}{mode}, median of {args.repeats} after {args.warmup} warmup")  # fmt: skip
    print(f"{'T=S':>6} {'causal':>6} {'pass':>8}"
          + "".join(f" {impl + ' ms':>10} {'TFLOP/s':>8}" for impl in IMPLS)
          + f" {'pallas/xla':>12} {'pallas/cudnn':>12} {'fwd err':>9}")  # fmt: skip
    results = {}
    for length in args.lengths:
        rng = np.random.RandomState(0)
        q, do = (jnp.asarray(rng.standard_normal((b, length, n, h)), dtype) for _ in range(2))
        k, v = (jnp.asarray(rng.standard_normal((b, length, n, h)), dtype) for _ in range(2))
        for causal in (False, True):
            outs = {}
            for mode in PASSES:
                times = {}
                for impl in IMPLS:
                    if impl not in args.impls:
                        times[impl] = "skipped"
                        continue
                    label = f"{impl} T=S={length} causal={causal} {mode}"
                    fn = compiled(attention_fn(impl, causal, args.backend, args.smoke), mode)
                    times[impl], out = measure(fn, (q, k, v, do), args.warmup, args.repeats, label)
                    if mode == "fwd":
                        outs[impl] = out
                results[(length, causal, mode)] = times
                fl = flops(b, n, length, length, h, causal, mode)
                ref = outs.get("xla") if outs.get("xla") is not None else outs.get("cudnn")
                err = rel_error(outs.get("pallas"), ref) if mode == "fwd" else f"{'':>9}"
                print(f"{length:>6} {causal!s:>6} {mode:>8}"
                      + "".join(f" {fmt_time(times[i])} {fmt_tflops(times[i], fl)}" for i in IMPLS)
                      + f" {fmt_ratio(times['xla'], times['pallas'])} {fmt_ratio(times['cudnn'], times['pallas'])}"
                      + f" {err}", flush=True)  # fmt: skip
            del outs
        del q, k, v, do
    if args.emit_table:
        group = "float32" if dtype == jnp.float32 else "16bit"
        print(f"\n# Measured by scripts/bench_attention.py on {device}: {args.dtype}, B={b} N={n} H={h}, T=S in "
              f"{args.lengths};\n# ranked by the geometric mean of fwd and fwd+bwd times, causal and not (the row at 0 "
              f"extrapolates T=S={min(args.lengths)}).\n# Paste over the {platform}/prefill/{group} rows of AUTO_TABLE "
              "in jaxformers/core/attention.py.")  # fmt: skip
        for row in derive_table(results, args.lengths, platform, group):
            print(f"    {row!r},".replace("'", '"'))


if __name__ == "__main__":
    main()
