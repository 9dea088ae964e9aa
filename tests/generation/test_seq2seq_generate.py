"""Encoder-decoder generation (T5, BART, mBART, Marian) against transformers' `generate()`, token for token.

The source runs through the encoder once; the decoder starts from `decoder_start_token_id` with a self-attention KV
cache and cross-attention K/V computed once (core.seq2seq). Tiny random models with odd sizes; every comparison also
asserts that the continuation varies (a model that repeats one token could hide a wrong cache or position).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxformers as jf
from jaxformers.core.layers import Dense
from jaxformers.generation import TRACES
from jaxformers.generation.decode import OUT_FIRST_MIN_NEW_TOKENS as DEFAULT_MIN_NEW  # (before conftest's patch)

from hf_helpers import randomize_vectors

V = 97
_T5 = dict(vocab_size=V, d_model=48, d_kv=10, d_ff=37, num_layers=2, num_heads=6, relative_attention_num_buckets=8,
           relative_attention_max_distance=20, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
           dropout_rate=0.0, initializer_factor=10.0)  # fmt: skip
_BART = dict(vocab_size=V, d_model=48, encoder_layers=2, decoder_layers=3, encoder_attention_heads=6,
             decoder_attention_heads=6, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, dropout=0.0,
             attention_dropout=0.0, activation_dropout=0.0, init_std=1.0)  # fmt: skip
# (large initializers: with the defaults, tiny random models repeat one token whatever the source, which would let a
# wrong cache or position go unseen; `_assert_varies` guards it)
CONFIGS = {
    "t5": ("T5Config", "T5ForConditionalGeneration", _T5),
    "t5-gated": ("T5Config", "T5ForConditionalGeneration",
                 {**_T5, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),  # fmt: skip
    "bart": ("BartConfig", "BartForConditionalGeneration", {**_BART, "forced_eos_token_id": 2}),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", {**_BART, "forced_bos_token_id": 7}),
    "marian": ("MarianConfig", "MarianMTModel", {**_BART, "pad_token_id": 96, "decoder_start_token_id": 96,
                                                 "eos_token_id": 2, "scale_embedding": True}),  # fmt: skip
}


def _build(name, directory, **overrides):
    cfg_cls, model_cls, kw = CONFIGS[name]
    cfg = getattr(transformers, cfg_cls)(**{**kw, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    if name == "t5-gated":  # transformers 5 unties only a head the checkpoint holds: give it its own weights
        model.lm_head.weight = torch.nn.Parameter(torch.randn(V, cfg.d_model) * 0.05)
    randomize_vectors(model)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(name)
            ref = _build(name, d, **overrides)
            cache[key] = (ref, jf.AutoModelForSeq2SeqLM.from_pretrained(d), d)
        return cache[key]

    return get


def _source(batch=3, seed=0, lo=5, hi=13, pad=0, left=False):
    """Sources of different lengths (padded right, or left), ids avoiding the special tokens."""
    rng = np.random.RandomState(seed)
    lens = rng.randint(lo, hi, batch)
    lens[0] = hi  # one full row
    ids = np.full((batch, hi), pad, np.int64)
    mask = np.zeros((batch, hi), np.int64)
    for i, n in enumerate(lens):
        sl = slice(hi - n, hi) if left else slice(0, n)
        ids[i, sl] = rng.randint(3, V - 2, n)
        mask[i, sl] = 1
    return ids, mask


def _hf(ref, ids, mask, **kw):
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kw).numpy()


def _assert_varies(out):
    new = out[:, 1:]
    assert len(np.unique(new)) > 3, f"degenerate continuation {out}: the comparison would prove little"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_matches_transformers(built, name):
    ref, model, _ = built(name)
    pad = ref.config.pad_token_id
    ids, mask = _source(pad=pad)
    want = _hf(ref, ids, mask, max_new_tokens=12, do_sample=False)
    got = jf.generate(model, ids, attention_mask=mask, max_new_tokens=12)
    np.testing.assert_array_equal(got, want)
    _assert_varies(got)
    assert (got[:, 0] == (ref.config.decoder_start_token_id)).all()


@pytest.mark.parametrize("name", ["t5", "bart", "marian"])
def test_beam_search_matches_transformers(built, name):
    ref, model, _ = built(name)
    ids, mask = _source(pad=ref.config.pad_token_id, seed=1)
    for kw in (dict(num_beams=3, max_new_tokens=10),
               dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, early_stopping=True, max_new_tokens=9),
               dict(num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.3, min_new_tokens=6,
                    max_new_tokens=8)):  # fmt: skip
        want = _hf(ref, ids, mask, do_sample=False, **kw)
        got = jf.generate(model, ids, attention_mask=mask, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))
        _assert_varies(got)


@pytest.mark.parametrize("name", ["t5-gated", "bart"])
@pytest.mark.parametrize("min_new", [1, DEFAULT_MIN_NEW])
def test_batch_one_reorders_the_decoder_kernels_only(built, name, min_new, monkeypatch):
    """At batch 1, for at least `decode.OUT_FIRST_MIN_NEW_TOKENS` new tokens (1, as the suite sets it), the
    decode loop reads `[out, in]` kernels (`core.layers.decode_layout`): the decoder's (and an untied LM head's,
    t5-gated) are reordered for the call, the encoder's keep their order (`get_encoder()`: it runs once per call,
    over the whole source, where reordering gains nothing and costs a transpose each way). Below the default
    threshold (128 new tokens) no kernel is reordered: the transposes would cost more than the shorter loop saves. Tokens equal
    transformers' either way; afterwards the model has the checkpoint's tree again, value for value."""
    from jaxformers.generation import decode

    monkeypatch.setattr(decode, "OUT_FIRST_MIN_NEW_TOKENS", min_new)
    ref, model, _ = built(name)
    ids, mask = _source(batch=1, pad=ref.config.pad_token_id, seed=7)  # (a seed whose continuation varies)
    before = {p: np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    seen = []

    class Probe:
        def put(self, value):
            encoder = {id(m) for _, m in nnx.iter_modules(model.get_encoder())}
            dense = [(id(m) in encoder, m.out_first) for _, m in nnx.iter_modules(model) if isinstance(m, Dense)]
            seen.append(({f for e, f in dense if e}, {f for e, f in dense if not e}))

        def end(self):
            pass

    want = _hf(ref, ids, mask, max_new_tokens=8, do_sample=False)
    got = jf.generate(model, ids, attention_mask=mask, max_new_tokens=8, streamer=Probe(), chunk_steps=4)
    np.testing.assert_array_equal(got, want)
    _assert_varies(got)
    assert len(seen) > 1
    decoder = {True} if min_new <= 8 else {False}
    assert all(s == ({False}, decoder) for s in seen[1:]), seen  # (the first `put`: the prompt, before the loop)
    after = {p: np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=str(path))


def test_processors_and_lengths_match(built):
    ref, model, _ = built("bart")
    ids, mask = _source(pad=1, seed=2)
    for kw in (dict(max_length=9), dict(no_repeat_ngram_size=2, max_new_tokens=15), dict(repetition_penalty=2.0,
               max_new_tokens=10), dict(min_length=12, max_new_tokens=14), dict(forced_bos_token_id=9,
               max_new_tokens=5), dict()):  # fmt: skip
        want = _hf(ref, ids, mask, do_sample=False, **kw)
        got = jf.generate(model, ids, attention_mask=mask, **kw)
        np.testing.assert_array_equal(got, want, err_msg=str(kw))


def test_left_padded_source_matches(built):
    """The encoder's mask covers any padding side (BART positions are slots, so left padding shifts them as in HF)."""
    ref, model, _ = built("t5")
    ids, mask = _source(pad=0, seed=3, left=True)
    want = _hf(ref, ids, mask, max_new_tokens=8, do_sample=False)
    np.testing.assert_array_equal(jf.generate(model, ids, attention_mask=mask, max_new_tokens=8), want)


def test_unequal_decoder_depth_against_full_forward(built):
    """transformers' generate() crashes for T5 with num_decoder_layers != num_layers (cache IndexError), so greedy
    decoding is checked against our own full forward (whose logits test_t5 checks against transformers): fed the
    generated tokens, it must pick each next token at every position (teacher forcing), until a row's EOS."""
    _, model, _ = built("t5", num_decoder_layers=3)
    ids, mask = _source(pad=0, seed=4)
    got = jf.generate(model, ids, attention_mask=mask, max_new_tokens=7)
    logits = np.asarray(model(ids, mask, decoder_input_ids=got[:, :-1]).logits)
    picked = logits.argmax(-1)
    for row, seq in enumerate(got):
        ends = np.flatnonzero(seq[1:] == 1)  # EOS id 1: rows after it are padding
        n = ends[0] + 1 if ends.size else len(seq) - 1
        np.testing.assert_array_equal(picked[row, :n], seq[1 : n + 1])
    _assert_varies(got)


def test_stream_equals_generate(built):
    _, model, _ = built("bart")
    ids, mask = _source(pad=1, seed=5)
    full = jf.generate(model, ids, attention_mask=mask, max_new_tokens=10)
    chunks = list(jf.stream(model, ids, attention_mask=mask, max_new_tokens=10, chunk_steps=3))
    np.testing.assert_array_equal(np.concatenate(chunks, 1), full[:, 1 : 1 + sum(c.shape[1] for c in chunks)])


def test_generation_config_json_is_read(built):
    """Settings saved by transformers in generation_config.json (here BART's forced_eos and a num_beams) apply."""
    ref, _, d = built("bart")
    ref.generation_config.num_beams = 2
    ref.generation_config.no_repeat_ngram_size = 3
    ref.generation_config.save_pretrained(d)
    model = jf.AutoModelForSeq2SeqLM.from_pretrained(d)
    ids, mask = _source(pad=1, seed=6)
    want = _hf(ref, ids, mask, max_new_tokens=9)
    np.testing.assert_array_equal(jf.generate(model, ids, attention_mask=mask, max_new_tokens=9), want)


def test_sources_of_many_lengths_compile_a_handful_of_times(built):
    _, model, _ = built("t5")
    rng = np.random.RandomState(7)
    before = sum(TRACES.values())
    for n in rng.randint(2, 60, 12):
        ids = rng.randint(3, V - 2, (1 + n % 2, n))
        jf.generate(model, ids, max_new_tokens=4)
    # at most source buckets 16/32/64 x batch buckets 1/2, each a prefill and a loop program
    assert sum(TRACES.values()) - before <= 12


def test_bad_inputs(built, tiny_hf):
    _, model, _ = built("bart")
    with pytest.raises(ValueError, match="source has 70 tokens but BartForConditionalGeneration has positions for 64"):
        jf.generate(model, np.full((1, 70), 5), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"exceeds the model's context \(64 positions\)"):
        jf.generate(model, np.full((1, 5), 5), max_new_tokens=64)
    d, _ = tiny_hf("bert", "BertModel")
    with pytest.raises(TypeError, match="cannot generate"):
        jf.generate(jf.AutoModel.from_pretrained(d), np.ones((1, 3), np.int32))
    with pytest.raises(ValueError, match="decoder_start_token_id must be one int"):
        jf.generate(model, np.full((1, 5), 5), decoder_start_token_id=[2, 3], max_new_tokens=2)
    with pytest.raises(TypeError, match="decoder-only"):
        d, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
        jf.generate(jf.AutoModelForCausalLM.from_pretrained(d), np.ones((1, 3), np.int32), decoder_input_ids=[[1]])
