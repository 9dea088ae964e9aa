"""jaxformers' logits processors and warpers against transformers' own, on the same logits and the same input_ids.

Every History buffer has bucket-padding columns before `start` and unwritten columns from `cur` on filled with
tokens from the same small alphabet as the real ones (so n-grams, bad words and repetitions would match them if
they were read), and left-padded rows. Everything runs under `jax.jit`. -inf masks must agree exactly, values
within 1e-6. The composed `logits_processor` / `logits_warper` are checked against the processed scores of a real
`transformers` `generate()` call, step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from jaxformers.generation import processors as P
from jaxformers.generation.config import GenerationConfig, resolve
from jaxformers.generation.history import History

B, V, BUCKET, PROMPT, L = 4, 37, 3, 9, 30
PAD_LEN = np.array([0, 2, 5, 1])
PAD_ID, ALPHABET = 0, 6  # tokens 0..5: n-grams, bad words and repeats recur often
STEPS = (0, 1, 4, 11, L - BUCKET - PROMPT)  # generated tokens so far; the last fills the buffer


def make_ids(seed: int) -> np.ndarray:
    """A `[B, L]` buffer: bucket padding, left-padded prompts, generated tokens, unwritten tail (all from ALPHABET)."""
    ids = np.random.default_rng(seed).integers(0, ALPHABET, (B, L)).astype(np.int32)
    for b, p in enumerate(PAD_LEN):
        ids[b, BUCKET : BUCKET + p] = PAD_ID
    return ids


def history(ids: np.ndarray, cur: int, *, start: int = BUCKET, prompt_len: int = PROMPT, pad_len=PAD_LEN) -> History:
    return History(ids=jnp.asarray(ids), start=jnp.int32(start), pad_len=jnp.asarray(pad_len, jnp.int32),
                   prompt_len=jnp.int32(prompt_len), cur=jnp.int32(cur))  # fmt: skip


def hf_input_ids(ids: np.ndarray, cur: int, start: int = BUCKET) -> torch.Tensor:
    return torch.tensor(ids[:, start:cur], dtype=torch.long)


def random_logits(seed: int, shape=(B, V), scale: float = 2.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def assert_same(ours, theirs: torch.Tensor) -> None:
    ours, theirs = np.asarray(ours), theirs.numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=0, atol=1e-6)


def cases(seed: int):
    """(logits, hist, HF input_ids) for each step, with the buffer's unwritten tail as adversarial garbage."""
    ids = make_ids(seed)
    for i, step in enumerate(STEPS):
        cur = BUCKET + PROMPT + step
        yield random_logits(seed * 100 + i), history(ids, cur), hf_input_ids(ids, cur)


jit_repetition = jax.jit(P.repetition_penalty)
jit_ngram = jax.jit(P.no_repeat_ngram, static_argnames="ngram_size")
jit_bad_words = jax.jit(P.bad_words, static_argnames=("bad_words_ids", "eos_token_id"))
jit_min_length = jax.jit(P.min_length, static_argnames="eos_token_id")
jit_min_new = jax.jit(P.min_new_tokens, static_argnames="eos_token_id")
jit_forced_bos = jax.jit(P.forced_bos, static_argnames="bos_token_id")
jit_forced_eos = jax.jit(P.forced_eos, static_argnames="eos_token_id")
jit_suppress = jax.jit(P.suppress_tokens, static_argnames="tokens")
jit_begin_suppress = jax.jit(P.begin_suppress_tokens, static_argnames="tokens")
jit_temperature = jax.jit(P.temperature)
jit_top_k = jax.jit(P.top_k, static_argnames=("top_k", "min_tokens_to_keep"))
jit_top_p = jax.jit(P.top_p, static_argnames="min_tokens_to_keep")
jit_min_p = jax.jit(P.min_p, static_argnames="min_tokens_to_keep")


# --------------------------------------------------------------------------------------------------- processors


@pytest.mark.parametrize("penalty", [1.3, 0.6])
def test_repetition_penalty_ignores_left_padding_bucket_and_tail(penalty):
    changed_negative = False
    for x, hist, input_ids in cases(1):
        ours = jit_repetition(jnp.asarray(x), hist, penalty)
        hf_proc = hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=torch.tensor(PAD_LEN))
        assert_same(ours, hf_proc(input_ids, torch.tensor(x)))
        changed_negative |= bool(np.any((x < 0) & np.isclose(np.asarray(ours), x * penalty) & (x * penalty != x)))
    assert changed_negative  # negative logits of seen tokens were multiplied, not divided


def test_repetition_penalty_without_padding_matches_hf_default():
    ids = make_ids(2)
    cur = BUCKET + PROMPT + 3
    x = random_logits(3)
    ours = jit_repetition(jnp.asarray(x), history(ids, cur, pad_len=np.zeros(B)), 2.0)
    assert_same(ours, hf.RepetitionPenaltyLogitsProcessor(2.0)(hf_input_ids(ids, cur), torch.tensor(x)))


@pytest.mark.parametrize("ngram_size", [1, 2, 3, 5, L - BUCKET, L + 4])
def test_no_repeat_ngram(ngram_size):
    banned_any = False
    for x, hist, input_ids in cases(4):
        ours = jit_ngram(jnp.asarray(x), hist, ngram_size=ngram_size)
        theirs = hf.NoRepeatNGramLogitsProcessor(ngram_size)(input_ids, torch.tensor(x))
        assert_same(ours, theirs)
        banned_any |= bool(np.isneginf(theirs.numpy()).any())
    assert banned_any == (ngram_size <= 5)  # sizes beyond the history ban nothing


def test_no_repeat_ngram_larger_than_history_on_short_prompt():
    ids = make_ids(5)
    for cur in (BUCKET + 1, BUCKET + 2, BUCKET + 3):
        x = random_logits(cur)
        ours = jit_ngram(jnp.asarray(x), history(ids, cur, prompt_len=1, pad_len=np.zeros(B)), ngram_size=3)
        assert_same(ours, hf.NoRepeatNGramLogitsProcessor(3)(hf_input_ids(ids, cur), torch.tensor(x)))


@pytest.mark.parametrize("eos", [None, 2, (2, 4)])
def test_bad_words(eos):
    words = ((1,), (2,), (4,), (3, 5), (0, 1, 2), (5, 5, 5, 5), (1, 2) * 20)  # the last is longer than any history
    hit_multi = False
    for x, hist, input_ids in cases(6):
        ours = jit_bad_words(jnp.asarray(x), hist, bad_words_ids=words, eos_token_id=eos)
        theirs = hf.NoBadWordsLogitsProcessor([list(w) for w in words], eos_token_id=eos and list(np.atleast_1d(eos)))
        theirs = theirs(input_ids, torch.tensor(x))
        assert_same(ours, theirs)
        hit_multi |= bool(np.isneginf(theirs.numpy()[:, 5]).any())  # 5 ends only multi-token words
    assert hit_multi


def test_bad_words_out_of_vocab_raises():
    ids = make_ids(0)
    with pytest.raises(ValueError, match="vocabulary size is 37"):
        P.bad_words(jnp.zeros((B, V)), history(ids, BUCKET + PROMPT), [[3, 40]])


@pytest.mark.parametrize("eos", [2, (2, 5)])
def test_min_length_and_min_new_tokens(eos):
    eos_list = list(np.atleast_1d(eos))
    for x, hist, input_ids in cases(7):
        for min_len in (0, PROMPT + 1, PROMPT + 4, 40):
            ours = jit_min_length(jnp.asarray(x), hist, min_len, eos_token_id=eos)
            assert_same(ours, hf.MinLengthLogitsProcessor(min_len, eos_list)(input_ids, torch.tensor(x)))
        for min_new in (0, 1, 4):
            ours = jit_min_new(jnp.asarray(x), hist, min_new, eos_token_id=eos)
            theirs = hf.MinNewTokensLengthLogitsProcessor(PROMPT, min_new, eos_list)(input_ids, torch.tensor(x))
            assert_same(ours, theirs)


def test_forced_bos_only_at_length_one():
    ids = make_ids(8)
    for cur in (BUCKET + 1, BUCKET + 2):
        x = random_logits(cur)
        ours = jit_forced_bos(jnp.asarray(x), history(ids, cur, prompt_len=1, pad_len=np.zeros(B)), bos_token_id=7)
        assert_same(ours, hf.ForcedBOSTokenLogitsProcessor(7)(hf_input_ids(ids, cur), torch.tensor(x)))


@pytest.mark.parametrize("eos", [2, (2, 5)])
def test_forced_eos_at_max_length_minus_one(eos):
    forced = 0
    for x, hist, input_ids in cases(9):
        for max_len in (PROMPT + 2, PROMPT + 5, PROMPT + 12):
            ours = jit_forced_eos(jnp.asarray(x), hist, max_len, eos_token_id=eos)
            theirs = hf.ForcedEOSTokenLogitsProcessor(max_len, list(np.atleast_1d(eos)))(input_ids, torch.tensor(x))
            assert_same(ours, theirs)
            forced += int(np.isneginf(theirs.numpy()).any())
    assert forced == 3


def test_suppress_and_begin_suppress():
    tokens = (0, 3, 36, 99)  # 99 is outside the vocabulary: ignored, as in HF
    for x, hist, input_ids in cases(10):
        assert_same(jit_suppress(jnp.asarray(x), hist, tokens=tokens),
                    hf.SuppressTokensLogitsProcessor(list(tokens))(input_ids, torch.tensor(x)))  # fmt: skip
        for begin in (PROMPT, PROMPT + 1, PROMPT + 4):
            ours = jit_begin_suppress(jnp.asarray(x), hist, tokens=tokens, begin_index=begin)
            theirs = hf.SuppressTokensAtBeginLogitsProcessor(list(tokens), begin)(input_ids, torch.tensor(x))
            assert_same(ours, theirs)


# ------------------------------------------------------------------------------------------------------ warpers

WV = 203  # a larger vocabulary for the warpers


def warper_logits(seed: int, scale: float = 3.0) -> np.ndarray:
    x = random_logits(seed, (B, WV), scale)
    x[0, :50] = -np.inf  # as left by an earlier processor
    return x


def hf_warp(warper, x: np.ndarray) -> torch.Tensor:
    return warper(torch.zeros((B, 1), dtype=torch.long), torch.tensor(x))


@pytest.mark.parametrize("temp", [0.3, 1.7])
def test_temperature(temp):
    x = warper_logits(11)
    assert_same(jit_temperature(jnp.asarray(x), temp), hf_warp(hf.TemperatureLogitsWarper(temp), x))


@pytest.mark.parametrize("k, keep", [(1, 1), (5, 1), (5, 9), (WV, 1), (WV + 50, 1), (1, WV + 3)])
def test_top_k(k, keep):
    x = warper_logits(12)
    x[1, 10:20] = x[1, 5]  # ties at the k-th value are all kept
    ours = jit_top_k(jnp.asarray(x), top_k=k, min_tokens_to_keep=keep)
    assert_same(ours, hf_warp(hf.TopKLogitsWarper(k, min_tokens_to_keep=keep), x))


@pytest.mark.parametrize("p, keep", [(0.9, 1), (0.5, 1), (0.5, 7), (1e-8, 1), (1e-8, 4), (0.999999, 1),
                                     (1.0 - 2**-24, 1), (1.0, 1), (0.2, WV + 3)])  # fmt: skip
@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_top_p(p, keep, scale):
    x = warper_logits(13, scale)
    ours = jit_top_p(jnp.asarray(x), p, min_tokens_to_keep=keep)
    assert_same(ours, hf_warp(hf.TopPLogitsWarper(p, min_tokens_to_keep=keep), x))


@pytest.mark.parametrize("p, keep", [(0.0, 1), (0.05, 1), (0.3, 1), (0.3, 12), (1.0, 1), (1.0, 3), (0.5, WV + 3)])
def test_min_p(p, keep):
    x = warper_logits(14)
    ours = jit_min_p(jnp.asarray(x), p, min_tokens_to_keep=keep)
    assert_same(ours, hf_warp(hf.MinPLogitsWarper(p, min_tokens_to_keep=keep), x))


def test_warper_composition_and_beam_min_tokens_to_keep():
    """HF order temperature -> top-k -> top-p -> min-p; with beams, `generate()` keeps len(eos) + 1 tokens (2 without
    EOS)."""
    x = warper_logits(15, 1.0)
    for num_beams, eos, keep in ((3, (2, 5), 3), (3, None, 2)):  # num_beams=1: see the generate() test below
        cfg = GenerationConfig(do_sample=True, num_beams=num_beams, eos_token_id=eos, temperature=0.5, top_k=40,
                               top_p=0.6, min_p=0.2)  # fmt: skip
        assert cfg.min_tokens_to_keep == keep
        theirs = hf.LogitsProcessorList(
            [
                hf.TemperatureLogitsWarper(0.5),
                hf.TopKLogitsWarper(40, min_tokens_to_keep=keep),
                hf.TopPLogitsWarper(0.6, min_tokens_to_keep=keep),
                hf.MinPLogitsWarper(0.2, min_tokens_to_keep=keep),
            ]
        )
        assert_same(jax.jit(P.logits_warper(cfg))(jnp.asarray(x)), hf_warp(theirs, x))
    greedy = P.logits_warper(GenerationConfig(temperature=0.5, top_k=3))
    np.testing.assert_array_equal(np.asarray(greedy(jnp.asarray(x))), x)  # warpers only apply when sampling


# -------------------------------------------------------------------------------- composition vs HF generate()

GEN_V, GEN_POSITIONS = 61, 26
SCENARIOS = {
    # greedy, HF's default length (20 new tokens, capped at max_position_embeddings), every history processor
    "greedy": (
        7,
        (0, 2, 3),
        {
            "repetition_penalty": 1.5,
            "no_repeat_ngram_size": 2,
            "bad_words_ids": [[5], [7, 8], [2]],
            "min_new_tokens": 40,
            "forced_eos_token_id": 3,
            "suppress_tokens": [9],
            "begin_suppress_tokens": [10, 11],
        },
    ),
    # sampling with HF's default top_k=50, two EOS tokens, absolute min_length
    "sample": (
        6,
        (0, 1, 4),
        {
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "min_p": 0.05,
            "max_new_tokens": 6,
            "min_length": 9,
            "repetition_penalty": 0.8,
            "eos_token_id": [2, 6],
        },
    ),
    # a one-token prompt: forced BOS at the first step, begin-suppress moves one step later
    "forced-bos": (
        1,
        (0, 0),
        {
            "forced_bos_token_id": 4,
            "begin_suppress_tokens": [5, 6],
            "max_new_tokens": 4,
            "no_repeat_ngram_size": 1,
            "max_length": 30,
        },
    ),
}


@pytest.fixture(scope="module")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=GEN_V, n_embd=16, n_head=2, n_layer=1, n_positions=GEN_POSITIONS, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_composed_processors_match_hf_generate(tiny_gpt2, name):
    prompt_len, pad_len, kwargs = SCENARIOS[name]
    rng = np.random.default_rng(16)
    batch = len(pad_len)
    ids = rng.integers(3, GEN_V, (batch, prompt_len))
    mask = np.ones_like(ids)
    for b, p in enumerate(pad_len):
        ids[b, :p], mask[b, :p] = 0, 0
    torch.manual_seed(17)
    out = tiny_gpt2.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs,
                             return_dict_in_generate=True, output_scores=True, output_logits=True)  # fmt: skip

    cfg = resolve(GenerationConfig.from_model_config(tiny_gpt2.config.to_dict()), **kwargs)
    max_len = cfg.max_length_for(prompt_len, GEN_POSITIONS)
    if name == "greedy":  # EOS is banned throughout, so HF ran to its max_length
        assert max_len == GEN_POSITIONS and out.sequences.shape[1] == max_len
    assert out.sequences.shape[1] <= max_len
    process, warp = P.logits_processor(cfg, vocab_size=GEN_V), P.logits_warper(cfg)
    step_fn = jax.jit(lambda x, h, m: warp(process(x, h, m)))

    seqs = out.sequences.numpy().astype(np.int32)
    buf = rng.integers(0, GEN_V, (batch, BUCKET + max_len + 2)).astype(np.int32)  # garbage outside HF's columns
    buf[:, BUCKET : BUCKET + seqs.shape[1]] = seqs
    for t, (raw, scores) in enumerate(zip(out.logits, out.scores, strict=True)):
        cur = BUCKET + prompt_len + t
        buf_t = buf.copy()
        buf_t[:, cur:] = rng.integers(0, GEN_V, buf_t[:, cur:].shape)
        hist = history(buf_t, cur, prompt_len=prompt_len, pad_len=pad_len)
        assert_same(step_fn(jnp.asarray(raw.numpy()), hist, jnp.int32(max_len)), scores)


def test_forced_eos_needs_max_len():
    process = P.logits_processor(GenerationConfig(forced_eos_token_id=2), vocab_size=V)
    with pytest.raises(ValueError, match="max_len"):
        process(jnp.zeros((B, V)), history(make_ids(0), BUCKET + PROMPT))


def test_inactive_processors_are_the_identity():
    cfg = GenerationConfig(eos_token_id=2, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0)
    x = random_logits(18)
    np.testing.assert_array_equal(np.asarray(P.logits_processor(cfg, vocab_size=V)(jnp.asarray(x), None)), x)
