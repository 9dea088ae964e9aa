"""Collators: turn a list of `Features` items (dicts of python lists) into one padded batch of numpy arrays, as
transformers' data collators do with `return_tensors="np"` (same values; ids and masks as int32, float labels as
float32).

    collate = collator_for("fill-mask", tokenizer)
    batch = collate([features[i] for i in indices], length=128, rng=np.random.default_rng(step))

Every collator is called as `collate(features, *, length=None, rng=None)`. `length` pads every row to exactly that
many tokens (the DataLoader's length bucket, so a jitted step sees few shapes); None pads to the longest row rounded
up to `pad_to_multiple_of`. A row longer than `length` is an error, never silently cut. Rows are padded on the
tokenizer's `padding_side`, with its pad id (`attention_mask`, `token_type_ids`, `position_ids` and `segment_ids`
with 0). `special_tokens_mask` (kept by tokenize_dataset for masking) and string fields never reach the batch.
`needs_rng` is True when the collator draws random numbers (masked LM): the DataLoader then passes `rng`, one
generator per batch, so a batch is the same whenever it is rebuilt (exact resume).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxformers.training.data import canonical_task
from jaxformers.training.losses import IGNORE_INDEX

__all__ = ["DataCollatorForLanguageModeling", "DataCollatorForSeq2Seq", "DataCollatorForTokenClassification",
           "DataCollatorWithPadding", "collator_for"]  # fmt: skip

_PADDED = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids")  # padded with pad id / 0
_DROPPED = ("special_tokens_mask", "offset_mapping")
_LABEL_ALIASES = ("label", "label_ids")  # renamed to "labels", as transformers does


class DataCollatorWithPadding:
    """Pads the model inputs; labels (one per example: class ids, floats, multi-hot rows) and QA start/end positions
    are stacked as they are."""

    needs_rng = False

    def __init__(self, tokenizer, *, pad_to_multiple_of: int | None = None):
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list, *, length: int | None = None, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:  # fmt: skip
        batch, widths = self._pad_inputs(features, length)
        for key in self._other_keys(features):
            batch["labels" if key in _LABEL_ALIASES else key] = _stack(key, [f[key] for f in features])
        if self.tokenizer.padding_side == "left":  # positions count from the row's start: shift them with it
            shift = batch["input_ids"].shape[1] - widths
            for key in ("start_positions", "end_positions"):
                if key in batch:
                    batch[key] = batch[key] + shift.astype(batch[key].dtype)
        return batch

    # ------------------------------------------------------------------------------------------------ helpers
    def _pad_inputs(self, features: list, length: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The padded model inputs of `features` and each row's own length."""
        if not features:
            raise ValueError("cannot collate an empty list of features")
        if not isinstance(features[0], Mapping):
            raise TypeError(f"features must be dicts such as {{'input_ids': [...], ...}}, got "
                            f"{type(features[0]).__name__}")  # fmt: skip
        if "input_ids" not in features[0]:
            raise ValueError(f"features need input_ids, got keys {sorted(features[0])}")
        widths = np.asarray([len(f["input_ids"]) for f in features], np.int32)
        width = self._width(int(widths.max()), length)
        batch = {}
        for key in _PADDED:
            if key in features[0]:
                value = self._pad_id(widths, width) if key == "input_ids" else 0
                batch[key] = self._pad([f[key] for f in features], width, value)
        if "attention_mask" not in batch:
            batch["attention_mask"] = self._pad([[1] * int(n) for n in widths], width, 0)
        return batch, widths

    def _other_keys(self, features: list) -> list[str]:
        first = features[0]
        return [k for k, v in first.items() if k not in _PADDED and k not in _DROPPED and not isinstance(v, str)
                and v is not None]  # fmt: skip

    def _width(self, longest: int, length: int | None) -> int:
        if length is not None:
            if longest > length:
                raise ValueError(f"a row has {longest} tokens, more than length={length}: bucket lengths must "
                                 "cover the longest row (tokenize with a smaller max_length or use larger "
                                 "buckets)")  # fmt: skip
            return length
        multiple = self.pad_to_multiple_of
        return -(-longest // multiple) * multiple if multiple else longest

    def _pad_id(self, widths: np.ndarray, width: int) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None and (widths < width).any():
            raise ValueError("this tokenizer has no padding token, so rows of different lengths cannot be batched: "
                             "set one first, usually tokenizer.pad_token = tokenizer.eos_token")  # fmt: skip
        return 0 if pad is None else pad

    def _pad(self, rows: list, width: int, value: int) -> np.ndarray:
        """Rows padded with `value` to `width` on the tokenizer's padding side, as int32."""
        out = np.full((len(rows), width), value, np.int32)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(rows):
            if len(row):
                if left:
                    out[i, width - len(row) :] = row
                else:
                    out[i, : len(row)] = row
        return out


class DataCollatorForTokenClassification(DataCollatorWithPadding):
    """Pads the inputs, and the per-token labels with `label_pad_token_id` (-100: ignored by the loss)."""

    def __init__(self, tokenizer, *, pad_to_multiple_of: int | None = None, label_pad_token_id: int = IGNORE_INDEX):
        super().__init__(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.label_pad_token_id = label_pad_token_id

    def __call__(self, features: list, *, length: int | None = None, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:  # fmt: skip
        batch, _ = self._pad_inputs(features, length)
        width = batch["input_ids"].shape[1]
        for key in self._other_keys(features):
            values = [f[key] for f in features]
            if key in ("labels", *_LABEL_ALIASES):
                longest = max(len(v) for v in values)
                if longest > width:
                    raise ValueError(f"a row has {longest} labels but only {width} tokens: give one label per token")
                batch["labels"] = self._pad(values, width, self.label_pad_token_id)
            else:
                batch[key] = _stack(key, values)
        return batch


class DataCollatorForSeq2Seq(DataCollatorWithPadding):
    """Pads the encoder inputs, and the target `labels` with `label_pad_token_id` (-100) to `label_length` (a fixed
    length: one compiled shape) or to the longest label rounded up to `pad_to_multiple_of`. The model builds its
    decoder inputs from the labels."""

    def __init__(self, tokenizer, *, pad_to_multiple_of: int | None = None, label_pad_token_id: int = IGNORE_INDEX,
                 label_length: int | None = None):  # fmt: skip
        super().__init__(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.label_pad_token_id = label_pad_token_id
        self.label_length = label_length

    def __call__(self, features: list, *, length: int | None = None, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:  # fmt: skip
        batch, _ = self._pad_inputs(features, length)
        for key in self._other_keys(features):
            values = [f[key] for f in features]
            if key in ("labels", *_LABEL_ALIASES):
                longest = max(len(v) for v in values)
                if self.label_length is not None and longest > self.label_length:
                    raise ValueError(f"a target has {longest} tokens, more than label_length={self.label_length}: "
                                     "tokenize with max_target_length <= label_length")  # fmt: skip
                width = self.label_length or self._width(longest, None)
                batch["labels"] = self._pad(values, width, self.label_pad_token_id)
            else:
                batch[key] = _stack(key, values)
        return batch


class DataCollatorForLanguageModeling(DataCollatorWithPadding):
    """Language-model batches, with transformers' `DataCollatorForLanguageModeling` semantics.

    mlm=True: each token that is not special (nor padding) is selected with probability `mlm_probability`; a
    selected token becomes [MASK] with probability `mask_replace_prob`, a uniformly random token with
    `random_replace_prob`, and stays itself otherwise; `labels` hold the original id at selected tokens and -100
    everywhere else. The draws are transformers' numpy ones in the same order, so the same generator state gives
    the same batch as `DataCollatorForLanguageModeling(return_tensors="np", seed=...)`.
    mlm=False (causal LM): `labels` are the input ids with -100 on padding (and on `segment_ids` 0); the loss shifts
    them. Without a pad token, padding uses the EOS id: padded slots are masked out either way.
    """

    def __init__(self, tokenizer, *, mlm: bool = True, mlm_probability: float = 0.15, mask_replace_prob: float = 0.8,
                 random_replace_prob: float = 0.1, pad_to_multiple_of: int | None = None,
                 seed: int | None = None):  # fmt: skip
        super().__init__(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        if mlm and tokenizer.mask_token_id is None:
            raise ValueError("this tokenizer has no mask token, which masked language modeling needs: pass mlm=False "
                             "for causal language modeling, or add a mask token")  # fmt: skip
        for name, p in (("mlm_probability", mlm_probability), ("mask_replace_prob", mask_replace_prob),
                        ("random_replace_prob", random_replace_prob)):  # fmt: skip
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        if mask_replace_prob + random_replace_prob > 1:
            raise ValueError(f"mask_replace_prob + random_replace_prob must not exceed 1, got {mask_replace_prob} + "
                             f"{random_replace_prob}")  # fmt: skip
        self.mlm = mlm
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self._rng = np.random.default_rng(seed)  # used when the caller passes no rng

    @property
    def needs_rng(self) -> bool:
        return self.mlm

    def __call__(self, features: list, *, length: int | None = None, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:  # fmt: skip
        if features and not isinstance(features[0], Mapping):  # bare id lists, as transformers' LM collator takes
            features = [{"input_ids": list(f)} for f in features]
        batch, _ = self._pad_inputs(features, length)
        ids = batch["input_ids"]
        padding = batch["attention_mask"] == 0
        if not self.mlm:
            no_loss = padding | (batch["segment_ids"] == 0) if "segment_ids" in batch else padding
            batch["labels"] = np.where(no_loss, IGNORE_INDEX, ids).astype(np.int32)
            return batch
        if "special_tokens_mask" in features[0]:
            special = self._pad([f["special_tokens_mask"] for f in features], ids.shape[1], 1).astype(bool)
        else:
            special = np.isin(ids, self.tokenizer.all_special_ids)
        rng = self._rng if rng is None else rng
        batch["input_ids"], batch["labels"] = self.mask_tokens(ids, special | padding, rng)
        return batch

    def _pad_id(self, widths: np.ndarray, width: int) -> int:
        if self.tokenizer.pad_token_id is None and not self.mlm and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        return super()._pad_id(widths, width)

    def mask_tokens(self, ids: np.ndarray, no_mask: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(masked input ids, labels) for `ids [B, T]`, never selecting where `no_mask` is True."""
        inputs, labels = ids.copy(), ids.copy()
        probability = np.full(ids.shape, self.mlm_probability)
        probability[no_mask] = 0
        selected = rng.binomial(1, probability, size=probability.shape).astype(bool)
        labels[~selected] = IGNORE_INDEX
        replaced = rng.binomial(1, self.mask_replace_prob, size=ids.shape).astype(bool) & selected
        inputs[replaced] = self.tokenizer.mask_token_id
        if self.mask_replace_prob == 1 or self.random_replace_prob == 0:
            return inputs, labels
        # of the selected tokens not replaced by [MASK], the share that becomes a random token
        scaled = self.random_replace_prob / (1 - self.mask_replace_prob)
        randomized = rng.binomial(1, scaled, size=ids.shape).astype(bool) & selected & ~replaced
        inputs[randomized] = rng.integers(0, len(self.tokenizer), size=int(randomized.sum()), dtype=np.int64)
        return inputs, labels


def collator_for(task: str, tokenizer, **kwargs):
    """The default collator of a training task (names as `tokenize_dataset` takes them); `kwargs` go to it."""
    task = canonical_task(task)
    if task == "token-classification":
        return DataCollatorForTokenClassification(tokenizer, **kwargs)
    if task == "fill-mask":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, **kwargs)
    if task == "text-generation":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False, **kwargs)
    if task == "text2text-generation":
        return DataCollatorForSeq2Seq(tokenizer, **kwargs)
    return DataCollatorWithPadding(tokenizer, **kwargs)


def _stack(key: str, values: list) -> np.ndarray:
    """One array of per-example values: integers as int32, floats as float32."""
    try:
        array = np.asarray(values)
    except ValueError:
        array = np.asarray(values, dtype=object)
    if array.dtype == object:
        raise ValueError(f"{key!r} has rows of different lengths, which this collator does not pad; use the task's "
                         "collator (collator_for) or drop the field")  # fmt: skip
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise ValueError(f"{key!r} holds {array.dtype} values; a batch takes numbers only")
