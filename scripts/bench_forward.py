"""Time a BERT-base-sized encoder forward in jaxformers and in transformers/PyTorch, in the same run.

    python scripts/bench_forward.py               # BERT-base: 12 layers, hidden 768, batch 8 x 128, fp32
    python scripts/bench_forward.py --batch 8 --seq 128 --repeats 20
    python scripts/bench_forward.py --layers 1 --hidden 32 --batch 1 --seq 8 --repeats 5   # smoke run (tests)

Prints per-forward time (median), throughput, the ratio PyTorch/jaxformers (>1 means jaxformers is faster), the
achieved fp32 GFLOP/s of each, and jaxformers' compile time separately.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def flops(cfg, b: int, t: int) -> float:
    d, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_layer = 2 * b * t * (4 * d * d + 2 * d * f) + 2 * 2 * b * t * t * d
    return layers * per_layer + 2 * b * d * d  # + pooler


def timeit(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (intermediate = 4x)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden / 64, at least 1)")
    args = ap.parse_args()
    heads = args.heads or max(1, args.hidden // 64)
    if args.hidden % heads:
        ap.error(f"--hidden {args.hidden} is not divisible by --heads {heads}")

    import jax
    import numpy as np
    import torch
    import transformers

    import jaxformers as jf

    cfg = dict(hidden_size=args.hidden, num_attention_heads=heads, intermediate_size=4 * args.hidden,
               num_hidden_layers=args.layers)  # fmt: skip
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 30522, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ref = transformers.BertModel(transformers.BertConfig(**cfg)).eval()
        ref.save_pretrained(tmp)
        model = jf.AutoModel.from_pretrained(tmp)

    apply, params = jf.pure(model)
    fwd = jax.jit(lambda p, i, m: apply(p, i, m).last_hidden_state)
    t0 = time.perf_counter()
    fwd.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - t0
    ours = lambda: fwd(params, ids, mask).block_until_ready()  # noqa: E731
    ours()

    tid, tmask = torch.tensor(ids).long(), torch.tensor(mask).long()

    def theirs():
        with torch.inference_mode():
            ref(input_ids=tid, attention_mask=tmask)

    theirs()
    # interleave rounds so both see the same machine state
    t_ours, t_theirs = [], []
    for _ in range(max(1, args.repeats // 5)):
        t_ours += timeit(ours, 5)
        t_theirs += timeit(theirs, 5)
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    with torch.inference_mode():
        want = ref(input_ids=tid, attention_mask=tmask).last_hidden_state.numpy()
    diff = np.abs(np.asarray(fwd(params, ids, mask)) - want).max()
    gf = flops(cfg, args.batch, args.seq) / 1e9
    size = "BERT-base-sized" if (args.hidden, heads) == (768, 12) else f"hidden {args.hidden}, {heads} heads"
    print(f"{size} encoder forward, batch {args.batch} x {args.seq}, fp32, {args.layers} layers")
    print(f"  torch threads: {torch.get_num_threads()}, jax devices: {jax.devices()}")
    print(f"  {'impl':<14}{'median ms':>12}{'seq/s':>10}{'GFLOP/s':>10}")
    print(f"  {'jaxformers':<14}{a * 1e3:>12.1f}{args.batch / a:>10.1f}{gf / a:>10.1f}")
    print(f"  {'pytorch':<14}{b * 1e3:>12.1f}{args.batch / b:>10.1f}{gf / b:>10.1f}")
    print(f"  ratio (pytorch time / jaxformers time): {b / a:.3f}")
    print(f"  jaxformers compile time: {compile_s:.2f} s (not in the timings above)")
    print(f"  max |diff| vs pytorch: {diff:.2e}")


if __name__ == "__main__":
    main()
