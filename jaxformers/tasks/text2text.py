"""`text2text-generation`, `summarization`, `translation`: transformers 4.57's seq2seq pipelines (5.x removed them),
on `jf.generate` for encoder-decoders (T5, BART, mBART, Marian).

    summarize = jf.task("summarization", model=path)
    summarize("A long article ...", max_new_tokens=60)      # [{'summary_text': '...'}]
    translate = jf.task("translation_en_to_fr", model=t5_path)
    translate(["How old are you?", "Hello"])                # [{'translation_text': ...}, {'translation_text': ...}]
    translate = jf.task("translation", model=mbart_path, src_lang="en_XX", tgt_lang="ro_RO")
    jf.task("text2text-generation", model=path)("question: ... context: ...", num_beams=2, num_return_sequences=2)

Results are 4.57's: per input a list of `num_return_sequences` records `{"generated_text"}` (`{"summary_text"}`,
`{"translation_text"}`), or `{"generated_token_ids"}` (`summary_token_ids`, ...: a numpy int64 array starting with
the decoder start token) with `return_tensors=True`. A single string gives its list; a list of strings gives a list
of records when each input has one, else a list of lists.

Generation settings are the pipeline's, in its order of precedence: the pipeline's defaults (`max_new_tokens=256`,
`num_beams=4`) < the model's generation config < options given to `jf.task` < the model config's
`task_specific_params[task]` (T5: "summarize: " and "translate English to French: " prefixes, beam settings) < the
call's options. (That order is 4.57's: a checkpoint's task_specific_params win over options given at construction;
give an option per call to override them.) Greedy and beam search give the tokens transformers gives; sampling
(`do_sample=True`, which needs `num_beams=1`: beam sampling is not implemented) draws from `key` (an int seed or a
`jax.random` key; default 0).

Translation: mBART-style tokenizers (those with `_build_translation_inputs`) encode the source in `src_lang` and
force `tgt_lang` as the first generated token; both are required (as in 4.57). Other tokenizers (T5, Marian) ignore
the languages: T5 takes its prefix from `task_specific_params["translation_<src>_to_<tgt>"]`, Marian models know
their languages (multilingual Marian targets are chosen in the text, e.g. ">>fra<< ..."). `jf.task("translation")`
without languages uses the first `translation_*` entry of `task_specific_params`, with a warning, as 4.57 does.

Inputs run in batches of `batch_size` (sorted by length, sources right-padded); each result equals the pipeline's
for that input alone (4.57 generates one input at a time): rows are cut back to their own length.
"""

from __future__ import annotations

import enum
import logging
import warnings
from typing import Any, ClassVar

import jax
import numpy as np

from jaxformers.generation.config import HF_UNSUPPORTED_KEYS, GenerationConfig
from jaxformers.tasks.base import Task

log = logging.getLogger("jaxformers")

_UNSET = object()
GENERATION_FIELDS = GenerationConfig.fields()
# the pipelines' `_default_generation_config`
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}
# transformers' `GenerationConfig()` as a dict of the fields jaxformers supports (its max_length default is 20, which
# `generate` reads as "20 new tokens": jaxformers spells that None)
HF_MAX_LENGTH = 20
HF_DEFAULTS = {**GenerationConfig().to_dict(), "max_length": HF_MAX_LENGTH}


class ReturnType(enum.Enum):
    TENSORS = 0
    TEXT = 1


def hf_view(config) -> dict[str, Any]:
    """A generation config (jaxformers' or transformers') as a dict of the supported fields with transformers'
    defaults (max_length 20 where jaxformers has None)."""
    if config is None:
        return dict(HF_DEFAULTS)
    if not isinstance(config, GenerationConfig):
        if not hasattr(config, "to_dict"):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(config).__name__}")
        config = GenerationConfig.from_dict(config.to_dict())
    d = config.to_dict()
    if d["max_length"] is None:
        d["max_length"] = HF_MAX_LENGTH
    return d


def fill_model_defaults(settings: dict[str, Any], model_config: dict[str, Any]) -> None:
    """transformers' `use_model_defaults`: every setting still at transformers' default takes the model's generation
    config value where that one differs from the default (and `temperature=0.0` means greedy)."""
    for k, value in model_config.items():
        if settings.get(k) == HF_DEFAULTS[k] and value != HF_DEFAULTS[k]:
            settings[k] = value
    if settings.get("temperature") == 0.0:
        settings["do_sample"] = False


class Text2TextGeneration(Task):
    names = ("text2text-generation",)
    heads = ("seq2seq-lm",)
    return_name: ClassVar[str] = "generated"
    defaults: ClassVar[dict[str, Any]] = {
        "return_tensors": None, "return_text": None, "clean_up_tokenization_spaces": None, "truncation": None,
        "stop_sequence": None, "generation_config": None, "key": None,
        **{name: _UNSET for name in GENERATION_FIELDS},
    }  # fmt: skip

    def __init__(self, model, tokenizer, **options):
        super().__init__(model, tokenizer, **options)
        if not getattr(model, "is_encoder_decoder", False):
            raise ValueError(
                f"the {self.name!r} task needs an encoder-decoder model (T5, BART, mBART, Marian, ...), but "
                f"{type(model).__name__} is not one; for a decoder-only model use jf.task('text-generation', ...)"
            )
        self.task_key = self._task_key()
        self.prefix, self.settings = self._pipeline_settings()

    # ------------------------------------------------------------------------------------------------ options
    def _task_key(self) -> str:
        """The `task_specific_params` entry (and, for translation, the languages) this pipeline reads."""
        return self.name

    def check_options(self, params: dict[str, Any]) -> None:
        stop = params["stop_sequence"]
        if stop is not None and not isinstance(stop, str):
            raise TypeError(f"stop_sequence must be a string, got {type(stop).__name__}: {stop!r:.80}")
        key = params["key"]
        if key is not None and not isinstance(key, (int, np.integer, jax.Array)):
            raise TypeError(f"key must be an int seed or a jax.random key, got {type(key).__name__}")

    def _generation_options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: params[k] for k in GENERATION_FIELDS if params.get(k, _UNSET) is not _UNSET}

    def _model_settings(self) -> dict[str, Any]:
        return hf_view(getattr(self.model, "generation_config", None))

    def _pipeline_settings(self) -> tuple[str, dict[str, Any]]:
        """(prefix, settings) as the 4.57 pipeline builds its generation config at construction: its defaults, then
        the model's generation config, then the options given, then `task_specific_params[task]`, then the
        tokenizer's pad token."""
        settings = {**HF_DEFAULTS, **PIPELINE_DEFAULTS}
        fill_model_defaults(settings, self._model_settings())
        settings.update(self._generation_options(self.options))
        # a model's own max_length (Whisper's 448, say) wins over the pipeline's default max_new_tokens
        if (settings["max_new_tokens"] == PIPELINE_DEFAULTS["max_new_tokens"] and settings["max_length"] is not None
                and settings["max_length"] != HF_MAX_LENGTH):  # fmt: skip
            settings["max_new_tokens"] = None
        hf_config = self.model.config.to_hf()
        prefix = hf_config.get("prefix")
        specific = dict((hf_config.get("task_specific_params") or {}).get(self.task_key) or {})
        if "prefix" in specific:
            prefix = specific.pop("prefix")
        unsupported = sorted(k for k in specific if k in HF_UNSUPPORTED_KEYS)
        if unsupported:
            log.warning("%s: task_specific_params[%r] sets %s, which jaxformers' generate does not implement; they "
                        "are ignored", self.name, self.task_key, unsupported)  # fmt: skip
        settings.update({k: v for k, v in specific.items() if k in HF_DEFAULTS})
        if settings["pad_token_id"] is None and self.tokenizer.pad_token_id is not None:
            settings["pad_token_id"] = self.tokenizer.pad_token_id
        return prefix or "", settings

    # ---------------------------------------------------------------------------------------------- the steps
    def preprocess(self, item, **params) -> dict[str, Any]:
        """One input text -> {"ids": source token ids, "extra": generate options the tokenizer asks for}."""
        if not isinstance(item, str):
            raise TypeError(f"{self.name} takes a string or a list of strings, got {type(item).__name__}: {item!r:.80}")
        enc = self.tokenizer(self.prefix + item, truncation=self._truncation(params), return_tensors=None)
        return {"ids": list(enc["input_ids"]), "extra": {}}

    @staticmethod
    def _truncation(params):
        truncation = params["truncation"]
        return False if truncation is None else truncation

    def check_inputs(self, input_length: int, min_length, max_length) -> None:
        """The pipeline's length warnings (none for text2text-generation)."""

    def _final_settings(self, params: dict[str, Any], call: dict[str, Any], extra: dict[str, Any]) -> GenerationConfig:
        """What `model.generate` runs with in the 4.57 pipeline: the pipeline's settings (or the call's
        `generation_config`), the model's defaults for what is still at transformers' default, then the call's
        options and what the tokenizer added (mBART's forced_bos_token_id)."""
        given = {k: call[k] for k in GENERATION_FIELDS if k in call}
        clash = sorted(set(given) & set(extra))
        if clash:  # as 4.57, where generate(**model_inputs, **generate_kwargs) gets the keyword twice
            raise TypeError(
                f"{self.name}: {clash} is set by the tokenizer's translation inputs (the target language); do not "
                "pass it as well, or change tgt_lang instead"
            )
        settings = dict(self.settings) if params["generation_config"] is None else hf_view(params["generation_config"])
        fill_model_defaults(settings, self._model_settings())
        settings.update(given)
        settings.update(extra)
        stop = params["stop_sequence"]
        if stop is not None:
            ids = self.tokenizer.encode(stop, add_special_tokens=False)
            if not ids:
                raise ValueError(f"stop_sequence {stop!r} encodes to no token; give a non-empty stop string")
            if len(ids) > 1:
                warnings.warn(
                    f"stop_sequence {stop!r} is {len(ids)} tokens; generation stops on its first token only, as in "
                    "transformers 4.57", UserWarning, stacklevel=4,
                )  # fmt: skip
            settings["eos_token_id"] = ids[0]
        # transformers reads max_length=20 from a config (not from the call) as "20 new tokens"
        if settings["max_length"] == HF_MAX_LENGTH and "max_length" not in given:
            settings["max_length"] = None
        from jaxformers.generation.config import resolve

        return resolve(GenerationConfig(), **settings)

    def process(self, items: list, params: dict[str, Any]) -> list:
        import jaxformers as jf

        if not items:  # (4.57 returns [] for [] without looking at the options either)
            return []
        call = self._call_options
        sources = [self.preprocess(item, **params) for item in items]
        extra = sources[0]["extra"]
        config = self._final_settings(params, call, extra)
        # the pipeline's warnings read the pipeline's own settings, not the call's generation_config
        lengths = {k: call.get(k, self.settings[k]) for k in ("min_length", "max_length")}
        for s in sources:
            self.check_inputs(len(s["ids"]), lengths["min_length"], lengths["max_length"])

        key = params["key"]
        if key is None or isinstance(key, (int, np.integer)):
            key = jax.random.key(0 if key is None else int(key))
        nr = config.num_return_sequences
        order = sorted(range(len(sources)), key=lambda i: -len(sources[i]["ids"]))
        rows_of: dict[int, list[np.ndarray]] = {}
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None and 0 <= pad < self.model.config.vocab_size else 0
        for b, lo in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[lo : lo + self.batch_size]
            width = max(len(sources[i]["ids"]) for i in chunk)
            ids = np.full((len(chunk), width), pad, np.int32)
            mask = np.zeros((len(chunk), width), np.int32)
            for r, i in enumerate(chunk):  # right padding: the encoder masks it, positions of real tokens stay
                n = len(sources[i]["ids"])
                ids[r, :n], mask[r, :n] = sources[i]["ids"], 1
            out = jf.generate(self.model, ids, mask, generation_config=config, key=jax.random.fold_in(key, b))
            for r, i in enumerate(chunk):
                rows_of[i] = self._cut(out[r * nr : (r + 1) * nr], config)

        ret = ReturnType.TEXT
        if params["return_tensors"] is not None:
            ret = ReturnType.TENSORS if params["return_tensors"] else ReturnType.TEXT
        clean = bool(params["clean_up_tokenization_spaces"])
        return [[self._record(row, ret, clean) for row in rows_of[i]] for i in range(len(sources))]

    @staticmethod
    def _cut(rows: np.ndarray, config: GenerationConfig) -> list[np.ndarray]:
        """One input's rows as `generate` returns them for that input alone: each row ends at its first EOS after
        the decoder start token (or runs to the end), and all are cut to the longest (shorter ones keep the pad
        tokens written after their EOS). Batched with longer outputs, they would carry more padding."""
        eos = np.asarray(config.eos_token_ids, np.int64)
        ends = []
        for row in rows:
            hits = np.flatnonzero(np.isin(row[1:], eos))
            ends.append(int(hits[0]) + 2 if hits.size else len(row))
        width = max(ends)
        return [np.asarray(row[:width], np.int64) for row in rows]

    def _record(self, row: np.ndarray, ret: ReturnType, clean: bool) -> dict:
        if ret is ReturnType.TENSORS:
            return {f"{self.return_name}_token_ids": row}
        text = self.tokenizer.decode(row.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if clean:  # transformers 4.57 cleans up after any tokenizer (5.x and our tokenizers skip BPE ones)
            from jaxformers.tokenization.base import clean_up_tokenization

            text = clean_up_tokenization(text)
        return {f"{self.return_name}_text": text}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, tuple):
            raise TypeError(
                f"{self.name} takes a string or a list of strings, got a tuple; pass list(...) for several inputs"
            )
        self._call_options = {k: v for k, v in kwargs.items() if k != "batch_size"}
        try:
            results = super().__call__(inputs, **kwargs)
        finally:
            self._call_options = {}
        if isinstance(inputs, list) and all(len(r) == 1 for r in results):
            return [r[0] for r in results]
        return results

    _call_options: ClassVar[dict[str, Any]] = {}  # (per call: __call__ sets it on the instance)


class Summarization(Text2TextGeneration):
    names = ("summarization",)
    return_name: ClassVar[str] = "summary"

    def check_inputs(self, input_length: int, min_length, max_length) -> None:
        if min_length is None or max_length is None:
            return
        if max_length < min_length:
            log.warning("summarization: min_length=%s is larger than max_length=%s", min_length, max_length)
        if input_length < max_length:
            log.warning(
                "summarization: max_length is %s, but the input is only %s tokens; summaries are usually shorter than "
                "their input, so consider a smaller max_length, e.g. summarizer('...', max_length=%s)",
                max_length, input_length, input_length // 2,
            )  # fmt: skip


class Translation(Text2TextGeneration):
    names = ("translation",)
    return_name: ClassVar[str] = "translation"
    defaults: ClassVar[dict[str, Any]] = {**Text2TextGeneration.defaults, "src_lang": None, "tgt_lang": None}

    def _translation_key(self) -> str:
        """4.57's task name: `translation_<src>_to_<tgt>` (as `jf.task("translation_en_to_fr")` gives both
        languages); `translation` alone defaults to the first `translation_*` entry of `task_specific_params`."""
        src, tgt = self.options["src_lang"], self.options["tgt_lang"]
        if src is not None and tgt is not None:
            return f"translation_{src}_to_{tgt}"
        for key in self.model.config.to_hf().get("task_specific_params") or {}:
            if key.startswith("translation"):
                warnings.warn(f'"translation" task was used, instead of "translation_XX_to_YY", defaulting to '
                              f'"{key}"', UserWarning, stacklevel=4)  # fmt: skip
                return key
        return "translation"

    def check_options(self, params: dict[str, Any]) -> None:
        super().check_options(params)
        for name in ("src_lang", "tgt_lang"):
            if params[name] is not None and not isinstance(params[name], str):
                raise TypeError(f"{name} must be a language code string, got {params[name]!r:.80}")

    def _task_key(self) -> str:
        key = self._translation_key()
        # 4.57 reads the languages of a translation_XX_to_YY name when neither is given
        self._init_langs = (self.options["src_lang"], self.options["tgt_lang"])
        if self._init_langs == (None, None):
            self._init_langs = self._name_langs(key) or (None, None)
        return key

    @staticmethod
    def _name_langs(key: str) -> tuple[str, str] | None:
        parts = key.split("_")
        return (parts[1], parts[3]) if len(parts) == 4 else None

    def _languages(self) -> tuple[str | None, str | None]:
        """The languages of a call (4.57's precedence): those the call gives; if it gives none, those of a
        `translation_XX_to_YY` task name; else those given to `jf.task`."""
        src, tgt = self._call_options.get("src_lang"), self._call_options.get("tgt_lang")
        if src is None and tgt is None:
            return self._name_langs(self.task_key) or self._init_langs
        return (self._init_langs[0] if src is None else src), (self._init_langs[1] if tgt is None else tgt)

    def preprocess(self, item, **params) -> dict[str, Any]:
        build = getattr(self.tokenizer, "_build_translation_inputs", None)
        if build is None:  # T5, Marian: the languages are in the prefix or the model
            return super().preprocess(item, **params)
        if not isinstance(item, str):
            raise TypeError(f"translation takes a string or a list of strings, got {type(item).__name__}: {item!r:.80}")
        src, tgt = self._languages()
        if src is None or tgt is None:
            raise ValueError(
                f"translation with {type(self.tokenizer).__name__} needs src_lang and tgt_lang (language codes such "
                f"as 'en_XX'), got src_lang={src!r}, tgt_lang={tgt!r}; pass both to jf.task('translation', ..., "
                "src_lang=..., tgt_lang=...) or to the call"
            )
        enc = build(item, return_tensors=None, src_lang=src, tgt_lang=tgt, truncation=self._truncation(params))
        extra = {k: int(enc[k]) for k in ("forced_bos_token_id",) if k in enc}
        return {"ids": list(enc["input_ids"]), "extra": extra}

    def check_inputs(self, input_length: int, min_length, max_length) -> None:
        if max_length is not None and input_length > 0.9 * max_length:
            log.warning(
                "translation: the input is %s tokens, more than 0.9 * max_length (%s); consider a larger max_length, "
                "e.g. translator('...', max_length=400)", input_length, max_length,
            )  # fmt: skip
