"""`text-classification` / `sentiment-analysis`: transformers' `TextClassificationPipeline`, on a jitted core.

    classify = jf.task("sentiment-analysis", model=path)
    classify("I love it")                      # [{'label': 'POSITIVE', 'score': 0.99}]
    classify(["a", "b"], top_k=None)           # every label per text, best first
    classify({"text": "a", "text_pair": "b"})  # a text pair

Results follow the pipeline exactly, including its shapes: without `top_k` in the call, a single text gives a
one-element list and a list of texts gives one dict per text; with `top_k` (an int, or None for all labels) each text
gives a list of dicts sorted by score. Scores: softmax over the labels (sigmoid for one label or
`problem_type="multi_label_classification"`, none for regression) unless `function_to_apply` says otherwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.tasks.base import Task, check_positive_int, sigmoid, softmax

FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET = object()


def logits(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The pure core: classifier logits `[B, num_labels]` (float32) of a padded batch."""
    out = model(**batch)
    return {"logits": out.logits.astype(jnp.float32)}


def id2label(config) -> dict[int, str]:
    """The config's `id2label` with int keys (JSON keys are strings), HF's `LABEL_i` names when absent."""
    given = config.extra.get("id2label")
    if given:
        return {int(k): v for k, v in given.items()}
    return {i: f"LABEL_{i}" for i in range(config.num_labels)}


class TextClassification(Task):
    names = ("text-classification", "sentiment-analysis")
    heads = ("sequence-classification",)
    defaults = {"top_k": _UNSET, "function_to_apply": None, "truncation": None, "max_length": None}
    core = staticmethod(logits)

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, tokenizer, **options)
        self.labels = id2label(model.config)
        # a top_k given at construction switches off the single-text legacy shape, as in transformers
        self._init_top_k = options.get("top_k", _UNSET)

    def check_options(self, params: dict[str, Any]) -> None:
        top_k = params["top_k"]
        if top_k is not _UNSET and top_k is not None:
            check_positive_int("top_k", top_k)
        fn = params["function_to_apply"]
        if fn is not None and (not isinstance(fn, str) or fn.lower() not in FUNCTIONS):
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS} (or None for the default), got {fn!r}")

    def preprocess(self, item, *, truncation=None, max_length=None, **_) -> list[dict]:
        kw = {"truncation": truncation, "max_length": max_length}
        kw = {k: v for k, v in kw.items() if v is not None} | {"return_tensors": None}
        if isinstance(item, dict):
            unknown = set(item) - {"text", "text_pair"}
            if "text" not in item or unknown:
                raise ValueError(
                    f"a text pair is a dict with keys 'text' and 'text_pair', got keys {sorted(item)}"
                )
            enc = self.tokenizer(item["text"], text_pair=item.get("text_pair"), **kw)
        elif isinstance(item, str):
            enc = self.tokenizer(item, **kw)
        else:  # transformers refuses a list item too (a pair must be a dict)
            raise ValueError(
                f"text-classification takes a string, a dict {{'text': ..., 'text_pair': ...}} (a text pair) or a list "
                f"of them; got {type(item).__name__}: {item!r:.80}"
            )
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in enc else [])
        feature = {k: list(enc[k]) for k in keys}
        if not feature["input_ids"]:  # a tokenizer without special tokens gives nothing for "": the model needs one
            raise ValueError("the text produced no tokens (an empty string with a tokenizer that adds no special "
                             "tokens); give a non-empty text")  # fmt: skip
        return [feature]

    def _function(self, fn) -> str:
        if fn is not None:
            return fn.lower()
        cfg = self.model.config
        problem = cfg.extra.get("problem_type")
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or cfg.num_labels == 1:
            return "sigmoid"
        if problem == "single_label_classification" or cfg.num_labels > 1:
            return "softmax"
        return str(cfg.extra.get("function_to_apply", "none")).lower()

    def postprocess(self, item, features, outputs, *, top_k=_UNSET, function_to_apply=None, **_):
        raw = outputs[0]["logits"]
        fn = self._function(function_to_apply)
        scores = softmax(raw) if fn == "softmax" else sigmoid(raw) if fn == "sigmoid" else raw.astype(np.float32)
        legacy = top_k is _UNSET  # neither the call nor the construction gave top_k
        if legacy:
            i = int(scores.argmax())
            return {"label": self.labels[i], "score": float(scores[i])}
        ranked = sorted(
            ({"label": self.labels[i], "score": float(s)} for i, s in enumerate(scores)),
            key=lambda d: d["score"], reverse=True,
        )  # fmt: skip
        return ranked if top_k is None else ranked[:top_k]

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        # transformers wraps the result of a single string in a list unless the call itself gave top_k (even when
        # the construction did: then a single text gives [[...]])
        if isinstance(inputs, str) and "top_k" not in kwargs:
            return [result]
        return result
