"""Benchmark: load a generated Llama-style float32 safetensors checkpoint with jaxformers (FSDP over N CPU devices)
and with transformers into PyTorch; report wall time and peak RSS of each, measured in a fresh subprocess.

    python scripts/bench_load.py                  # ~1 GB checkpoint in a temp dir, 8 simulated CPU devices
    python scripts/bench_load.py --size-gb 0.25 --devices 4 --keep /tmp/bench_ckpt

Peak RSS is `ru_maxrss` of the child; "baseline" is its RSS after imports, before loading, so `peak - baseline` is
what the load itself cost. The file is read once beforehand so both loaders start from a warm page cache.
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


def generate(directory: Path, size_gb: float) -> int:
    """Write config.json + model.safetensors of a random Llama with about `size_gb` GB of float32 weights."""
    from safetensors.numpy import save_file

    head_dim = HIDDEN // HEADS
    per_layer = HIDDEN * (HEADS + 2 * KV_HEADS) * head_dim + HEADS * head_dim * HIDDEN + 3 * HIDDEN * INTERMEDIATE
    fixed = 2 * VOCAB * HIDDEN
    layers = max(1, round((size_gb * 1e9 / 4 - fixed) / per_layer))
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "lm_head.weight": w(VOCAB, HIDDEN)}
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": layers, "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
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


def run_child(kind: str, directory: Path, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", kind, "--dir", str(directory), "--devices", str(devices)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{kind} loader failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="approximate checkpoint size (float32)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices for the FSDP mesh")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this directory instead of a temp dir")
    parser.add_argument("--child", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_jax(args.dir, args.devices) if args.child == "jax" else child_torch(args.dir)
        print(json.dumps(result))
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
