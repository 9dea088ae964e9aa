"""Time a base-sized encoder forward in jaxformers and in transformers/PyTorch, in the same run.

    python scripts/bench_forward.py               # BERT-base: 12 layers, hidden 768, batch 8 x 128, fp32
    python scripts/bench_forward.py --arch roberta        # also deberta-v2, modernbert (their base shapes)
    python scripts/bench_forward.py --batch 8 --seq 128 --repeats 20
    python scripts/bench_forward.py --dtype bfloat16      # both sides in bfloat16 (AVX512-BF16 / AMX hosts)
    python scripts/bench_forward.py --xla-defaults        # jaxformers without its per-program XLA:CPU choice
    python scripts/bench_forward.py --layers 1 --hidden 32 --batch 1 --seq 8 --repeats 5   # smoke run (tests)

Prints per-forward time (median), throughput, the ratio PyTorch/jaxformers (>1 means jaxformers is faster), the
achieved GFLOP/s of each, and jaxformers' compile time separately. jaxformers' forward is jitted with the compiler
options it uses for its own encoder programs (`jaxformers.core.xla_cpu.gemm_options(batch x seq)`: oneDNN's GEMM for
large batches on AVX-512 CPUs; the line "xla:cpu" says which); `--xla-defaults` compiles it with XLA's defaults.
`--dtype bfloat16`: PyTorch's model converted with `.to(torch.bfloat16)`, jaxformers loaded with
`Options(dtype="bfloat16", param_dtype="bfloat16")` (weights and activations in bf16, norms and softmax in fp32).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

# HF config class, model class and the base-sized config fields of each architecture (random weights)
ARCHS = {
    "bert": ("BertConfig", "BertModel", {}),
    "roberta": ("RobertaConfig", "RobertaModel", {"vocab_size": 50265, "max_position_embeddings": 514,
                                                  "pad_token_id": 1, "type_vocab_size": 1}),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", {"vocab_size": 128100, "relative_attention": True,
                                                         "position_buckets": 256, "norm_rel_ebd": "layer_norm",
                                                         "share_att_key": True, "pos_att_type": ["p2c", "c2p"],
                                                         "position_biased_input": False, "max_relative_positions": -1,
                                                         "type_vocab_size": 0, "layer_norm_eps": 1e-7}),
    "modernbert": ("ModernBertConfig", "ModernBertModel", {"vocab_size": 50368, "intermediate_size": 1152,
                                                           "num_hidden_layers": 22, "global_attn_every_n_layers": 3,
                                                           "local_attention": 128, "hidden_activation": "gelu"}),
}  # fmt: skip


def flops(cfg, b: int, t: int) -> float:
    """Matmul FLOPs of the main path (GeGLU MLPs count their doubled input projection; DeBERTa's relative terms and
    ModernBERT's windows are not counted, so their GFLOP/s are comparable between the two frameworks only)."""
    d, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    mlp = 3 * d * f if cfg.get("_glu") else 2 * d * f
    per_layer = 2 * b * t * (4 * d * d + mlp) + 2 * 2 * b * t * t * d
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
    ap.add_argument("--arch", choices=sorted(ARCHS), default="bert")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the architecture's base size)")
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (intermediate = 4x, ModernBERT 1.5x)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden / 64, at least 1)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both frameworks' dtype")
    ap.add_argument("--xla-defaults", action="store_true", help="compile jaxformers' forward with XLA's defaults")
    args = ap.parse_args()
    heads = args.heads or max(1, args.hidden // 64)
    if args.hidden % heads:
        ap.error(f"--hidden {args.hidden} is not divisible by --heads {heads}")

    import jax
    import numpy as np
    import torch
    import transformers

    import jaxformers as jf
    from jaxformers.core.options import Options
    from jaxformers.core.xla_cpu import gemm_options

    config_name, model_name, base = ARCHS[args.arch]
    cfg = {"hidden_size": args.hidden, "num_attention_heads": heads, "intermediate_size": 4 * args.hidden,
           "num_hidden_layers": 12, **base}  # fmt: skip
    if args.arch == "modernbert":
        cfg["intermediate_size"] = 3 * args.hidden // 2
    if args.layers is not None:
        cfg["num_hidden_layers"] = args.layers
    rng = np.random.RandomState(0)
    vocab = cfg.get("vocab_size", 30522)
    ids = rng.randint(4, vocab, (args.batch, args.seq)).astype(np.int32)  # above the special ids (pad = 1 in RoBERTa)
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf_cfg = getattr(transformers, config_name)(**cfg)
        if args.arch == "modernbert":
            hf_cfg._attn_implementation = "sdpa"  # its fastest CPU path (flash attention needs a GPU)
        ref = getattr(transformers, model_name)(hf_cfg).eval()
        ref.save_pretrained(tmp)
        bf16 = args.dtype == "bfloat16"
        model = jf.AutoModel.from_pretrained(tmp, options=Options(dtype="bfloat16", param_dtype="bfloat16")
                                             if bf16 else Options())  # fmt: skip
        if bf16:
            ref = ref.to(torch.bfloat16)

    apply, params = jf.pure(model)
    compiler_options = {} if args.xla_defaults else gemm_options(args.batch * args.seq)
    fwd = jax.jit(lambda p, i, m: apply(p, i, m).last_hidden_state, compiler_options=compiler_options or None)
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
        want = ref(input_ids=tid, attention_mask=tmask).last_hidden_state.float().numpy()
    diff = np.abs(np.asarray(fwd(params, ids, mask), np.float32) - want).max()
    gf = flops({**cfg, "_glu": args.arch == "modernbert"}, args.batch, args.seq) / 1e9
    size = "base-sized" if (args.hidden, heads) == (768, 12) else f"hidden {args.hidden}, {heads} heads"
    layers = cfg["num_hidden_layers"]
    print(f"{args.arch} {size} encoder forward, batch {args.batch} x {args.seq}, {args.dtype}, {layers} layers")
    from jaxformers.core.xla_cpu import cpu_description

    print(f"  cpu: {cpu_description()}")
    print(f"  xla:cpu: {'oneDNN GEMM (' + str(compiler_options) + ')' if compiler_options else 'XLA defaults'}")
    print(f"  torch {torch.__version__} threads: {torch.get_num_threads()}, jax {jax.__version__} devices: {jax.devices()}")
    print(f"  {'impl':<14}{'median ms':>12}{'seq/s':>10}{'GFLOP/s':>10}")
    print(f"  {'jaxformers':<14}{a * 1e3:>12.1f}{args.batch / a:>10.1f}{gf / a:>10.1f}")
    print(f"  {'pytorch':<14}{b * 1e3:>12.1f}{args.batch / b:>10.1f}{gf / b:>10.1f}")
    print(f"  ratio (pytorch time / jaxformers time): {b / a:.3f}")
    print(f"  jaxformers compile time: {compile_s:.2f} s (not in the timings above)")
    print(f"  max |diff| vs pytorch: {diff:.2e}")


if __name__ == "__main__":
    main()
