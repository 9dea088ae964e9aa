"""Time the quantized matmul against the float one and read the compiled program: does the dequantization fuse?

    python scripts/bench_quant_matmul.py                        # bf16 on a GPU, fp32 elsewhere; M in 1, 8, 64
    python scripts/bench_quant_matmul.py --k 4096 --n 14336     # another weight shape
    python scripts/bench_quant_matmul.py --bits 8 4             # int8 per-channel and int4 (groups of 128) rows
    python scripts/bench_quant_matmul.py --tune --bits 8 4      # the Pallas GPU kernel's candidate tiles
    python scripts/bench_quant_matmul.py --smoke                # tiny shapes (tests the script)

For `x [M, K] @ W [K, N]`, over --layers different weights in one jitted program (a decode step's pattern: on a
GPU the weights then stream from memory instead of the L2 cache and launch overhead is shared), it times (median of
--repeats after a warm-up, each ended by block_until_ready) the float product in the activation dtype and
`jaxformers.core.quant.matmul` with int8 per-channel codes in each compute mode ("weight_only": dequantize then the
float dot; "int8": dynamic int8 activations, int8 x int8 -> int32) and a candidate formulation, "scale_after"
(`(x @ codes.astype(dtype)) * scale`, valid for per-channel scales), in one run; with `--bits 4` the same for int4
codes in groups of --group-size rows. On a GPU (or with --pallas, interpreted) it also times compute "pallas": the
Pallas kernel `jaxformers.kernels.quant_matmul_gpu`, which dequantizes tiles in registers. On a GPU,
"weight_only" of per-channel int8 codes already takes the "scale_after" form (`core.quant.SCALE_AFTER_PLATFORMS`).
It prints ms, the weight bytes each product must read over that time (GB/s), the speed-up over the float product,
and, from the optimised HLO (`jax.jit(f).lower(...).compile().as_text()`), whether the instruction that performs the
product reads the int8 codes itself ("int codes": the dequantization, if any, happens inside the product's kernel)
or a float weight some earlier instruction wrote to memory ("float weight"), with that instruction's kind ("?": no
product instruction found, e.g. a one-row product XLA rewrote into a reduction).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import time

GEMM_TARGETS = ("gemm", "matmul", "cublas", "onednn", "ynn", "xnn", "dot")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _computations(hlo: str) -> dict[str, list[str]]:
    """HLO module text -> {computation name: its instruction lines}."""
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None:
            comps[name].append(line.strip())
    return comps


def product_reads(hlo: str) -> list[tuple[str, bool]]:
    """For each instruction outside fused computations that performs a matrix product (a `dot`, a fusion whose body
    has one, or a GEMM custom call): (its kind, whether an operand is an 8- or 4-bit integer array)."""
    comps = _computations(hlo)
    called = {m for lines in comps.values() for line in lines for m in re.findall(r"calls=%?([\w.\-]+)", line)}
    types = {}  # instruction name -> element type ("s8", "bf16", ...); operands are printed by name only
    for lines in comps.values():
        for line in lines:
            defined = re.match(r"(?:ROOT )?%?([\w.\-]+) = \(?(\w+)\[", line)
            if defined:
                types[defined.group(1)] = defined.group(2)
    found = []
    for name, lines in comps.items():
        if name in called:
            continue
        for line in lines:
            op = re.search(r"=\s*\S+\s+([\w\-]+)\((.*?)\)(?:,|$)", line)
            if not op:
                continue
            kind, operands = op.group(1), op.group(2)
            callee = re.search(r"calls=%?([\w.\-]+)", line)
            body = comps.get(callee.group(1), []) if callee else []
            is_product = (
                kind == "dot"
                or (kind == "fusion" and any(re.search(r"\bdot\(", b) for b in body))
                or (kind == "custom-call" and any(t in line.lower() for t in GEMM_TARGETS))
            )
            if is_product:
                fusion_kind = re.search(r"kind=(\w+)", line)
                label = kind + (f" {fusion_kind.group(1)}" if fusion_kind else "")
                target = re.search(r'custom_call_target="([^"]+)"', line)
                label += f" {target.group(1)}" if target else ""
                kinds = [types.get(o, "") for o in re.findall(r"%([\w.\-]+)", operands)]
                kinds += re.findall(r"\b(\w+)\[", operands)  # operands printed with their types
                found.append((label, any(k in ("s8", "u8", "s4", "u4") for k in kinds)))
    return found


TUNE_CANDIDATES = (  # (block_n, block_k, num_splits, num_warps, num_stages) tried by --tune
    (128, 128, None, 4, 3), (64, 128, None, 4, 3), (256, 128, None, 4, 3), (128, 256, None, 4, 3),
    (128, 64, None, 4, 3), (64, 256, None, 4, 4), (128, 128, None, 8, 3), (128, 128, None, 4, 2),
    (128, 128, None, 4, 4), (64, 64, None, 4, 4), (128, 128, 1, 4, 3), (32, 128, None, 4, 3),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=5632)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--bits", type=int, nargs="+", default=[8], choices=[8, 4],
                    help="code widths (4: int4 in groups of --group-size rows)")  # fmt: skip
    ap.add_argument("--group-size", type=int, default=128, help="input rows per scale of the 4-bit codes")
    ap.add_argument("--int8-group-size", type=int, default=None,
                    help="int8 codes in groups of this many rows (GGUF's Q8_0: 32) instead of per-channel scales")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on GPU/TPU")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--layers", type=int, default=None,
                    help="different weights per program (default 16 on a GPU, so they stream from memory, else 1)")
    ap.add_argument("--pallas", action="store_true",
                    help="also time the Pallas kernel off GPUs (interpreted there: slow; on a GPU it always runs)")
    ap.add_argument("--tune", action="store_true",
                    help="time the Pallas kernel's candidate tiles (TUNE_CANDIDATES) instead, and print the best")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats")
    args = ap.parse_args()
    if args.smoke:
        args.k, args.n, args.rows, args.repeats, args.group_size = 64, 96, [1, 4], 2, 32

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxformers.core import quant
    from jaxformers.kernels import quant_matmul_gpu

    platform = jax.default_backend()
    dtype = jnp.dtype(args.dtype or ("float32" if platform == "cpu" else "bfloat16"))
    layers = args.layers or (16 if platform == "gpu" else 1)
    with_pallas = platform == "gpu" or args.pallas
    rng = np.random.RandomState(0)
    ws = [jnp.asarray(rng.standard_normal((args.k, args.n)) * 0.02, jnp.float32) for _ in range(layers)]
    wf = [w.astype(dtype) for w in ws]
    specs = {bits: quant.QuantSpec(bits, args.int8_group_size if bits == 8 else args.group_size) for bits in args.bits}
    quantized = {bits: [quant.quantize_kernel(w, spec, lead=0, n_in=1) for w in ws] for bits, spec in specs.items()}
    del ws
    print(f"# {jax.devices()[0].device_kind} ({platform}), jax {jax.__version__}: x [M, {args.k}] @ W [{args.k}, "
          f"{args.n}] for {layers} different weights in one program (ms per product), activations {dtype.name}; "
          f"int8: {'per-channel codes' if args.int8_group_size is None else f'groups of {args.int8_group_size} rows'}, "
          f"int4: groups of {args.group_size} rows; median of {args.repeats}")  # fmt: skip

    def over_layers(product):  # one program applying the product to each layer's weight (like a decode step)
        return jax.jit(lambda x, *ws: sum(product(x, *w) for w in zip(*ws)))

    def scale_after(x, c, s):  # a candidate formulation: the float dot over the converted codes, then the scales
        return (x @ c.astype(dtype)) * s.astype(dtype)

    def timed(fn, fargs):
        jax.block_until_ready(fn(*fargs))
        return median_time(lambda: jax.block_until_ready(fn(*fargs)), args.repeats) / layers

    if args.tune:
        print(f"{'M':>4} {'bits':>4} {'block_n':>7} {'block_k':>7} {'splits':>6} {'warps':>5} {'stages':>6} "
              f"{'ms':>9} {'GB/s':>7}")  # fmt: skip
        for m in args.rows:
            x = jnp.asarray(rng.standard_normal((m, args.k)), dtype)
            for bits, spec in specs.items():
                codes, scales = zip(*quantized[bits])
                nbytes = sum(c.nbytes + s.nbytes for c, s in quantized[bits]) / layers
                best = None
                for bn, bk, splits, warps, stages in TUNE_CANDIDATES:
                    bs = quant_matmul_gpu.BlockSizes(bn, bk, num_splits=splits, num_warps=warps, num_stages=stages)
                    fn = over_layers(lambda x, c, s, bs=bs, bits=bits: quant_matmul_gpu.quant_matmul(
                        x, c, s, bits=bits, interpret=platform != "gpu", block_sizes=bs).astype(dtype))
                    try:
                        t = timed(fn, (x, codes, scales))
                    except Exception as e:  # a tile the compiler rejects: say so and go on
                        print(f"{m:>4} {bits:>4} {bn:>7} {bk:>7} {splits!s:>6} {warps:>5} {stages:>6}  failed: "
                              f"{type(e).__name__}: {str(e)[:120]}", flush=True)  # fmt: skip
                        continue
                    best = min(best or (t, bs), (t, bs), key=lambda r: r[0])
                    print(f"{m:>4} {bits:>4} {bn:>7} {bk:>7} {splits!s:>6} {warps:>5} {stages:>6} {t * 1e3:9.4f} "
                          f"{nbytes / t / 1e9:7.1f}", flush=True)  # fmt: skip
                if best:
                    print(f"# best M={m} bits={bits}: {best[1]} {best[0] * 1e3:.4f} ms", flush=True)
        return

    print(f"{'M':>4} {'impl':>14} {'ms':>9} {'GB/s':>7} {'vs float':>9}  product reads")
    for m in args.rows:
        x = jnp.asarray(rng.standard_normal((m, args.k)), dtype)
        runs = {dtype.name: (over_layers(lambda x, w: x @ w), (x, wf), sum(w.nbytes for w in wf))}
        for bits, spec in specs.items():
            codes, scales = zip(*quantized[bits])
            q_bytes = sum(c.nbytes + s.nbytes for c, s in quantized[bits])
            tag = "" if bits == 8 else "int4 "
            modes = ("weight_only", "int8") + (("pallas",) if with_pallas else ())
            for mode in modes:
                mode_spec = dataclasses.replace(spec, compute=mode)
                fn = over_layers(lambda x, c, s, mode_spec=mode_spec: quant.matmul(x, c, s, None, mode_spec, dtype))
                runs[tag + mode] = (fn, (x, codes, scales), q_bytes)
            if bits == 8 and args.int8_group_size is None:
                runs["scale_after"] = (over_layers(scale_after), (x, codes, scales), q_bytes)
        base = None
        for label, (fn, fargs, nbytes) in runs.items():
            reads = product_reads(fn.lower(*fargs).compile().as_text())
            t = timed(fn, fargs)
            base = base or t
            kinds = sorted({f"{kind}: {'int codes' if ints else 'float weight'}" for kind, ints in reads})
            print(f"{m:>4} {label:>14} {t * 1e3:9.4f} {nbytes / layers / t / 1e9:7.1f} {base / t:8.2f}x  "
                  f"{', '.join(kinds) or '?'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
