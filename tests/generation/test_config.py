"""GenerationConfig: reading generation_config.json / config.json, precedence and lengths against what transformers'
`generate()` computes (`_prepare_generation_config` + `_prepare_generated_length`), validation errors, hashing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
import torch
import transformers
from transformers.generation.utils import GenerationMixin

from jaxformers.generation import config as config_module
from jaxformers.generation.config import GenerationConfig, resolve

FIELDS = [f for f in GenerationConfig.fields() if f not in ("max_length", "min_length")]


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def hf_prepare(model_gen: dict, kwargs: dict, prompt_len: int, max_pos: int | None):
    """The generation config HF's `generate(**kwargs)` runs with, for a model whose generation config is `model_gen`."""
    model = SimpleNamespace(
        generation_config=transformers.GenerationConfig.from_dict(dict(model_gen)),
        config=SimpleNamespace(
            is_encoder_decoder=False, max_position_embeddings=max_pos, _get_generation_parameters=dict
        ),
    )
    cfg, _ = GenerationMixin._prepare_generation_config(model, None, **kwargs)
    default_max = kwargs.get("max_length") is None and model.generation_config.max_length is None
    default_min = kwargs.get("min_length") is None and model.generation_config.min_length is None
    inputs = torch.zeros((1, prompt_len), dtype=torch.long)
    return GenerationMixin._prepare_generated_length(model, cfg, default_max, default_min, "input_ids", prompt_len,
                                                     inputs)  # fmt: skip


PRECEDENCE = [
    ({}, {}, 5, 64),  # HF's defaults: top_k=50, 20 new tokens
    ({}, {}, 10, 24),  # the 20-new-token default is capped at max_position_embeddings
    ({"max_length": 30, "top_k": 10, "temperature": 0.5, "do_sample": True}, {"max_new_tokens": 4}, 6, 64),
    ({"max_new_tokens": 9, "min_length": 3}, {"max_length": 12, "min_new_tokens": 2}, 5, None),
    ({"max_length": 30}, {"max_length": 15, "min_length": 8}, 6, 64),
    ({"top_k": 5, "top_p": 0.7, "do_sample": True}, {"top_k": None, "top_p": 0.8}, 3, None),
    (
        {"eos_token_id": [3, 4], "pad_token_id": None, "bos_token_id": 1, "no_repeat_ngram_size": 3},
        {
            "num_beams": 4,
            "num_return_sequences": 2,
            "length_penalty": 0.5,
            "early_stopping": "never",
            "repetition_penalty": 1.2,
            "suppress_tokens": [7],
            "forced_eos_token_id": [3],
        },
        4,
        64,
    ),
    ({"top_k": None, "temperature": None, "do_sample": True}, {"min_p": 0.1}, 2, None),  # None in the file: defaults
]


@pytest.mark.parametrize("model_gen, kwargs, prompt_len, max_pos", PRECEDENCE)
def test_precedence_and_lengths_match_hf_generate(model_gen, kwargs, prompt_len, max_pos):
    theirs = hf_prepare(model_gen, kwargs, prompt_len, max_pos)
    ours = resolve(GenerationConfig.from_dict(model_gen), **kwargs)
    for name in FIELDS:
        assert getattr(ours, name) == _plain(getattr(theirs, name)), name
    assert ours.max_length_for(prompt_len, max_pos) == theirs.max_length
    assert ours.min_length_for(prompt_len) == theirs.min_length


def test_from_pretrained_reads_generation_config_json(tmp_path):
    gen = {"do_sample": True, "top_k": None, "temperature": 0.6, "eos_token_id": [1, 2], "suppress_tokens": [5, 6],
           "bad_words_ids": [[3], [4, 5]], "max_length": 64, "transformers_version": "4.40.0", "typical_p": 0.9,
           "custom_option": {"keys": [1, 2]}}  # fmt: skip
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 7, "eos_token_id": 9, "num_beams": 3}))
    cfg = GenerationConfig.from_pretrained(tmp_path)
    assert (cfg.do_sample, cfg.top_k, cfg.temperature, cfg.max_length) == (True, 50, 0.6, 64)  # null -> default
    assert cfg.eos_token_id == (1, 2) and cfg.eos_token_ids == (1, 2)
    assert cfg.suppress_tokens == (5, 6) and cfg.bad_words_ids == ((3,), (4, 5))
    assert cfg.pad_token_id is None and cfg.num_beams == 1  # config.json is not merged in, as in HF
    assert cfg.generation_pad_token_id == 1  # HF pads finished rows with the first EOS token
    assert dict(cfg.ignored) == {"typical_p": 0.9, "custom_option": (("keys", (1, 2)),)}
    hf_cfg = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert (hf_cfg.pad_token_id, hf_cfg.num_beams, hf_cfg.eos_token_id) == (None, None, [1, 2])


def test_from_pretrained_falls_back_to_model_config(tmp_path):
    model_cfg = {"bos_token_id": 1, "eos_token_id": 2, "hidden_size": 8, "max_length": 40, "num_beams": 4,
                 "use_cache": True, "top_k": None, "text_config": {"pad_token_id": 7, "eos_token_id": 9}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(model_cfg))
    cfg = GenerationConfig.from_pretrained(tmp_path)
    theirs = transformers.GenerationConfig.from_model_config(dict(model_cfg))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "max_length", "num_beams"):
        assert getattr(cfg, name) == getattr(theirs, name), name
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.top_k) == (1, 2, 7, 50)
    assert dict(cfg.ignored) == {"use_cache": True}  # architecture keys are not generation options


def test_from_pretrained_without_any_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path)


def test_hashable_static_jit_argument():
    a = GenerationConfig.from_dict({"eos_token_id": [1, 2], "suppress_tokens": [3], "unknown_key": [1]})
    b = GenerationConfig(eos_token_id=(1, 2), suppress_tokens=(3,))
    assert a == b and hash(a) == hash(b)  # `ignored` takes no part
    assert a != b.replace(top_k=3)
    traces = []

    def f(x, cfg):
        traces.append(cfg)
        return x * cfg.top_k

    g = jax.jit(f, static_argnums=1)
    g(jnp.ones(2), a), g(jnp.ones(2), b)
    assert len(traces) == 1
    g(jnp.ones(2), b.replace(top_k=3))
    assert len(traces) == 2


def test_resolve_none_overrides_and_unknown_options():
    base = GenerationConfig(do_sample=True, num_beams=1, top_k=7, min_length=4)
    cfg = resolve(base, num_beams=None, top_p=None, min_length=None)
    assert cfg.do_sample is True and cfg.num_beams == 1 and cfg.top_p is None and cfg.top_k == 7
    assert cfg.min_length == 0
    assert resolve(base, do_sample=None).do_sample is False  # HF: an explicit None is falsy, i.e. greedy
    assert resolve(None).top_k == 50
    with pytest.raises(ValueError, match="Unknown generation option.*'top_kk'"):
        resolve(base, top_kk=3)


def test_resolve_accepts_a_transformers_generation_config():
    theirs = transformers.GenerationConfig(do_sample=True, top_p=0.8, eos_token_id=[2, 3], typical_p=0.5)
    cfg = resolve(theirs, temperature=0.5)
    assert (cfg.do_sample, cfg.top_p, cfg.top_k, cfg.eos_token_id, cfg.temperature) == (True, 0.8, 50, (2, 3), 0.5)
    assert dict(cfg.ignored) == {"typical_p": 0.5}  # HF's unset (None) options are not recorded
    assert cfg == resolve(GenerationConfig(do_sample=True, top_p=0.8, eos_token_id=(2, 3)), temperature=0.5)


def test_min_tokens_to_keep_and_eos_helpers():
    assert GenerationConfig().min_tokens_to_keep == 1
    assert GenerationConfig(num_beams=3).min_tokens_to_keep == 2
    assert GenerationConfig(num_beams=3, eos_token_id=[1, 2, 3]).min_tokens_to_keep == 4
    assert GenerationConfig(forced_eos_token_id=4).forced_eos_token_ids == (4,)
    assert GenerationConfig(pad_token_id=5, eos_token_id=2).generation_pad_token_id == 5
    assert GenerationConfig().generation_pad_token_id is None


def test_max_length_for_rejects_a_prompt_that_fills_it():
    with pytest.raises(ValueError, match="`max_length` is 10"):
        GenerationConfig(max_length=10).max_length_for(10)
    with pytest.raises(ValueError, match="`max_length` is 24"):
        GenerationConfig().max_length_for(24, max_position_embeddings=24)
    assert GenerationConfig(max_new_tokens=3, max_length=2).max_length_for(10) == 13


INVALID = [
    ({"max_new_tokens": 0}, "`max_new_tokens` must be greater than 0"),
    ({"do_sample": True, "temperature": 0.0}, "`temperature` must be > 0 when sampling"),
    ({"do_sample": True, "temperature": -1.0}, "`temperature` must be > 0 when sampling"),
    ({"do_sample": True, "top_p": 0.0}, r"`top_p` must be in \(0, 1\]"),
    ({"do_sample": True, "top_p": 1.5}, r"`top_p` must be in \(0, 1\]"),
    ({"do_sample": True, "min_p": -0.1}, r"`min_p` must be in \[0, 1\]"),
    ({"do_sample": True, "min_p": 1.5}, r"`min_p` must be in \[0, 1\]"),
    ({"do_sample": True, "top_k": -1}, "`top_k` must be >= 0"),
    ({"num_beams": 2, "num_return_sequences": 3}, r"`num_return_sequences` \(3\) must be <= `num_beams` \(2\)"),
    ({"num_return_sequences": 2}, "Greedy decoding .* `num_return_sequences` is 2"),
    ({"repetition_penalty": 0.0}, "`repetition_penalty` must be > 0"),
    ({"repetition_penalty": -1.0}, "`repetition_penalty` must be > 0"),
    ({"early_stopping": "sometimes"}, "`early_stopping` must be True, False or 'never'"),
    ({"num_beams": 0}, "`num_beams` must be >= 1"),
    ({"min_new_tokens": -1}, "`min_new_tokens` must be >= 0"),
    ({"bad_words_ids": [[]]}, "`bad_words_ids` must be a non-empty list"),
    ({"forced_eos_token_id": 2, "suppress_tokens": [2, 3]}, "`forced_eos_token_id`.*also in `suppress_tokens`"),
]


@pytest.mark.parametrize("kwargs, message", INVALID)
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve(GenerationConfig(), **kwargs)


def test_beam_sampling_follows_the_support_flag():
    if config_module.SUPPORTS_BEAM_SAMPLE:
        assert resolve(do_sample=True, num_beams=2).min_tokens_to_keep == 2
    else:
        with pytest.raises(ValueError, match="Beam sampling .* not supported"):
            resolve(do_sample=True, num_beams=2)


def test_sampling_settings_are_not_checked_for_greedy():
    # a model's generation_config.json may carry e.g. temperature=0 for greedy decoding; HF only warns
    cfg = resolve(GenerationConfig.from_dict({"temperature": 0.0, "top_p": 0.0}))
    assert cfg.temperature == 0.0 and not cfg.do_sample
