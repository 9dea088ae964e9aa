"""Sizes, hangs and option checks of `jf.generate` / `jf.stream` (issue 13).

Sizes the cache or the prefill cannot hold are refused before anything compiles, with the numbers; a failure of the
background compile or of the compiled program is raised in the caller, never a hang; `chunk_steps` is checked; token
ids outside the vocabulary behave as in transformers (an unused EOS id is harmless, a pad fed to the model is an
error). Memory is never really exhausted here (except in one subprocess): the "available memory" function is
replaced by a fixed number, and a guard fails the test if generation gets past its checks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxformers as jf
import jaxformers.generation as gen
from jaxformers.core import preflight
from jaxformers.core.attention import xla_attention
from jaxformers.generation import decode

GPT2 = ("gpt2", "GPT2LMHeadModel")
LLAMA = ("llama", "LlamaForCausalLM")
IDS = np.array([[5, 6, 7], [8, 9, 10]], np.int32)


@pytest.fixture(scope="module")
def models(tiny_hf):
    """jaxformers and transformers models per name, loaded once for this file."""
    out = {}
    for name, hf_class in (GPT2, LLAMA):
        directory, ref = tiny_hf(name, hf_class)
        out[name] = (jf.AutoModelForCausalLM.from_pretrained(directory), ref, directory)
    return out


@pytest.fixture
def no_run(monkeypatch):
    """Fail (instead of compiling, allocating, or hanging) if generation gets past its up-front checks."""

    def reached(*args, **kwargs):
        raise AssertionError("generate went past its size checks (it laid the model out for decoding)")

    monkeypatch.setattr(decode, "decode_layout", reached)


def fixed_memory(monkeypatch, n: int | None):
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda device=None: n)


def hf_generate(ref, ids, **kw):
    with torch.no_grad():
        return ref.generate(torch.tensor(ids).long(), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                            do_sample=False, **kw).numpy()  # fmt: skip


# ------------------------------------------------------------------------------------------------------ sizes


def test_a_cache_larger_than_memory_is_refused_before_compiling(models, monkeypatch, no_run):
    """max_new_tokens=10**9 on a RoPE model: hung forever before (the program ran out of memory, the host waited)."""
    fixed_memory(monkeypatch, 64 * 2**30)
    model = models["llama"][0]
    t0 = time.perf_counter()
    with pytest.raises(preflight.InsufficientMemoryError, match=r"KV cache .* only 64\.00 GiB is available") as e:
        jf.generate(model, IDS, max_new_tokens=10**9)
    assert time.perf_counter() - t0 < 10
    assert isinstance(e.value, ValueError)  # a bad argument, also catchable as ValueError
    # the numbers: the bucketed cache length, and its size as the model's own cache would have it
    cache_len = 16 + gen.new_tokens_bucket(10**9)
    assert f"cache of {cache_len} positions" in str(e.value)
    cache = jax.eval_shape(lambda: model.init_cache(2, cache_len))
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)) + 4 * 2 * cache_len
    assert preflight.format_bytes(need) in str(e.value)
    assert "max_new_tokens" in str(e.value)


def test_sizes_beyond_int32_are_refused(models, no_run):
    with pytest.raises(ValueError, match=r"int32.*2\*\*31 = 2147483648 positions.*at most 1879048192"):
        jf.generate(models["llama"][0], IDS, max_new_tokens=2 * 10**9)
    # the largest size the message offers passes this check (and is then refused for memory, not int32)
    with pytest.raises(preflight.InsufficientMemoryError):
        jf.generate(models["llama"][0], IDS[:1], max_new_tokens=1879048192)


def test_context_limits_follow_transformers(models):
    """Learned positions (GPT-2's n_positions) are a hard limit: transformers fails with an IndexError past them, so
    generate refuses up front. RoPE models accept any position (transformers allows it): generate runs, identically."""
    model, ref, _ = models["gpt2"]
    ids = np.random.RandomState(0).randint(3, 97, (1, 60)).astype(np.int32)
    with pytest.raises(IndexError):
        hf_generate(ref, ids, max_new_tokens=10, eos_token_id=None)
    with pytest.raises(ValueError, match=r"context \(64 positions\).*at most 4"):
        jf.generate(model, ids, max_new_tokens=10, eos_token_id=None)
    model, ref, _ = models["llama"]
    ids = np.random.RandomState(1).randint(3, 97, (1, 70)).astype(np.int32)  # longer than max_position_embeddings
    want = hf_generate(ref, ids, max_new_tokens=4, eos_token_id=None)
    np.testing.assert_array_equal(jf.generate(model, ids, max_new_tokens=4, eos_token_id=None), want)


def test_prefill_attention_larger_than_memory_is_refused(models, monkeypatch, no_run):
    """The XLA prefill materialises [B, N, T, S] float32 logits per layer: a 60k-token prompt needs hundreds of GiB
    (it failed with an unreadable JaxRuntimeError before)."""
    model = models["llama"][0]
    fixed_memory(monkeypatch, 64 * 2**30)
    ids = np.random.RandomState(2).randint(3, 97, (1, 60_000)).astype(np.int32)
    with pytest.raises(preflight.InsufficientMemoryError, match=r"prefill attention .*\[1, 6, 65536, 65568\]") as e:
        jf.generate(model, ids, max_new_tokens=4)
    msg = str(e.value)
    assert "shorter prompt" in msg and "64.00 GiB is available" in msg
    need = preflight.estimate_attention_bytes(1, 6, 65536, 65568, "xla", jnp.float32)
    assert preflight.format_bytes(need) in msg


def test_memory_check_separates_cache_and_attention(models, monkeypatch):
    """A small prompt, with the available memory set between the estimates: which limit was hit, with the numbers;
    and with enough memory, generation runs as before."""
    model, ref, _ = models["llama"]
    ids = np.random.RandomState(3).randint(3, 97, (1, 40)).astype(np.int32)  # prompt bucket 64, cache 64 + 32
    cache = jax.eval_shape(lambda: model.init_cache(1, 96))
    held = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)) + 4 * 96
    attn = preflight.estimate_attention_bytes(1, 6, 64, 96, "xla", jnp.float32, head_dim=10)
    assert attn > held  # the test's premise: the prompt's attention is the larger part here
    fixed_memory(monkeypatch, held - 1)
    with pytest.raises(preflight.InsufficientMemoryError, match="KV cache and token history"):
        jf.generate(model, ids, max_new_tokens=4)
    fixed_memory(monkeypatch, held + attn // 2)
    with pytest.raises(preflight.InsufficientMemoryError, match=r"prefill attention needs about") as e:
        jf.generate(model, ids, max_new_tokens=4)
    assert preflight.format_bytes(attn) in str(e.value) and preflight.format_bytes(held + attn) in str(e.value)
    fixed_memory(monkeypatch, held + attn + 1)
    want = hf_generate(ref, ids, max_new_tokens=4, eos_token_id=None)
    np.testing.assert_array_equal(jf.generate(model, ids, max_new_tokens=4, eos_token_id=None), want)


def test_available_memory_is_real():
    n = preflight.available_memory_bytes()
    assert isinstance(n, int) and n > 0
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        total = preflight.os.sysconf("SC_PHYS_PAGES") * preflight.os.sysconf("SC_PAGE_SIZE")
    else:
        total = device.memory_stats()["bytes_limit"]
    assert n <= total


def test_attention_estimate_matches_what_xla_allocates():
    """The XLA estimate against the compiled program's own temporaries (XLA:CPU's memory analysis), for a prefill
    into a cache (traced offset, key padding) in float32 and bfloat16; flash kernels need far less."""
    b, t, s, n, k, h = 2, 256, 288, 6, 2, 16
    for dtype in (jnp.float32, jnp.bfloat16):
        q, kv = jax.ShapeDtypeStruct((b, t, n, h), dtype), jax.ShapeDtypeStruct((b, s, k, h), dtype)
        mask = jax.ShapeDtypeStruct((b, 1, t, s), jnp.bool_)
        compiled = jax.jit(lambda q, k, v, m: xla_attention(q, k, v, mask=m)).lower(q, kv, kv, mask).compile()
        analysis = compiled.memory_analysis()
        measured = analysis.temp_size_in_bytes + analysis.output_size_in_bytes
        est = preflight.estimate_attention_bytes(b, n, t, s, "xla", dtype, head_dim=h)
        assert 0.6 * measured <= est <= 1.6 * measured, (dtype, est, measured)
        assert preflight.estimate_attention_bytes(b, n, t, s, "pallas", dtype, head_dim=h) < est / 10
    with pytest.raises(ValueError, match="attention_plan"):
        preflight.estimate_attention_bytes(b, n, t, s, "auto")


def test_kv_cache_estimate_matches_the_model_cache(models):
    model = models["llama"][0]
    cache = jax.eval_shape(lambda: model.init_cache(3, 50))
    exact = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    cfg = model.config
    est = preflight.estimate_kv_cache_bytes(cfg.num_hidden_layers, 3, 50, cfg.kv_heads, cfg.dim, jnp.float32)
    assert abs(est - exact) <= 8  # the cache's scalar index


# -------------------------------------------------------------------------------------------- failures, hangs


class _FailingLower:
    """A decode loop whose ahead-of-time compile (the background thread's job) fails; calls work."""

    def __init__(self, real):
        self.real = real

    def lower(self, *args, **kwargs):
        raise RuntimeError("decode loop failed to compile in the background")

    def __call__(self, *args, **kwargs):
        return self.real(*args, **kwargs)


def test_a_background_compile_failure_is_raised_in_the_caller(models, monkeypatch):
    monkeypatch.setattr(gen, "_greedy_run", _FailingLower(gen._greedy_run))  # a new loop: compiled early again
    with pytest.raises(RuntimeError, match="failed to compile in the background") as e:
        jf.generate(models["gpt2"][0], IDS, max_new_tokens=3)
    frames = [f.name for f in e.traceback]
    assert "work" in frames and "lower" in frames  # the background thread's own traceback


def test_a_failing_program_raises_instead_of_hanging(tiny_hf):
    """With the memory check out of the way, a cache of 10**9 positions for 256 rows (about 20 TB) fails to
    allocate in XLA. Reading the loop's step from the failed program used to block forever; it must raise. In a
    subprocess: a hang is killed by the timeout, and the failed program does not affect this test session."""
    directory, _ = tiny_hf(*LLAMA)
    script = textwrap.dedent(f"""
        import numpy as np, jaxformers as jf
        from jaxformers.core import preflight
        preflight.available_memory_bytes = lambda device=None: None  # unknown: no up-front check
        model = jf.AutoModelForCausalLM.from_pretrained({str(directory)!r})
        try:
            jf.generate(model, np.full((200, 3), 5, np.int32), max_new_tokens=10**9)
        except Exception as e:
            print("RAISED", type(e).__name__, str(e).splitlines()[0], getattr(e, "__notes__", ""))
        else:
            print("RETURNED")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=False)
    assert "RAISED" in out.stdout and "memory" in out.stdout.lower(), (out.stdout, out.stderr[-3000:])


# --------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda m: list(jf.stream(m, IDS, max_new_tokens=3, chunk_steps=0)), ValueError),
        (lambda m: list(jf.stream(m, IDS, max_new_tokens=3, chunk_steps=-2)), ValueError),
        (lambda m: list(jf.stream(m, IDS, max_new_tokens=3, chunk_steps=2.5)), TypeError),
        (lambda m: list(jf.stream(m, IDS, max_new_tokens=3, chunk_steps=True)), TypeError),
        (lambda m: jf.generate(m, IDS, max_new_tokens=3, chunk_steps=0), ValueError),
        (lambda m: jf.generate(m, IDS, max_new_tokens=3, chunk_steps=0, streamer=print), ValueError),
    ],
)
def test_chunk_steps_must_be_a_positive_int(models, monkeypatch, call, error):
    calls = []

    def counted(*args, **kwargs):  # 0 steps per chunk made no progress: the stream looped forever
        calls.append(1)
        if len(calls) > 50:
            raise AssertionError("the streaming loop makes no progress")
        return run(*args, **kwargs)

    run = gen._greedy_run
    monkeypatch.setattr(gen, "_greedy_run", counted)
    with pytest.raises(error, match="chunk_steps"):
        call(models["gpt2"][0])
    assert not calls


def _first_token_rows(ref, ids):
    """An EOS id that stops row 0 at its first new token while row 1 goes on (asserted), from HF's own output."""
    free = hf_generate(ref, ids, max_new_tokens=5, eos_token_id=None)
    eos = int(free[0, ids.shape[1]])
    assert eos not in free[1, ids.shape[1] :], free
    return eos


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_special_token_ids_outside_the_vocabulary(models, name):
    model, ref, _ = models[name]
    eos = _first_token_rows(ref, IDS)
    # an EOS id the model cannot produce: transformers generates normally, so do we. Here it is also the pad (none is
    # given): it used to be embedded in the prompt's bucket padding (NaN logits, rows of zeros). Three rows: the
    # batch bucket's filler row starts finished, so it is fed the pad from the first step.
    ids = np.concatenate([IDS, IDS[:1] + 20])
    kw = {"eos_token_id": 200, "pad_token_id": None}
    np.testing.assert_array_equal(jf.generate(model, ids, max_new_tokens=5, **kw),
                                  hf_generate(ref, ids, max_new_tokens=5, **kw))  # fmt: skip
    # a pad id outside the vocabulary, fed to the model once row 0 has finished: transformers fails, so do we (sooner)
    for kw in ({"eos_token_id": eos, "pad_token_id": 200}, {"eos_token_id": eos, "pad_token_id": -1},
               {"eos_token_id": [200, eos], "pad_token_id": None}):  # fmt: skip
        with pytest.raises(IndexError):
            hf_generate(ref, IDS, max_new_tokens=5, **kw)
        with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 97\).*pad_token_id="):
            jf.generate(model, IDS, max_new_tokens=5, **kw)
    if name != "gpt2":
        return  # the cases below compile programs of their own: one model covers them
    # where transformers never feeds that pad to the model, it runs, and so do we, writing it where HF does: beam
    # search (finished hypotheses are filled with it), and a single row (nothing runs once it has finished)
    for kw, rows in (({"eos_token_id": eos, "pad_token_id": 200, "num_beams": 2}, IDS),
                     ({"eos_token_id": eos, "pad_token_id": 200}, IDS[:1])):  # fmt: skip
        want = hf_generate(ref, rows, max_new_tokens=5, **kw)
        np.testing.assert_array_equal(jf.generate(model, rows, max_new_tokens=5, **kw), want, err_msg=str(kw))
