"""`fill-mask`: transformers' `FillMaskPipeline`, on a jitted core.

    fill = jf.task("fill-mask", model=path)
    fill("Paris is the [MASK] of France.")                    # the 5 best tokens: score, token, token_str, sequence
    fill("Paris is the [MASK] of France.", targets=["capital", "city"], top_k=1)
    fill("[MASK] is the [MASK] of France.")                  # several masks: one list of candidates per mask

Results follow the pipeline exactly: a single text gives a list of candidates (a list of such lists when it holds
several mask tokens, whose `sequence`s then keep the special tokens, as transformers does); a list of texts gives one
result per text, except that a list of one text gives that text's result. Scores are the softmax over the whole
vocabulary at each mask, restricted afterwards to `targets` when given (so target scores do not sum to one). A target
that is not a vocabulary entry is replaced by the first token it tokenizes to, with a warning, as transformers does.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.tasks.base import Task, check_positive_int

log = logging.getLogger("jaxformers")


def mask_probabilities(model, batch: dict[str, jax.Array], masks: int = 1) -> dict[str, jax.Array]:
    """The pure core: vocabulary probabilities `[B, masks, V]` (float32) at the positions `batch["mask_positions"]`
    (`[B, >= masks]`, padded with 0) of a padded batch; the other fields are the model's inputs.

    The head runs at the mask positions only (`logits_positions`, `core.modeling.at_positions`): the vocabulary
    projection of every other token would be ~22% of a BERT-base forward's products, and the full `[B, T, V]`
    logits of a long batch hundreds of MB."""
    batch = dict(batch)
    positions = batch.pop("mask_positions")[:, :masks]
    logits = model(**batch, logits_positions=positions).logits  # [B, masks, V]
    return {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1)}


class FillMask(Task):
    names = ("fill-mask",)
    heads = ("masked-lm",)
    defaults = {"top_k": 5, "targets": None, "tokenizer_kwargs": None}
    core = staticmethod(mask_probabilities)

    def __init__(self, model, tokenizer, **options):
        if tokenizer is not None and tokenizer.mask_token_id is None:
            raise ValueError(
                "fill-mask: the tokenizer does not define a mask token (transformers refuses it too); use the "
                "tokenizer of a masked language model, or set tokenizer.mask_token"
            )
        self._target_cache: dict[tuple[str, ...], np.ndarray] = {}
        super().__init__(model, tokenizer, **options)

    # ------------------------------------------------------------------------------------------------ options
    def check_options(self, params: dict[str, Any]) -> None:
        check_positive_int("top_k", params["top_k"])
        kwargs = params["tokenizer_kwargs"]
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"tokenizer_kwargs must be a dict of tokenizer options, got {type(kwargs).__name__}")
        if params["targets"] is not None:
            self.target_ids(params["targets"])  # bad targets fail at construction, as in transformers

    def target_ids(self, targets) -> np.ndarray:
        """The vocabulary ids of `targets` (str or list of str), as transformers' `get_target_ids`: a target that is
        not a vocabulary entry becomes the first token it tokenizes to (with a warning), an empty one is dropped
        (with a warning), duplicates are merged. Cached per targets, so the warnings appear once."""
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise TypeError(f"targets must be a string or a list of strings, got {targets!r:.80}")
        key = tuple(targets)
        if key not in self._target_cache:
            vocab = self.tokenizer.get_vocab()
            ids = []
            for target in targets:
                id_ = vocab.get(target)
                if id_ is None:
                    pieces = self.tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                                            return_token_type_ids=False, max_length=1, truncation=True,
                                            return_tensors=None)["input_ids"]  # fmt: skip
                    if not pieces:
                        log.warning("The specified target token `%s` does not exist in the model vocabulary. We "
                                    "cannot replace it with anything meaningful, ignoring it", target)  # fmt: skip
                        continue
                    id_ = pieces[0]
                    log.warning("The specified target token `%s` does not exist in the model vocabulary. Replacing "
                                "with `%s`.", target, self.tokenizer.convert_ids_to_tokens(id_))  # fmt: skip
                ids.append(int(id_))
            ids = list(set(ids))  # transformers' order (a set of ints), which decides ties between equal scores
            if not ids:
                raise ValueError(
                    f"fill-mask: none of the targets {list(targets)} gives a token (at least one target must be "
                    "provided when passed); pass words of the vocabulary, or targets=None for the whole vocabulary"
                )
            self._target_cache[key] = np.asarray(ids)
        return self._target_cache[key]

    # ---------------------------------------------------------------------------------------------- the steps
    def preprocess(self, item, *, tokenizer_kwargs=None, **_) -> list[dict]:
        if not isinstance(item, str):
            raise TypeError(f"fill-mask takes a string or a list of strings, got {type(item).__name__}: {item!r:.80}")
        enc = self.tokenizer(item, **{**(tokenizer_kwargs or {}), "return_tensors": None})
        ids = enc["input_ids"]
        if ids and isinstance(ids[0], list):  # several rows (return_overflowing_tokens): the pipeline reads the first
            enc = {k: v[0] for k, v in enc.items() if isinstance(v, list) and v and isinstance(v[0], list)}
            ids = enc["input_ids"]
        mask_id = self.tokenizer.mask_token_id
        positions = [i for i, t in enumerate(ids) if t == mask_id]
        if not positions:
            raise ValueError(
                f"No mask_token ({self.tokenizer.mask_token}) found on the input {item!r:.80}; put "
                f"{self.tokenizer.mask_token} where the word to predict is"
            )
        feature = {"input_ids": list(ids), "attention_mask": list(enc.get("attention_mask") or [1] * len(ids))}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = list(enc["token_type_ids"])
        feature["mask_positions"] = positions
        return [feature]

    def process(self, items: list, params: dict[str, Any]) -> list:
        per_item = [self.preprocess(item, **params) for item in items]
        flat = [f for feats in per_item for f in feats]
        if not flat:
            return []
        most = max(len(f["mask_positions"]) for f in flat)
        masks = 1 << (most - 1).bit_length()  # a power of two: a handful of programs whatever the mask counts
        outputs = self.run(flat, static={"masks": masks})
        target_ids = None if params["targets"] is None else self.target_ids(params["targets"])
        return [self.postprocess(item, [f], [o], top_k=params["top_k"], target_ids=target_ids)
                for item, f, o in zip(items, flat, outputs)]  # fmt: skip

    def postprocess(self, item, features, outputs, *, top_k=5, target_ids=None, **_):
        feature, probs = features[0], outputs[0]["probs"]
        positions = feature["mask_positions"]
        probs = probs[: len(positions)]
        if target_ids is not None:
            top_k = min(top_k, len(target_ids))
            probs = probs[:, target_ids]
        if top_k > probs.shape[-1]:
            raise ValueError(
                f"top_k={top_k} is more than the {probs.shape[-1]} tokens of the vocabulary (transformers fails "
                f"there too: selected index k out of range); pass top_k <= {probs.shape[-1]}"
            )
        single = len(positions) == 1
        ids = np.asarray(feature["input_ids"])
        pad = self.tokenizer.pad_token_id
        result = []
        for row, pos in zip(probs, positions):
            order = np.argsort(-row, kind="stable")[:top_k]
            candidates = []
            for j in order:
                token = int(target_ids[j]) if target_ids is not None else int(j)
                tokens = ids.copy()
                tokens[pos] = token
                if pad is not None:
                    tokens = tokens[tokens != pad]  # as the pipeline, which may see padding from tokenizer_kwargs
                # with several masks the other mask tokens stay visible, so the special tokens are kept
                sequence = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=single)
                candidates.append({"score": float(row[j]), "token": token,
                                   "token_str": self.tokenizer.decode([token]), "sequence": sequence})  # fmt: skip
            result.append(candidates)
        return result[0] if single else result

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and len(inputs) == 1:  # the pipeline unwraps a list of one text
            return result[0]
        return result
