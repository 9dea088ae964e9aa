"""Command line: `jaxformers convert` between HF layout and Orbax, `jaxformers similarity` for sentence embeddings.

    jaxformers convert path/or/repo-id out_dir --to orbax      # HF (safetensors / GGUF) -> Orbax checkpoint
    jaxformers convert orbax_dir out_dir --to hf               # Orbax -> HF layout that transformers loads
    jaxformers similarity "first sentence" "second sentence" --model path/or/repo-id
    jaxformers run ner --model path/or/repo-id --aggregation-strategy simple "John lives in Paris"   # JSON lines
"""

from __future__ import annotations

import argparse
import sys


def _convert(args) -> None:
    """Load SOURCE, write its weights to OUTPUT, and its tokenizer next to them when it has one (as a folder
    saved by transformers carries both). A source that cannot be found (a missing path; a repo id that is not
    cached while the hub is offline or unreachable) is reported in one line, exit status 1, without a traceback."""
    import jaxformers as jf

    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    try:
        model = jf.load(args.source, task=args.task, param_dtype=args.dtype, **kwargs)
    except FileNotFoundError as e:
        print(f"jaxformers convert: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        tokenizer = jf.AutoTokenizer.from_pretrained(args.source, **kwargs)
    except FileNotFoundError:  # no tokenizer files: the weights alone
        tokenizer = None
    except ValueError as e:  # files jaxformers cannot read as a tokenizer: convert the weights, say why not those
        print(f"jaxformers convert: note: the tokenizer was not copied: {e}", file=sys.stderr)
        tokenizer = None
    if args.to == "orbax":
        jf.save_checkpoint(model, args.output, overwrite=args.overwrite)
    else:
        model.save_pretrained(args.output)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.output)
    extra = " with its tokenizer" if tokenizer is not None else ""
    print(f"wrote {type(model).__name__} ({args.to}){extra} to {args.output}")


def _similarity(args) -> None:
    from jaxformers.tasks.embeddings import SentenceEmbedder, cosine_similarity

    embed = SentenceEmbedder.from_pretrained(args.model)  # truncates at the checkpoint's max_seq_length
    sim = cosine_similarity(*(embed(args.sentences),) * 2)
    for row in sim:
        print(" ".join(f"{x:7.3f}" for x in row))


RUN_EPILOG = """\
examples:
  jaxformers run sentiment-analysis --model DIR "I love it" "I hate it" --top-k 2
  jaxformers run ner --model DIR --aggregation-strategy simple --option stride=16 "John lives in Paris"
  jaxformers run ner --model DIR --file texts.txt --batch-size 32 > entities.jsonl
  jaxformers run question-answering --model DIR --question "Who?" --context "John did."
  jaxformers run zero-shot-classification --model DIR --candidate-labels sports,politics "The match ended 2-1"

Output: one JSON line per input, the result of calling jf.task(TASK, model=DIR) on the list of inputs (so each
line is what that call gives for that input). --file: one input per line ("-" reads stdin); a line holding a JSON
object, e.g. {"text": "a", "text_pair": "b"} or {"question": "q", "context": "c"}, is passed as that dict.
--option KEY=VALUE sets any option of the task (VALUE is read as JSON when it parses: 3, null, ["O"], true; else
as a string); loading options (dtype, revision, ...) go to loading. Errors print one line and exit with status 1."""


def _json_value(value):
    """numpy / jax scalars and arrays in task results as JSON numbers and lists."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _parse_options(args) -> dict:
    """The task's options from the flags: --top-k, --aggregation-strategy, --candidate-labels and --option K=V."""
    import json

    options = {}
    if args.top_k is not None:
        options["top_k"] = args.top_k
    if args.aggregation_strategy is not None:
        options["aggregation_strategy"] = args.aggregation_strategy
    if args.candidate_labels is not None:
        options["candidate_labels"] = [s.strip() for s in args.candidate_labels.split(",") if s.strip()]
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option takes KEY=VALUE (e.g. --option top_k=3), got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # not JSON: a plain string such as `sigmoid`
        options[key.strip().replace("-", "_")] = value
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    return options


def _run_inputs(args) -> tuple[list, bool]:
    """(inputs, from_file): the positional texts, the lines of --file, or --question/--context pairs."""
    import json

    sources = [bool(args.texts), args.file is not None, bool(args.question or args.context)]
    if sum(sources) != 1:
        raise ValueError("give the inputs one way: texts as arguments, --file F (one per line), or --question Q "
                         "--context C" + (" (got several)" if sum(sources) else " (got none)"))  # fmt: skip
    if args.texts:
        return list(args.texts), False
    if args.file is not None:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        items = []
        for n, line in enumerate(lines, 1):
            if line.lstrip().startswith("{"):
                try:
                    line = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{args.file} line {n} starts with '{{' but is not a JSON object: {e}") from None
            items.append(line)
        return items, True
    questions, contexts = args.question or [], args.context or []
    if not questions or not contexts:
        raise ValueError("question answering needs both --question Q and --context C")
    if len(contexts) == 1:
        contexts = contexts * len(questions)
    if len(contexts) != len(questions):
        raise ValueError(f"got {len(questions)} --question and {len(contexts)} --context; give one --context for "
                         "all questions or one per question")  # fmt: skip
    return [{"question": q, "context": c} for q, c in zip(questions, contexts)], False


def _run_task(args) -> None:
    import json

    import jaxformers.tasks as tasks

    options = _parse_options(args)
    inputs, from_file = _run_inputs(args)
    load = {k: options.pop(k) for k in list(options) if k in tasks._LOAD_KEYWORDS}
    pipe = tasks.task(args.task, model=args.model, tokenizer=args.tokenizer, **load)

    def emit(items):
        # several tasks give a batch of ONE input its bare result (transformers' QA and fill-mask do), which a
        # list of results cannot be told apart from: a duplicate keeps every call a real batch
        results = pipe(items * 2 if len(items) == 1 else items, **options)
        if not isinstance(results, list) or len(results) != len(items) * (2 if len(items) == 1 else 1):
            raise TypeError(f"{args.task} gave {type(results).__name__} for a list of {len(items)} input(s), not one "
                            "result per input")  # fmt: skip
        for result in results[: len(items)]:
            print(json.dumps(result, ensure_ascii=False, default=_json_value), flush=True)

    if not from_file:
        emit(inputs)
        return
    from tqdm.auto import tqdm

    # chunks of several batches: lines stream out as they are done, and batching still fills the device
    chunk = 8 * options.get("batch_size", pipe.batch_size)
    with tqdm(total=len(inputs), file=sys.stderr, unit="input", desc=args.task) as bar:
        for lo in range(0, len(inputs), chunk):
            part = inputs[lo : lo + chunk]
            emit(part)
            bar.update(len(part))


def _run(args) -> None:
    """`jaxformers run`: errors become one line on stderr and exit status 1 (no traceback)."""
    try:
        _run_task(args)
    except Exception as e:
        notes = " ".join(getattr(e, "__notes__", []))
        message = " ".join(f"{type(e).__name__}: {e} {notes}".split())
        print(f"jaxformers run: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


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
    run = sub.add_parser("run", help="run a task (as transformers.pipeline) on texts, printing JSON lines",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    run.add_argument("task", help="task name, e.g. sentiment-analysis, ner, question-answering, fill-mask")
    run.add_argument("texts", nargs="*", help="inputs, one result line each")
    run.add_argument("--model", default=None, help="local folder or hub repo id (default: transformers' default)")
    run.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    run.add_argument("--file", default=None, help="read inputs from this file, one per line ('-': stdin)")
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--top-k", type=int, default=None)
    run.add_argument("--aggregation-strategy", default=None, help="token classification: simple, first, ...")
    run.add_argument("--question", action="append", help="question answering (repeat for several questions)")
    run.add_argument("--context", action="append", help="question answering (once, or once per --question)")
    run.add_argument("--candidate-labels", default=None, help="zero-shot classification: comma-separated labels")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="any task option; VALUE read as JSON when it parses (repeatable)")  # fmt: skip
    run.set_defaults(func=_run)
    from jaxformers import aot
    from jaxformers.training.cli import add_parser as add_train_parser

    add_train_parser(sub)
    aot.add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # texts may come after options (`run ner --model M "text"`): needs intermixed parsing
        args = run.parse_intermixed_args(argv[1:])
    else:
        args = ap.parse_args(argv)
    try:
        status = args.func(args)
    except aot.LibtpuNotFoundError as e:  # no TPU compiler here: say how to install it, without a traceback
        print(f"jaxformers {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(status, int) and status:
        raise SystemExit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
