"""The decode layout generation lays a model out in, in place, for the duration of a call
(`core.layers.decode_layout` / `canonical_layout`): per-layer arrays and reordered kernels without a second copy of
the weights, the same numbers, and the checkpoint's tree back when the call ends.
"""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxformers as jf
from jaxformers.core import layers as layers_mod
from jaxformers.core.layers import Dense, Stacked, Unstacked, canonical_layout, decode_layout


def _tree(model) -> dict:
    """`{path: (numpy copy, axis names)}` of every variable of `model` (copies: holding its arrays would keep
    them alive)."""
    return {path: (np.array(v.get_value()), v.get_metadata().get("axes"))
            for path, v in nnx.to_flat_state(nnx.state(model))}  # fmt: skip


def _resident_bytes() -> int:
    """Bytes the process's live JAX arrays occupy: the union of their buffers (views of one buffer count once)."""
    gc.collect()
    arrays = [a for a in jax.live_arrays() if not a.is_deleted() and a.nbytes]
    spans = sorted((a.unsafe_buffer_pointer(), a.unsafe_buffer_pointer() + a.nbytes) for a in arrays)
    total, end = 0, 0
    for lo, hi in spans:
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def _hf_greedy(ref, ids, n):
    with torch.no_grad():
        return ref.generate(torch.tensor(ids).long(), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                            max_new_tokens=n, do_sample=False, eos_token_id=None).numpy()  # fmt: skip


class _Probe:
    """A streamer that looks at the model while generate runs: its layout and the live arrays' bytes."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def put(self, value):
        layers = self.model.model.layers
        out_first = [m.out_first for _, m in nnx.iter_modules(self.model) if isinstance(m, Dense)]
        q = layers.layer(1).self_attn.q_proj.kernel if isinstance(layers, Unstacked) else None
        self.seen.append((type(layers), self.model.model.scan, out_first, _resident_bytes(),
                          None if q is None else (np.asarray(q.get_value()), q.get_metadata()["axes"])))

    def end(self):
        pass


def test_generate_lays_the_model_out_in_place_for_the_call_with_one_copy_of_the_weights(tiny_hf):
    """While generate runs, the model itself runs per-layer, with `[out, in]` kernels at batch 1 and `[in, out]` at
    batch 2, and the live arrays still take the weights' bytes (no second copy); the tokens are transformers';
    after each call the model has the checkpoint's tree again, value for value, with the loaded buffers given back
    (views of them were used, not copies) wherever nothing was reordered."""
    directory, ref = tiny_hf("llama", "LlamaForCausalLM", initializer_range=0.3)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    before = _tree(model)
    weights = sum(x.nbytes for x, _ in before.values())
    stacked_norm = model.model.layers.block.input_layernorm.scale.get_value()
    stacked_q = before[("model", "layers", "block", "self_attn", "q_proj", "kernel")][0]
    ids = np.random.RandomState(0).randint(3, 97, (2, 6)).astype(np.int32)

    def check_restored():
        assert isinstance(model.model.layers, Stacked) and model.model.scan is True
        after = _tree(model)
        assert after.keys() == before.keys()
        for path, (value, axes) in before.items():
            assert after[path][1] == axes, path
            np.testing.assert_array_equal(after[path][0], value, err_msg=str(path))
        assert model.model.layers.block.input_layernorm.scale.get_value() is stacked_norm  # given back, not copied

    for rows, out_first in ((1, True), (2, False)):
        # the same call on the scanned layout (nothing re-laid): weights + KV cache + token history, the baseline
        scanned = _Probe(model)
        jf.generate(model, ids[:rows], max_new_tokens=8, eos_token_id=None, streamer=scanned, chunk_steps=4,
                    unroll_layers=False)  # fmt: skip
        baseline = max(seen[3] for seen in scanned.seen[1:])
        probe = _Probe(model)
        np.testing.assert_array_equal(jf.generate(model, ids[:rows], max_new_tokens=8, eos_token_id=None,
                                                  streamer=probe, chunk_steps=4),
                                      _hf_greedy(ref, ids[:rows], 8))  # fmt: skip
        during = probe.seen[1:]  # the first `put` is the prompt, before the loop
        assert during, "the streamer saw no chunk"
        for kind, scan, dense_first, live, q in during:
            assert kind is Unstacked and scan is False
            assert dense_first and all(f is out_first for f in dense_first)
            assert live - baseline < 0.05 * weights, (live - baseline, weights)  # a copy of the layers adds ~90%
            if out_first:  # layer 1's kernel, transposed: [heads, head_dim, hidden]
                np.testing.assert_array_equal(q[0], np.moveaxis(stacked_q[1], 0, -1))
                assert q[1] == ("heads", "head_dim", "embed")
            else:
                np.testing.assert_array_equal(q[0], stacked_q[1])
        check_restored()

    np.testing.assert_array_equal(jf.generate(model, ids, max_new_tokens=8, eos_token_id=None, unroll_layers=False),
                                  _hf_greedy(ref, ids, 8))  # fmt: skip
    check_restored()


def test_the_laid_out_model_computes_and_trains_like_the_scanned_one(tiny_hf):
    """Logits and parameter gradients of the laid-out model equal the scanned model's (per layer, transposed for
    `[out, in]` kernels); updating its weights changes what generate produces; `canonical_layout` keeps an update."""
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel", initializer_range=0.3)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    ids = np.random.RandomState(1).randint(3, 97, (2, 5)).astype(np.int32)

    def loss(m):
        return jnp.mean(jnp.square(m(ids).logits))

    want_logits = np.asarray(model(ids).logits)
    want = dict(nnx.to_flat_state(nnx.grad(loss)(model)))
    decode_layout(model, out_first=True)
    np.testing.assert_allclose(np.asarray(model(ids).logits), want_logits, atol=1e-5)
    got = dict(nnx.to_flat_state(nnx.grad(loss)(model)))
    kernel = ("transformer", "h", "block", "mlp", "c_fc", "kernel")
    for i in range(model.config.n_layer):
        g = got[("transformer", "h", "blocks", i, "mlp", "c_fc", "kernel")].get_value()
        np.testing.assert_allclose(np.asarray(g), np.asarray(want[kernel].get_value()[i]).T, atol=1e-6)
    assert len(got) == len(want) + (model.config.n_layer - 1) * sum(1 for p in want if "block" in p)

    first = jf.generate(model, ids[:1], max_new_tokens=6, eos_token_id=None)
    nnx.update(model, jax.tree.map(lambda x: -x if x.ndim == 2 else x, nnx.state(model, nnx.Param)))
    flipped = jf.generate(model, ids[:1], max_new_tokens=6, eos_token_id=None)
    assert not np.array_equal(flipped, first)
    canonical_layout(model)
    assert isinstance(model.transformer.h, Stacked)
    np.testing.assert_array_equal(jf.generate(model, ids[:1], max_new_tokens=6, eos_token_id=None,
                                              unroll_layers=False), flipped)  # fmt: skip


def test_references_into_the_model_stay_attached_across_generate(tiny_hf):
    """A submodule or Variable taken from the model before `generate` is still the model's after it: setting a
    value through it changes what the model computes (the layout is undone onto the original objects)."""
    directory, _ = tiny_hf("gpt2", "GPT2LMHeadModel", initializer_range=0.3)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    mlp = model.transformer.h.block.mlp
    head = model.transformer.wte.embedding  # tied head: the embedding table
    ids = np.random.RandomState(2).randint(3, 97, (1, 5)).astype(np.int32)
    jf.generate(model, ids, max_new_tokens=3, eos_token_id=None)  # batch 1: per-layer arrays, kernels reordered
    assert model.transformer.h.block.mlp is mlp
    assert model.transformer.wte.embedding is head
    before = np.asarray(model(ids).logits)
    mlp.c_fc.kernel.set_value(jnp.zeros_like(mlp.c_fc.kernel[...]))
    assert not np.allclose(np.asarray(model(ids).logits), before)


def _compiles(fn) -> int:
    """How many programs XLA compiled while `fn()` ran."""
    names = []

    def listen(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            names.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(names)


@pytest.mark.parametrize("host_views", [True, False], ids=["cpu-views", "device-copies"])
def test_a_second_generate_compiles_nothing(tiny_hf, monkeypatch, host_views):
    """Generate lays the model out and puts it back: the arrays it puts back must be committed (or not) as they
    came, or every program of the next call (prefill, decode loop, the layout's slices) compiles again. It did on
    GPUs: the restacked arrays came back committed, and a benchmark's median of two calls read 20-30x slow decode
    steps. "device-copies" is the path of every device but a CPU (per-layer slices are copies, not views)."""
    if not host_views:
        monkeypatch.setattr(layers_mod, "_host_views", lambda x: False)
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.load(directory)
    ids = np.random.RandomState(3).randint(3, 97, (1, 6)).astype(np.int32)
    run = lambda: jf.generate(model, ids, max_new_tokens=3, eos_token_id=None)  # noqa: E731
    committed = lambda: {p: v.get_value().committed for p, v in nnx.to_flat_state(nnx.state(model))}  # noqa: E731
    before = committed()
    first = run()
    assert committed() == before  # (else the user's own jitted calls on the model compile again)
    assert _compiles(run) == 0
    assert _compiles(run) == 0
    np.testing.assert_array_equal(run(), first)


def test_kernels_reordered_again_while_laid_out_come_back_in_checkpoint_order(tiny_hf):
    """`decode_layout` on a model laid out already reorders its per-layer kernels (and the untied LM head) again;
    the restore then stacks each kernel back through the inverse of whatever order it holds. Whatever the sequence,
    the model computes the same logits meanwhile and `canonical_layout` gives back the checkpoint's tree, value for
    value, axis names included."""
    directory, _ = tiny_hf("llama", "LlamaForCausalLM", initializer_range=0.3)
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    assert isinstance(model.lm_head, Dense)  # untied: a kernel outside any stack
    before = _tree(model)
    ids = np.random.RandomState(4).randint(3, 97, (2, 5)).astype(np.int32)
    want = np.asarray(model(ids).logits)
    for first, second in ((True, False), (False, True), (True, True), (None, True)):
        decode_layout(model, out_first=first)
        decode_layout(model, out_first=second)
        assert isinstance(model.model.layers, Unstacked)
        assert all(m.out_first is second for _, m in nnx.iter_modules(model) if isinstance(m, Dense))
        np.testing.assert_allclose(np.asarray(model(ids).logits), want, atol=1e-5)
        canonical_layout(model)
        assert isinstance(model.model.layers, Stacked)
        after = _tree(model)
        assert after.keys() == before.keys()
        for path, (value, axes) in before.items():
            assert after[path][1] == axes, (first, second, path)
            np.testing.assert_array_equal(after[path][0], value, err_msg=str((first, second, path)))
