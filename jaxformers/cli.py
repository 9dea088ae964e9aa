"""Command line: `jaxformers convert` between HF layout and Orbax, `jaxformers similarity` for sentence embeddings.

    jaxformers convert path/or/repo-id out_dir --to orbax      # HF (safetensors / GGUF) -> Orbax checkpoint
    jaxformers convert orbax_dir out_dir --to hf               # Orbax -> HF layout that transformers loads
    jaxformers similarity "first sentence" "second sentence" --model path/or/repo-id
"""

from __future__ import annotations

import argparse
import sys


def _convert(args) -> None:
    import jaxformers as jf

    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    model = jf.load(args.source, task=args.task, param_dtype=args.dtype, **kwargs)
    if args.to == "orbax":
        jf.save_checkpoint(model, args.output, overwrite=args.overwrite)
    else:
        model.save_pretrained(args.output)
    print(f"wrote {type(model).__name__} ({args.to}) to {args.output}")


def _similarity(args) -> None:
    from jaxformers.tasks.embeddings import SentenceEmbedder, cosine_similarity

    embed = SentenceEmbedder.from_pretrained(args.model)  # truncates at the checkpoint's max_seq_length
    sim = cosine_similarity(*(embed(args.sentences),) * 2)
    for row in sim:
        print(" ".join(f"{x:7.3f}" for x in row))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="jaxformers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a checkpoint between HF layout and Orbax")
    conv.add_argument("source", help="HF directory, hub repo id, or jaxformers Orbax checkpoint")
    conv.add_argument("output")
    conv.add_argument("--to", choices=("orbax", "hf"), default="orbax")
    conv.add_argument("--task", default=None, help="head to load, e.g. causal-lm (default: the checkpoint's)")
    conv.add_argument("--dtype", default=None, help="parameter dtype, e.g. bfloat16 (default: float32)")
    conv.add_argument("--gguf-file", default=None, help="GGUF file name inside SOURCE (Llama family)")
    conv.add_argument("--overwrite", action="store_true",
                      help="--to orbax: replace OUTPUT even if it is a non-empty directory that is not a checkpoint")
    conv.set_defaults(func=_convert)
    sim = sub.add_parser("similarity", help="cosine similarity of sentence embeddings (mean pooling)")
    sim.add_argument("sentences", nargs="+")
    sim.add_argument("--model", required=True)
    sim.set_defaults(func=_similarity)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
