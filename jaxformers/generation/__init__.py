"""Text generation: `generate(model, input_ids, ...)` with the semantics of transformers' `generate()`.

    ids = jf.generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=32)
    for text in jf.stream(model, ids, tokenizer=tok, max_new_tokens=64):   # decoded text, a few tokens at a time
        print(text, end="")

The work happens in `decode.py`: a pure, jitted prefill plus one `lax.while_loop` (greedy, sampling or beam search)
over a static-size KV cache. This module is the thin host side: settings (`GenerationConfig`: explicit keywords >
the checkpoint's `generation_config.json` > model config > HF defaults), input checks, shape buckets (batch and
prompt length are rounded up, so a stream of prompts compiles a handful of programs), and streaming in chunks of
steps (the loop returns to the host every `chunk_steps` tokens, never per token).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformers.core import layers, preflight
from jaxformers.core.attention import attention_plan
from jaxformers.generation import decode
from jaxformers.generation.config import GenerationConfig, resolve

log = logging.getLogger("jaxformers")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MIN_PROMPT_BUCKET = 16  # prompt lengths round up to powers of two from here
MIN_NEW_TOKENS_BUCKET = 32  # the cache holds the prompt bucket plus `new_tokens_bucket(max_new_tokens)`
NEW_TOKENS_PER_OCTAVE = 4  # (a power of two) cache sizes per doubling of max_new_tokens, once past the minimum steps

# Number of traces (= compilations) of each jitted core, for tests and for users who watch compile counts.
TRACES: collections.Counter = collections.Counter()

# The sampling seed of calls that pass no `key=`; `jf.set_seed(n)` sets it (`generation.streamers.set_seed`).
DEFAULT_SEED = 0


def _counted(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        TRACES[name] += 1
        return fn(*args, **kwargs)

    return wrapper


_START_STATIC = ("cfg", "cache_len", "buf_len", "unroll")
_greedy_start = jax.jit(_counted("greedy_start", decode.greedy_start), static_argnums=0, static_argnames=_START_STATIC)
_beam_start = jax.jit(_counted("beam_start", decode.beam_start), static_argnums=0, static_argnames=_START_STATIC)


_greedy_run = jax.jit(_counted("greedy_run", decode.greedy_run), static_argnums=0, static_argnames="cfg",
                      donate_argnums=2)  # fmt: skip
_beam_run = jax.jit(_counted("beam_run", decode.beam_run), static_argnums=0, static_argnames="cfg", donate_argnums=2)


def generate(
    model,
    input_ids,
    attention_mask=None,
    *,
    generation_config: GenerationConfig | None = None,
    key: jax.Array | int | None = None,
    streamer: Callable[[np.ndarray], None] | None = None,
    chunk_steps: int = 8,
    unroll_layers: bool = True,
    **kwargs,
) -> np.ndarray:
    """Generate continuations of left-padded prompts, like `transformers`' `model.generate(...)`.

    Args:
      model: a causal LM (`...ForCausalLM`, `GPT2LMHeadModel`).
      input_ids: `[B, T]` int prompt ids, left-padded (`tokenizer.padding_side = "left"`); numpy or jax.
      attention_mask: `[B, T]`, 1 for real tokens (default: all ones).
      generation_config: base settings (default: the checkpoint's `generation_config.json`, then the model config).
      key: PRNG key (or int seed) for sampling (`do_sample=True`). Default: `jax.random.key(DEFAULT_SEED)`, seed 0
        unless `jf.set_seed(n)` changed it, so an unkeyed call samples the same tokens every time; pass a different
        `key` per call for different samples.
      streamer: called with each chunk of new tokens `[B, n]` as they are produced (greedy / sampling only); or an
        object with `put` / `end` (`jf.TextStreamer(tok)`, transformers' streamers): `put` gets the prompt, then
        each chunk, and `end()` is called at the end (`generation.streamers`).
      chunk_steps: decode steps per streamed chunk, an int >= 1.
      unroll_layers: run prefill and decode loop over per-layer weights and cache (faster decode steps). For the
        call, the model itself is laid out so, in place (`core.layers.decode_layout`: one copy of the weights; no
        copy at all on one CPU device except for kernels reordered for one-row products: batch 1, at least
        `decode.OUT_FIRST_MIN_NEW_TOKENS` new tokens), and put back as loaded when the call ends. False runs the
        model's scanned layout.
      **kwargs: any `GenerationConfig` field, with HF's names and meaning: `max_new_tokens`, `max_length`,
        `min_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`,
        `no_repeat_ngram_size`, `num_beams`, `length_penalty`, `early_stopping`, `num_return_sequences`,
        `eos_token_id` (int or list), `pad_token_id`, `forced_bos_token_id`, `forced_eos_token_id`, ...
    Returns:
      `[B * num_return_sequences, T + n]` int32: the prompts as given, then the generated tokens, finished rows
      padded with `pad_token_id` (HF's layout; `n` is the number of steps taken).
    Raises:
      ValueError for bad inputs or options, before anything compiles: among them, lengths past a learned position
      table (GPT-2's `n_positions`) or past int32 sizes, and a pad id outside the vocabulary that would be fed to
      the model. `jaxformers.core.preflight.InsufficientMemoryError` (a ValueError and a MemoryError) when the
      estimated KV cache, or the prefill's attention, needs more memory than the device has available. A failure
      of the compiled programs (or of compiling them) is raised here too.
    """
    from jaxformers.generation.streamers import callbacks

    on_chunk, on_end = callbacks(streamer, input_ids)
    out = None
    for item in _generate(model, input_ids, attention_mask, generation_config, key, chunk_steps, unroll_layers,
                          kwargs, streaming=on_chunk is not None):  # fmt: skip
        if isinstance(item, _Final):
            out = item.sequences
        else:
            on_chunk(item)
    on_end()
    return out


def stream(
    model,
    input_ids,
    attention_mask=None,
    *,
    tokenizer=None,
    generation_config: GenerationConfig | None = None,
    key: jax.Array | int | None = None,
    chunk_steps: int = 8,
    unroll_layers: bool = True,
    skip_special_tokens: bool = True,
    **kwargs,
) -> Iterator:
    """Iterate over generated tokens as they are produced, `chunk_steps` decode steps at a time.

    Without `tokenizer`: yields `[B, n]` int32 arrays of new tokens. With `tokenizer`: yields, per chunk, the newly
    decoded text (a `str` for a batch of one, else a list of `str`), holding back an incomplete multi-byte character
    until it is complete, as transformers' `TextStreamer` does. Settings as in `generate`; no beam search.
    """
    gen = _generate(model, input_ids, attention_mask, generation_config, key, chunk_steps, unroll_layers, kwargs,
                    streaming=True)  # fmt: skip
    if tokenizer is None:
        yield from (item for item in gen if not isinstance(item, _Final))
        return
    # one row per generated sequence: with sampling and num_return_sequences > 1, that is more than the prompts
    tokens: list[list[int]] = []
    printed: list[int] = []
    for item in gen:
        final = isinstance(item, _Final)
        if not final and not tokens:
            tokens, printed = [[] for _ in range(item.shape[0])], [0] * item.shape[0]
        deltas = []
        for i, row in enumerate(tokens):
            if not final:
                row.extend(int(t) for t in item[i])
            text = tokenizer.decode(row, skip_special_tokens=skip_special_tokens)
            stable = len(text) if final else _stable_prefix(text)
            deltas.append(text[printed[i] : stable])
            printed[i] = max(printed[i], stable)
        if any(deltas):
            yield deltas[0] if len(deltas) == 1 else deltas


def _stable_prefix(text: str) -> int:
    """Length of `text` that later tokens cannot change: all of it, unless it ends in an incomplete character."""
    return len(text) - 1 if text.endswith("\ufffd") else len(text)


class _Final:
    def __init__(self, sequences: np.ndarray):
        self.sequences = sequences


def _generate(model, input_ids, attention_mask, generation_config, key, chunk_steps, unroll, kwargs, *, streaming):
    chunk_steps = _check_chunk_steps(chunk_steps)
    decoder_input_ids = kwargs.pop("decoder_input_ids", None)
    cfg = _settings(model, generation_config, kwargs)
    ids, mask = _check_inputs(model, input_ids, attention_mask)
    facts = _model_facts(model)
    seq2seq = model.is_encoder_decoder
    src = src_mask = None
    if seq2seq:  # the prompt is the encoder's source; the decoder starts from decoder_start_token_id (or a prefix)
        src, src_mask = ids, mask
        ids = _decoder_prompt(model, cfg, decoder_input_ids, src.shape[0])
        mask = np.ones_like(ids)
    elif decoder_input_ids is not None:
        raise TypeError(f"decoder_input_ids is for encoder-decoder models; {type(model).__name__} is decoder-only")
    t = ids.shape[1]
    max_new = cfg.max_length_for(t, getattr(model.config, "max_position_embeddings", None)) - t
    # seq2seq decoders count positions by slot, so their prompt gets no bucket padding (it is one token, or a prefix)
    tb = t if seq2seq else max(MIN_PROMPT_BUCKET, 1 << (t - 1).bit_length())
    cache_len = tb + new_tokens_bucket(max_new)
    _check_int32(t, max_new, tb, cache_len)
    _check_context(model, facts, t, max_new)
    nb = cfg.num_beams
    if streaming and nb > 1:
        raise ValueError("streaming does not support beam search (num_beams > 1), as in transformers")
    expand = cfg.num_return_sequences if nb == 1 else 1
    if expand > 1:  # sampling several sequences per prompt: HF repeats each prompt
        ids, mask = np.repeat(ids, expand, axis=0), np.repeat(mask, expand, axis=0)
        if seq2seq:
            src, src_mask = np.repeat(src, expand, axis=0), np.repeat(src_mask, expand, axis=0)
    rows = ids.shape[0]
    vocab = model.config.vocab_size
    cfg.check_token_ids(vocab, rows)
    # shape buckets: extra rows of padding, extra padding columns on the left (never part of HF's input_ids)
    bb = next((x for x in BATCH_BUCKETS if x >= rows), rows)
    src_b = src_mask_b = None
    if seq2seq:
        src_b, src_mask_b = _source_bucket(model, facts, src, src_mask, bb, decode.pad_id(cfg))
    _check_memory(model, facts, bb, nb, tb, cache_len, src_b)
    start = tb - t
    # bucket padding and the filler rows' one token are masked and never returned, but the prefill embeds them: an
    # id outside the vocabulary (a pad_token_id HF never feeds to the model) would give NaN there
    pad = decode.pad_id(cfg)
    filler = pad if 0 <= pad < vocab else 0
    ids_b = np.full((bb, tb), filler, np.int32)
    mask_b = np.zeros((bb, tb), np.int32)
    ids_b[:rows, start:], mask_b[:rows, start:] = ids, mask
    mask_b[rows:, -1] = 1  # filler rows: one real token, so they are ordinary rows (their output is dropped)
    if isinstance(key, int) or key is None:
        key = jax.random.key(DEFAULT_SEED if key is None else key)

    static = _static_config(cfg)
    common = {"cfg": static, "cache_len": cache_len, "buf_len": cache_len, "unroll": unroll}
    start_fn = _beam_start if nb > 1 else _greedy_start
    run_fn = _beam_run if nb > 1 else _greedy_run
    pad_len = np.zeros((bb,), np.int32)
    pad_len[:rows] = np.argmax(mask, axis=1)  # HF's padding_lengths
    real = np.arange(bb) < rows  # filler rows start finished: they never keep the loop running
    args = (jnp.asarray(ids_b), jnp.asarray(mask_b), jnp.asarray(pad_len), jnp.asarray(real), start, key, max_new)
    if seq2seq:
        args += (jnp.asarray(src_b), jnp.asarray(src_mask_b))
    # prefill and loop run on the decoding layout (per-layer arrays), which the model takes in place for the call
    # (one copy of the weights) and gives back at the end, even on an error or an abandoned stream: outside a call,
    # the model always has the checkpoint's parameter tree (saving, training and adapters read it by path)
    decode.decode_layout(model, rows=bb * nb, unroll=unroll, new_tokens=max_new)
    try:
        graphdef, state = nnx.split(model)
        loop = _compile_loop_early(start_fn, (graphdef, state, *args), common, run_fn, (graphdef, state), static)
        st = start_fn(graphdef, state, *args, **common)
        if loop is not None:
            loop.result()  # re-raises a failure of the background compile here, with its traceback
        if not streaming:
            st = _ready(run_fn(graphdef, state, st, max_new, cfg=static), cache_len)
        else:
            done = 0
            while True:
                st = _ready(run_fn(graphdef, state, st, done + chunk_steps, cfg=static), cache_len)
                step = int(st.step)
                new = np.asarray(st.hist.ids[:rows, tb + done : tb + step])
                done = step
                if new.shape[1]:
                    yield new
                if step >= max_new or bool(jnp.all(st.finished)):  # the loop's own test (filler rows start finished)
                    break
        yield _Final(_result(st, rows, start, tb, nb, cfg))
    finally:
        graphdef = state = None  # the loop's references to the per-layer arrays go before the layout is undone
        layers.canonical_layout(model)


_COMPILER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxformers-compile")
_LOOPS_SEEN: set = set()


def _compile_loop_early(start_fn, start_args, common, run_fn, dmodel, cfg) -> concurrent.futures.Future | None:
    """On the first call for a shape, compile the decode loop on a second thread while this one compiles and runs
    the prefill: XLA releases the GIL while compiling, so the two compilations overlap (the loop's is the larger,
    2-3 s for a 12-layer model on XLA:CPU). The loop's input shapes come from tracing the prefill (`eval_shape`);
    the jit cache then serves the real call. Skipped for sharded weights (the traced shapes carry no shardings,
    so the call would compile again) and once a shape has been seen. A failure here is stored in the future and
    re-raised by the caller's `result()`, with this thread's traceback: never logged and dropped."""
    state = start_args[1]
    sig = (run_fn, dmodel[0], cfg, common["cache_len"], tuple(np.shape(a) for a in start_args[2:5]),
           tuple(np.shape(a) for a in start_args[11:]))  # fmt: skip  (a seq2seq source's shape)
    if sig in _LOOPS_SEEN or any(len(x.sharding.device_set) > 1 for x in jax.tree.leaves(state)):
        return None
    _LOOPS_SEEN.add(sig)
    st_shape = start_fn.eval_shape(*start_args, **common)
    stop = 1  # a Python int, as every call passes: traced as a weak int32 scalar

    def work():
        run_fn.lower(*dmodel, st_shape, stop, cfg=cfg).compile()

    return _COMPILER.submit(work)


def _ready(st, cache_len: int):
    """`st` once computed; a failure of the program that computes it (e.g. out of memory) raised here.

    Reading a value from the output of a failed program can block forever instead of raising (seen on XLA:CPU with
    jaxlib 0.10: the prefill ran out of memory, the decode loop fed on its outputs, and `int(st.step)` never
    returned), while `block_until_ready` raises the error. The host reads `st` right after anyway (the final tokens,
    or a streamed chunk), so this adds no synchronisation."""
    try:
        return jax.block_until_ready(st)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
            e.add_note(
                f"generate ran out of memory with a KV cache of {cache_len} positions: lower max_new_tokens, the "
                "prompt length or the batch size (see jaxformers.core.preflight.available_memory_bytes)"
            )
        raise


def new_tokens_bucket(n: int) -> int:
    """`max_new_tokens` rounded up to the cache's size class: multiples of 32 up to 256, then a geometric grid of
    `NEW_TOKENS_PER_OCTAVE` evenly spaced sizes per doubling (320, 384, 448, 512, 640, ...). A sweep of lengths
    compiles O(log n) programs, and the cache is at most 25% longer than needed (each decode step reads all of it,
    which at long lengths and larger batches can cost as much as reading the weights: plain powers of two could
    make such steps up to 2x slower)."""
    step = max(MIN_NEW_TOKENS_BUCKET, 1 << max(0, (n - 1).bit_length() - NEW_TOKENS_PER_OCTAVE.bit_length()))
    return -(-n // step) * step


def _result(st, rows: int, start: int, tb: int, nb: int, cfg: GenerationConfig) -> np.ndarray:
    if nb == 1:
        return np.asarray(st.hist.ids[:rows, start : tb + int(st.step)])
    b = rows
    nr = cfg.num_return_sequences
    seqs = np.asarray(st.seqs[:b, :nr]).reshape(b * nr, -1)
    n = int(np.asarray(st.seq_lens[:b, :nr]).max())
    return seqs[:, start : tb + n]


def _settings(model, generation_config, kwargs) -> GenerationConfig:
    base = generation_config or getattr(model, "generation_config", None)
    if base is None:
        base = GenerationConfig.from_model_config(model.config.to_hf())
    return resolve(base, **kwargs)


def _static_config(cfg: GenerationConfig) -> GenerationConfig:
    """The settings the compiled program depends on: lengths are traced, so they do not cause recompiles."""
    return cfg.replace(max_new_tokens=None, max_length=None)


def _check_inputs(model, input_ids, attention_mask):
    from jaxformers.core.modeling import PreTrainedModel

    # the class's declarations, not its attributes: generate() runs a decoder-only LM with a KV cache, or an
    # encoder-decoder LM (core.seq2seq's encode / init_cache / decode)
    generating = isinstance(model, PreTrainedModel) and model.can_generate
    if not (generating and (model.is_decoder or model.is_encoder_decoder)):
        raise TypeError(
            f"generate() needs a language model head, got {type(model).__name__} (a {getattr(model, 'task', '?')!r} "
            "model, which cannot generate); load a causal LM with AutoModelForCausalLM.from_pretrained(...) or an "
            "encoder-decoder with AutoModelForSeq2SeqLM.from_pretrained(...)"
        )
    if input_ids is None:
        raise ValueError("input_ids is required: tokenize the prompt first, e.g. tok(prompts, padding=True)")
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        raise ValueError(f"input_ids must be 2-D [batch, seq_len], got shape {ids.shape}; add a batch axis: ids[None]")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, seq_len], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(
            f"empty prompt (input_ids shape {ids.shape}): give at least one token per row, e.g. the BOS token"
        )
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} must equal input_ids shape {ids.shape}")
    mask = (mask != 0).astype(np.int32)
    empty = np.flatnonzero(mask.sum(1) == 0)
    if empty.size:
        raise ValueError(f"prompt rows {empty.tolist()} have no real token (attention_mask all zero)")
    if model.is_decoder and (mask[:, -1] == 0).any():
        raise ValueError(
            "right padding detected (attention_mask ends in 0): decoder-only generation needs left-padded prompts; "
            "set tokenizer.padding_side = 'left'"
        )
    vocab = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab}): min {ids.min()}, max {ids.max()}")
    return ids.astype(np.int32), mask


def _decoder_prompt(model, cfg: GenerationConfig, decoder_input_ids, rows: int) -> np.ndarray:
    """HF's `decoder_input_ids` of a seq2seq generation: `[decoder_start_token_id]` per row (the generation config's,
    else the model config's), or a prefix the caller gave (all rows the same length; no padding)."""
    if decoder_input_ids is not None:
        dec = np.asarray(decoder_input_ids)
        if dec.ndim != 2 or dec.shape[0] != rows or dec.shape[1] == 0 or not np.issubdtype(dec.dtype, np.integer):
            raise ValueError(
                f"decoder_input_ids must be integer ids of shape [batch={rows}, T >= 1], got shape {dec.shape} and "
                f"dtype {dec.dtype}"
            )
        vocab = model.config.vocab_size
        if dec.min() < 0 or dec.max() >= vocab:
            raise ValueError(f"decoder_input_ids hold ids outside the vocabulary [0, {vocab})")
        return dec.astype(np.int32)
    start = cfg.decoder_start_token_id
    if start is None:
        start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise ValueError(
            f"{type(model).__name__} has no decoder_start_token_id (in generation_config.json or config.json): pass "
            "decoder_start_token_id=... to generate"
        )
    if not isinstance(start, (int, np.integer)):
        raise ValueError(f"decoder_start_token_id must be one int for every row, got {start!r}")
    return np.full((rows, 1), int(start), np.int32)


def _source_bucket(model, facts, src: np.ndarray, src_mask: np.ndarray, bb: int, pad: int):
    """A seq2seq source padded to its shape bucket: rows up to `bb` (filler rows: one real token), columns on the
    right up to a power of two from `MIN_PROMPT_BUCKET`, never past a learned position table (BART/mBART/Marian).
    The encoder masks the added columns out, and positions of real tokens do not move (padding is on the right)."""
    rows, s = src.shape
    limit = _position_limit(model, facts)
    if limit is not None and s > limit:
        raise ValueError(
            f"the source has {s} tokens but {type(model).__name__} has positions for {limit} "
            f"(max_position_embeddings); truncate it: tokenizer(..., truncation=True, max_length={limit})"
        )
    sb = max(MIN_PROMPT_BUCKET, 1 << (s - 1).bit_length())
    if limit is not None:
        sb = min(sb, limit)
    vocab = model.config.vocab_size
    filler = pad if 0 <= pad < vocab else 0
    src_b = np.full((bb, sb), filler, np.int32)
    mask_b = np.zeros((bb, sb), np.int32)
    src_b[:rows, :s], mask_b[:rows, :s] = src, src_mask
    mask_b[rows:, 0] = 1
    return src_b, mask_b


def _check_chunk_steps(chunk_steps) -> int:
    # 0 or fewer steps per chunk would make no progress: the streaming loop would spin forever
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, (int, np.integer)):
        raise TypeError(
            f"chunk_steps must be an int >= 1 (decode steps per streamed chunk), got {chunk_steps!r} of type "
            f"{type(chunk_steps).__name__}"
        )
    if chunk_steps < 1:
        raise ValueError(
            f"chunk_steps must be >= 1 (decode steps per streamed chunk), got {chunk_steps}; use e.g. chunk_steps=8"
        )
    return int(chunk_steps)  # a Python int, as the loop's `stop` always is (a numpy int would trace differently)


class _ModelFacts(NamedTuple):
    """What generation's size checks need to know of a model, read from its parameters' logical axes."""

    heads: int | None  # query heads (the "heads" axis)
    head_dim: int | None
    attn_impl: str  # the attention implementation its layers request
    positions: int | None  # size of a learned position table (the "pos" axis): a hard limit on positions


def _model_facts(model) -> _ModelFacts:
    found: dict[str, int] = {}
    impl = "auto"
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            axes, shape = node.get_metadata().get("axes") or (), node.shape
            if len(axes) == len(shape):
                for name, size in zip(axes, shape):
                    found.setdefault(name, size)
        elif isinstance(node, nnx.Module) and isinstance(getattr(node, "impl", None), str):
            impl = node.impl  # attention modules keep `Options.attn_impl` as `impl`
    return _ModelFacts(found.get("heads"), found.get("head_dim"), impl, found.get("pos"))


INT32_LIMIT = 2**31  # positions, cache slots and step counts are int32 in the compiled programs


def _check_int32(prompt_len: int, max_new: int, tb: int, cache_len: int) -> None:
    if cache_len < INT32_LIMIT:
        return
    lo, hi = 0, INT32_LIMIT  # the largest max_new_tokens whose cache fits: buckets grow with n, so bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tb + new_tokens_bucket(mid) < INT32_LIMIT else (lo, mid - 1)
    raise ValueError(
        f"max_new_tokens={max_new} with a {prompt_len}-token prompt needs a KV cache of {cache_len} positions "
        f"(prompt bucket {tb} + {cache_len - tb} new-token slots), but positions, cache slots and step counters are "
        f"int32: the cache must stay below 2**31 = {INT32_LIMIT} positions. Lower max_new_tokens (or max_length) to "
        f"at most {lo}; memory will be the tighter limit long before that"
    )


def _position_limit(model, facts: _ModelFacts) -> int | None:
    """How many positions a model with a learned position table (a "pos" axis) has: its config's
    `max_position_embeddings` (BART's table has 2 more rows than positions), else the table's rows. None without a
    learned table (RoPE, T5's relative buckets): positions are then unbounded."""
    if facts.positions is None:
        return None
    return getattr(model.config, "max_position_embeddings", None) or facts.positions


def _check_context(model, facts: _ModelFacts, prompt_len: int, max_new: int) -> None:
    """A model with a learned position table (GPT-2's `n_positions`) has no embedding past it: transformers fails
    with an IndexError there, so refuse up front. RoPE models accept any position (transformers allows it): warn."""
    context = _position_limit(model, facts)
    hard = context is not None
    if context is None:
        context = getattr(model.config, "max_position_embeddings", None)
    if context is None:
        return
    if prompt_len > context:
        msg = f"the prompt ({prompt_len} tokens) is longer than the model's context ({context} positions)"
        if hard:
            raise ValueError(msg + "; truncate it (tokenizer(..., truncation=True, max_length=...))")
        log.warning("%s; outputs past the context are not meaningful", msg)
    elif prompt_len + max_new > context:
        msg = f"prompt ({prompt_len}) + max_new_tokens ({max_new}) exceeds the model's context ({context} positions)"
        if hard:  # learned absolute positions: there is no embedding past the context
            raise ValueError(msg + f"; lower max_new_tokens to at most {context - prompt_len}")
        log.warning("%s; outputs past the context are not meaningful", msg)


def _check_memory(model, facts: _ModelFacts, bb: int, nb: int, tb: int, cache_len: int, src=None) -> None:
    """Refuse, before compiling, a run whose KV cache or prefill attention cannot fit in the memory available.

    Otherwise XLA fails at run time (a `JaxRuntimeError` about a dispatch failure and an allocation of some bytes),
    after the compilations. Estimates: the cache at its bucketed size (`bb * nb` rows; beam search also holds the
    prefill's `bb`-row cache while it replicates it), the token history, and the prefill's attention intermediates
    (`preflight.estimate_attention_bytes` for the implementation that runs), one layer at a time. Model weights
    are already allocated, so they are not counted (the decode layout is made in place: no second copy)."""
    leaves = _cache_leaves(model, bb * nb, cache_len, None if src is None else src.shape[1])
    cache_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    if nb > 1:
        cache_bytes += cache_bytes // nb
    hist_bytes = 4 * bb * nb * cache_len * (1 if nb == 1 else 4)  # beams: running, finished and candidate buffers
    attn = _prefill_attention(facts, max(leaves, key=lambda x: x.ndim), bb, tb, cache_len)
    devices = {d for x in jax.tree.leaves(nnx.state(model)) for d in x.sharding.device_set}
    device = min(devices, key=lambda d: d.id)
    available = preflight.available_memory_bytes(device)
    if available is None:  # the backend does not say: nothing to compare with
        return
    share, where = 1, "in host RAM"
    if device.platform != "cpu":
        where = f"on {device}"
        if len(devices) > 1:  # sharded weights: the cache and activations are split over the devices too
            share, where = len(devices), f"per device on {len(devices)} devices"
            available = min(preflight.available_memory_bytes(d) or available for d in devices)
    fmt = preflight.format_bytes
    sizes = f"batch bucket {bb}" + (f" x {nb} beams" if nb > 1 else "")
    sizes += f", cache of {cache_len} positions = prompt bucket {tb} + {cache_len - tb} new-token slots"
    held = (cache_bytes + hist_bytes) / share
    if held > available:
        raise preflight.InsufficientMemoryError(
            f"generate needs about {fmt(held)} for the KV cache and token history ({sizes}), but only "
            f"{fmt(available)} is available {where}. Lower max_new_tokens, the batch size, num_beams or the prompt "
            "length"
        )
    if attn is not None and held + attn[0] / share > available:
        attn_bytes, detail, fix = attn
        raise preflight.InsufficientMemoryError(
            f"the prefill attention needs about {fmt(attn_bytes / share)} ({detail}) on top of {fmt(held)} for the "
            f"KV cache and token history ({sizes}): {fmt(held + attn_bytes / share)} in all, but only "
            f"{fmt(available)} is available {where}. Use a shorter prompt or a smaller batch{fix}"
        )


# model -> {(rows, cache_len, source length): the cache's leaves as shapes}: tracing the cache (and, for seq2seq, the
# encoder that feeds it) costs ~15 ms per call, and a model's cache sizes and dtype are fixed when it is built
_CACHE_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_leaves(model, rows: int, cache_len: int, src_len: int | None) -> list[jax.ShapeDtypeStruct]:
    """The leaves of `model`'s KV cache for `rows` rows of `cache_len` slots (seq2seq: over a `src_len` source),
    as shapes (traced once per model and size)."""
    known = _CACHE_SHAPES.setdefault(model, {})
    key = (rows, cache_len, src_len)
    if key not in known:
        if src_len is None:
            shapes = jax.eval_shape(lambda: model.init_cache(rows, cache_len))
        else:  # seq2seq: the cache also holds every decoder layer's cross-attention K/V over the source

            def cache_shape(ids):
                enc = model.encode(ids, jnp.ones(ids.shape, jnp.int32)).last_hidden_state
                return model.init_cache(ids.shape[0], cache_len, enc, jnp.ones(ids.shape, jnp.int32))

            shapes = jax.eval_shape(cache_shape, jax.ShapeDtypeStruct((rows, src_len), jnp.int32))
        known[key] = jax.tree.leaves(shapes)
    return known[key]


def _prefill_attention(facts: _ModelFacts, kv, bb: int, tb: int, cache_len: int) -> tuple[int, str, str] | None:
    """Bytes of the prefill's attention intermediates per layer, what they are, and what else would reduce them."""
    if facts.heads is None:
        return None
    h = facts.head_dim or kv.shape[-1]
    q = jax.ShapeDtypeStruct((bb, tb, facts.heads, h), kv.dtype)
    k = jax.ShapeDtypeStruct((bb, cache_len, kv.shape[-2], h), kv.dtype)
    # the prefill writes the prompt into the cache at a traced offset (the cache's index) and attends over all of
    # the cache: that is the call to plan, with the implementation the model's layers request
    call = {"causal": True, "q_offset": jax.ShapeDtypeStruct((), jnp.int32),
            "key_mask": jax.ShapeDtypeStruct((bb, cache_len), jnp.bool_)}  # fmt: skip
    plan = attention_plan(q, k, k, impl=facts.attn_impl, **call)
    n = preflight.estimate_attention_bytes(bb, facts.heads, tb, cache_len, plan.impl, kv.dtype, head_dim=h)
    detail = f"{plan.impl!r} attention over [{bb}, {facts.heads}, {tb}, {cache_len}] logits per layer"
    fix = ""
    if plan.impl == "xla":
        flash = attention_plan(q, k, k, impl="pallas", **call)
        fix = (
            "; or load the model with attn_impl='pallas' (flash attention)"
            if flash.impl != "xla"
            else f" (no flash kernel covers generate's prefill into the cache: {flash.reason})"
        )
    return n, detail, fix


__all__ = ["TRACES", "GenerationConfig", "generate", "stream"]
