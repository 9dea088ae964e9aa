"""How much the persistent compilation cache saves: the first `jf.generate` call in a fresh process, three ways.

    python scripts/bench_compile_cache.py                  # GPT-2-small and ~125M Llama shapes, batch 1
    python scripts/bench_compile_cache.py --models llama --new 32 --batch 8

Each measurement is a new Python process that builds the model (random weights, fp32; not timed) and times its first
`jf.generate` call (32-token prompt, 128 new tokens, greedy: the settings of scripts/bench_generate.py), which
traces, compiles (or reads the compiled programs back) and runs, then a second call (run only); the first call's
CPU time (all threads) is printed too, as it depends less on other load on the machine. In order:
  off:   JAXFORMERS_COMPILE_CACHE=0, no persistent cache;
  cold:  an empty cache folder (compiles and writes the cache);
  warm:  the same folder again (what every later run of the same program costs).
It prints the first-call times, the warm/cold ratio, and the cache entries written / read (JAX's monitoring
events). The cache folder is a temporary one: the user's own cache is not touched.

    python scripts/bench_compile_cache.py --filled 4000    # also: cold, in a folder that holds 4,000 other entries

`--filled N` adds two cold rows in a folder already holding N entries of other programs (25 KB each, as a test run
or weeks of use leave behind): `full-jax` with JAX's own size cap (jax_compilation_cache_max_size = jaxformers' cap:
JAX lists the folder and reads a timestamp file per entry on every write) and `full` with jaxformers' default (the
folder is pruned once when the process starts, writes are plain).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = {
    "gpt2": ("gpt2", "GPT2LMHeadModel", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    "llama": ("llama", "LlamaForCausalLM", dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12,
                                                num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
                                                max_position_embeddings=2048, tie_word_embeddings=False)),  # fmt: skip
}


def child(name: str, batch: int, prompt: int, new: int, jax_cap: bool = False) -> dict:
    """Runs in the measured process: build the model, time the first and second generate calls."""
    from jax._src import monitoring

    events: dict[str, int] = {}
    monitoring.register_event_listener(lambda event, **kw: events.__setitem__(event, events.get(event, 0) + 1))
    import jax
    import numpy as np
    from flax import nnx

    import jaxformers as jf
    from jaxformers.core import compile_cache
    from jaxformers.core.options import Options

    folder = compile_cache.configure()  # what `import jaxformers` does (a no-op when it already has)
    if jax_cap:  # JAX's own cap instead (read when the first program is compiled)
        jax.config.update("jax_compilation_cache_max_size", compile_cache.MAX_SIZE_BYTES)
    family, cls_name, kw = MODELS[name]
    arch = importlib.import_module(f"jaxformers.models.{family}").ARCHITECTURE
    cls = next(c for tasks in arch.classes.values() for c in tasks.values() if c.__name__ == cls_name)
    eos = kw["vocab_size"] - 1
    cfg = arch.config_class.from_hf({**kw, "model_type": family, "eos_token_id": eos, "bos_token_id": 0,
                                     "pad_token_id": eos})  # fmt: skip
    model = cls(cfg, options=Options(), rngs=nnx.Rngs(0))
    ids = np.random.RandomState(batch).randint(1, eos, (batch, prompt)).astype(np.int32)
    gen = dict(max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    before = dict(events)
    t0, c0 = time.perf_counter(), time.process_time()
    jf.generate(model, ids, **gen)
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    jf.generate(model, ids, **gen)
    second = time.perf_counter() - t0
    delta = {k.rsplit("/", 1)[-1]: v - before.get(k, 0) for k, v in events.items() if "compilation_cache" in k}
    return {"first": first, "first_cpu": first_cpu, "second": second, "hits": delta.get("cache_hits", 0),
            "misses": delta.get("cache_misses", 0), "entries": len(compile_cache.entries(folder)) if folder else 0}


def run(name: str, batch: int, prompt: int, new: int, setting: str, jax_cap: bool = False) -> dict:
    env = {**os.environ, "JAXFORMERS_COMPILE_CACHE": setting, "HF_HUB_OFFLINE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    cmd = [sys.executable, __file__, "--child", name, "--batch", str(batch), "--prompt", str(prompt), "--new", str(new)]
    cmd += ["--jax-cap"] if jax_cap else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fill(folder: str, n: int, size: int = 25_000) -> None:
    """`n` entries of other programs, as JAX writes them (`<key>-cache` and its last-use `<key>-atime`)."""
    data = os.urandom(size)
    for i in range(n):
        with open(os.path.join(folder, f"other{i:06d}-cache"), "wb") as f:
            f.write(data)
        with open(os.path.join(folder, f"other{i:06d}-atime"), "wb") as f:
            f.write(time.time_ns().to_bytes(8, "little"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gpt2", "llama"], choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--filled", type=int, default=0, metavar="N",
                    help="also time cold first calls in a folder holding N other entries, JAX's cap vs jaxformers'")
    ap.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--jax-cap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.prompt, args.new, args.jax_cap)))
        return
    print(f"first jf.generate call in a fresh process: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens")
    print(f"{'model':<7}{'cache':>6}{'first s':>9}{'(cpu s)':>9}{'second s':>10}{'written':>9}{'hits':>6}{'misses':>8}")
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            rows = {"off": run(name, args.batch, args.prompt, args.new, "0")}
            rows["cold"] = run(name, args.batch, args.prompt, args.new, folder)
            rows["warm"] = run(name, args.batch, args.prompt, args.new, folder)
        for kind, jax_cap in (("full-jax", True), ("full", False)) if args.filled else ():
            with tempfile.TemporaryDirectory() as folder:
                fill(folder, args.filled)
                rows[kind] = run(name, args.batch, args.prompt, args.new, folder, jax_cap=jax_cap)
                rows[kind]["entries"] -= args.filled
        for kind, r in rows.items():
            print(f"{name:<7}{kind:>6}{r['first']:>9.2f}{r['first_cpu']:>9.2f}{r['second']:>10.2f}{r['entries']:>9}{r['hits']:>6}"
                  f"{r['misses']:>8}")
        ratio = rows["warm"]["first"] / rows["cold"]["first"]
        cpu = rows["warm"]["first_cpu"] / rows["cold"]["first_cpu"]
        print(f"{name}: warm first call = {ratio:.0%} of the cold one ({rows['warm']['first']:.2f} s vs "
              f"{rows['cold']['first']:.2f} s; without a cache {rows['off']['first']:.2f} s); in CPU time {cpu:.0%}")
        if args.filled:
            print(f"{name}: cold first call in a folder of {args.filled} other entries: {rows['full']['first']:.2f} s "
                  f"(pruned at start) vs {rows['full-jax']['first']:.2f} s with JAX's cap "
                  f"({rows['full-jax']['first'] / rows['full']['first']:.2f}x); empty folder {rows['cold']['first']:.2f} s")


if __name__ == "__main__":
    main()
