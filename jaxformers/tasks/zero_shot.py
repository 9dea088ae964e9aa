"""`zero-shot-classification`: transformers' `ZeroShotClassificationPipeline`, on a jitted core.

    classify = jf.task("zero-shot-classification", model=path)      # an NLI classifier (e.g. bart-large-mnli)
    classify("I lost my phone", candidate_labels=["urgent", "phone", "tablet"])
    # {'sequence': 'I lost my phone', 'labels': ['phone', 'urgent', 'tablet'], 'scores': [0.6, 0.3, 0.1]}
    classify(["a", "b"], "sports, politics", hypothesis_template="This text is about {}.", multi_label=True)

Each text is the premise and each label, put into `hypothesis_template`, a hypothesis; every (text, label) pair of a
call is one row of the same bucketed batches. Scores follow the pipeline exactly: with one label or
`multi_label=True`, each label's softmax of entailment against contradiction (independent scores); otherwise the
softmax of the entailment logits across the labels (scores summing to one). The entailment class is the first
`label2id` entry whose name starts with "entail" (any case); a model without one gets transformers' warning and its
fallback (the last logit as entailment, the first as contradiction). Pairs are tokenized as the pipeline does:
`truncation="only_first"` (the premise gives way, never the hypothesis), and no truncation at all when the hypothesis
alone is too long for that. Results: `{"sequence", "labels", "scores"}`, labels sorted by score; a list of texts gives
a list of them. Candidate labels may also be given positionally (`classify(text, labels)`) or at construction.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.tasks.base import Task, softmax

log = logging.getLogger("jaxformers")

_MISSING = object()


def nli_logits(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The pure core: NLI classifier logits `[B, num_labels]` (float32) of a padded batch of premise/hypothesis
    pairs."""
    return {"logits": model(**batch).logits.astype(jnp.float32)}


def parse_labels(labels):
    """transformers' reading of `candidate_labels`: a string is a comma-separated list (blank entries dropped); a
    list or tuple is taken as given (labels are not stripped then, and need not be strings)."""
    if isinstance(labels, str):
        return [label.strip() for label in labels.split(",") if label.strip()]
    return labels


def entailment_id(config) -> int:
    """Index of the entailment logit, found as transformers finds it: the first `label2id` entry whose name starts
    with "entail" (any case), -1 when none does. A config.json with `id2label` but no `label2id` (hand-written; HF
    fails on it) is read through `id2label`; one with neither has HF's `LABEL_i` names, hence -1."""
    label2id = config.extra.get("label2id")
    if not label2id:
        given = config.extra.get("id2label") or {}
        label2id = {name: int(i) for i, name in given.items()}
    for name, index in label2id.items():
        if str(name).lower().startswith("entail"):
            return int(index)
    return -1


class ZeroShotClassification(Task):
    names = ("zero-shot-classification",)
    heads = ("sequence-classification",)
    default_model = "facebook/bart-large-mnli"
    defaults = {"candidate_labels": None, "hypothesis_template": "This example is {}.", "multi_label": False}
    core = staticmethod(nli_logits)

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, tokenizer, **options)
        self.entailment_id = entailment_id(model.config)
        if self.entailment_id == -1:
            labels = self.model.config.extra.get("label2id") or self.model.config.extra.get("id2label")
            log.warning(
                "zero-shot-classification: no label of the model config (%s) starts with 'entail', so the entailment "
                "id is -1 as in transformers: the last logit is read as entailment and the first as contradiction. "
                "Give the config a descriptive label2id (e.g. {'contradiction': 0, 'neutral': 1, 'entailment': 2}) "
                "for meaningful scores.",
                labels or f"LABEL_0..LABEL_{self.model.config.num_labels - 1}",
            )

    # ------------------------------------------------------------------------------------------------ options
    @staticmethod
    def _checked_labels(labels) -> list:
        """The call's candidate labels, parsed and checked (transformers fails on a missing list with a bare
        `len(None)` TypeError and on an empty one with a ValueError; both say here what to pass)."""
        if labels is None:
            raise TypeError(
                "zero-shot-classification needs candidate labels: pass candidate_labels=['label', ...] (or a "
                "comma-separated string, or the labels as second positional argument) to the call or the task"
            )
        labels = parse_labels(labels)
        if not isinstance(labels, (list, tuple)):
            raise TypeError(
                f"candidate_labels must be a list of labels or a comma-separated string, got "
                f"{type(labels).__name__}: {labels!r:.80}"
            )
        if len(labels) == 0:
            raise ValueError(
                "You must include at least one label: candidate_labels is empty; pass candidate_labels=['label', ...] "
                "or a comma-separated string with at least one non-blank label"
            )
        return list(labels)

    @staticmethod
    def _check_template(template, first_label) -> None:
        """transformers' check (formatting the first label must change the template), plus clear errors where it
        raises a bare KeyError / IndexError / AttributeError (a named field, two `{}`, a non-string)."""
        if not isinstance(template, str):
            raise TypeError(f"hypothesis_template must be a string with one {{}} for the label, got {template!r:.80}")
        try:
            formatted = template.format(first_label)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"hypothesis_template {template!r} cannot be formatted with one label ({type(e).__name__}: {e}); "
                "use exactly one {} where the label goes, e.g. 'This example is {}.'"
            ) from e
        if formatted == template:
            raise ValueError(
                f"The provided hypothesis_template {template!r} was not able to be formatted with the target labels; "
                "include {} where the label should go, e.g. 'This example is {}.'"
            )

    # ---------------------------------------------------------------------------------------------- the steps
    def __call__(self, sequences=_MISSING, *args, **kwargs):
        """Classify a text (or each text of a list) into the candidate labels; see the module docstring."""
        if sequences is _MISSING:
            if "sequences" not in kwargs:
                raise TypeError("zero-shot-classification needs the text(s) to classify: classify(text, "
                                "candidate_labels=[...])")  # fmt: skip
            sequences = kwargs.pop("sequences")
        if len(args) == 1 and "candidate_labels" not in kwargs:
            kwargs["candidate_labels"] = args[0]
        elif args:  # transformers' check: a second source of labels, or more than one extra argument
            raise ValueError(
                f"Unable to understand extra arguments {args}: zero-shot-classification takes the text(s), then "
                "optionally the candidate labels; give every other option by keyword"
            )
        if isinstance(sequences, (list, tuple)) and len(sequences) == 0:
            raise ValueError("You must include at least one sequence: the list of texts to classify is empty")
        return super().__call__(sequences, **kwargs)

    def process(self, items: list, params: dict[str, Any]) -> list:
        # labels and template are checked once per call, before any text is tokenized or run
        params = dict(params, candidate_labels=self._checked_labels(params["candidate_labels"]))
        self._check_template(params["hypothesis_template"], params["candidate_labels"][0])
        return super().process(items, params)

    def _encode(self, premise: str, hypothesis: str):
        try:
            return self.tokenizer(premise, text_pair=hypothesis, truncation="only_first", return_tensors=None)
        except Exception as e:
            # the hypothesis alone exceeds the length limit, so cutting the premise cannot help: transformers then
            # tokenizes without truncation (the tokenizers library's message is how it recognizes the case)
            if "too short" not in str(e):
                raise
            return self.tokenizer(premise, text_pair=hypothesis, truncation=False, return_tensors=None)

    def preprocess(self, item, *, candidate_labels, hypothesis_template, **_) -> list[dict]:
        if not isinstance(item, str):
            raise TypeError(
                f"zero-shot-classification takes a text or a list of texts, got {type(item).__name__}: {item!r:.80}"
            )
        if len(item) == 0:
            raise ValueError("You must include at least one sequence: a text to classify is the empty string")
        features = []
        for label in candidate_labels:
            enc = self._encode(item, hypothesis_template.format(label))
            keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in enc else [])
            features.append({k: list(enc[k]) for k in keys})
        return features

    def postprocess(self, item, features, outputs, *, candidate_labels, multi_label=False, **_):
        logits = np.stack([o["logits"] for o in outputs])  # [labels, num_labels]
        entail = self.entailment_id
        if multi_label or len(candidate_labels) == 1:
            # each label on its own: entailment against contradiction (the first class, or the last when entailment
            # is the first), exactly transformers' choice of columns
            contradiction = -1 if entail == 0 else 0
            scores = softmax(logits[:, [contradiction, entail]], axis=-1)[:, 1]
        else:
            scores = softmax(logits[:, entail], axis=-1)
        # transformers' order: numpy's argsort, reversed (a repeated label keeps both entries, with equal scores)
        order = list(reversed(scores.argsort()))
        return {
            "sequence": item,
            "labels": [candidate_labels[i] for i in order],
            "scores": [float(scores[i]) for i in order],
        }
