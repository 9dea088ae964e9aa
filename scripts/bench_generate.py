"""Benchmark greedy KV-cache generation: jaxformers `jf.generate` against transformers/PyTorch `generate()`, one run.

    python scripts/bench_generate.py                      # GPT-2-small and a ~125M Llama, batch 1 and 8
    python scripts/bench_generate.py --models llama --batches 1 --repeats 5
    python scripts/bench_generate.py --arch t5 bart     # encoder-decoders: t5-small / bart-base sized, 64-token source,
                                                        # 64 new tokens (the issue's settings; --prompt/--new override)
    python scripts/bench_generate.py --quant int8 int4  # also jaxformers with quantized weights, same run
    python scripts/bench_generate.py --quant int8 --quant-head   # ... the LM head / tied embedding quantized too
    python scripts/bench_generate.py --dtype bfloat16 --bandwidth --models gpt2 llama llama-1b   # on a GPU: bf16,
                                                        # PyTorch on CUDA, and the memory bandwidth each step reaches

Settings (both sides identical): fp32 (`--dtype bfloat16`: bf16 weights and compute on both sides), random weights,
a 32-token prompt, 128 new tokens, greedy, KV cache, and an EOS id that the run checks never occurred, so every run
makes exactly 128 tokens. Prints tokens/s, the per-step decode time ((t(128 tokens) - t(1 token)) / 127), the ratio
jaxformers/PyTorch (tokens/s), jaxformers' first-call time (tracing + compilation + one run) with the compile overhead
(first call minus a warm call) in brackets, PyTorch's first call on the same batch shape in its row, the host CPU
(model and vector extensions), and how many generated tokens agree between the two. `--quant` adds rows
for the same model loaded with `quantization="int8"` / `"int4"` (`jaxformers.core.quant`, default compute: dynamic
int8 activations on CPU, weight-only elsewhere), with their speed against jaxformers' unquantized model ("vs fp32" /
"vs bf16") and PyTorch ("ratio"), and the tokens agreeing with the unquantized model. `--scan-layout` also times the
decode loop over scanned stacked weights, the layout the per-layer default is chosen against. PyTorch runs on CUDA
when jax's default backend is a GPU and torch sees one (`--torch-device` overrides).
`--bandwidth` adds, per jaxformers row, the bytes one decode step must read (every weight but an untied input
embedding table, plus the whole KV cache jaxformers allocates, which its attention reads every step) over the
per-step time, and that as a fraction of the device's copy bandwidth measured in the same run (a jitted `x + 1`
over a large array, counting bytes read and written).

    python scripts/bench_generate.py --memory             # peak memory while generating, each side in its own process
    python scripts/bench_generate.py --cold-vs-cached     # first generate call: empty vs warm compile cache

`--memory` (decoder-only models) runs each framework in a fresh process: build the model from the saved checkpoint,
then two identical `generate` calls, and reads the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs before each phase, so the phases' peaks are separate). It prints, in MB: the weights and the
KV cache (at the length the framework allocates: jaxformers' bucketed cache, PyTorch's prompt + new tokens); the
resident set of the bare runtime (imports done, no model); then the peaks of the first call (compilation included)
and of the second, each as the growth over that bare runtime, and the target the issue sets (weights + KV cache +
15%). `--cold-vs-cached` runs scripts/bench_compile_cache.py's measurement (a fresh process with an empty
compilation cache, then another with the cache it wrote) and prints the ratio of the two first calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                                                   n_positions=1024)),  # fmt: skip
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12,
                                                      num_attention_heads=12, num_key_value_heads=4,
                                                      intermediate_size=2048, max_position_embeddings=2048,
                                                      tie_word_embeddings=False)),  # fmt: skip
    # TinyLlama-1.1B's shape (1.1B parameters): the ~1B model for accelerators
    "llama-1b": ("LlamaConfig", "LlamaForCausalLM", dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=22,
                                                         num_attention_heads=32, num_key_value_heads=4,
                                                         intermediate_size=5632, max_position_embeddings=2048,
                                                         tie_word_embeddings=False)),  # fmt: skip
    # encoder-decoders: the prompt is the encoder's source, the output the decoder's tokens (start token first)
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048,
                                                          num_layers=6, num_heads=8, feed_forward_proj="relu",
                                                          decoder_start_token_id=0)),  # fmt: skip  (t5-small, 60M)
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(vocab_size=50265, d_model=768, encoder_layers=6,
                                                                decoder_layers=6, encoder_attention_heads=12,
                                                                decoder_attention_heads=12, encoder_ffn_dim=3072,
                                                                decoder_ffn_dim=3072, max_position_embeddings=1024,
                                                                decoder_start_token_id=2, forced_bos_token_id=None,
                                                                forced_eos_token_id=None)),  # fmt: skip  (bart-base)
}
SEQ2SEQ = ("t5", "bart")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a jitted `x + 1` over a large float32 array on jax's default device (read + write)."""
    import jax
    import jax.numpy as jnp

    n = (1 << 29) if jax.default_backend() == "gpu" else (1 << 26)  # 2 GiB on a GPU, 256 MiB elsewhere
    x = jnp.zeros((n,), jnp.float32) + 0.5
    add = jax.jit(lambda x: x + 1)
    add(x).block_until_ready()
    seconds = median_time(lambda: add(x).block_until_ready(), 20)
    return 2 * n * 4 / seconds


def step_bytes(model, batch: int, cache_len: int) -> tuple[int, int]:
    """What one decode step of `model` must read: (weight bytes, KV cache bytes at `cache_len` slots).

    Every parameter counts except an untied token-embedding table (a step looks up `batch` rows of it)."""
    import jax

    import jaxformers as jf

    params = jax.tree_util.tree_leaves_with_path(jf.pure(model)[1])
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    weights = 0
    for path, leaf in params:
        name = jax.tree_util.keystr(path)
        if not tied and ("embed_tokens" in name or "wte" in name):
            continue
        weights += leaf.size * leaf.dtype.itemsize
    kv = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(
        lambda: model.init_cache(batch, cache_len))))  # fmt: skip
    return weights, kv


def _rss_mb(field: str) -> float:
    """This process's VmRSS / VmHWM (resident set now / its high-water mark) in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    """Make VmHWM start again from the current resident set (Linux: "5" to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(framework: str, name: str, directory: str, batch: int, prompt: int, new: int) -> dict:
    """Runs in a fresh process: the resident-set figures of one framework generating from the saved `directory`."""
    import numpy as np

    out = {}
    if framework == "pytorch":
        import torch
        import transformers

        torch.ones(1).sum()
        out["runtime"] = _rss_mb("VmRSS")
        model = getattr(transformers, MODELS[name][1]).from_pretrained(directory).eval()
        cfg = model.config
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        kv = 2 * cfg.num_hidden_layers * batch * (prompt + new) * heads * head_dim * 4
        ids = torch.tensor(np.random.RandomState(batch).randint(1, cfg.vocab_size - 1, (batch, prompt))).long()
        eos = cfg.vocab_size - 1

        def generate():
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                               min_new_tokens=0, do_sample=False, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    else:
        import jax
        import jax.numpy as jnp

        import jaxformers as jf
        from jaxformers.generation import MIN_PROMPT_BUCKET, new_tokens_bucket

        jnp.ones(1).block_until_ready()
        out["runtime"] = _rss_mb("VmRSS")
        model = jf.AutoModelForCausalLM.from_pretrained(directory)
        weights = sum(x.nbytes for x in jax.tree.leaves(jf.pure(model)[1]))
        cache_len = max(MIN_PROMPT_BUCKET, 1 << (prompt - 1).bit_length()) + new_tokens_bucket(new)
        kv = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(
            lambda: model.init_cache(batch, cache_len))))  # fmt: skip
        vocab = model.config.vocab_size
        ids = np.random.RandomState(batch).randint(1, vocab - 1, (batch, prompt)).astype(np.int32)

        def generate():
            jf.generate(model, ids, max_new_tokens=new, do_sample=False, eos_token_id=vocab - 1, pad_token_id=vocab - 1)

    out["weights"], out["kv"] = weights / 2**20, kv / 2**20
    out["loaded"] = _rss_mb("VmRSS")
    for phase in ("first", "second"):
        _reset_peak()
        generate()
        out[phase] = _rss_mb("VmHWM")
    return out


def memory_report(models: list[str], batches: list[int], prompt: int, new: int) -> list[dict]:
    """Peak resident memory of generation, jaxformers and PyTorch, each in fresh processes (see the docstring)."""
    import torch
    import transformers

    print(f"\npeak resident memory while generating (MB): prompt {prompt}, {new} new tokens, greedy, fp32; growth over "
          "the bare runtime")
    print(f"{'model':<9}{'batch':>6}{'impl':>12}{'weights':>9}{'KV':>7}{'runtime':>9}{'loaded':>8}{'1st call':>10}"
          f"{'2nd call':>10}{'target':>8}")  # fmt: skip
    rows = []
    for name in models:
        cfg_cls, model_cls, kw = MODELS[name]
        eos = kw["vocab_size"] - 1
        torch.manual_seed(0)
        cfg = getattr(transformers, cfg_cls)(**kw, eos_token_id=eos, bos_token_id=0, pad_token_id=eos)
        with tempfile.TemporaryDirectory() as tmp:
            getattr(transformers, model_cls)(cfg).save_pretrained(tmp)
            for b in batches:
                for framework in ("jaxformers", "pytorch"):
                    cmd = [sys.executable, __file__, "--memory-child", framework, name, tmp, str(b), str(prompt),
                           str(new)]  # fmt: skip
                    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
                    res = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                                    check=True).stdout.strip().splitlines()[-1])  # fmt: skip
                    base = res["runtime"]
                    target = 1.15 * (res["weights"] + res["kv"])
                    print(f"{name:<9}{b:>6}{framework:>12}{res['weights']:>9.0f}{res['kv']:>7.0f}{base:>9.0f}"
                          f"{res['loaded'] - base:>8.0f}{res['first'] - base:>10.0f}{res['second'] - base:>10.0f}"
                          f"{target:>8.0f}")  # fmt: skip
                    rows.append({"model": name, "batch": b, "impl": framework, **res})
    return rows


def cold_vs_cached(models: list[str], batch: int, prompt: int, new: int) -> list[dict]:
    """The first `generate` call in a fresh process, with an empty compilation cache and then with the one it wrote:
    scripts/bench_compile_cache.py's measurement, reused."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_compile_cache

    print(f"\nfirst generate call in a fresh process: batch {batch}, prompt {prompt}, {new} new tokens")
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as folder:
            cold = bench_compile_cache.run(name, batch, prompt, new, folder)
            warm = bench_compile_cache.run(name, batch, prompt, new, folder)
        ratio = warm["first"] / cold["first"]
        print(f"{name}: cold {cold['first']:.2f} s (cpu {cold['first_cpu']:.2f} s), cached {warm['first']:.2f} s "
              f"(cpu {warm['first_cpu']:.2f} s, {warm['hits']} cache hits): {ratio:.0%} of the cold call "
              f"(target <= 40%)")  # fmt: skip
        rows.append({"model": name, "cold": cold, "warm": warm, "ratio": ratio})
    return rows


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        framework, name, directory, *sizes = sys.argv[2:]
        print(json.dumps(memory_child(framework, name, directory, *map(int, sizes))))
        return None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", "--arch", nargs="+", default=["gpt2", "llama"], choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--prompt", type=int, default=None, help="prompt (source) tokens: 32, or 64 for encoder-decoders")
    ap.add_argument("--new", type=int, default=None, help="new tokens: 128, or 64 for encoder-decoders")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="time jaxformers only")
    ap.add_argument("--scan-layout", action="store_true",
                    help="also time the decode loop over scanned, stacked [L, ...] weights (unroll_layers=False)")
    ap.add_argument("--quant", nargs="+", default=[], choices=["int8", "int4"],
                    help="also time jaxformers with weights quantized to these formats")
    ap.add_argument("--quant-compute", nargs="+", default=["auto"], choices=["auto", "weight_only", "int8", "pallas"],
                    help="with --quant: how quantized products run (jaxformers.core.quant; auto: int8 on CPU, the "
                         "Pallas kernel for decoding on GPUs); several: a row each")  # fmt: skip
    ap.add_argument("--attn-impl", default="auto", choices=["auto", "xla", "cudnn", "pallas"],
                    help="jaxformers' attention implementation (Options.attn_impl), for every jaxformers row")
    ap.add_argument("--quant-head", action="store_true",
                    help="with --quant: quantize the LM head (untied) or the tied token embedding too")
    ap.add_argument("--memory", action="store_true",
                    help="also measure peak resident memory while generating, each framework in fresh processes")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and compute on both sides (default float32)")
    ap.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where PyTorch runs: auto = CUDA when jax's default backend is a GPU and torch sees one")
    ap.add_argument("--bandwidth", action="store_true",
                    help="also print the bytes each decode step reads and the bandwidth reached (see above)")
    ap.add_argument("--cold-vs-cached", action="store_true",
                    help="only measure the first generate call with an empty vs a warm compilation cache")
    args = ap.parse_args()
    if args.cold_vs_cached:
        return cold_vs_cached([m for m in args.models if m not in SEQ2SEQ], args.batches[0], args.prompt or 32,
                              args.new or 128)  # fmt: skip

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import numpy as np
    import torch
    import transformers

    import jaxformers as jf
    from jaxformers.core.options import Options
    from jaxformers.core.quant import QuantizationConfig

    from jaxformers.generation import MIN_PROMPT_BUCKET, new_tokens_bucket

    device = args.torch_device
    if device == "auto":
        device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    from jaxformers.core.xla_cpu import cpu_description

    print(f"cpu: {cpu_description()}; jax {jax.__version__} on {jax.devices()}, torch {torch.__version__} on {device} "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    seq2seq_only = all(m in SEQ2SEQ for m in args.models)
    args.prompt = args.prompt or (64 if seq2seq_only else 32)
    args.new = args.new or (64 if seq2seq_only else 128)
    dname = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    print(f"prompt {args.prompt} tokens, {args.new} new tokens, greedy, {dname}, KV cache, attention {args.attn_impl}, "
          f"median of {args.repeats}")
    peak = None
    if args.bandwidth:
        peak = copy_bandwidth()
        print(f"copy bandwidth of {jax.devices()[0].device_kind} (jitted x + 1, read + write): {peak / 1e9:.0f} GB/s")
    print()
    header = f"{'model':<9}{'batch':>6}{'impl':>12}{'tok/s':>9}{'ms/step':>9}{'first call s (compile)':>24}{'ratio':>8}"
    print(header)
    rows = []
    for name in args.models:
        cfg_cls, model_cls, kw = MODELS[name]
        vocab = kw["vocab_size"]
        eos = vocab - 1
        cfg = getattr(transformers, cfg_cls)(**kw, eos_token_id=eos, bos_token_id=0, pad_token_id=eos)
        torch.manual_seed(0)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)  # initialise in the benchmark's dtype, on the device it runs on
        try:
            with torch.device(device):
                ref = getattr(transformers, model_cls)(cfg).eval()
        finally:
            torch.set_default_dtype(default_dtype)
        seq2seq = name in SEQ2SEQ
        auto = jf.AutoModelForSeq2SeqLM if seq2seq else jf.AutoModelForCausalLM
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(tmp)
            opts = Options(attn_impl=args.attn_impl)
            model = auto.from_pretrained(tmp, torch_dtype=args.dtype, options=opts)
            quantized = {}
            for fmt in args.quant:
                for compute in args.quant_compute:
                    head = dict(modules_to_not_convert=(), quantize_embeddings=True) if args.quant_head else {}
                    config = QuantizationConfig(bits=8 if fmt == "int8" else 4, compute=compute, **head)
                    label = fmt if len(args.quant_compute) == 1 else f"{fmt} {compute}"
                    quantized[label] = auto.from_pretrained(tmp, quantization=config, torch_dtype=args.dtype,
                                                            options=opts)  # fmt: skip
        # where the new tokens start in both outputs: after the prompt (decoder-only) or the decoder start token
        first_new = 1 if seq2seq else args.prompt
        for b in args.batches:
            lo = 3 if seq2seq else 1  # encoder-decoders: keep clear of the special ids 0-2 in the source
            ids = np.random.RandomState(b).randint(lo, vocab - 1, (b, args.prompt)).astype(np.int32)
            gen = dict(do_sample=False, eos_token_id=eos, pad_token_id=eos)

            def ours(n, unroll=True):
                return jf.generate(model, ids, max_new_tokens=n, unroll_layers=unroll, **gen)

            t0 = time.perf_counter()
            out = ours(args.new)
            first = time.perf_counter() - t0
            ours(1)
            assert out.shape == (b, first_new + args.new) and not (out[:, first_new:] == eos).any(), (
                "the EOS id occurred: pick another"
            )
            t_all, t_one = median_time(lambda: ours(args.new), args.repeats), median_time(lambda: ours(1), args.repeats)
            res = {"model": name, "batch": b, "jf_tps": b * args.new / t_all,
                   "jf_step": (t_all - t_one) / (args.new - 1)}  # fmt: skip
            res["first"], res["compile"] = first, first - t_all
            line = f"{name:<9}{b:>6}{'jaxformers':>12}{res['jf_tps']:>9.1f}{res['jf_step'] * 1e3:>9.2f}{first:>8.2f}"
            line += f" ({res['compile']:.1f})"
            bw_line = ""
            if args.bandwidth and not seq2seq:
                cache_len = max(MIN_PROMPT_BUCKET, 1 << (args.prompt - 1).bit_length()) + new_tokens_bucket(args.new)
                w_bytes, kv_bytes = step_bytes(model, b, cache_len)
                res["step_bytes"], res["step_bw"] = w_bytes + kv_bytes, (w_bytes + kv_bytes) / res["jf_step"]
                bw_line = (f"{'':<9}{'':>6}{'':>12}   reads {w_bytes / 1e6:.0f} MB weights + {kv_bytes / 1e6:.0f} MB "
                           f"KV per step: {res['step_bw'] / 1e9:.0f} GB/s = {res['step_bw'] / peak:.0%} of copy "
                           "bandwidth")  # fmt: skip
            if args.scan_layout:
                ours(args.new, unroll=False)
                ours(1, unroll=False)
                s_all = median_time(lambda: ours(args.new, unroll=False), args.repeats)
                s_one = median_time(lambda: ours(1, unroll=False), args.repeats)
                res["scan_tps"], res["scan_step"] = b * args.new / s_all, (s_all - s_one) / (args.new - 1)
            if not args.no_torch:
                tid = torch.tensor(ids).long().to(device)

                def sync():
                    if device == "cuda":
                        torch.cuda.synchronize()

                def theirs(n):
                    with torch.inference_mode():
                        out = ref.generate(input_ids=tid, attention_mask=torch.ones_like(tid), max_new_tokens=n,
                                           min_new_tokens=0, **gen)  # fmt: skip
                    sync()
                    return out

                t0 = time.perf_counter()
                ref_out = theirs(args.new).cpu().numpy()
                res["pt_first"] = time.perf_counter() - t0  # its first call on this batch shape, as jaxformers'
                theirs(1)
                p_all, p_one = median_time(lambda: theirs(args.new), args.repeats), median_time(
                    lambda: theirs(1), args.repeats
                )
                res["pt_tps"], res["pt_step"] = b * args.new / p_all, (p_all - p_one) / (args.new - 1)
                res["agree"] = float((ref_out[:, first_new:] == out[:, first_new:]).mean())
                line += f"{res['jf_tps'] / res['pt_tps']:>8.2f}"
                print(line)
                if bw_line:
                    print(bw_line)
                if args.scan_layout:
                    print(f"{'':<9}{'':>6}{'jf (scan)':>12}{res['scan_tps']:>9.1f}{res['scan_step'] * 1e3:>9.2f}")
                print(f"{'':<9}{'':>6}{'pytorch':>12}{res['pt_tps']:>9.1f}{res['pt_step'] * 1e3:>9.2f}"
                      f"{res['pt_first']:>8.2f}{'':>6}   tokens agreeing with pytorch: {res['agree']:.1%}")  # fmt: skip
            else:
                print(line)
                if bw_line:
                    print(bw_line)
            for fmt, qmodel in quantized.items():
                def quant_run(n, qmodel=qmodel):
                    return jf.generate(qmodel, ids, max_new_tokens=n, **gen)

                t0 = time.perf_counter()
                q_out = quant_run(args.new)
                q_first = time.perf_counter() - t0
                quant_run(1)
                if (q_out[:, first_new:] == eos).any():
                    print(f"  ({fmt}: the EOS id occurred, so fewer tokens were made: its timing is not comparable)")
                q_all = median_time(lambda: quant_run(args.new), args.repeats)
                q_one = median_time(lambda: quant_run(1), args.repeats)
                tps, step = b * args.new / q_all, (q_all - q_one) / (args.new - 1)
                res[f"{fmt}_tps"], res[f"{fmt}_step"] = tps, step
                agree = float((q_out[:, first_new:] == out[:, first_new:]).mean())
                q_line = f"{'':<9}{'':>6}{'jf ' + fmt:>12}{tps:>9.1f}{step * 1e3:>9.2f}{q_first:>8.2f} "
                q_line += f"({q_first - q_all:.1f})"
                if "pt_tps" in res:
                    q_line += f"{tps / res['pt_tps']:>8.2f}"
                print(f"{q_line}   vs {dname}: {tps / res['jf_tps']:.2f}x tok/s, "
                      f"{res['jf_step'] / step:.2f}x per step; tokens agreeing with {dname}: {agree:.1%}")  # fmt: skip
                if args.bandwidth and not seq2seq:
                    w_bytes, kv_bytes = step_bytes(qmodel, b, cache_len)
                    bw = (w_bytes + kv_bytes) / step
                    print(f"{'':<9}{'':>6}{'':>12}   reads {w_bytes / 1e6:.0f} MB weights + {kv_bytes / 1e6:.0f} MB "
                          f"KV per step: {bw / 1e9:.0f} GB/s = {bw / peak:.0%} of copy bandwidth")  # fmt: skip
            rows.append(res)
    if args.memory:
        decoders = [m for m in args.models if m not in SEQ2SEQ]
        rows += memory_report(decoders, args.batches, args.prompt, args.new)
    return rows


if __name__ == "__main__":
    main()
