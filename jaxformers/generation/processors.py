"""Logits processors and sampling warpers of `transformers` (5.x) as pure, jittable JAX functions.

Each processor is `fn(logits [B, V], hist: History, ...) -> logits` and mirrors one HF `LogitsProcessor`, reading
HF's `input_ids` as the columns `[hist.start, hist.cur)` of `hist.ids` (bucket padding before `start` and unwritten
columns from `cur` on are masked out, never sliced, so shapes stay static inside `jax.lax.while_loop`). Warpers
(`temperature`, `top_k`, `top_p`, `min_p`) do not look at the history: `fn(logits, ...) -> logits`. Masked entries
get `-inf`, as in HF.

Token ids, n-gram sizes, `top_k` and `min_tokens_to_keep` are static Python values (they fix shapes or masks);
the floats (`penalty`, `temperature`, `top_p`, `min_p`) and lengths (`min_length`, `max_length`, `begin_index`)
may be Python numbers or traced scalars.

`logits_processor(cfg, vocab_size=V)` and `logits_warper(cfg)` compose the active ones in the order of HF's
`GenerationMixin._get_logits_processor`, with the arguments `generate()` gives them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers.generation.config import GenerationConfig
from jaxformers.generation.history import History

NEG_INF = float("-inf")


def _token_mask(tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    """`[V]` bool, True at `tokens` (ids outside the vocab are ignored, like HF's `torch.isin(arange(V), tokens)`)."""
    mask = np.zeros((vocab_size,), bool)
    ids = np.asarray(list(tokens), np.int64)
    mask[ids[(ids >= 0) & (ids < vocab_size)]] = True
    return mask


def _as_ids(token_ids: int | Sequence[int]) -> tuple[int, ...]:
    return (int(token_ids),) if isinstance(token_ids, (int, np.integer)) else tuple(int(t) for t in token_ids)


def _scatter_true(shape: tuple[int, int], ids: jax.Array, keep: jax.Array) -> jax.Array:
    """`[B, V]` bool, True at `ids[b, j]` where `keep[b, j]` (ids outside `[0, V)` are dropped)."""
    batch, vocab = shape
    ids = jnp.where(keep & (ids >= 0) & (ids < vocab), ids, vocab)
    rows = jnp.arange(batch)[:, None]
    return jnp.zeros(shape, bool).at[rows, ids].set(True, mode="drop")


def _div(x: jax.Array, divisor: float | jax.Array) -> jax.Array:
    """`x / divisor`, correctly rounded like torch's. (XLA rewrites a division by a broadcast scalar into a
    multiplication by its reciprocal, 1 ulp off; the barrier keeps the true division, and still fuses.)"""
    return x / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(divisor, x.dtype), x.shape))


def _force(logits: jax.Array, token_ids: tuple[int, ...], when: jax.Array) -> jax.Array:
    """Where `when`: -inf everywhere but 0 at `token_ids` (HF's forced-token processors)."""
    vocab = logits.shape[-1]
    bad = [t for t in token_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"Forced token id(s) {bad} are outside the vocabulary of size {vocab}.")
    forced = jnp.where(jnp.asarray(_token_mask(token_ids, vocab)), 0.0, NEG_INF).astype(logits.dtype)
    return jnp.where(when, forced[None, :], logits)


def _bad_word_groups(
    bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | Sequence[int] | None, vocab: int
) -> tuple[list[int], dict[int, list[tuple[int, ...]]]]:
    """One-token bad words, and the longer ones grouped by prefix length (HF's `SequenceBiasLogitsProcessor`)."""
    seqs = {tuple(int(t) for t in seq) for seq in bad_words_ids}
    if eos_token_id is not None:
        seqs -= {(e,) for e in _as_ids(eos_token_id)}
    bad = sorted({t for seq in seqs for t in seq if t >= vocab})
    if bad:
        raise ValueError(f"The vocabulary size is {vocab}, but `bad_words_ids` holds the token ids {bad}.")
    by_len: dict[int, list[tuple[int, ...]]] = {}
    for seq in sorted(seqs):
        if len(seq) > 1:
            by_len.setdefault(len(seq) - 1, []).append(seq)
    return [s[0] for s in seqs if len(s) == 1], by_len


# --------------------------------------------------------------------------------------------------- processors


def repetition_penalty(logits: jax.Array, hist: History, penalty: float | jax.Array) -> jax.Array:
    """HF `RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=hist.pad_len)`, as `generate()` builds it:
    every token present in a row's `input_ids` outside its left padding gets `logit * penalty` if negative, else
    `logit / penalty`."""
    cols = jnp.arange(hist.ids.shape[1])[None, :]
    valid = (cols >= hist.start + hist.pad_len[:, None]) & (cols < hist.cur)
    seen = _scatter_true(logits.shape, hist.ids, valid)
    penalized = jnp.where(logits < 0, logits * penalty, _div(logits, penalty))
    return jnp.where(seen, penalized, logits)


def no_repeat_ngram(logits: jax.Array, hist: History, ngram_size: int) -> jax.Array:
    """HF `NoRepeatNGramLogitsProcessor(ngram_size)`: bans every token that would complete an n-gram already present
    in `input_ids` (left padding included, as in HF). One O(L * n) vectorised compare per call."""
    n = int(ngram_size)
    if n <= 0:
        raise ValueError(f"`ngram_size` must be a positive integer, but is {ngram_size}.")
    length = hist.ids.shape[1]
    if n > length:  # the history can never hold a complete n-gram
        return logits
    ids = jnp.pad(hist.ids, ((0, 0), (0, n - 1)))
    starts = jnp.arange(length)  # window w covers columns [w, w + n)
    valid = (starts >= hist.start) & (starts + n <= hist.cur) & (hist.cur - hist.start >= n)
    match = jnp.broadcast_to(valid[None, :], hist.ids.shape)
    if n > 1:
        prefix = jax.lax.dynamic_slice_in_dim(hist.ids, hist.cur - (n - 1), n - 1, axis=1)  # the last n-1 tokens
        for j in range(n - 1):
            match = match & (ids[:, j : j + length] == prefix[:, j : j + 1])
    banned = _scatter_true(logits.shape, ids[:, n - 1 : n - 1 + length], match)
    return jnp.where(banned, NEG_INF, logits)


def bad_words(
    logits: jax.Array,
    hist: History,
    bad_words_ids: Sequence[Sequence[int]],
    eos_token_id: int | Sequence[int] | None = None,
) -> jax.Array:
    """HF `NoBadWordsLogitsProcessor(bad_words_ids, eos_token_id)`: a one-token bad word is always banned; a longer
    one bans its last token when `input_ids` ends with the rest. Sequences that are a single EOS token are dropped,
    as in HF (HF then raises if nothing is left; this returns the logits unchanged)."""
    single, by_len = _bad_word_groups(bad_words_ids, eos_token_id, logits.shape[-1])
    banned = jnp.broadcast_to(jnp.asarray(_token_mask(single, logits.shape[-1])), logits.shape)
    for p, group in by_len.items():
        if p > hist.ids.shape[1]:
            continue
        prefixes = jnp.asarray([s[:-1] for s in group], hist.ids.dtype)  # [G, p]
        last = jnp.asarray([s[-1] for s in group], hist.ids.dtype)  # [G]
        tail = jax.lax.dynamic_slice_in_dim(hist.ids, hist.cur - p, p, axis=1)  # [B, p]
        hit = jnp.all(tail[:, None, :] == prefixes[None], axis=-1) & (hist.cur - hist.start >= p)  # [B, G]
        banned = banned | _scatter_true(logits.shape, jnp.broadcast_to(last, hit.shape), hit)
    return logits + jnp.where(banned, NEG_INF, 0.0).astype(logits.dtype)


def min_length(
    logits: jax.Array, hist: History, min_length: int | jax.Array, eos_token_id: int | Sequence[int]
) -> jax.Array:
    """HF `MinLengthLogitsProcessor(min_length, eos_token_id)`: EOS is -inf while `input_ids` (prompt and padding
    included) is shorter than `min_length`."""
    eos = jnp.asarray(_token_mask(_as_ids(eos_token_id), logits.shape[-1]))
    return jnp.where(eos & (hist.hf_len < min_length), NEG_INF, logits)


def min_new_tokens(
    logits: jax.Array, hist: History, min_new_tokens: int | jax.Array, eos_token_id: int | Sequence[int]
) -> jax.Array:
    """HF `MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=hist.prompt_len, min_new_tokens, eos_token_id)`:
    EOS is -inf while fewer than `min_new_tokens` tokens have been generated."""
    eos = jnp.asarray(_token_mask(_as_ids(eos_token_id), logits.shape[-1]))
    return jnp.where(eos & (hist.new_tokens < min_new_tokens), NEG_INF, logits)


def forced_bos(logits: jax.Array, hist: History, bos_token_id: int) -> jax.Array:
    """HF `ForcedBOSTokenLogitsProcessor(bos_token_id)`: when `input_ids` holds one token, only `bos_token_id`
    (logit 0) can follow."""
    return _force(logits, _as_ids(bos_token_id), hist.hf_len == 1)


def forced_eos(
    logits: jax.Array, hist: History, max_length: int | jax.Array, eos_token_id: int | Sequence[int]
) -> jax.Array:
    """HF `ForcedEOSTokenLogitsProcessor(max_length, eos_token_id)`: when `input_ids` holds `max_length - 1` tokens,
    only the EOS tokens (logit 0) can follow."""
    return _force(logits, _as_ids(eos_token_id), hist.hf_len == max_length - 1)


def suppress_tokens(logits: jax.Array, hist: History, tokens: Sequence[int]) -> jax.Array:
    """HF `SuppressTokensLogitsProcessor(suppress_tokens)`: `tokens` are always -inf (`hist` is unused)."""
    del hist
    return jnp.where(jnp.asarray(_token_mask(tokens, logits.shape[-1])), NEG_INF, logits)


def begin_suppress_tokens(
    logits: jax.Array, hist: History, tokens: Sequence[int], begin_index: int | jax.Array
) -> jax.Array:
    """HF `SuppressTokensAtBeginLogitsProcessor(begin_suppress_tokens, begin_index)`: `tokens` are -inf when
    `input_ids` holds exactly `begin_index` tokens (`generate()` passes the prompt length; see `logits_processor`)."""
    mask = jnp.asarray(_token_mask(tokens, logits.shape[-1]))
    return jnp.where(mask & (hist.hf_len == begin_index), NEG_INF, logits)


# ------------------------------------------------------------------------------------------------------ warpers


def temperature(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
    """HF `TemperatureLogitsWarper(temperature)`."""
    return _div(logits, temperature)


def top_k(logits: jax.Array, top_k: int, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF `TopKLogitsWarper(top_k, min_tokens_to_keep)`: keeps the logits >= the k-th largest, with
    `k = min(max(top_k, min_tokens_to_keep), V)` (ties with the k-th are all kept)."""
    if int(top_k) <= 0:
        raise ValueError(f"`top_k` must be a positive integer, but is {top_k}.")
    k = min(max(int(top_k), int(min_tokens_to_keep)), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p(logits: jax.Array, top_p: float | jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF `TopPLogitsWarper(top_p, min_tokens_to_keep)`: in ascending order, drops the tokens whose cumulative
    probability is <= `1 - top_p`, never the `min_tokens_to_keep` most likely ones."""
    batch, vocab = logits.shape
    order = jnp.argsort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1), axis=-1)
    drop_sorted = cum <= (1 - top_p)
    keep = min(int(min_tokens_to_keep), vocab)
    drop_sorted = drop_sorted & (jnp.arange(vocab) < vocab - keep)
    drop = jnp.zeros((batch, vocab), bool).at[jnp.arange(batch)[:, None], order].set(drop_sorted)
    return jnp.where(drop, NEG_INF, logits)


def min_p(logits: jax.Array, min_p: float | jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF `MinPLogitsWarper(min_p, min_tokens_to_keep)`: drops the tokens whose probability is below `min_p` times
    the top probability, never the `min_tokens_to_keep` most likely ones."""
    batch, vocab = logits.shape
    probs = jax.nn.softmax(logits, axis=-1)
    drop = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    top = jax.lax.top_k(probs, min(int(min_tokens_to_keep), vocab))[1]
    drop = drop.at[jnp.arange(batch)[:, None], top].set(False)
    return jnp.where(drop, NEG_INF, logits)


# -------------------------------------------------------------------------------------------------- composition

Processor = Callable[..., jax.Array]


def logits_processor(cfg: GenerationConfig, *, vocab_size: int) -> Processor:
    """`process(logits [B, V], hist, max_len=None) -> logits`: the non-sampling processors active in `cfg`, in the
    order and with the arguments of HF's `generate()` (`_get_logits_processor` after `_prepare_generated_length`):

    repetition penalty (left padding ignored) -> no-repeat-ngram -> bad words -> min length (with `min_new_tokens`
    set, HF's `min_length` becomes `min_new_tokens + prompt_len`) -> min new tokens -> forced BOS -> forced EOS
    (at `max_len - 1`) -> suppress tokens -> begin-suppress tokens (at `prompt_len`, or `prompt_len + 1` when the
    prompt has one token and `forced_bos_token_id` is set). Processors needing EOS are skipped without one, as in HF.

    `max_len` is HF's final `max_length` (`cfg.max_length_for(prompt_len, ...)`), a traced scalar or an int, so a
    new `max_new_tokens` does not recompile; it is required only when `forced_eos_token_id` is set. Everything else
    comes from `cfg` (static) and `hist` (traced).
    """
    steps: list[Callable[[jax.Array, History, jax.Array | int | None], jax.Array]] = []
    eos = None if cfg.eos_token_id is None else cfg.eos_token_ids
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        steps.append(lambda x, h, m: repetition_penalty(x, h, cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size is not None and cfg.no_repeat_ngram_size > 0:
        steps.append(lambda x, h, m: no_repeat_ngram(x, h, cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids is not None:
        _bad_word_groups(cfg.bad_words_ids, eos, vocab_size)  # raises now for ids outside the vocabulary
        steps.append(lambda x, h, m: bad_words(x, h, cfg.bad_words_ids, eos))
    if eos is not None:
        if cfg.min_new_tokens is not None:
            steps.append(lambda x, h, m: min_length(x, h, cfg.min_new_tokens + h.prompt_len, eos))
        elif cfg.min_length > 0:
            steps.append(lambda x, h, m: min_length(x, h, cfg.min_length, eos))
        if cfg.min_new_tokens is not None and cfg.min_new_tokens > 0:
            steps.append(lambda x, h, m: min_new_tokens(x, h, cfg.min_new_tokens, eos))
    if cfg.forced_bos_token_id is not None:
        steps.append(lambda x, h, m: forced_bos(x, h, cfg.forced_bos_token_id))
    if cfg.forced_eos_token_id is not None:

        def _forced_eos(x, h, m):
            if m is None:
                raise ValueError("`forced_eos_token_id` is set: pass `max_len` (cfg.max_length_for(prompt_len)).")
            return forced_eos(x, h, m, cfg.forced_eos_token_id)

        steps.append(_forced_eos)
    if cfg.suppress_tokens is not None:
        steps.append(lambda x, h, m: suppress_tokens(x, h, cfg.suppress_tokens))
    if cfg.begin_suppress_tokens is not None:

        def _begin_index(h):
            if cfg.forced_bos_token_id is None:
                return h.prompt_len
            return jnp.where(h.prompt_len > 1, h.prompt_len, h.prompt_len + 1)

        steps.append(lambda x, h, m: begin_suppress_tokens(x, h, cfg.begin_suppress_tokens, _begin_index(h)))

    def process(logits: jax.Array, hist: History, max_len: jax.Array | int | None = None) -> jax.Array:
        if logits.shape[-1] != vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, but the processor was built for {vocab_size}.")
        for step in steps:
            logits = step(logits, hist, max_len)
        return logits

    return process


def logits_warper(cfg: GenerationConfig) -> Callable[[jax.Array], jax.Array]:
    """`warp(logits) -> logits`: HF's sampling warpers active in `cfg`, in HF's order (temperature -> top-k ->
    top-p -> min-p), with `min_tokens_to_keep = cfg.min_tokens_to_keep` (1; with beams, number of EOS + 1).
    The identity unless `cfg.do_sample`. Apply it after `logits_processor`."""
    steps: list[Callable[[jax.Array], jax.Array]] = []
    if cfg.do_sample:
        keep = cfg.min_tokens_to_keep
        if cfg.temperature is not None and cfg.temperature != 1.0:
            if not cfg.temperature > 0:
                raise ValueError(f"`temperature` must be > 0 when sampling, but is {cfg.temperature}.")
            steps.append(lambda x: temperature(x, cfg.temperature))
        if cfg.top_k is not None and cfg.top_k != 0:
            steps.append(lambda x: top_k(x, cfg.top_k, keep))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            steps.append(lambda x: top_p(x, cfg.top_p, keep))
        if cfg.min_p is not None:
            steps.append(lambda x: min_p(x, cfg.min_p, keep))

    def warp(logits: jax.Array) -> jax.Array:
        for step in steps:
            logits = step(logits)
        return logits

    return warp
