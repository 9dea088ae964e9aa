"""Generation settings with the field names, defaults and precedence rules of `transformers.GenerationConfig` (5.x).

`GenerationConfig` is a frozen, hashable dataclass (lists are stored as tuples), so it can be a static `jax.jit`
argument. Fields hold HF's *resolved* defaults (what `generate()` uses when neither the caller nor the model's
`generation_config.json` sets a value: `top_k=50`, `temperature=1.0`, ...), except `max_length`, whose `None` means
HF's length default: 20 new tokens, capped at the model's `max_position_embeddings` (see `max_length_for`).

Precedence, as in `GenerationMixin.generate()`: explicit keyword arguments (`resolve`) > the model's generation
config > HF's defaults. The model's generation config is `generation_config.json` when the checkpoint has one, and
otherwise it is built from `config.json` (`from_model_config`); HF never merges the two.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# Beam sampling (do_sample=True with num_beams > 1) is not implemented by the decoding loop.
SUPPORTS_BEAM_SAMPLE = False

_METADATA_KEYS = frozenset({"transformers_version", "_from_model_config", "_commit_hash"})

# Attributes of `transformers.GenerationConfig` that jaxformers does not implement: read from a model config (which
# also holds unrelated architecture keys) only to record them in `GenerationConfig.ignored`.
# fmt: off
HF_UNSUPPORTED_KEYS = frozenset({
    "max_time", "stop_strings", "use_mtp", "use_cache", "cache_implementation", "cache_config", "max_cache_len",
    "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty", "renormalize_logits",
    "remove_invalid_values", "exponential_decay_length_penalty", "sequence_bias", "token_healing", "guidance_scale",
    "watermarking_config", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate", "encoder_no_repeat_ngram_size", "is_assistant", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "prompt_lookup_num_tokens",
    "max_matching_ngram_size", "assistant_early_exit", "assistant_lookbehind", "target_lookbehind",
    "assistant_ensemble_weight", "speculation_type", "compile_config", "disable_compile",
    "continuous_batching_config", "low_memory", "penalty_alpha", "dola_layers", "diversity_penalty",
    "num_beam_groups", "constraints", "force_words_ids", "prefill_chunk_size",
})
# fmt: on

# HF's length default when neither `max_length` nor `max_new_tokens` is set (`_prepare_generated_length`).
DEFAULT_MAX_NEW_TOKENS = 20

# Fields for which an explicit `None` in `resolve(**overrides)` stands for HF's default (where HF's `generate()`
# treats None like the default, e.g. `do_sample=None` is greedy, or crashes); every other field takes `None`
# literally, as HF does (e.g. `top_k=None` disables top-k, `max_length=None` restores the length default).
_NOT_NONE = frozenset(
    {"do_sample", "num_beams", "num_return_sequences", "min_length", "early_stopping", "length_penalty"}
)


def _freeze(value: Any) -> Any:
    """Lists and dicts (JSON values) as nested tuples, so that they are hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, np.integer):
        return int(value)
    return value


def _int_or_ints(value: Any) -> int | tuple[int, ...] | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return int(value)


def _is_token_seq(seq: Any) -> bool:
    return isinstance(seq, tuple) and bool(seq) and all(isinstance(t, int) and t >= 0 for t in seq)


def _ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What `jf.generate` does: the supported subset of `transformers.GenerationConfig`, with HF's names and defaults.

    `ignored` records the keys that were read (from a JSON file or a dict) but are not supported, as `(key, value)`
    pairs; it takes no part in equality or hashing. Build with `from_dict` / `from_pretrained` / `from_model_config`,
    merge call arguments with `resolve`, which also validates.
    """

    # length
    max_new_tokens: int | None = None
    max_length: int | None = None  # None: HF's default (20 new tokens, capped at max_position_embeddings)
    min_new_tokens: int | None = None
    min_length: int = 0
    # strategy
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    early_stopping: bool | str = False
    length_penalty: float = 1.0
    # logits manipulation (None disables, as in HF)
    temperature: float | None = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    min_p: float | None = None
    repetition_penalty: float | None = 1.0
    no_repeat_ngram_size: int | None = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    # special tokens
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | tuple[int, ...] | None = None
    # unsupported keys that were read, for the record
    ignored: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self):
        norm = {
            "eos_token_id": _int_or_ints(self.eos_token_id),
            "forced_eos_token_id": _int_or_ints(self.forced_eos_token_id),
            "decoder_start_token_id": _int_or_ints(self.decoder_start_token_id),
            "suppress_tokens": _ints(self.suppress_tokens),
            "begin_suppress_tokens": _ints(self.begin_suppress_tokens),
            "bad_words_ids": _freeze(self.bad_words_ids),
            "ignored": _freeze(self.ignored),
        }
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                norm[name] = float(value)
        for name, value in norm.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------------------------- construction

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Names of the supported HF generation options."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "ignored")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> GenerationConfig:
        """A generation config from the contents of a `generation_config.json` (HF `GenerationConfig.from_dict`).

        A `None` value means unset (HF's default is used); unknown keys with a value are recorded in `ignored`.
        """
        known = set(cls.fields())
        values = {k: v for k, v in config_dict.items() if k in known and v is not None}
        ignored = tuple(
            (k, v) for k, v in config_dict.items() if k not in known and k not in _METADATA_KEYS and v is not None
        )
        return cls(**values, ignored=ignored)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        """A generation config read from a JSON file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise TypeError(f"{path} must hold a JSON object, not {type(data).__name__}.")
        return cls.from_dict(data)

    @classmethod
    def from_model_config(cls, config_dict: dict[str, Any]) -> GenerationConfig:
        """A generation config from a model's `config.json` dict (HF `GenerationConfig.from_model_config`).

        Takes every generation option found at the top level (token ids, and legacy options such as `max_length`
        or `num_beams` that old configs carry), then fills options still unset from the first of the `decoder`,
        `generator`, `text_config` sub-configs, as HF does. Architecture keys are not generation options and are
        not recorded; unsupported HF generation options are recorded in `ignored`.
        """
        known = cls.fields()
        top = {k: v for k, v in config_dict.items() if v is not None}
        values = {k: top[k] for k in known if k in top}
        if top.get("force_bos_token_to_be_generated", False) and "bos_token_id" in values:
            values["forced_bos_token_id"] = values["bos_token_id"]
        for name in ("decoder", "generator", "text_config"):
            sub = config_dict.get(name)
            if sub:
                if isinstance(sub, dict):
                    values.update({k: sub[k] for k in known if k not in values and sub.get(k) is not None})
                break
        ignored = tuple((k, v) for k, v in top.items() if k in HF_UNSUPPORTED_KEYS)
        return cls(**values, ignored=ignored)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs) -> GenerationConfig:
        """The model's generation config, as HF loads it: `generation_config.json` if the checkpoint has one, else
        `from_model_config(config.json)`. A local directory or a hub repo id (`revision`, `cache_dir`, `token`,
        `local_files_only` are passed to the hub)."""
        from jaxformers.hub import HubOptions, resolve_file

        opts = HubOptions.pop_from(hub_kwargs)
        if hub_kwargs:
            raise TypeError(f"Unexpected keyword arguments: {sorted(hub_kwargs)}.")
        path = resolve_file(name_or_path, "generation_config.json", opts, required=False)
        if path is not None:
            return cls.from_json_file(path)
        path = resolve_file(name_or_path, "config.json", opts, required=False)
        if path is None:
            raise FileNotFoundError(f"Neither generation_config.json nor config.json found in {name_or_path}.")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_model_config(data)

    def replace(self, **changes) -> GenerationConfig:
        """A copy with some fields changed (no validation; see `resolve`)."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise ValueError(f"Unknown generation option(s) {unknown}. Supported options: {', '.join(self.fields())}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The supported options as a JSON-ready dict (tuples as lists)."""

        def thaw(v):
            return [thaw(x) for x in v] if isinstance(v, tuple) else v

        return {name: thaw(getattr(self, name)) for name in self.fields()}

    # ---------------------------------------------------------------------------------------------- derived values

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """`eos_token_id` as a tuple (empty when unset)."""
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def forced_eos_token_ids(self) -> tuple[int, ...]:
        """`forced_eos_token_id` as a tuple (empty when unset)."""
        eos = self.forced_eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def generation_pad_token_id(self) -> int | None:
        """The pad token `generate()` writes after a row finishes: `pad_token_id`, else the first EOS token (HF's
        `_prepare_special_tokens`)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def is_beam_search(self) -> bool:
        return self.num_beams > 1

    @property
    def min_tokens_to_keep(self) -> int:
        """HF's `min_tokens_to_keep` for the sampling warpers: 1, or with beams the number of EOS tokens + 1 (2
        when there is no EOS), so that beams can always continue."""
        if self.num_beams > 1:
            return len(self.eos_token_ids) + 1 if self.eos_token_id is not None else 2
        return 1

    def max_length_for(self, prompt_len: int, max_position_embeddings: int | None = None) -> int:
        """HF's final `max_length` (prompt + generated tokens) for a prompt of `prompt_len` columns (padding
        included), as `_prepare_generated_length` computes it: `max_new_tokens + prompt_len` if `max_new_tokens` is
        set (it takes precedence over `max_length`); else `max_length` if set; else
        `min(20 + prompt_len, max_position_embeddings)`. Raises ValueError, as HF does, when the prompt already
        fills it."""
        if self.max_new_tokens is not None:
            max_length = self.max_new_tokens + prompt_len
        elif self.max_length is not None:
            max_length = self.max_length
        else:
            max_length = DEFAULT_MAX_NEW_TOKENS + prompt_len
            if max_position_embeddings is not None:
                max_length = min(max_length, max_position_embeddings)
        if prompt_len >= max_length:
            raise ValueError(
                f"The prompt is {prompt_len} tokens long, but `max_length` is {max_length}: nothing can be generated. "
                "Increase `max_length`, or better, set `max_new_tokens`."
            )
        return max_length

    def min_length_for(self, prompt_len: int) -> int:
        """HF's final `min_length`: `min_new_tokens + prompt_len` if `min_new_tokens` is set, else `min_length`."""
        if self.min_new_tokens is not None:
            return self.min_new_tokens + prompt_len
        return self.min_length

    # ------------------------------------------------------------------------------------------------- validation

    def validate(self) -> GenerationConfig:
        """Raise one ValueError naming the first invalid setting and how to fix it; return self when valid.

        Sampling settings (temperature, top_k, top_p, min_p) are checked only when `do_sample=True`: HF ignores
        them otherwise (a model's `generation_config.json` may hold e.g. `temperature=0.0` for greedy decoding).
        """
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"`early_stopping` must be True, False or 'never', but is {self.early_stopping!r}. Use True to stop "
                "beam search once `num_beams` hypotheses are done, False for HF's heuristic, 'never' for canonical "
                "beam search."
            )
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ValueError(
                f"`max_new_tokens` must be greater than 0, but is {self.max_new_tokens}. Pass a value >= 1."
            )
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"`max_length` must be greater than 0, but is {self.max_length}. Prefer `max_new_tokens`.")
        if self.min_new_tokens is not None and self.min_new_tokens < 0:
            raise ValueError(f"`min_new_tokens` must be >= 0, but is {self.min_new_tokens}.")
        if self.min_length < 0:
            raise ValueError(f"`min_length` must be >= 0, but is {self.min_length}.")
        if self.num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1, but is {self.num_beams}. Use 1 for greedy or sampling.")
        if self.num_return_sequences < 1:
            raise ValueError(f"`num_return_sequences` must be >= 1, but is {self.num_return_sequences}.")
        if self.num_beams > 1 and self.do_sample and not SUPPORTS_BEAM_SAMPLE:
            raise ValueError(
                f"Beam sampling (do_sample=True with num_beams={self.num_beams}) is not supported by jaxformers. "
                "Use do_sample=False for beam search, or num_beams=1 for sampling."
            )
        if self.num_return_sequences > 1:
            if self.num_beams == 1 and not self.do_sample:
                raise ValueError(
                    f"Greedy decoding (do_sample=False, num_beams=1) returns one sequence per prompt, but "
                    f"`num_return_sequences` is {self.num_return_sequences}. Set do_sample=True, or "
                    f"num_beams >= {self.num_return_sequences}, or num_return_sequences=1."
                )
            if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"`num_return_sequences` ({self.num_return_sequences}) must be <= `num_beams` ({self.num_beams}). "
                    f"Increase num_beams to at least {self.num_return_sequences}."
                )
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ValueError(
                f"`repetition_penalty` must be > 0, but is {self.repetition_penalty}. 1.0 means no penalty; values "
                "above 1.0 discourage repetition."
            )
        if self.do_sample:
            if self.temperature is not None and not self.temperature > 0:
                raise ValueError(
                    f"`temperature` must be > 0 when sampling, but is {self.temperature}. For greedy decoding set "
                    "do_sample=False."
                )
            if self.top_k is not None and self.top_k < 0:
                raise ValueError(f"`top_k` must be >= 0 (0 disables it), but is {self.top_k}.")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise ValueError(f"`top_p` must be in (0, 1] (1.0 disables it), but is {self.top_p}.")
            if self.min_p is not None and not 0 <= self.min_p <= 1:
                raise ValueError(f"`min_p` must be in [0, 1] (typical values 0.01-0.2), but is {self.min_p}.")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"`no_repeat_ngram_size` must be >= 0 (0 disables it), but is {self.no_repeat_ngram_size}."
            )
        words = self.bad_words_ids
        if words is not None and (not words or not all(_is_token_seq(seq) for seq in words)):
            raise ValueError(
                f"`bad_words_ids` must be a non-empty list of non-empty lists of token ids >= 0, but is {words}. "
                "Build it with tokenizer(words, add_special_tokens=False).input_ids."
            )
        if self.suppress_tokens is not None:
            for name in ("forced_bos_token_id", "forced_eos_token_id"):
                forced = getattr(self, name)
                forced = set() if forced is None else {forced} if isinstance(forced, int) else set(forced)
                if forced and forced <= set(self.suppress_tokens):
                    raise ValueError(
                        f"Every token in `{name}` ({sorted(forced)}) is also in `suppress_tokens`: all logits would "
                        f"be -inf at the forcing step. Remove them from one of the two (to delay EOS, use "
                        "`min_new_tokens`)."
                    )
        return self

    def check_token_ids(self, vocab_size: int, rows: int) -> GenerationConfig:
        """Check the special token ids against the model's vocabulary, as transformers 5.x treats them; return self.

        `eos_token_id` ids outside `[0, vocab_size)` are allowed: the model never produces them, so generation runs
        to its length limit, as in HF. The pad token (`pad_token_id`, else the first EOS id) is written after a row
        finishes; in greedy and sampling decoding HF also feeds it to the model for the rows that finished while
        others run, and an id outside the vocabulary then fails in the embedding (IndexError). That case is refused
        here, before anything runs: a batch of `rows > 1` rows, no beams, an EOS id the model can produce. Beam
        search never feeds the pad to the model and only writes it into the output, as HF does.
        """
        pad = self.generation_pad_token_id
        if pad is None or 0 <= pad < vocab_size or self.num_beams > 1 or rows < 2:
            return self
        if not any(0 <= e < vocab_size for e in self.eos_token_ids):
            return self
        origin = "pad_token_id" if self.pad_token_id is not None else "the first eos_token_id (used as the pad)"
        raise ValueError(
            f"{origin} is {pad}, outside the vocabulary [0, {vocab_size}): a row that finishes while others run is "
            f"padded with it and fed to the model, which has no embedding for it (transformers fails there with "
            f"an IndexError). Pass pad_token_id= an id in [0, {vocab_size}), e.g. the tokenizer's pad_token_id or "
            "eos_token_id."
        )


def resolve(base: Any = None, /, **overrides) -> GenerationConfig:
    """The generation config `generate(**overrides)` runs with: `overrides` > `base` (the model's generation config,
    e.g. `GenerationConfig.from_pretrained(dir)`; a `transformers.GenerationConfig` is converted) > HF's defaults,
    validated.

    As in HF, an override is taken as given, `None` included (`top_k=None` disables top-k); for `do_sample`,
    `num_beams`, `num_return_sequences`, `min_length`, `early_stopping` and `length_penalty`, None stands for HF's
    default (`do_sample=None` is greedy, as in HF). Pass only the options the caller gave. Unknown options raise
    ValueError.
    """
    if base is None:
        base = GenerationConfig()
    elif not isinstance(base, GenerationConfig):
        if not hasattr(base, "to_dict"):
            raise TypeError(f"base must be a GenerationConfig, got {type(base).__name__}.")
        base = GenerationConfig.from_dict(base.to_dict())
    defaults = GenerationConfig()
    changes = {k: getattr(defaults, k) if v is None and k in _NOT_NONE else v for k, v in overrides.items()}
    return base.replace(**changes).validate()
