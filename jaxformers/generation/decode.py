"""The jitted decoding cores: prefill, then one `jax.lax.while_loop` over decode steps with a static-size KV cache.

Two searches share one layout: greedy/sampling (`_GreedyState`) and beam search (`_BeamState`). Each has a `start`
function (prefill the prompt into a fresh cache: next-token logits plus the loop state) and a `run` function (the
loop: pick tokens until `stop` tokens exist, every row has finished, or `max_new` is reached). `run` is called once
by `generate` and once per chunk by streaming, with the same compiled program: `stop` and `max_new` are traced. The
batch bucket's filler rows start finished (beam search: not improvable), so only real rows keep the loop running.

Token history lives in a `[B, L]` buffer (`History`): `start` columns of bucket padding, then HF's `input_ids`
(the caller's left-padded prompt followed by generated tokens). Both searches reproduce transformers 5.x exactly
(the beam search follows `GenerationMixin._beam_search`, whose vectorised bookkeeping this mirrors step by step).

Layers: prefill and loop run the model on per-layer arrays and a per-layer cache (`decode_layout`, which lays the
model itself out so, in place: one copy of the weights): on XLA:CPU a decode step over scanned, stacked `[L, ...]`
weights is much slower (see BENCHMARKS.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxformers.core import layers
from jaxformers.core.cache import KVCache
from jaxformers.generation import processors as proc
from jaxformers.generation.config import GenerationConfig
from jaxformers.generation.history import History

NEG = -1.0e9  # HF's "impossible beam" score


@struct.dataclass
class _GreedyState:
    hist: History
    cache: KVCache
    logits: jax.Array  # [B, V] float32, next-token logits of the last forward
    finished: jax.Array  # [B] bool
    key: jax.Array
    step: jax.Array  # () int32 tokens generated so far
    max_new: jax.Array  # () int32


@struct.dataclass
class _BeamState:
    running: History  # ids [B * nb, L]
    cache: KVCache  # B * nb rows, aligned with `running`
    logits: jax.Array  # [B * nb, V]
    running_scores: jax.Array  # [B, nb]
    seqs: jax.Array  # [B, nb, L] finished hypotheses (HF `sequences`)
    seq_lens: jax.Array  # [B, nb] generated length of each finished hypothesis (HF: beam_indices != -1)
    beam_scores: jax.Array  # [B, nb]
    done: jax.Array  # [B, nb] bool (HF `is_sent_finished`)
    improvable: jax.Array  # [B, 1] bool (HF `is_early_stop_heuristic_unsatisfied`)
    real: jax.Array  # [B, 1] bool: False for the batch bucket's filler rows
    all_stopped: jax.Array  # () bool: every top-k candidate of the last step hit a stopping criterion
    key: jax.Array
    step: jax.Array
    max_new: jax.Array


def eos_ids(cfg: GenerationConfig) -> tuple[int, ...]:
    return cfg.eos_token_ids


def pad_id(cfg: GenerationConfig) -> int:
    """What finished rows are padded with: `pad_token_id`, else the first EOS id (HF sets it so), else 0."""
    pad = cfg.generation_pad_token_id
    return 0 if pad is None else int(pad)


def beam_fill_id(cfg: GenerationConfig) -> int:
    """HF beam search's `output_fill_value`: `pad_token_id or eos_token_id[0]` (so a pad id of 0 becomes EOS)."""
    eos = eos_ids(cfg)
    return (pad_id(cfg) or eos[0]) if eos else -1


# Up to this many rows, and for at least this many new tokens, the decode loop stores kernels `[out, in]`: one-row
# products stream them faster on XLA:CPU, but the reorder costs a transpose of the kernels each way per call, which
# pays back only over many steps. Measured on a 2-core AMD EPYC (BENCHMARKS.md, issue 10): the reorder costs
# 90-260 ms per call (GPT-2 small, a 125M Llama, bart-base) and saves 1-3 ms per step, so it breaks even after
# ~90-110 steps; t5-small's 512-wide products gain nothing per step at all.
OUT_FIRST_MAX_ROWS = 1
OUT_FIRST_MIN_NEW_TOKENS = 128


def decode_layout(model, *, rows: int, unroll: bool, new_tokens: int) -> None:
    """Lay `model` out, in place, for a generation over `rows` rows and up to `new_tokens` steps: per-layer arrays
    when `unroll`, with kernels ordered for `rows`-row products where that pays (`OUT_FIRST_MAX_ROWS`,
    `OUT_FIRST_MIN_NEW_TOKENS`; `core.layers.decode_layout`); else the model's own scanned layout
    (`core.layers.canonical_layout`, a no-op unless an earlier call laid it out).

    In place rather than a copy, so generating holds one copy of the weights (`release=True`: the stacked arrays'
    Variables are emptied meanwhile); `generate` puts the checkpoint's layout back (`canonical_layout`) in a
    `finally`, onto the same Variable objects."""
    if unroll:  # (an encoder-decoder's encoder runs once, on the whole source: its kernels keep their order)
        keep = (model.get_encoder(),) if model.is_encoder_decoder else ()
        out_first = rows <= OUT_FIRST_MAX_ROWS and new_tokens >= OUT_FIRST_MIN_NEW_TOKENS
        layers.decode_layout(model, out_first=out_first, release=True, keep_order=keep)
    else:
        layers.canonical_layout(model)


def _forward(model, ids, cache):
    """One decode step: `ids [B, T]` appended to the cache; next-token logits `[B, V]` in float32. A seq2seq model
    runs its decoder only (`decode`), on the cross-attention K/V its cache holds (`core.seq2seq`)."""
    ones = jnp.ones(ids.shape, jnp.int32)
    if model.is_encoder_decoder:
        out = model.decode(ids, ones, cache=cache, logits_to_keep=1)
    else:
        out = model(ids, ones, cache=cache, logits_to_keep=1)
    return out.logits[:, -1].astype(jnp.float32), out.cache


def _prefill(graphdef, state, ids, mask, cache_len: int, unroll: bool, src=None, src_mask=None):
    """The prompt into a fresh cache; next-token logits. Seq2seq (`src` given): run the encoder once over the source
    `src [B, S]` / `src_mask`, compute every decoder layer's cross-attention K/V into the cache (`init_cache`), then
    the decoder prompt `ids` (HF's `decoder_input_ids`: `decoder_start_token_id`, or a given prefix)."""
    model = nnx.merge(graphdef, state)
    if src is not None:
        enc = model.encode(src, src_mask).last_hidden_state
        cache = model.init_cache(ids.shape[0], cache_len, enc, src_mask)
    else:
        cache = model.init_cache(ids.shape[0], cache_len)
    cache = cache.unstacked() if unroll else cache  # per-layer, as the layers
    out = (model.decode if src is not None else model)(ids, mask, cache=cache, logits_to_keep=1)
    return out.logits[:, -1].astype(jnp.float32), out.cache


def _history(ids, start: int, pad_len, cfg: GenerationConfig, buf_len: int) -> History:
    b, t = ids.shape
    buf = jnp.full((b, buf_len), pad_id(cfg), jnp.int32).at[:, :t].set(ids)
    return History(
        ids=buf,
        start=jnp.asarray(start, jnp.int32),
        pad_len=pad_len.astype(jnp.int32),
        prompt_len=jnp.asarray(t - start, jnp.int32),
        cur=jnp.asarray(t, jnp.int32),
    )


def _write(hist: History, tokens) -> History:
    ids = jax.lax.dynamic_update_slice(hist.ids, tokens[:, None].astype(jnp.int32), (0, hist.cur))
    return hist.replace(ids=ids, cur=hist.cur + 1)


def _is_eos(tokens, cfg: GenerationConfig):
    if not eos_ids(cfg):
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids(cfg), jnp.int32))


# ----------------------------------------------------------------------------------------------- greedy / sampling
def greedy_start(graphdef, state, ids, mask, pad_len, real, start, key, max_new, src=None, src_mask=None, *,
                 cfg: GenerationConfig, cache_len, buf_len, unroll):  # fmt: skip
    """Prefill `ids [B, T]` (left-padded, `start` columns of bucket padding first) into a fresh cache.

    pad_len `[B]`: HF's `padding_lengths` (left padding of each row, not counting the bucket columns). real `[B]`
    bool: False for the filler rows of the batch bucket, which start finished so they never keep the loop running.
    src / src_mask `[B, S]`: a seq2seq model's encoder input (then `ids` are the decoder's first tokens)."""
    logits, cache = _prefill(graphdef, state, ids, mask, cache_len, unroll, src, src_mask)
    hist = _history(ids, start, pad_len, cfg, buf_len)
    zero = jnp.zeros((), jnp.int32)
    finished = ~real.astype(bool)
    return _GreedyState(hist, cache, logits, finished, key, zero, jnp.asarray(max_new, jnp.int32))


def greedy_run(graphdef, state, st: _GreedyState, stop, *, cfg: GenerationConfig) -> _GreedyState:
    """Decode until `stop` tokens were generated, every row has finished, or `max_new` is reached.

    `(graphdef, state)` is the model in its decoding layout (`decode_layout`)."""
    model = nnx.merge(graphdef, state)
    process = proc.logits_processor(cfg, vocab_size=st.logits.shape[-1])
    warp = proc.logits_warper(cfg) if cfg.do_sample else None
    limit = jnp.minimum(jnp.asarray(stop, jnp.int32), st.max_new)
    max_len = st.hist.prompt_len + st.max_new  # HF's max_length (max_new is derived from it on the host)
    # finished rows are written `pad` (HF's output) but their next forward is never read: with a pad outside the
    # vocabulary (which `check_token_ids` allows only where HF never feeds it), feed them token 0 instead, so the
    # embedding never sees an id it has no row for
    pad_in_vocab = 0 <= pad_id(cfg) < st.logits.shape[-1]

    def cond(s: _GreedyState):
        return (s.step < limit) & ~jnp.all(s.finished)

    def body(s: _GreedyState):
        scores = process(s.logits, s.hist, max_len)
        key, sub = jax.random.split(s.key)
        if warp is not None:
            tokens = jax.random.categorical(sub, warp(scores), axis=-1).astype(jnp.int32)
        else:
            tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        tokens = jnp.where(s.finished, pad_id(cfg), tokens)
        hist = _write(s.hist, tokens)
        finished = s.finished | _is_eos(tokens, cfg)
        step = s.step + 1
        # the next token's logits are needed whenever generation goes on, also past this call's `stop` (a streaming
        # chunk's end): the next call starts from them
        more = (step < s.max_new) & ~jnp.all(finished)
        fed = tokens if pad_in_vocab else jnp.where(s.finished, 0, tokens)
        logits, cache = jax.lax.cond(more, lambda: _forward(model, fed[:, None], s.cache), lambda: (s.logits, s.cache))
        return s.replace(hist=hist, cache=cache, logits=logits, finished=finished, key=key, step=step)

    return jax.lax.while_loop(cond, body, st)


# ------------------------------------------------------------------------------------------------------- beam search
def beam_start(graphdef, state, ids, mask, pad_len, real, start, key, max_new, src=None, src_mask=None, *,
               cfg: GenerationConfig, cache_len, buf_len, unroll):  # fmt: skip
    """Prefill the B prompts once, then replicate the cache and logits to `num_beams` rows each (HF expands first;
    the values are identical). Filler rows (`real` False) start not improvable and count as done, their candidates
    as stopped, so the batch-wide stopping tests (HF's `_beam_search_has_unfinished_sequences`) see real rows only."""
    nb = cfg.num_beams
    b = ids.shape[0]
    logits, cache = _prefill(graphdef, state, ids, mask, cache_len, unroll, src, src_mask)
    rows = jnp.repeat(jnp.arange(b), nb)
    cache, logits = cache.gather_rows(rows), logits[rows]
    pad_len = pad_len[rows]
    running = _history(ids[rows], start, pad_len, cfg, buf_len)
    fill = jnp.full((b, nb, buf_len), beam_fill_id(cfg), jnp.int32)
    seqs = fill.at[:, :, : ids.shape[1]].set(ids[:, None, :])
    running = running.replace(ids=seqs.reshape(b * nb, buf_len))
    running_scores = jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(NEG)
    zero = jnp.zeros((), jnp.int32)
    real = real.astype(bool)[:, None]
    return _BeamState(
        running=running,
        cache=cache,
        logits=logits,
        running_scores=running_scores,
        seqs=seqs,
        seq_lens=jnp.zeros((b, nb), jnp.int32),
        beam_scores=jnp.full((b, nb), NEG, jnp.float32),
        done=jnp.zeros((b, nb), bool),
        improvable=real,
        real=real,
        all_stopped=jnp.zeros((), bool),
        key=key,
        step=zero,
        max_new=jnp.asarray(max_new, jnp.int32),
    )


def _gather(x, idx):
    """`x [B, M, ...]` rows `idx [B, K]` along axis 1 (HF `_gather_beams`)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_run(graphdef, state, st: _BeamState, stop, *, cfg: GenerationConfig) -> _BeamState:
    model = nnx.merge(graphdef, state)
    process = proc.logits_processor(cfg, vocab_size=st.logits.shape[-1])
    warp = proc.logits_warper(cfg) if cfg.do_sample else None
    nb = cfg.num_beams
    b = st.running_scores.shape[0]
    buf_len = st.seqs.shape[-1]
    keep = max(2, 1 + len(eos_ids(cfg))) * nb  # HF beams_to_keep
    top_mask = jnp.arange(keep) < nb
    lp = cfg.length_penalty
    limit = jnp.minimum(jnp.asarray(stop, jnp.int32), st.max_new)
    max_len = st.running.prompt_len + st.max_new  # HF's max_length

    def cond(s: _BeamState):
        improvement_possible = jnp.any(s.improvable)
        open_beam = ~(jnp.all(s.done | ~s.real) & (cfg.early_stopping is True))
        return (s.step < limit) & improvement_possible & open_beam & ~s.all_stopped

    def body(s: _BeamState):
        hist = s.running
        log_probs = jax.nn.log_softmax(s.logits, axis=-1)
        log_probs = process(log_probs, hist, max_len)
        if warp is not None:
            log_probs = warp(log_probs)
        vocab = log_probs.shape[-1]
        acc = (log_probs.reshape(b, nb, vocab) + s.running_scores[:, :, None]).reshape(b, nb * vocab)
        key, sub = jax.random.split(s.key)
        if cfg.do_sample:
            idx = _sample_without_replacement(sub, acc, keep)
            top_lp = jnp.take_along_axis(acc, idx, axis=1)
            order = jnp.argsort(-top_lp, axis=1, stable=True)
            top_lp, idx = jnp.take_along_axis(top_lp, order, 1), jnp.take_along_axis(idx, order, 1)
        else:
            top_lp, idx = jax.lax.top_k(acc, keep)
        src_beam = idx // vocab  # [B, keep]
        tok = (idx % vocab).astype(jnp.int32)
        running_ids = hist.ids.reshape(b, nb, buf_len)
        cand = _gather(running_ids, src_beam)
        cand = jax.lax.dynamic_update_slice(cand, tok[:, :, None], (0, 0, hist.cur))  # [B, keep, L]
        hf_len = hist.cur - hist.start  # HF cur_len before this token
        # stopping criteria on the candidates: max_length reached, or EOS as the new token
        stopped = _is_eos(tok, cfg) | (hf_len + 1 >= max_len)
        # running beams for the next step: best nb candidates that did not stop
        run_lp = top_lp + stopped.astype(jnp.float32) * NEG
        nxt = jax.lax.top_k(run_lp, nb)[1]
        new_running_ids = _gather(cand, nxt)
        new_running_scores = _gather(run_lp, nxt)
        new_src = _gather(src_beam, nxt)  # [B, nb] source beam of each running beam
        # finished hypotheses: merge the candidates that just stopped (top nb only) into the finished set
        just_done = stopped & top_mask[None, :]
        fin_lp = top_lp / ((hf_len + 1 - hist.prompt_len).astype(jnp.float32) ** lp)
        full = jnp.all(s.done, axis=-1, keepdims=True) & (cfg.early_stopping is True)
        fin_lp = fin_lp + full.astype(jnp.float32) * NEG
        fin_lp = fin_lp + (~s.improvable).astype(jnp.float32) * NEG
        fin_lp = fin_lp + (~just_done).astype(jnp.float32) * NEG
        m_seqs = jnp.concatenate([s.seqs, cand], axis=1)
        m_scores = jnp.concatenate([s.beam_scores, fin_lp], axis=1)
        m_lens = jnp.concatenate([s.seq_lens, jnp.broadcast_to(s.step + 1, (b, keep))], axis=1)
        m_done = jnp.concatenate([s.done, just_done], axis=1)
        top = jax.lax.top_k(m_scores, nb)[1]
        seqs, beam_scores = _gather(m_seqs, top), _gather(m_scores, top)
        seq_lens, done = _gather(m_lens, top), _gather(m_done, top)
        # reorder the cache to follow the running beams, then the early-stop heuristic (HF order)
        rows = (new_src + jnp.arange(b)[:, None] * nb).reshape(-1)
        cache = s.cache.gather_rows(rows)
        new_hf_len = hf_len + 1
        if cfg.early_stopping == "never" and lp > 0.0:
            best_len = max_len - hist.prompt_len
        else:
            best_len = new_hf_len - hist.prompt_len
        best_running = new_running_scores[:, :1] / (best_len.astype(jnp.float32) ** lp)
        worst_done = jnp.where(done, jnp.min(beam_scores, axis=1, keepdims=True), NEG)
        improvable = s.improvable & jnp.any(best_running > worst_done, axis=-1, keepdims=True)
        all_stopped = jnp.all(stopped | ~s.real)
        running = hist.replace(ids=new_running_ids.reshape(b * nb, buf_len), cur=hist.cur + 1)
        step = s.step + 1
        open_beam = ~(jnp.all(done | ~s.real) & (cfg.early_stopping is True))
        more = (step < s.max_new) & jnp.any(improvable) & open_beam & ~all_stopped  # as in greedy_run
        last = new_running_ids.reshape(b * nb, buf_len)[:, hist.cur]
        logits, cache = jax.lax.cond(more, lambda: _forward(model, last[:, None], cache), lambda: (s.logits, cache))
        return s.replace(
            running=running, cache=cache, logits=logits, running_scores=new_running_scores, seqs=seqs,
            seq_lens=seq_lens, beam_scores=beam_scores, done=done, improvable=improvable, all_stopped=all_stopped,
            key=key, step=step,
        )  # fmt: skip

    return jax.lax.while_loop(cond, body, st)


def _sample_without_replacement(key, log_probs, k: int):
    """`k` indices drawn without replacement with probabilities `softmax(log_probs)` (Gumbel top-k)."""
    g = jax.random.gumbel(key, log_probs.shape, log_probs.dtype)
    return jax.lax.top_k(log_probs + g, k)[1]
