"""`question-answering`: extractive QA with the results of transformers 4.57's `QuestionAnsweringPipeline` (v5 removed
the pipeline; 4.57 is the reference), on a jitted core.

    qa = jf.task("question-answering", model=path)
    qa(question="Where do I live?", context="My name is Wolfgang and I live in Berlin")
    # {'score': 0.91, 'start': 34, 'end': 40, 'answer': 'Berlin'}
    qa({"question": q, "context": c}, top_k=3)             # up to 3 answers, best first
    qa(question=["Who?", "Where?"], context=c)             # several questions about one context: a list of results

Inputs as 4.57 takes them: `question=` / `context=` keywords (strings, a list of questions with one context, or two
lists of the same length), a dict `{"question": ..., "context": ...}`, a list of such dicts, or two positional
strings (question, context). A batch of exactly one example gives that example's result, not a one-element list, as
in 4.57.

Options (4.57's names and defaults): `top_k` (1; the deprecated `topk` too), `doc_stride` (min(max_seq_len // 2,
128)), `max_answer_len` (15), `max_seq_len` (min(tokenizer.model_max_length, 384)), `max_question_len` (accepted;
like 4.57's fast-tokenizer path it does not truncate the question: a question too long for `max_seq_len` is an
error), `handle_impossible_answer` (False), `align_to_words` (True). 4.57's `padding` option is not taken: windows
are padded to shape buckets here anyway, and a tokenizer padding on the left would shift positions the model counts
from the first real token (jaxformers' BERT) but HF counts from 0.

How: question and context are tokenized as a pair, the context truncated (`only_second`) into windows of
`max_seq_len` tokens overlapping by `doc_stride` (`return_overflowing_tokens`); every window of every example goes
through the core (`span_logits`: start/end logits of a padded batch) in shape-bucketed batches; then, per window, the
host masks non-context tokens, softmaxes, and searches spans (`decode_spans`: the outer product of start and end
probabilities, kept where start <= end < start + max_answer_len, top candidates), maps tokens to characters of the
context (whole words with `align_to_words`), merges equal answers (case-insensitive, scores added) and ranks.

The span search stays on the host in numpy, deliberately: it is O(T^2) per window (T <= 384: ~150k products, well
under a millisecond), and exact parity needs numpy itself. When `top_k` asks for more spans than have non-zero
probability, 4.57 returns zero-score spans picked by `np.argpartition`'s tie order; only the same numpy call on the
same array reproduces them (a device top-k breaks ties differently).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.tasks.base import Task, check_positive_int

_MISSING = object()


class Example(NamedTuple):
    question: str
    context: str


class QuestionAnsweringInputError(KeyError, ValueError):
    """A dict input without its "question" or "context" key. transformers 4.57 raises KeyError there; this is both a
    KeyError (code written against 4.57 keeps working) and a ValueError (like every other bad input here)."""

    def __str__(self) -> str:  # KeyError's str() quotes its argument; this is a sentence
        return str(self.args[0]) if self.args else ""


def span_logits(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The pure core: start and end logits `[B, T]` (float32) of a padded batch of question/context windows."""
    out = model(**batch)
    return {"start_logits": out.start_logits.astype(jnp.float32), "end_logits": out.end_logits.astype(jnp.float32)}


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, allowed: np.ndarray):
    """The best answer spans of one window: `(starts, ends, scores)` as numpy arrays, best first.

    start, end: `[1, T]` probabilities (float32). A span (s, e) scores start[s] * end[e] when s <= e < s +
    max_answer_len, else 0. The `top_k` best of all T*T pairs are taken (zero-score pairs too when there are fewer
    non-zero ones), then those whose start and end are not both `allowed` (`[1, T]`, non-zero where a token may be
    in an answer) are dropped, so fewer than `top_k` may remain. Same numpy calls as transformers 4.57, for its exact
    tie order among equal (zero) scores."""
    start = start[None] if start.ndim == 1 else start
    end = end[None] if end.ndim == 1 else end
    scores = np.matmul(start[:, :, None], end[:, None, :])  # [1, T, T]: start prob x end prob
    scores = np.tril(np.triu(scores), max_answer_len - 1)  # end >= start, end - start < max_answer_len
    flat = scores.reshape(-1)
    if top_k == 1:
        best = np.array([np.argmax(flat)])
    elif flat.size < top_k:
        best = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[:top_k]
        best = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(best, scores.shape)[1:]
    # 4.57 tests membership against `allowed.nonzero()`, i.e. the row indices (all 0) as well as the columns: so
    # token 0 counts as allowed whenever any token is. Kept for identical results (token 0 is [CLS], allowed anyway
    # for BERT-style models).
    rows, cols = np.asarray(allowed).nonzero()
    ok_positions = np.concatenate([rows, cols])
    keep = np.isin(starts, ok_positions) & np.isin(ends, ok_positions)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, scores[0, starts, ends]


def window_spans(start_logits, end_logits, p_mask, attention_mask, *, top_k: int, max_answer_len: int):
    """One window's candidate spans `(starts, ends, scores)` and its null score (P(start=0) * P(end=0)).

    Tokens with p_mask 1 (question, special tokens; [CLS] excepted) or attention 0 cannot be in an answer: their
    logits become -10000 before the softmax (float32, as 4.57 computes it on its numpy copy), and token 0's
    probabilities are zeroed after the null score is read."""
    allowed = 1 - np.asarray(p_mask, np.int64)[None]
    if attention_mask is not None:
        allowed = allowed & np.asarray(attention_mask, np.int64)[None]
    blocked = allowed == 0
    probs = []
    for logits in (start_logits, end_logits):
        x = np.where(blocked, -10000.0, np.asarray(logits, np.float32)[None])
        x = np.exp(x - x.max(axis=-1, keepdims=True))
        probs.append(x / x.sum())
    start, end = probs
    null_score = float(start[0, 0] * end[0, 0])
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, allowed)
    return starts, ends, scores, null_score


def char_span(encoding, s: int, e: int, sequence_index: int, align_to_words: bool) -> tuple[int, int]:
    """Character span in the context of tokens s..e of a window: the whole words they fall in with `align_to_words`
    (the words as seen in this window), else the tokens' own offsets; offsets too where a token has no word ([CLS])
    or the tokenizer has no word notion."""
    if align_to_words:
        w_start, w_end = encoding.token_to_word(s), encoding.token_to_word(e)
        if w_start is not None and w_end is not None:
            first = encoding.word_to_chars(w_start, sequence_index=sequence_index)
            last = encoding.word_to_chars(w_end, sequence_index=sequence_index)
            if first is not None and last is not None:
                return first[0], last[1]
    return encoding.offsets[s][0], encoding.offsets[e][1]


def _nonneg_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


class QuestionAnswering(Task):
    names = ("question-answering",)
    heads = ("question-answering",)
    default_model = "distilbert/distilbert-base-cased-distilled-squad"
    defaults = {"top_k": 1, "doc_stride": None, "max_answer_len": 15, "max_seq_len": None, "max_question_len": 64,
                "handle_impossible_answer": False, "align_to_words": True}  # fmt: skip
    per_token = ("start_logits", "end_logits")
    core = staticmethod(span_logits)

    # ---------------------------------------------------------------------------------------------- options
    def resolve_options(self, given: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        # 4.57 treats an option given as None as not given (the construction's value or the default stays), and
        # maps its deprecated `topk` onto top_k when top_k itself is not given.
        given = dict(given)
        topk = given.pop("topk", None)
        if topk is not None and given.get("top_k") is None:
            warnings.warn("question-answering: topk is deprecated, use top_k", FutureWarning, stacklevel=4)
            given["top_k"] = topk
        return super().resolve_options({k: v for k, v in given.items() if v is not None}, base)

    def check_options(self, params: dict[str, Any]) -> None:
        check_positive_int("top_k", params["top_k"])
        check_positive_int("max_answer_len", params["max_answer_len"])
        check_positive_int("max_seq_len", params["max_seq_len"], allow_none=True)
        check_positive_int("max_question_len", params["max_question_len"])
        if params["doc_stride"] is not None:
            _nonneg_int("doc_stride", params["doc_stride"])
        for name in ("handle_impossible_answer", "align_to_words"):
            if not isinstance(params[name], (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {params[name]!r}")

    # ----------------------------------------------------------------------------------------------- inputs
    def __call__(self, *args, **kwargs):
        """Answer each question from its context; see the module docstring for the input forms and options."""
        question, context = kwargs.pop("question", _MISSING), kwargs.pop("context", _MISSING)
        examples = self._examples(args, question, context)
        results = super().__call__(examples, **kwargs)
        return results[0] if len(examples) == 1 else results

    def _examples(self, args: tuple, question, context) -> list[Example]:
        """The call's inputs as (question, context) examples, in the forms 4.57 accepts, each checked."""
        keywords = question is not _MISSING or context is not _MISSING
        if args and keywords:
            raise ValueError("question-answering: give the inputs either positionally or as question=/context=, not "
                             "both")  # fmt: skip
        if args:
            if len(args) == 2 and all(isinstance(a, str) for a in args):
                items = [{"question": args[0], "context": args[1]}]
            elif len(args) == 1:
                items = args[0]
            else:
                items = list(args)
        elif question is _MISSING or context is _MISSING:
            given = [k for k, v in (("question", question), ("context", context)) if v is not _MISSING]
            missing = f"only the {given[0]}" if given else "nothing"
            raise ValueError(
                f"question-answering needs a question and a context, but the call gave {missing}: call "
                "qa(question='...', context='...') or qa({'question': ..., 'context': ...})"
            )
        elif isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(f"question-answering got {len(question)} questions but {len(context)} contexts; give "
                                 "one context per question, or a single context string for all")  # fmt: skip
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        elif isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        else:
            raise ValueError(
                f"question-answering: question= and context= must be strings, a list of questions with one context "
                f"string, or two lists of the same length; got {type(question).__name__} and {type(context).__name__}"
            )
        if isinstance(items, dict):
            items = [items]
        elif isinstance(items, (list, tuple)):
            items = list(items)
        else:
            raise ValueError(
                f"question-answering takes a dict {{'question': ..., 'context': ...}}, a list of them, or question= "
                f"and context= keywords; got {type(items).__name__}: {items!r:.80}"
            )
        return [self._example(item) for item in items]

    @staticmethod
    def _example(item) -> Example:
        if not isinstance(item, dict):
            raise ValueError(f"each question-answering input must be a dict {{'question': ..., 'context': ...}}, got "
                             f"{type(item).__name__}: {item!r:.80}")  # fmt: skip
        for key in ("question", "context"):
            if key not in item:
                raise QuestionAnsweringInputError(
                    f"a question-answering input needs the keys 'question' and 'context', got {sorted(item)}: add "
                    f"the {key!r} key"
                )
            value = item[key]
            if value is None:
                raise ValueError(f"the {key} is None; give a non-empty string")
            if not isinstance(value, str):
                raise ValueError(f"the {key} must be a string, got {type(value).__name__}: {value!r:.80}")
            if not value:
                raise ValueError(f"the {key} is empty (''); give a non-empty string (4.57 refuses it too)")
        return Example(item["question"], item["context"])

    # ------------------------------------------------------------------------------------------ preprocessing
    @property
    def question_first(self) -> bool:
        """Question then context, unless the tokenizer pads on the left (then context first, as 4.57 orders it)."""
        return getattr(self.tokenizer, "padding_side", "right") == "right"

    def _check_room(self, item: Example, max_seq_len: int, doc_stride: int) -> None:
        """Refuse, with the numbers, the window settings the tokenizers library refuses (4.57 raises its errors, and
        one is a Rust panic with a backtrace): a stride not below the single-text room, a question that leaves no
        room for the context, a stride not below the context's room when the context must be split."""
        tok = self.tokenizer
        single_room = max_seq_len - tok.num_special_tokens_to_add(pair=False)
        if doc_stride >= single_room:
            raise ValueError(f"doc_stride ({doc_stride}) must be less than max_seq_len ({max_seq_len}) minus the "
                             f"special tokens (= {single_room}); lower doc_stride")  # fmt: skip
        n_question = len(tok(item.question, add_special_tokens=False, return_tensors=None)["input_ids"])
        room = max_seq_len - n_question - tok.num_special_tokens_to_add(pair=True)  # context tokens per window
        if room > doc_stride:
            return
        # rare: measure the whole pair (only a pair longer than max_seq_len is split, and only then do these fail)
        whole = tok(item.question, text_pair=item.context, return_tensors=None)["input_ids"]
        if len(whole) <= max_seq_len:
            return
        if room <= 0:
            raise ValueError(
                f"the question is {n_question} tokens long, which with the special tokens leaves no room for the "
                f"context in max_seq_len={max_seq_len} tokens; shorten the question or raise max_seq_len"
            )
        raise ValueError(
            f"doc_stride ({doc_stride}) must be less than the {room} context tokens that fit in each window beside "
            f"this {n_question}-token question (max_seq_len={max_seq_len}); lower doc_stride or raise max_seq_len"
        )

    def preprocess(self, item: Example, *, doc_stride=None, max_seq_len=None, **_) -> list[dict]:
        tok = self.tokenizer
        if max_seq_len is None:
            max_seq_len = min(tok.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len}); give a "
                             "doc_stride of at most max_seq_len (the overlap of consecutive windows)")  # fmt: skip
        self._check_room(item, max_seq_len, doc_stride)
        first, second = (item.question, item.context) if self.question_first else (item.context, item.question)
        enc = tok(first, text_pair=second, truncation="only_second" if self.question_first else "only_first",
                  max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True, return_overflowing_tokens=True,
                  return_offsets_mapping=True, return_tensors=None)  # fmt: skip
        names = [k for k in tok.model_input_names if k in enc]
        features = []
        for i, encoding in enumerate(enc.encodings):
            ids = enc["input_ids"][i]
            # p_mask: 1 where a token cannot be in the answer: everything but the context (question-first order;
            # 4.57 masks nothing in context-first order), except [CLS], kept for models that answer "impossible" there
            if self.question_first:
                p_mask = [int(s != 1) for s in encoding.sequence_ids]
            else:
                p_mask = [0] * len(ids)
            if tok.cls_token_id is not None:
                for j, t in enumerate(ids):
                    if t == tok.cls_token_id:
                        p_mask[j] = 0
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"a question/context window is {len(ids)} tokens but the model has {self.max_length} positions; "
                    f"pass max_seq_len={self.max_length} (or less)"
                )
            features.append({
                "inputs": {k: list(enc[k][i]) for k in names},
                "p_mask": p_mask,
                "attention_mask": enc["attention_mask"][i] if "attention_mask" in enc else None,
                "encoding": encoding,
            })  # fmt: skip
        return features

    def process(self, items: list, params: dict[str, Any]) -> list:
        # as Task.process, but only the model inputs of each window go to the device; the rest stays on the host
        per_item = [self.preprocess(item, **params) for item in items]
        flat = [f["inputs"] for feats in per_item for f in feats]
        outputs = self.run(flat) if flat else []
        results, pos = [], 0
        for item, feats in zip(items, per_item):
            results.append(self.postprocess(item, feats, outputs[pos : pos + len(feats)], **params))
            pos += len(feats)
        return results

    # ----------------------------------------------------------------------------------------- postprocessing
    def postprocess(self, item: Example, features, outputs, *, top_k=1, handle_impossible_answer=False,
                    max_answer_len=15, align_to_words=True, **_):  # fmt: skip
        null_score = 1000000.0  # the smallest P(start=0) * P(end=0) over the windows, for the "impossible" answer
        answers: list[dict] = []
        sequence_index = 1 if self.question_first else 0
        for feature, out in zip(features, outputs):
            starts, ends, scores, null = window_spans(
                out["start_logits"], out["end_logits"], feature["p_mask"], feature["attention_mask"],
                # more candidates than asked when aligning to words: several token spans can give the same words
                top_k=top_k * 2 + 10 if align_to_words else top_k, max_answer_len=max_answer_len,
            )  # fmt: skip
            null_score = min(null_score, null)
            for s, e, score in zip(starts, ends, scores):
                lo, hi = char_span(feature["encoding"], s, e, sequence_index, align_to_words)
                text = item.context[lo:hi]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": lo, "end": hi, "answer": text})
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers
