"""`text-generation`: transformers' `TextGenerationPipeline` (5.x), on `jf.generate` (jitted, shape-bucketed).

    generate = jf.task("text-generation", model=path)
    generate("Once upon a time", max_new_tokens=20, do_sample=False)   # [{'generated_text': 'Once upon a time...'}]
    generate(["a", "b"], max_new_tokens=8, return_full_text=False)      # one list of records per prompt
    generate([{"role": "user", "content": "Hi!"}], max_new_tokens=32)   # a chat: the conversation plus the reply
    generate("a", do_sample=True, num_return_sequences=3, key=42)       # sampling, reproducible with `key`

Results follow the pipeline: per prompt a list of `num_return_sequences` records `{"generated_text": ...}` (the
prompt plus the new text; only the new text with `return_full_text=False`; `{"generated_token_ids": [...]}` with
`return_tensors=True`); for a chat, `generated_text` is the conversation with the new assistant message appended (or,
when the chat ends with an assistant message, that message continued). A list of prompts or chats gives a list of
those lists.

Generation settings are the pipeline's: the call's options over the model's `generation_config.json`, and for what
neither sets the pipeline's defaults `max_new_tokens=256, do_sample=True, temperature=0.7` (the sampling ones only
when sampling) and the tokenizer's pad token. Pass `do_sample=False` for greedy decoding, which (as beam search)
gives the same tokens as transformers. Sampling cannot reproduce torch's random numbers: it draws from `key` (an int
seed or a `jax.random` key; default 0, so a call is reproducible for the same inputs, key and `batch_size`).

Prompts run in batches of `batch_size` (left-padded, sorted by length), whose results equal the pipeline's prompt by
prompt (its default `batch_size=1`): rows are cut back to their own length. Settings whose meaning depends on the
padded length (`max_length` or `min_length` without their `*_new_tokens` counterpart) run each prompt alone.
`stop_sequence` is applied to the generated tokens afterwards as transformers' `StopStringCriteria` stops a row
(greedy and sampling; not with beam search, where stopping changes which beams survive).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxformers.generation.config import GenerationConfig
from jaxformers.tasks.base import Task

_UNSET = object()
GENERATION_FIELDS = GenerationConfig.fields()
# transformers' `TextGenerationPipeline._default_generation_config`
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
_SAMPLING = ("temperature", "top_k", "top_p", "min_p")


class ReturnType(enum.Enum):
    TENSORS = 0
    NEW_TEXT = 1
    FULL_TEXT = 2


def is_message(message) -> bool:
    """A chat message as transformers recognises one: a dict with "role" and "content"."""
    return isinstance(message, Mapping) and "role" in message and "content" in message


def return_type(params: dict[str, Any]) -> ReturnType | None:
    """The pipeline's return type from `return_full_text` / `return_tensors` / `return_text` (None: not given)."""
    full, tensors, text = params.get("return_full_text"), params.get("return_tensors"), params.get("return_text")
    if full is not None:
        if text is not None:
            raise ValueError("`return_text` is mutually exclusive with `return_full_text`; give one of them")
        if tensors is not None:
            raise ValueError("`return_full_text` is mutually exclusive with `return_tensors`; give one of them")
        return ReturnType.FULL_TEXT if full else ReturnType.NEW_TEXT
    if tensors is not None:  # as in transformers, any value given (even False) asks for token ids
        if text is not None:
            raise ValueError("`return_text` is mutually exclusive with `return_tensors`; give one of them")
        return ReturnType.TENSORS
    return None


def config_diff(config: GenerationConfig | None) -> dict[str, Any]:
    """The fields of `config` that differ from the defaults (transformers' `to_diff_dict`): what it "sets"."""
    if config is None:
        return {}
    default = GenerationConfig()
    return {k: getattr(config, k) for k in GENERATION_FIELDS if getattr(config, k) != getattr(default, k)}


def stop_index(tokens: list[str], start: int, stops: list[str]) -> int | None:
    """Index of the first token at or after `start` that completes one of `stops` (transformers' StopStringCriteria:
    the stop string may begin in earlier tokens, the prompt included, and must end inside that token), else None."""
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    text = "".join(tokens)
    gen_start = offsets[start] if start < len(tokens) else len(text)
    best = None
    for stop in stops:
        if not stop:
            continue
        p = text.find(stop, max(0, gen_start - len(stop) + 1))  # the first occurrence ending past gen_start
        if p < 0:
            continue
        last_char = p + len(stop) - 1
        i = max(j for j in range(start, len(tokens)) if offsets[j] <= last_char)
        best = i if best is None else min(best, i)
    return best


class TextGeneration(Task):
    names = ("text-generation",)
    heads = ("causal-lm",)
    defaults = {
        "return_full_text": None, "return_tensors": None, "return_text": None, "clean_up_tokenization_spaces": None,
        "prefix": None, "handle_long_generation": None, "stop_sequence": None, "truncation": None,
        "padding": None, "add_special_tokens": None, "max_length": _UNSET, "continue_final_message": None,
        "skip_special_tokens": None, "tokenizer_encode_kwargs": None, "tools": None, "documents": None,
        "generation_config": None, "key": None,
        **{name: _UNSET for name in GENERATION_FIELDS if name != "max_length"},
    }  # fmt: skip

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, tokenizer, **options)
        self._init_return_type = return_type(self.options)

    # ------------------------------------------------------------------------------------------------ options
    def check_options(self, params: dict[str, Any]) -> None:
        hole = params["handle_long_generation"]
        if hole is not None and hole != "hole":
            raise ValueError(f"{hole!r} is not a valid value for `handle_long_generation`; expected None or 'hole'")
        stop = params["stop_sequence"]
        strings = isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)
        if stop is not None and not (isinstance(stop, str) or strings):
            raise TypeError(f"stop_sequence must be a string or a list of strings, got {stop!r:.80}")
        for name in ("tokenizer_encode_kwargs",):
            if params[name] is not None and not isinstance(params[name], dict):
                raise TypeError(f"{name} must be a dict, got {type(params[name]).__name__}")
        config = params["generation_config"]
        if config is not None and not isinstance(config, GenerationConfig):
            if not hasattr(config, "to_dict"):
                raise TypeError(f"generation_config must be a GenerationConfig, got {type(config).__name__}")

    def is_single(self, inputs) -> bool:
        return bool(inputs) and is_message(inputs[0])

    def generation_kwargs(self, params: dict[str, Any]) -> tuple[GenerationConfig | None, dict[str, Any]]:
        """(base config, keyword options) for `jf.generate`, as the pipeline's `_prepare_generate_kwargs`: the given
        options, plus the pipeline's defaults for what neither they nor the model's generation config set."""
        given = {k: params[k] for k in GENERATION_FIELDS if params.get(k, _UNSET) is not _UNSET}
        base = params["generation_config"]
        if base is not None and not isinstance(base, GenerationConfig):
            base = GenerationConfig.from_dict(base.to_dict())
        set_params = {**config_diff(getattr(self.model, "generation_config", None)), **config_diff(base), **given}
        defaults = dict(PIPELINE_DEFAULTS)
        if self.tokenizer.pad_token_id is not None:
            defaults["pad_token_id"] = self.tokenizer.pad_token_id
        added = {k: v for k, v in defaults.items()
                 if k not in set_params and not (k == "max_new_tokens" and "max_length" in set_params)}  # fmt: skip
        if not {**set_params, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in _SAMPLING}
        return base, {**given, **added}

    # ---------------------------------------------------------------------------------------------- the steps
    def preprocess(self, item, **params) -> dict[str, Any]:
        """One prompt -> {"ids": prompt token ids, "prompt_len": tokens of the prompt in the output (0 for an empty
        prompt, which starts from the BOS token as transformers' generate does), "item": the input}."""
        tok_kwargs = {k: params[k] for k in ("add_special_tokens", "truncation", "padding") if params[k] is not None}
        if params["max_length"] is not _UNSET and params["max_length"] is not None:
            tok_kwargs["max_length"] = params["max_length"]
        tok_kwargs.update(params["tokenizer_encode_kwargs"] or {})
        if isinstance(item, (list, tuple)):
            if not all(is_message(m) for m in item):
                raise ValueError("When passing chat dicts as input, each dict must have a 'role' and 'content' key.")
            tok_kwargs.pop("add_special_tokens", None)  # the chat template writes the special tokens
            cont = params["continue_final_message"]
            if cont is None:
                cont = item[-1]["role"] == "assistant"
            enc = self.tokenizer.apply_chat_template(
                list(item), add_generation_prompt=not cont, continue_final_message=cont, return_dict=True,
                tools=params["tools"], documents=params["documents"], **tok_kwargs,
            )  # fmt: skip
        elif isinstance(item, str):
            prefix = self._prefix(params)
            enc = self.tokenizer(prefix + item, **tok_kwargs, return_tensors=None)
        else:
            raise TypeError(
                f"text-generation takes a string, a chat (a list of {{'role': ..., 'content': ...}} dicts) or a list "
                f"of them; got {type(item).__name__}: {item!r:.80}"
            )
        ids = list(enc["input_ids"])
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return {"ids": ids, "prompt_len": len(ids), "item": item}

    def _prefix(self, params) -> str:
        prefix = params["prefix"]
        if prefix is None:
            prefix = getattr(self.model.config, "extra", {}).get("prefix") or ""
        return prefix

    def process(self, items: list, params: dict[str, Any]) -> list:
        import jaxformers as jf

        base, gen = self.generation_kwargs(params)
        prefix = self._prefix(params)
        if prefix:  # a total length has to include the prefix's tokens, which are not part of the prompt
            n = len(self.tokenizer(prefix, add_special_tokens=bool(params["add_special_tokens"]),
                                   return_tensors=None)["input_ids"])  # fmt: skip
            view = {**config_diff(getattr(self.model, "generation_config", None)), **config_diff(base), **gen}
            for length, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
                if length in view and new not in view:
                    gen[length] = view[length] + n
        config = _resolved(self.model, base, gen)
        stops = params["stop_sequence"]
        stops = [stops] if isinstance(stops, str) else list(stops or [])
        if stops and config.num_beams > 1:
            raise ValueError("stop_sequence is not supported with beam search (num_beams > 1) in jaxformers; "
                             "use greedy decoding or sampling, or cut the texts afterwards")  # fmt: skip

        prompts = [self.preprocess(item, **params) for item in items]
        for p in prompts:
            if not p["ids"]:  # transformers' generate starts an empty prompt from the BOS token
                if config.bos_token_id is None:
                    raise ValueError("`bos_token_id` has to be defined when no `input_ids` are provided (an empty "
                                     "prompt); give a non-empty prompt or set bos_token_id")  # fmt: skip
                p["ids"], p["prompt_len"] = [config.bos_token_id], 0
            if params["handle_long_generation"] == "hole":
                self._hole(p, config)

        # lengths counted from the padded prompt (max_length, min_length) would differ in a batch
        alone = config.max_new_tokens is None or (config.min_length > 0 and config.min_new_tokens is None)
        size = 1 if alone else self.batch_size
        key = params["key"]
        if key is None or isinstance(key, (int, np.integer)):
            key = jax.random.key(0 if key is None else int(key))
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]["ids"]))
        rows_of: dict[int, list[list[int]]] = {}
        nr = config.num_return_sequences
        for b, lo in enumerate(range(0, len(order), size)):
            chunk = order[lo : lo + size]
            width = max(len(prompts[i]["ids"]) for i in chunk)
            pad = self.tokenizer.pad_token_id
            pad = pad if pad is not None and 0 <= pad < self.model.config.vocab_size else 0
            ids = np.full((len(chunk), width), pad, np.int32)
            mask = np.zeros((len(chunk), width), np.int32)
            for r, i in enumerate(chunk):
                n = len(prompts[i]["ids"])
                ids[r, width - n :], mask[r, width - n :] = prompts[i]["ids"], 1
            out = jf.generate(self.model, ids, mask, generation_config=base, key=jax.random.fold_in(key, b), **gen)
            for r, i in enumerate(chunk):
                n = len(prompts[i]["ids"])
                rows_of[i] = [out[r * nr + s, width - n :].tolist() for s in range(nr)]

        ret = self._call_return_type or self._init_return_type or ReturnType.FULL_TEXT
        results = []
        for i, p in enumerate(prompts):
            rows = self._cut(rows_of[i], len(p["ids"]), config, stops)
            results.append([self._record(p, row, ret, params) for row in rows])
        return results

    def _hole(self, p: dict, config: GenerationConfig) -> None:
        """`handle_long_generation="hole"`: keep the prompt's last tokens so that prompt plus new tokens fit the
        tokenizer's `model_max_length`."""
        cur = len(p["ids"])
        new = config.max_new_tokens
        if new is None:
            new = (config.max_length or 0) - cur
            if new < 0:
                raise ValueError("We cannot infer how many new tokens are expected (max_length < prompt length)")
        limit = self.tokenizer.model_max_length
        if cur + new > limit:
            keep = limit - new
            if keep <= 0:
                raise ValueError(
                    f"handle_long_generation='hole' cannot make room for {new} new tokens: the tokenizer's "
                    f"model_max_length is {limit}; lower max_new_tokens"
                )
            p["ids"] = p["ids"][-keep:]
            p["prompt_len"] = min(p["prompt_len"], keep)

    def _cut(self, rows: list[list[int]], n: int, config: GenerationConfig, stops: list[str]) -> list[list[int]]:
        """A prompt's rows as the pipeline returns them when the prompt runs alone: each row ends at its first EOS
        (or stop string, after which the pipeline's generate writes padding) and all are cut to the longest."""
        eos = set(config.eos_token_ids)
        pad = config.generation_pad_token_id
        ends = []
        for row in rows:
            end = next((j + 1 for j in range(n, len(row)) if row[j] in eos), len(row))
            if stops:
                strings = [self.tokenizer.decode([t]) for t in row[:end]]
                s = stop_index(strings, n, stops)
                if s is not None and s + 1 < end:
                    end = s + 1
                    row[end:] = [0 if pad is None else pad] * (len(row) - end)
            ends.append(end)
        width = max(ends) if ends else n
        return [row[:width] for row in rows]

    def _record(self, p: dict, row: list[int], ret: ReturnType, params) -> dict:
        if ret is ReturnType.TENSORS:
            return {"generated_token_ids": row}
        skip = params["skip_special_tokens"]
        text = self.tokenizer.decode(row[p["prompt_len"] :], skip_special_tokens=True if skip is None else skip,
                                     clean_up_tokenization_spaces=params["clean_up_tokenization_spaces"])  # fmt: skip
        item = p["item"]
        if ret is ReturnType.FULL_TEXT:
            if isinstance(item, str):
                text = item + text
            else:
                cont = params["continue_final_message"]
                if cont is None:
                    cont = item[-1]["role"] == "assistant"
                if cont:  # a prefilled assistant message, continued
                    text = list(item)[:-1] + [{"role": item[-1]["role"], "content": item[-1]["content"] + text}]
                else:
                    text = list(item) + [{"role": "assistant", "content": text}]
        return {"generated_text": text}

    def __call__(self, inputs, **kwargs):
        # the call's return options override the construction's as a whole, as the pipeline merges them
        self._call_return_type = return_type(kwargs)
        try:
            return super().__call__(inputs, **kwargs)
        finally:
            self._call_return_type = None

    _call_return_type: ReturnType | None = None


def _resolved(model, base, gen) -> GenerationConfig:
    """The settings `jf.generate(model, ..., generation_config=base, **gen)` runs with (validated): the same function
    generate uses, so that cutting rows (EOS, pad) and batching decisions see exactly its settings."""
    from jaxformers.generation import _settings

    return _settings(model, base, dict(gen))
