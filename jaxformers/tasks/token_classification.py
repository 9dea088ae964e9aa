"""`token-classification` / `ner`: transformers' `TokenClassificationPipeline`, on a jitted core.

    ner = jf.task("ner", model=path)
    ner("John lives in Paris")                              # one dict per token not in ignore_labels
    ner(["a", "b"], aggregation_strategy="simple")          # entities grouped B-/I- wise, one list per text
    ner(long_text, stride=16, aggregation_strategy="first") # a text longer than the model, in overlapping windows
    ner([["John", "Smith"]], is_split_into_words=True)      # pre-split words

Results follow transformers 5.24 exactly: without aggregation each token gives `{'entity', 'score', 'index', 'word',
'start', 'end'}`; with an `aggregation_strategy` other than "none" each entity gives `{'entity_group', 'score', 'word',
'start', 'end'}`. Scores are `np.float32`, as the pipeline's numpy post-processing gives them; `start` / `end` are
character offsets into the text (into the words joined by `delimiter` for pre-split input).

Options (the pipeline's): `aggregation_strategy` ("none", "simple", "first", "average", "max"; "first"/"average"/"max"
make every sub-word of a word agree), `ignore_labels` (default ["O"]), `stride` (windows of `model_max_length`
tokens overlapping by `stride`, entities of overlapping windows merged as transformers does), `is_split_into_words` /
`delimiter`, and `offset_mapping` (your own character offsets per token). transformers 5 no longer accepts the old
`grouped_entities` / `ignore_subwords` options, so neither does this task.

One deliberate difference: given a list of texts with a list of offset mappings, transformers 5.24 applies the FIRST
text's mapping to every text (its postprocess takes `offset_mapping[0]` of the whole batch); here text i uses
mapping i, which is what the option documents. A single text behaves identically.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.tasks.base import Task
from jaxformers.tasks.text_classification import id2label
from jaxformers.tokenization.base import LARGE_INTEGER

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")  # the ones that regroup sub-words into words first
MODEL_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def token_logits(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The pure core: per-token classifier logits `[B, T, num_labels]` (float32) of a padded batch."""
    out = model(**batch)
    return {"logits": out.logits.astype(jnp.float32)}


def strategy_name(value) -> str:
    """An `aggregation_strategy` (a string in any case, or transformers' `AggregationStrategy` enum) as lowercase."""
    name = getattr(value, "value", value)  # an enum member carries its string as .value
    if not isinstance(name, str) or name.lower() not in STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {STRATEGIES} (or None for 'none'), got {value!r}")
    return name.lower()


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over labels in float32 numpy, the same operations as the pipeline, so scores are `np.float32` and
    agree with transformers to float32 rounding."""
    logits = np.asarray(logits, np.float32)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def split_tag(label: str) -> tuple[str, str]:
    """("B" | "I", tag) of a label; a label without a B-/I- prefix counts as a continuation ("I") of itself."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def merge_windows(entities: list[dict]) -> list[dict]:
    """Entities of overlapping stride windows, deduplicated as transformers does: sorted by start, of the entities
    that start inside the previous kept one the longer span wins (on a tie, the higher score)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    kept, current = [], entities[0]
    for entity in entities:
        if current["start"] <= entity["start"] < current["end"]:
            length, current_length = entity["end"] - entity["start"], current["end"] - current["start"]
            if length > current_length or (length == current_length and entity["score"] > current["score"]):
                current = entity
        else:
            kept.append(current)
            current = entity
    kept.append(current)
    return kept


class TokenClassification(Task):
    names = ("token-classification", "ner")
    heads = ("token-classification",)
    defaults = {
        "aggregation_strategy": None,
        "ignore_labels": None,
        "stride": None,
        "is_split_into_words": False,
        "delimiter": None,
        "offset_mapping": None,
    }
    per_token = ("logits",)
    core = staticmethod(token_logits)

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, tokenizer, **options)
        self.labels = id2label(model.config)

    # ------------------------------------------------------------------------------------------------ options
    def check_options(self, params: dict[str, Any]) -> None:
        strategy = params["aggregation_strategy"]
        if strategy is not None:
            strategy = strategy_name(strategy)
        ignore = params["ignore_labels"]
        if ignore is not None and (isinstance(ignore, str) or not isinstance(ignore, (list, tuple, set, frozenset))):
            raise TypeError(f"ignore_labels must be a list of labels such as ['O'] (or None for ['O']), got {ignore!r}")
        if not isinstance(params["is_split_into_words"], bool):
            raise TypeError(f"is_split_into_words must be True or False, got {params['is_split_into_words']!r}")
        if params["delimiter"] is not None and not isinstance(params["delimiter"], str):
            raise TypeError(f"delimiter must be a string (default ' '), got {params['delimiter']!r}")
        stride = params["stride"]
        if stride is None:
            return
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 0:
            raise ValueError(f"stride must be a non-negative integer (tokens shared by consecutive windows), got "
                             f"{stride!r}")  # fmt: skip
        limit = self.tokenizer.model_max_length
        if stride >= limit:
            raise ValueError(
                f"stride ({stride}) must be less than the tokenizer's model_max_length ({limit}): each window is "
                "model_max_length tokens and consecutive windows share `stride` of them; pass a smaller stride"
            )
        room = limit - self.tokenizer.num_special_tokens_to_add(False)
        if limit <= LARGE_INTEGER and stride >= room:  # a larger model_max_length means no truncation
            raise ValueError(
                f"stride ({stride}) must be less than {room}, the tokens a window holds besides its special tokens "
                f"(model_max_length {limit} - {limit - room}); pass a smaller stride"
            )
        if strategy == "none":
            raise ValueError(
                "stride splits the text into overlapping windows, whose entities need merging, but "
                "aggregation_strategy='none'; pick 'simple', 'first', 'average' or 'max' (or leave it unset)"
            )

    # ------------------------------------------------------------------------------------------------ calling
    def __call__(self, inputs, **kwargs):
        split = kwargs.get("is_split_into_words", self.options["is_split_into_words"])
        if split is True and isinstance(inputs, (list, tuple)) and not all(isinstance(x, list) for x in inputs):
            # one pre-split sentence (a list of words): transformers runs it as a batch of one, so the result is a
            # list holding one list of entities
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError("token-classification needs at least one input, got an empty list; pass a string or "
                             "a non-empty list of strings")  # fmt: skip
        if not isinstance(inputs, (str, list, tuple)):
            raise ValueError(f"token-classification takes a string or a list of strings, got "
                             f"{type(inputs).__name__}: {inputs!r:.80}")  # fmt: skip
        return super().__call__(inputs, **kwargs)

    def process(self, items: list, params: dict[str, Any]) -> list:
        """As `Task.process`, with the per-text offset mappings and the host-only fields (special tokens, offsets,
        text) kept out of the batches the model sees."""
        mappings = self._offset_mappings(params["offset_mapping"], len(items))
        rest = {k: v for k, v in params.items() if k != "offset_mapping"}
        per_item = [self.preprocess(item, offset_mapping=m, **rest) for item, m in zip(items, mappings)]
        flat = [{k: f[k] for k in MODEL_FIELDS if k in f} for feats in per_item for f in feats]
        outputs = self.run(flat)
        results, pos = [], 0
        for item, feats in zip(items, per_item):
            results.append(self.postprocess(item, feats, outputs[pos : pos + len(feats)], **params))
            pos += len(feats)
        return results

    @staticmethod
    def _offset_mappings(given, count: int) -> list:
        """The user's `offset_mapping` as one mapping (or None) per text: one text takes a list of (start, end)
        pairs, a batch a list of such lists (transformers' convention)."""
        if given is None:
            return [None] * count
        if not isinstance(given, (list, tuple)) or not given:
            raise ValueError(f"offset_mapping must be a list of (start, end) pairs (one per token), or a list of such "
                             f"lists for a list of texts; got {given!r:.80}")  # fmt: skip

        def is_pair(x):
            return isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (int, np.integer)) for v in x)

        batch = [given] if is_pair(given[0]) else list(given)
        if len(batch) != count:
            raise ValueError(f"offset_mapping holds {len(batch)} mapping(s) for {count} text(s); give one list of "
                             "(start, end) pairs per text")  # fmt: skip
        return batch

    # ------------------------------------------------------------------------------------------------- stages
    def preprocess(self, item, *, stride=None, is_split_into_words=False, delimiter=None, offset_mapping=None,
                   **_) -> list[dict]:  # fmt: skip
        """Tokenize one text (or list of words) into one feature per window: model inputs plus what postprocess
        needs (special tokens, offsets, word ids, the text)."""
        tok = self.tokenizer
        word_spans = None
        if is_split_into_words:
            if not isinstance(item, (list, tuple)) or not all(isinstance(w, str) for w in item):
                raise ValueError(f"with is_split_into_words=True each input is a list of words (strings), got "
                                 f"{type(item).__name__}: {item!r:.80}")  # fmt: skip
            delimiter = " " if delimiter is None else delimiter
            sentence = delimiter.join(item)
            word_spans, pos = [], 0
            for word in item:  # where each word sits in the joined sentence (tokenizer offsets are per word)
                word_spans.append(pos)
                pos += len(word) + len(delimiter)
        elif not isinstance(item, str):
            raise ValueError(f"token-classification takes strings (or lists of words with is_split_into_words=True); "
                             f"got {type(item).__name__}: {item!r:.80}")  # fmt: skip
        else:
            sentence = item
        kw = {"return_overflowing_tokens": True, "stride": stride} if stride is not None else {}
        enc = tok(list(item) if is_split_into_words else item, is_split_into_words=is_split_into_words,
                  truncation=True, return_special_tokens_mask=True, return_offsets_mapping=True,
                  return_tensors=None, **kw)  # fmt: skip
        rows = enc["input_ids"] if stride is not None else [enc["input_ids"]]
        features = []
        for i in range(len(rows)):
            field = (lambda k: enc[k][i]) if stride is not None else (lambda k: enc[k])
            feature = {k: list(field(k)) for k in MODEL_FIELDS if k in enc}
            feature["special_tokens_mask"] = list(field("special_tokens_mask"))
            feature["offsets"] = [tuple(o) for o in field("offset_mapping")]
            feature["word_ids"] = enc.word_ids(i) if word_spans is not None else None
            features.append(feature)
        limit = self.max_length
        for f in features:
            if limit is not None and len(f["input_ids"]) > limit:
                raise ValueError(
                    f"the text gives {len(f['input_ids'])} tokens but {type(self.model).__name__} has "
                    f"{limit} positions (the tokenizer's model_max_length is {tok.model_max_length}); pass "
                    f"stride=N with an aggregation_strategy to cover a long text in windows, and set the tokenizer's "
                    f"model_max_length to at most {limit}"
                )
        if offset_mapping is not None:
            if len(features) > 1:
                raise ValueError("offset_mapping gives offsets for one window of tokens, but stride split this text "
                                 "into several; drop one of the two")  # fmt: skip
            n = len(features[0]["input_ids"])
            if len(offset_mapping) != n:
                raise ValueError(f"offset_mapping has {len(offset_mapping)} (start, end) pairs but the text has {n} "
                                 "tokens (special tokens included); give one pair per token")  # fmt: skip
            features[0]["offsets"] = [(int(s), int(e)) for s, e in offset_mapping]
        for f in features:
            f["sentence"], f["word_spans"] = sentence, word_spans
        return features

    def postprocess(self, item, features, outputs, *, aggregation_strategy=None, ignore_labels=None, **_):
        strategy = "none" if aggregation_strategy is None else strategy_name(aggregation_strategy)
        ignore = ["O"] if ignore_labels is None else ignore_labels
        found = []
        for feature, out in zip(features, outputs):
            tokens = self._tokens(feature, probabilities(out["logits"]), strategy)
            entities = self._aggregate(tokens, strategy)
            found += [e for e in entities if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
        return merge_windows(found) if len(features) > 1 else found

    # ------------------------------------------------------------------------------------ post-processing steps
    def _tokens(self, feature: dict, scores: np.ndarray, strategy: str) -> list[dict]:
        """One record per non-special token: its vocabulary string, scores, character span, index and whether it
        continues the previous token's word."""
        tok, sentence = self.tokenizer, feature["sentence"]
        backend_model = tok.backend_tokenizer.model
        # WordPiece marks continuations ("##"), so a token whose string is longer than its text span is a sub-word;
        # other tokenizers fall back to "no space before it", as transformers does
        word_aware = bool(getattr(backend_model, "continuing_subword_prefix", None))
        records = []
        for idx, token_scores in enumerate(scores):
            if feature["special_tokens_mask"][idx]:
                continue
            token_id = int(feature["input_ids"][idx])
            word = tok.convert_ids_to_tokens(token_id)
            start, end = feature["offsets"][idx]
            if feature["word_ids"] is not None and feature["word_ids"][idx] is not None:
                shift = feature["word_spans"][feature["word_ids"][idx]]
                start, end = start + shift, end + shift
            text = sentence[start:end]
            if word_aware:
                is_subword = len(word) != len(text)
            else:
                if strategy in WORD_STRATEGIES:
                    warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning,
                                  stacklevel=2)  # fmt: skip
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if token_id == tok.unk_token_id:
                word, is_subword = text, False  # show the text the unknown token stands for
            records.append({"word": word, "scores": token_scores, "start": int(start), "end": int(end), "index": idx,
                            "is_subword": is_subword})  # fmt: skip
        return records

    def _aggregate(self, tokens: list[dict], strategy: str) -> list[dict]:
        if strategy in ("none", "simple"):
            entities = []
            for t in tokens:
                best = t["scores"].argmax()
                entities.append({"entity": self.labels[int(best)], "score": t["scores"][best], "index": t["index"],
                                 "word": t["word"], "start": t["start"], "end": t["end"]})  # fmt: skip
        else:
            entities = self._words(tokens, strategy)
        return entities if strategy == "none" else self._group(entities)

    def _words(self, tokens: list[dict], strategy: str) -> list[dict]:
        """Tokens merged into words (a word = a token and the sub-words after it), each word taking one label."""
        groups: list[list[dict]] = []
        for t in tokens:
            if groups and t["is_subword"]:
                groups[-1].append(t)
            else:
                groups.append([t])
        words = []
        for group in groups:
            if strategy == "first":
                scores = group[0]["scores"]
            elif strategy == "max":
                scores = max(group, key=lambda t: t["scores"].max())["scores"]
            else:  # average
                scores = np.nanmean(np.stack([t["scores"] for t in group]), axis=0)
            best = scores.argmax()
            words.append({"entity": self.labels[int(best)], "score": scores[best],
                          "word": self._join([t["word"] for t in group]), "start": group[0]["start"],
                          "end": group[-1]["end"]})  # fmt: skip
        return words

    def _group(self, entities: list[dict]) -> list[dict]:
        """Adjacent entities of the same tag joined into one, a B- label always starting a new one."""
        groups: list[list[dict]] = []
        for e in entities:
            bi, tag = split_tag(e["entity"])
            if groups and bi != "B" and tag == split_tag(groups[-1][-1]["entity"])[1]:
                groups[-1].append(e)
            else:
                groups.append([e])
        return [
            {
                "entity_group": g[0]["entity"].split("-", 1)[-1],
                "score": np.mean(np.nanmean([e["score"] for e in g])),
                "word": self._join([e["word"] for e in g]),
                "start": g[0]["start"],
                "end": g[-1]["end"],
            }
            for g in groups
        ]

    def _join(self, tokens: list[str]) -> str:
        """transformers' `convert_tokens_to_string`: the backend's decoder over token strings (a plain space join
        without one)."""
        decoder = self.tokenizer.backend_tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)
