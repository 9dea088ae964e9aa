"""Time the GPU Pallas attention kernels under candidate tile sizes and launch settings; print the best of each kind.

    python scripts/tune_attention.py                 # on a GPU: flash forward, flash backward, decode
    python scripts/tune_attention.py --smoke         # tiny shapes on CPU, kernels interpreted, the first two
                                                     # candidates of each kind (tests the script)

Flash (bf16, B=2, N=16, H=128, T=S=--length, causal and not): each forward candidate (`block_q`, `block_k`,
`num_warps`, `num_stages` of `flash_attention_gpu.BlockSizes`) is timed on the forward pass; each backward candidate
(the dQ and dK/dV tiles, `num_warps_bwd`, `num_stages_bwd`; forward settings at their defaults) on forward+backward.
Decode (bf16, N=32 query heads over K=8 kv heads, H=128, one query per row at the end of a full cache): each
candidate (`block_k`, the number of programs aimed at, which sets `num_splits`, `num_warps`, `num_stages`) at every
cache length and batch. One line per candidate with its times (median of --repeats after --warmup) and their
geometric mean relative to the first candidate, the current default, and the largest difference of its outputs
(forward: out; backward: dq, dk, dv; decode: out) from the default's, relative to max |default| (tile changes only
reorder float32 sums, so this stays at bf16 rounding); a failing candidate prints n/a (error on stderr).
The defaults in kernels/*_gpu.py are chosen from these lines (BENCHMARKS.md records the run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import import_kernels, measure  # noqa: E402

FWD = [  # block_q, block_k, num_warps, num_stages (the first is the default for 16-bit inputs and H > 64)
    (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 64, 8, 4), (64, 128, 4, 3),
]  # fmt: skip
BWD = [  # block_q_dq, block_k_dq, block_q_dkv, block_k_dkv, num_warps_bwd, num_stages_bwd (first: the default;
    # the second was the default before the 2026-12-04 H200 run)
    (64, 64, 64, 64, 4, 2), (128, 32, 32, 128, 4, 3), (64, 64, 64, 64, 8, 3), (128, 64, 64, 128, 8, 2),
    (64, 32, 32, 64, 4, 3), (128, 32, 32, 128, 8, 2), (64, 64, 64, 128, 8, 2), (64, 64, 64, 64, 4, 3),
]  # fmt: skip
DECODE = [  # block_k, programs aimed at, num_warps, num_stages (first: the default; the second was before 2026-12-04)
    (64, 528, 4, 2), (64, 132, 4, 2), (64, 264, 4, 2), (64, 264, 4, 3), (128, 264, 4, 2), (128, 528, 8, 2),
    (32, 528, 4, 3), (64, 1056, 4, 2), (64, 528, 4, 3),
]  # fmt: skip


def geomean(xs) -> float | None:
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs and all(isinstance(x, float) for x in xs) else None


def rel_err(out, ref) -> float:
    """max |out - ref| / max |ref| over the arrays of two outputs (nan if either is missing)."""
    import jax
    import numpy as np

    if out is None or ref is None:
        return float("nan")
    pairs = zip(jax.tree.leaves(out), jax.tree.leaves(ref))
    return max(float(np.abs(np.float32(a) - np.float32(b)).max() / np.abs(np.float32(b)).max()) for a, b in pairs)


def report(label: str, times: list, base: float | None, err: float) -> float | None:
    g = geomean(times)
    cells = " ".join(f"{t * 1e3:9.3f}" if isinstance(t, float) else f"{t:>9}" for t in times)
    rel = f"{base / g:6.2f}x" if g and base else f"{'-':>7}"
    print(f"{label:<34} {cells}  {rel}  err {err:.1e}", flush=True)
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=8192, help="flash: T = S")
    ap.add_argument("--cache-lengths", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--only", nargs="+", default=["fwd", "bwd", "decode"], choices=["fwd", "bwd", "decode"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, kernels interpreted")
    args = ap.parse_args()
    b, n, h, kh = 2, 16, 128, 8
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
        args.length, args.cache_lengths, args.decode_batches, args.warmup, args.repeats = 64, [64], [1], 1, 1
        b, n, h = 1, 2, 32
        FWD[2:], BWD[2:], DECODE[2:] = [], [], []

    import jax
    import jax.numpy as jnp
    import numpy as np

    kernels = import_kernels()
    from jaxformers.kernels import decode_attention_gpu, flash_attention_gpu

    interpret = args.smoke
    rng = np.random.RandomState(0)
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, bf16; median of {args.repeats} after "
          f"{args.warmup} warmup; times in ms; last column: speed relative to the first (default) line")  # fmt: skip
    if {"fwd", "bwd"} & set(args.only):
        t = args.length
        q, k, v, do = (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.bfloat16) for _ in range(4))

        def flash(bs, causal, backward):
            def fn(q, k, v):
                return kernels.flash_attention(q, k, v, causal=causal, backend="gpu", interpret=interpret,
                                               block_sizes=bs)  # fmt: skip

            if not backward:
                return jax.jit(lambda q, k, v, do: fn(q, k, v))
            return jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))

        default = flash_attention_gpu.BlockSizes.default_for(t, t, h, jnp.bfloat16)
        for kind, cands in (("fwd", FWD), ("bwd", BWD)):
            if kind not in args.only:
                continue
            print(f"\nflash {'forward' if kind == 'fwd' else 'forward+backward'}, T=S={t}, B={b} N={n} H={h}: "
                  "non-causal, causal")  # fmt: skip
            base, refs = None, {}
            for cand in cands:
                if kind == "fwd":
                    bs = flash_attention_gpu.BlockSizes(**{**default.__dict__, "block_q": cand[0], "block_k": cand[1],
                                                           "num_warps": cand[2], "num_stages": cand[3]})  # fmt: skip
                else:
                    names = ("block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv", "num_warps_bwd",
                             "num_stages_bwd")  # fmt: skip
                    bs = flash_attention_gpu.BlockSizes(**{**default.__dict__, **dict(zip(names, cand))})
                times, err = [], 0.0
                for causal in (False, True):
                    t_c, out = measure(flash(bs, causal, kind == "bwd"), (q, k, v, do), args.warmup, args.repeats,
                                       f"{kind} {cand} causal={causal}")  # fmt: skip
                    times.append(t_c)
                    refs.setdefault(causal, out)
                    err = max(err, rel_err(out, refs[causal]))
                g = report(f"{kind} {cand}", times, base, err)
                base = base or g
        del q, k, v, do
    if "decode" in args.only:
        print(f"\ndecode, N=32 K={kh} H={h}: per (S, B) in "
              f"{[(s, bb) for s in args.cache_lengths for bb in args.decode_batches]}")  # fmt: skip
        inputs = {}
        for s in args.cache_lengths:
            for bb in args.decode_batches:
                q = jnp.asarray(rng.standard_normal((bb, 1, 32, h)), jnp.bfloat16)
                k, v = (jnp.asarray(rng.standard_normal((bb, s, kh, h)), jnp.bfloat16) for _ in range(2))
                inputs[(s, bb)] = (q, k, v, jnp.full((bb,), s, jnp.int32))
        base, refs = None, {}
        for block_k, programs, warps, stages in DECODE:
            times, err = [], 0.0
            for (s, bb), xs in inputs.items():
                splits = max(1, min(-(-s // block_k), -(-programs // (bb * kh))))
                bs = decode_attention_gpu.BlockSizes(block_k=block_k, num_splits=splits, num_warps=warps,
                                                     num_stages=stages)  # fmt: skip
                fn = jax.jit(lambda q, k, v, lengths, bs=bs: kernels.decode_attention(
                    q, k, v, lengths, backend="gpu", interpret=interpret, block_sizes=bs))  # fmt: skip
                t_c, out = measure(fn, xs, args.warmup, args.repeats, f"decode {block_k, programs} S={s} B={bb}")
                times.append(t_c)
                refs.setdefault((s, bb), out)
                err = max(err, rel_err(out, refs[(s, bb)]))
            g = report(f"decode {(block_k, programs, warps, stages)}", times, base, err)
            base = base or g


if __name__ == "__main__":
    main()
