"""Time one training step (forward, backward, AdamW update) of BERT-base sequence classification in jaxformers and
in transformers/PyTorch, in the same run.

    python scripts/bench_train.py                         # BERT-base (random weights), batch 8 x 128, fp32
    python scripts/bench_train.py --scan-layers           # layers under lax.scan (jaxformers' default layout)
    python scripts/bench_train.py --skip-torch --profile  # also: where jaxformers' step spends its time, by op kind
    python scripts/bench_train.py --no-retain-host-memory # glibc's default malloc (see below)
    python scripts/bench_train.py --layers 1 --hidden 32 --batch 2 --seq 8 --repeats 3 --json out.json  # smoke run

Both frameworks run the same model (the bert-base-uncased config built locally, random weights, 2 labels) in
training mode (dropout on), on the same batch, with AdamW (lr 5e-5, weight decay 0.01, no gradient clipping).
PyTorch runs twice: its default AdamW and `fused=True`. jaxformers runs its layers unrolled
(`Options(scan_layers=False)`): on XLA:CPU that step is 2-8% faster than the scanned one, which compiles ~25%
faster. Timed rounds interleave the three, so they share the same
machine state; each reports the median (and minimum) of `--repeats` steps after `--warmup` steps. jaxformers'
compile time (tracing, lowering, XLA compilation) is measured separately and is not in the step times. XLA:CPU
flags are read from the XLA_FLAGS environment variable as usual. As the training entry points do, the script first
calls `jaxformers.core.host_memory.retain_host_memory()` (glibc keeps freed memory, so XLA:CPU's per-step block of
temporaries stops page-faulting); the setting is process-wide, so PyTorch runs under it too, and the table reports
each implementation's page faults per step. Prints a table and the ratio (PyTorch time /
jaxformers time: above 1 means jaxformers is faster); `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

LR, WEIGHT_DECAY = 5e-5, 0.01  # constant learning rate on both sides
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")  # fmt: skip


def train_flops(cfg: dict, b: int, t: int) -> float:
    """Matmul FLOPs of one training step: 3x the forward's (the backward computes two products per forward one)."""
    d, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_layer = 2 * b * t * (4 * d * d + 2 * d * f) + 2 * 2 * b * t * t * d
    return 3 * (layers * per_layer + 2 * b * d * d)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per implementation")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation after the first")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (intermediate = 4x)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden / 64, at least 1)")
    ap.add_argument("--scan-layers", action="store_true", help="jaxformers: run the layers with lax.scan")
    ap.add_argument("--remat", action="store_true", help="jaxformers: rematerialise each layer in the backward")
    ap.add_argument("--no-donate", action="store_true", help="jaxformers: do not donate the input state's buffers")
    ap.add_argument("--no-dropout", action="store_true", help="both: dropout off (rates 0), as in eval mode")
    ap.add_argument("--skip-torch", action="store_true", help="time jaxformers only (no ratio)")
    ap.add_argument("--no-retain-host-memory", action="store_true",
                    help="leave glibc's malloc as it is (freed blocks go back to the OS: XLA:CPU steps page-fault)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, trace 2 jaxformers steps (jax.profiler) and print time per XLA op kind")
    args = ap.parse_args(argv)
    args.heads = args.heads or max(1, args.hidden // 64)
    if args.hidden % args.heads:
        ap.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if min(args.batch, args.seq, args.repeats, args.layers) < 1 or args.warmup < 0:
        ap.error("--batch, --seq, --repeats and --layers must be >= 1, --warmup >= 0")
    return args


def jax_step(path: str, args, batch: dict):
    """The jaxformers step on the checkpoint at `path`: `(step() -> loss, eval_loss, compile seconds)`."""
    import jax

    import jaxformers as jf
    from jaxformers.core.options import Options
    from jaxformers.training import TrainState, create_optimizer, make_train_step

    model = jf.AutoModelForSequenceClassification.from_pretrained(
        path, options=Options(scan_layers=args.scan_layers, remat=args.remat)
    )
    optimizer, _ = create_optimizer(LR, lr_scheduler_type="constant", weight_decay=WEIGHT_DECAY, max_grad_norm=None)
    state = TrainState.create(model, optimizer, seed=0)
    train_step, eval_step = make_train_step(model, optimizer, donate=not args.no_donate)
    stats = eval_step(state, batch)
    eval_loss = float(stats["loss_sum"] / stats["count"])

    compile_s = []

    def on_event(event: str, duration: float, **kwargs):
        if event in COMPILE_EVENTS:
            compile_s.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    holder = {"state": state}

    def step() -> float:
        holder["state"], metrics = train_step(holder["state"], batch)
        jax.block_until_ready(holder["state"])
        return metrics["loss"]

    compile_s.clear()
    step()
    return step, eval_loss, sum(compile_s)


def torch_steps(path: str, batch: dict):
    """PyTorch steps with the default and the fused AdamW: `({name: step() -> loss}, eval_loss)`."""
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    tb = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    model.eval()
    with torch.inference_mode():
        eval_loss = float(model(**tb).loss)
    model.train()
    steps = {}
    for name, fused in (("pytorch AdamW", False), ("pytorch AdamW fused", True)):
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=fused)

        def step(opt=opt):
            loss = model(**tb).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        step()
        steps[name] = step
    return steps, eval_loss


def timed(fn, n: int, faults: list[int] | None = None) -> list[float]:
    """Wall seconds of `n` calls of `fn`; appends each call's minor page faults to `faults` when given."""
    import resource

    times = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if faults is not None:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return times


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    from jaxformers.core.host_memory import retain_host_memory

    retained = False if args.no_retain_host_memory else retain_host_memory()
    import jax
    import numpy as np

    cfg = {"hidden_size": args.hidden, "num_attention_heads": args.heads, "intermediate_size": 4 * args.hidden,
           "num_hidden_layers": args.layers, "num_labels": 2}  # fmt: skip
    if args.no_dropout:
        cfg |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    rng = np.random.RandomState(0)
    batch = {"input_ids": rng.randint(1000, 30522, (args.batch, args.seq)).astype(np.int32),
             "attention_mask": np.ones((args.batch, args.seq), np.int32),
             "labels": rng.randint(0, 2, (args.batch,)).astype(np.int32)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        import torch
        import transformers

        torch.manual_seed(0)
        transformers.BertForSequenceClassification(transformers.BertConfig(**cfg)).save_pretrained(tmp)
        ours, ours_eval, compile_s = jax_step(tmp, args, batch)
        theirs, theirs_eval = ({}, None) if args.skip_torch else torch_steps(tmp, batch)
    impls = {"jaxformers": ours, **theirs}
    for fn in impls.values():
        timed(fn, args.warmup)
    times = {name: [] for name in impls}
    faults = {name: [] for name in impls}
    rounds = max(1, args.repeats // 5)
    for r in range(rounds):  # interleaved, so every implementation sees the same machine state
        per_round = args.repeats // rounds + (r < args.repeats % rounds)
        for name, fn in impls.items():
            times[name] += timed(fn, per_round, faults[name])

    gflop = train_flops(cfg, args.batch, args.seq) / 1e9
    result = {"batch": args.batch, "seq": args.seq, "layers": args.layers, "hidden": args.hidden,
              "scan_layers": args.scan_layers, "remat": args.remat, "donate": not args.no_donate,
              "dropout": not args.no_dropout, "compile_s": compile_s, "retain_host_memory": retained,
              "page_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
              "median_s": {k: statistics.median(v) for k, v in times.items()},
              "min_s": {k: min(v) for k, v in times.items()}, "gflop_per_step": gflop,
              "eval_loss": {"jaxformers": ours_eval, "pytorch": theirs_eval}}  # fmt: skip
    med = result["median_s"]
    if not args.skip_torch:
        result["ratio_fused"] = med["pytorch AdamW fused"] / med["jaxformers"]
        result["ratio_default"] = med["pytorch AdamW"] / med["jaxformers"]
    size = "base-sized" if (args.hidden, args.heads, args.layers) == (768, 12, 12) else (
        f"hidden {args.hidden}, {args.heads} heads, {args.layers} layers")
    print(f"bert {size} sequence classification train step (forward, backward, AdamW), "
          f"batch {args.batch} x {args.seq}, fp32, dropout {'off' if args.no_dropout else 'on'}")
    from jaxformers.core.xla_cpu import cpu_description

    print(f"  cpu: {cpu_description()}")
    print(f"  jax {jax.__version__} devices: {jax.devices()}" +
          ("" if args.skip_torch else f", torch {torch.__version__} threads: {torch.get_num_threads()}"))
    print(f"  jaxformers: scan_layers={args.scan_layers} remat={args.remat} donate={not args.no_donate}")
    print(f"  host memory: {'retained (glibc keeps freed memory)' if retained else 'glibc defaults'}")
    print(f"  {'impl':<22}{'median ms':>11}{'min ms':>9}{'GFLOP/s':>9}{'faults/step':>13}")
    for name in impls:
        print(f"  {name:<22}{med[name] * 1e3:>11.1f}{result['min_s'][name] * 1e3:>9.1f}{gflop / med[name]:>9.1f}"
              f"{result['page_faults_per_step'][name]:>13.0f}")
    if not args.skip_torch:
        print(f"  ratio (pytorch fused AdamW time / jaxformers time): {result['ratio_fused']:.3f}")
        print(f"  ratio (pytorch AdamW time / jaxformers time): {result['ratio_default']:.3f}")
        print(f"  loss before training (dropout off): jaxformers {ours_eval:.6f}, pytorch {theirs_eval:.6f}")
    print(f"  jaxformers compile time: {compile_s:.2f} s (trace + lower + XLA compile; not in the timings above)")
    if args.profile:
        result["profile_ms_per_step"] = profile_ops(ours, steps=2)
        print("  jaxformers step by XLA op kind (ms per step under the profiler; fusions named by kind):")
        for kind, ms in list(result["profile_ms_per_step"].items())[:15]:
            print(f"    {ms:9.1f}  {kind}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def profile_ops(step, steps: int) -> dict[str, float]:
    """Run `step` `steps` times under `jax.profiler` and return milliseconds per step by XLA op kind (a fusion's
    name without its number, e.g. `ynn_fusion` for the matrix products XLA:CPU hands to YNNPACK), largest first."""
    import collections
    import glob
    import gzip
    import os
    import re

    import jax

    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
        (trace,) = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:
        name = e.get("name", "")
        # host-side frames ($...), the executor and thread-pool waits enclose the ops: not op time themselves
        if e.get("ph") != "X" or "dur" not in e or name.startswith("$") or re.search(r"Thunk|wait|acquire|Slinky", name):
            continue
        kinds[re.sub(r"\.\d+$", "", name)] += e["dur"] / 1e3 / steps
    return dict(kinds.most_common())


if __name__ == "__main__":
    main()
