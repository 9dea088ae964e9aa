"""`text2text-generation`, `summarization` and `translation` against transformers 4.57's pipelines (5.x removed
them), on the same folders: tiny random T5 (SentencePiece Unigram tokenizer, `task_specific_params` with the
"summarize: " / "translate English to ...: " prefixes and beam settings), BART (byte-level BPE), mBART-50 and Marian
(their tokenizers trained here, tests/tokenizer_fixtures.py). Large initialisations make the random models write
varied text (`test_comparisons_are_not_vacuous`).

The 4.57 side runs in ONE subprocess for the module (the `.venv/tf4` overlay of `tf4.py`), started before our side
computes so that the two overlap; it builds one pipeline per entry of `PIPELINES` and also reports the warnings
4.57 logs (the length checks) and raises.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import tf4
import tokenizer_fixtures as fx
from hf_helpers import randomize_vectors

import jaxformers as jf
from jaxformers.generation import TRACES

TEXTS = ["the quick fox jumps", "hello world", "", "Hello world, the brown dog jumps over the fox"]
T5_MAX_TOKENS = 36  # the T5 tokenizer's model_max_length: "summarize: " + TEXTS[3] is longer (truncation cuts it)
# The summarization and translation entries set the same generation options, so that their cases share compiled
# programs (a few seconds each on CPU). translation_en_to_de first: 4.57's `pipeline("translation")` takes the first
# translation_* entry.
_BEAM_PARAMS = {"early_stopping": True, "length_penalty": 2.0, "min_length": 5, "no_repeat_ngram_size": 3,
                "num_beams": 4}  # fmt: skip
TASK_PARAMS = {
    "summarization": {**_BEAM_PARAMS, "max_length": 20, "prefix": "summarize: "},
    "translation_en_to_de": {**_BEAM_PARAMS, "max_length": 40, "prefix": "translate English to German: "},
    "translation_en_to_fr": {**_BEAM_PARAMS, "max_length": 40, "prefix": "translate English to French: "},
}

# pipeline name -> (folder kind, task, construction options): built the same way by 4.57 and by jf.task
PIPELINES = {
    "t5_sum": ("t5", "summarization", {}),
    "t5_sum_init": ("t5", "summarization", {"num_beams": 2, "no_repeat_ngram_size": 2}),
    "t5_t2t": ("t5", "text2text-generation", {}),
    "t5_t2t_init": ("t5", "text2text-generation", {"num_beams": 1, "max_new_tokens": 12, "return_tensors": True}),
    "t5_fr": ("t5", "translation_en_to_fr", {}),
    "t5_tr": ("t5", "translation", {}),
    "bart_sum": ("bart", "summarization", {}),
    "mbart_tr": ("mbart50", "translation", {"src_lang": "en_XX", "tgt_lang": "ro_RO"}),
    "mbart_nolang": ("mbart50", "translation", {}),
    "marian_fr": ("marian", "translation_en_to_fr", {}),
}
GREEDY = {"num_beams": 1, "max_new_tokens": 12}
# every generate option at once (one compiled program): max_length counts only without max_new_tokens (the
# pipeline's default 256 would win), and stop_sequence's first token becomes the EOS token
BEAMS = {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": None, "max_length": 9, "length_penalty": 0.5,
         "early_stopping": False, "no_repeat_ngram_size": 2, "min_length": 4,
         "stop_sequence": "<extra_id_94>"}  # fmt: skip
BART = {"max_new_tokens": 14, "num_return_sequences": 2}  # the pipeline's default num_beams=4
MBART = {"num_beams": 1, "max_new_tokens": 8}
# case name -> (pipeline, positional args, keyword args): run by 4.57 and by us
CASES = {
    # the pipelines' defaults (num_beams=4, max_new_tokens=256) under T5's task_specific_params
    "summarization_single": ("t5_sum", (TEXTS[0],), {}),
    "summarization_one_item_list": ("t5_sum", ([TEXTS[1]],), {}),
    "summarization_list": ("t5_sum", (TEXTS,), {"max_new_tokens": 12}),
    # 4.57 applies task_specific_params after the options given at construction: they lose
    "summarization_params_over_construction": ("t5_sum_init", (TEXTS,), {"max_new_tokens": 12}),
    "summarization_truncation": ("t5_sum", (TEXTS,), {"max_new_tokens": 12, "truncation": True}),
    "translation_en_to_fr": ("t5_fr", (TEXTS,), {"max_new_tokens": 12}),
    "translation_defaults_to_first_entry": ("t5_tr", (TEXTS,), {"max_new_tokens": 12}),
    "summarization_options_tensors": ("t5_sum", (TEXTS,), {**BEAMS, "return_tensors": True}),
    "summarization_options_text": ("t5_sum", (TEXTS,), BEAMS),
    "text2text_greedy_list": ("t5_t2t", (TEXTS,), GREEDY),
    "text2text_greedy_tensors": ("t5_t2t", (TEXTS,), {**GREEDY, "return_tensors": True}),
    "text2text_return_text_ignored": ("t5_t2t", (TEXTS,), {**GREEDY, "return_text": False}),
    # no max_new_tokens: the config's max_length=20 counts the decoder start token as a prompt (20 new tokens)
    "text2text_length_default": ("t5_t2t", (TEXTS,), {"num_beams": 1, "max_new_tokens": None, "return_tensors": True}),
    "text2text_empty_list": ("t5_t2t", ([],), GREEDY),
    "options_at_construction": ("t5_t2t_init", (TEXTS,), {}),
    "options_at_construction_overridden": ("t5_t2t_init", (TEXTS,), {"return_tensors": False, "max_new_tokens": 5}),
    "bart_clean_up": ("bart_sum", (TEXTS,), {**BART, "clean_up_tokenization_spaces": True}),
    "bart_no_clean_up": ("bart_sum", (TEXTS,), BART),
    "mbart_languages": ("mbart_tr", (TEXTS,), {**MBART, "return_tensors": True}),
    "mbart_languages_text": ("mbart_tr", (TEXTS,), MBART),
    "mbart_call_source_language": ("mbart_tr", (TEXTS,), {**MBART, "src_lang": "de_DE"}),
    "mbart_call_languages": ("mbart_nolang", (TEXTS,), {**MBART, "src_lang": "en_XX", "tgt_lang": "ro_RO"}),
    "marian": ("marian_fr", ([">>fra<< " + t for t in TEXTS],), {"num_beams": 1, "max_new_tokens": 10}),
    # 4.57 refuses these: so do we
    "greedy_several_sequences": ("t5_t2t", (TEXTS[1],), {"num_beams": 1, "num_return_sequences": 2}),
    "more_sequences_than_beams": ("t5_t2t", (TEXTS[1],), {"num_beams": 2, "num_return_sequences": 3}),
    "not_a_string": ("t5_t2t", ([TEXTS[0], 3],), GREEDY),
    "mbart_without_languages": ("mbart_nolang", (TEXTS[0],), {"max_new_tokens": 4}),
}
ERRORS = {
    "greedy_several_sequences": (ValueError, "returns one sequence per prompt"),
    "more_sequences_than_beams": (ValueError, r"must be <= `num_beams`"),
    "not_a_string": (TypeError, "takes a string or a list of strings, got int"),
    "mbart_without_languages": (ValueError, "needs src_lang and tgt_lang"),
}
MATCHED = [name for name in CASES if name not in ERRORS]

# tiny models: odd sizes, large initialisations (random models at the default scale repeat one token)
_T5 = dict(d_model=48, d_kv=10, d_ff=37, num_layers=2, num_heads=6, relative_attention_num_buckets=8,
           relative_attention_max_distance=20, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
           dropout_rate=0.0, initializer_factor=8.0)  # fmt: skip
_BART = dict(d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=6, decoder_attention_heads=6,
             encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
             activation_dropout=0.0, init_std=1.0)  # fmt: skip


def _save(model, tokenizer_dir: Path, out: Path) -> Path:
    randomize_vectors(model)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def _build(kind: str, root: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    out = root / f"{kind}-model"
    if kind == "t5":
        tok_dir = fx.t5_dir(root)
        (tok_dir / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "T5Tokenizer", "model_max_length": T5_MAX_TOKENS})
        )
        vocab = len(transformers.AutoTokenizer.from_pretrained(tok_dir))  # the pieces plus 100 extra ids
        cfg = transformers.T5Config(vocab_size=vocab, task_specific_params=TASK_PARAMS, **_T5)
        model = transformers.T5ForConditionalGeneration(cfg).eval()
        with torch.no_grad():  # a larger EOS embedding (tied to the LM head): some rows of a batch end early
            model.shared.weight[1] *= 2.0
        return _save(model, tok_dir, out)
    if kind == "bart":
        tok_dir = fx.bart_dir(root)
        cfg = transformers.BartConfig(vocab_size=400, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                      decoder_start_token_id=2, forced_eos_token_id=2, **_BART)  # fmt: skip
        _save(transformers.BartForConditionalGeneration(cfg).eval(), tok_dir, out)
        # a generation_config.json (read by both sides) that lets the model write only spaces, punctuation and a few
        # letters: its text then has the " ," and " ." that clean_up_tokenization_spaces removes
        tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
        allowed = {2, *tok.convert_tokens_to_ids(["Ġ", ",", ".", "!", "a", "b", "x"])}
        generation = transformers.GenerationConfig.from_pretrained(out)
        generation.suppress_tokens = [i for i in range(400) if i not in allowed]
        generation.save_pretrained(out)
        return out
    if kind == "mbart50":
        tok_dir = fx.mbart_dir(root, "mbart50", "MBart50Tokenizer")
        vocab = len(transformers.AutoTokenizer.from_pretrained(tok_dir))
        cfg = transformers.MBartConfig(vocab_size=vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                       decoder_start_token_id=2, forced_eos_token_id=2, **_BART)  # fmt: skip
        return _save(transformers.MBartForConditionalGeneration(cfg).eval(), tok_dir, out)
    if kind == "marian":
        tok_dir = fx.marian_dir(root)
        vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
        pad = vocab["<pad>"]
        cfg = transformers.MarianConfig(vocab_size=len(vocab), pad_token_id=pad, decoder_start_token_id=pad,
                                        eos_token_id=0, forced_eos_token_id=0, scale_embedding=True,
                                        **_BART)  # fmt: skip
        return _save(transformers.MarianMTModel(cfg).eval(), tok_dir, out)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("text2text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' MarianTokenizer asks for sacremoses, which it never uses
        return {kind: _build(kind, root) for kind in ("t5", "bart", "mbart50", "marian")}


# ---------------------------------------------------------------------------------- the 4.57 side, in one process
_RUNNER = r"""
import json, logging, sys, warnings
sys.path.insert(0, sys.argv[3])
import tf4, transformers

class Grab(logging.Handler):
    messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

grab = Grab(logging.WARNING)
logger = logging.getLogger("transformers.pipelines.text2text_generation")
logger.addHandler(grab)
logger.setLevel(logging.WARNING)
logger.propagate = False
request = json.loads(open(sys.argv[1]).read())
out = {"version": transformers.__version__, "pipelines": {}}
for name, spec in request.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = transformers.pipeline(spec["task"], model=spec["model"], **spec["init_kwargs"])
    results = []
    for call in spec["calls"]:
        grab.messages.clear()
        try:
            value = tf4._encode(pipe(*call["args"], **call["kwargs"]))
        except Exception as e:
            value = {"__v4error__": [type(e).__name__, str(e), [c.__name__ for c in type(e).__mro__]]}
        results.append({"value": value, "logged": list(grab.messages)})
    construction = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    out["pipelines"][name] = {"construction_warnings": construction, "results": results}
open(sys.argv[2], "w").write(json.dumps(out))
"""


class V4Run:
    """The module's 4.57 subprocess, started at once and read on first use."""

    def __init__(self, folders):
        problem = tf4.overlay_problem()
        if problem:
            raise tf4.OverlayMissing(f"{problem}; install it with `bash scripts/setup_env.sh --test`")
        request = {}
        for name, (kind, task, init) in PIPELINES.items():
            calls = [{"args": list(a), "kwargs": k} for p, a, k in CASES.values() if p == name]
            request[name] = {"task": task, "model": str(folders[kind]), "init_kwargs": init, "calls": calls}
        self.tmp = tempfile.TemporaryDirectory(prefix="tf4-t2t-")
        self.req, self.out = Path(self.tmp.name) / "request.json", Path(self.tmp.name) / "results.json"
        self.req.write_text(json.dumps(request))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tf4.OVERLAY), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore",
               # one torch thread: it runs beside our side, and spinning OpenMP threads would slow both
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
        # a file, not a pipe that could fill up and block; open while the process runs, closed in `results`
        self.log = open(Path(self.tmp.name) / "log.txt", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(self.req), str(self.out), str(Path(tf4.__file__).parent)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._results = None

    def results(self) -> dict:
        if self._results is None:
            self.proc.wait(timeout=600)
            self.log.seek(0)
            err = self.log.read()
            self.log.close()
            if self.proc.returncode != 0 or not self.out.exists():
                raise RuntimeError(f"the transformers 4.57 subprocess failed ({self.proc.returncode}):\n{err[-4000:]}")
            payload = json.loads(self.out.read_text(), object_hook=tf4._decode)
            assert payload["version"].startswith(tf4.VERSION_PREFIX), payload["version"]
            self._results = {"construction": {}, "cases": {}}
            for name in PIPELINES:
                entry = payload["pipelines"][name]
                self._results["construction"][name] = entry["construction_warnings"]
                names = [c for c, (p, _, _) in CASES.items() if p == name]
                self._results["cases"].update(zip(names, entry["results"]))
            self.tmp.cleanup()
        return self._results


@pytest.fixture(scope="module")
def v4_run(folders):
    run = V4Run(folders)
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


class Grab(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def length_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith(("summarization:", "translation:"))]


@pytest.fixture(scope="module")
def pipes(folders, v4_run):
    """Our tasks, built like PIPELINES (the 4.57 subprocess is already running), with their construction warnings."""
    out, construction = {}, {}
    for name, (kind, task, init) in PIPELINES.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[name] = jf.task(task, model=folders[kind], **init)
        construction[name] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return out, construction


@pytest.fixture(scope="module")
def ours(pipes):
    """Every case through our tasks (while 4.57 computes): name -> {"value": result or exception, "logged": [...]}."""
    grab = Grab()
    logger = logging.getLogger("jaxformers")
    logger.addHandler(grab)
    results = {}
    try:
        for name, (pipe, args, kwargs) in CASES.items():
            grab.messages = []
            try:
                value = pipes[0][pipe](*args, **kwargs)
            except Exception as e:  # noqa: BLE001  (compared with what 4.57 raised)
                value = e
            results[name] = {"value": value, "logged": length_warnings(grab.messages)}
    finally:
        logger.removeHandler(grab)
    return results


@pytest.fixture(scope="module")
def v4(v4_run, ours):  # (`ours` first: our side runs while the subprocess works)
    return v4_run.results()


def assert_same(ref, got, path="result"):
    """Same structure, keys, strings and token ids (arrays of the same dtype)."""
    if isinstance(ref, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == ref.dtype, f"{path}: {ref!r} vs {got!r}"
        np.testing.assert_array_equal(got, ref, err_msg=path)
        return
    assert type(ref) is type(got), f"{path}: {type(ref).__name__} vs {type(got).__name__}: {ref!r} vs {got!r}"
    if isinstance(ref, list):
        assert len(ref) == len(got), f"{path}: {ref} vs {got}"
        for i, (r, o) in enumerate(zip(ref, got)):
            assert_same(r, o, f"{path}[{i}]")
    elif isinstance(ref, dict):
        assert list(ref) == list(got), f"{path}: {ref} vs {got}"
        for k in ref:
            assert_same(ref[k], got[k], f"{path}[{k!r}]")
    else:
        assert ref == got, f"{path}: {ref!r} vs {got!r}"


@pytest.mark.parametrize("name", MATCHED)
def test_matches_transformers_4_57(ours, v4, name):
    ref, got = v4["cases"][name], ours[name]
    assert not isinstance(ref["value"], tf4.V4Error), f"4.57 raised on {name}: {ref['value']}"
    assert not isinstance(got["value"], Exception), f"we raised on {name}: {got['value']!r}"
    assert_same(ref["value"], got["value"])
    # the length warnings (summarization's max_length vs input length, translation's 0.9 * max_length), per input
    assert len(got["logged"]) == len(ref["logged"]), (ref["logged"], got["logged"])


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_refuses_what_transformers_4_57_refuses(ours, v4, name):
    assert isinstance(v4["cases"][name]["value"], tf4.V4Error), f"4.57 accepted {name}: {v4['cases'][name]}"
    cls, message = ERRORS[name]
    assert v4["cases"][name]["value"].isinstance(cls), v4["cases"][name]["value"]
    with pytest.raises(cls, match=message):
        raise ours[name]["value"]


def test_construction_warnings_match(pipes, v4):
    """`translation` without languages on a model with translation_* params warns and takes the first, as 4.57."""

    def defaulted(messages):
        return [m for m in messages if "instead of" in m and "translation_XX_to_YY" in m]

    for name in PIPELINES:
        assert len(defaulted(pipes[1][name])) == len(defaulted(v4["construction"][name])), name
    assert any("translation_en_to_de" in m for m in defaulted(pipes[1]["t5_tr"]))


def test_comparisons_are_not_vacuous(v4, ours, folders):
    """Guards of the fixtures: the random models write varied text that depends on the input and the task prefix;
    batched outputs end at different lengths (so cutting rows back matters); truncation, stop_sequence, clean-up,
    the mBART languages and the length warnings all change something."""
    cases = {k: v["value"] for k, v in v4["cases"].items()}
    texts = [r["generated_text"] for r in cases["text2text_greedy_list"]]
    assert len(set(texts)) == len(texts), texts
    ids = [r["generated_token_ids"] for r in cases["text2text_greedy_tensors"]]
    assert len(set(np.concatenate(ids).tolist())) > 8, ids  # (the T5 vocabulary's 100 sentinels decode to "")
    assert cases["translation_en_to_fr"] != cases["translation_defaults_to_first_entry"]
    assert cases["translation_en_to_fr"][0]["translation_text"] != cases["summarization_list"][0]["summary_text"]
    lengths = {len(r["generated_token_ids"]) for r in cases["text2text_greedy_tensors"]}
    assert len(lengths) > 1, lengths  # some row stopped at EOS while others ran on
    rows = [r["summary_token_ids"] for item in cases["summarization_options_tensors"] for r in item]
    assert len({len(r) for r in rows}) > 1, rows
    stop = jf.AutoTokenizer.from_pretrained(folders["t5"]).encode(BEAMS["stop_sequence"], add_special_tokens=False)[0]
    assert stop != 1 and any(r[-1] == stop and len(r) < 9 for r in rows), (stop, rows)  # stopped by the stop token
    assert any(1 in r[1:] for r in rows)  # the model's EOS no longer stops
    assert cases["summarization_truncation"] != cases["summarization_list"]
    assert cases["summarization_params_over_construction"] == cases["summarization_list"]
    assert max(len(r["generated_token_ids"]) for r in cases["text2text_length_default"]) == 21
    assert cases["bart_clean_up"] != cases["bart_no_clean_up"]
    assert cases["mbart_call_source_language"] != cases["mbart_languages_text"]
    assert cases["mbart_call_languages"] == cases["mbart_languages_text"]
    tok = jf.AutoTokenizer.from_pretrained(folders["mbart50"])
    for row in cases["mbart_languages"]:
        assert row["translation_token_ids"][1] == tok.convert_tokens_to_ids("ro_RO")
    # more than task_specific_params' max_length=20 allows: the pipeline's default max_new_tokens=256 wins, as in 4.57
    assert len(cases["summarization_one_item_list"][0]["summary_text"]) > 40
    logged = {k: len(v["logged"]) for k, v in v4["cases"].items()}
    assert logged["summarization_list"] > 0 and logged["translation_en_to_fr"] > 0, logged
    assert 0 < logged["translation_en_to_fr"] < len(TEXTS), logged  # only inputs past 0.9 * max_length warn


def test_sampling_is_reproducible_with_key(pipes):
    """Sampling cannot reproduce torch's random numbers: it draws from `key`, reproducibly; results keep 4.57's
    structure (one list of `num_return_sequences` records per input)."""
    t2t = pipes[0]["t5_t2t"]
    kw = {"do_sample": True, "num_beams": 1, "max_new_tokens": 8, "num_return_sequences": 2, "top_k": 0}
    a = t2t(TEXTS[:3], key=1, **kw)
    assert t2t(TEXTS[:3], key=1, **kw) == a
    assert t2t(TEXTS[:3], key=jax.random.key(7), **kw) != a
    assert [len(rows) for rows in a] == [2, 2, 2] and all(set(r) == {"generated_text"} for rows in a for r in rows)
    assert len({r["generated_text"] for rows in a for r in rows}) > 3
    with pytest.raises(ValueError, match="Beam sampling"):  # the pipeline's num_beams=4 with do_sample
        t2t(TEXTS[0], do_sample=True, max_new_tokens=4)


def test_generation_config_option(pipes, ours):
    """A call's `generation_config` replaces the pipeline's settings (the model's token ids fill what it leaves at
    the defaults), as in 4.57; jaxformers' and transformers' GenerationConfig are both accepted."""
    import transformers

    t2t = pipes[0]["t5_t2t"]
    want = ours["text2text_greedy_list"]["value"]
    assert t2t(TEXTS, generation_config=jf.GenerationConfig(**GREEDY)) == want
    assert t2t(TEXTS, generation_config=transformers.GenerationConfig(**GREEDY)) == want
    with pytest.raises(TypeError, match="generation_config must be a GenerationConfig"):
        t2t(TEXTS, generation_config={"num_beams": 1})


def test_inputs_of_many_lengths_compile_a_handful_of_times(pipes):
    """60 inputs of 0 to 60 tokens, in batches of 4: source buckets 16/32/64, one batch bucket."""
    t2t = pipes[0]["t5_t2t"]
    rng = np.random.RandomState(0)
    words = " ".join(TEXTS).split()
    inputs = [" ".join(rng.choice(words, n)) for n in rng.randint(0, 14, 60)]
    before = dict(TRACES)
    out = t2t(inputs, batch_size=4, **GREEDY)
    assert len(out) == len(inputs) and len({r["generated_text"] for r in out}) > 20
    new = {k: v - before.get(k, 0) for k, v in TRACES.items() if v != before.get(k, 0)}
    assert sum(new.values()) <= 6, new


def test_bad_inputs_and_options(pipes, folders, tiny_hf):
    t2t = pipes[0]["t5_t2t"]
    with pytest.raises(TypeError, match="got a tuple"):
        t2t(tuple(TEXTS[:2]))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['src_lang'\]"):
        t2t(TEXTS[0], src_lang="en")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['typical_p'\]"):
        t2t(TEXTS[0], typical_p=0.5)
    with pytest.raises(TypeError, match="stop_sequence must be a string"):
        t2t(TEXTS[0], stop_sequence=["a"])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        t2t(TEXTS[0], batch_size=0)
    with pytest.raises(TypeError, match="src_lang must be a language code string"):
        jf.task("translation", model=folders["mbart50"], src_lang=5, tgt_lang="ro_RO")
    # a model without a seq2seq LM head
    gpt2, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    with pytest.raises((ValueError, TypeError), match="seq2seq"):
        jf.task("summarization", model=gpt2, tokenizer=folders["t5"])
    loaded = jf.AutoModelForCausalLM.from_pretrained(gpt2)
    with pytest.raises(ValueError, match="needs a model with a seq2seq-lm head"):
        jf.task("text2text-generation", model=loaded, tokenizer=folders["t5"])
