"""T5 / T5 v1.1 / mT5 (`jaxformers.models.t5`) against transformers 5 + PyTorch on tiny random models.

Three tiny checkpoints, built once for the module (d_kv * num_heads = 60 != d_model = 48, random norm weights):
- "t5": original T5 (ReLU feed-forward, head tied to `shared`, logits scaled by d_model ** -0.5), few buckets and a
  short max_distance so the sequences below reach the logarithmic and the clamped buckets;
- "t5-v1_1": gated-GELU, its own `lm_head` (as Flan-T5: transformers 5 writes tie_word_embeddings=true with
  scale_decoder_outputs=false), 2 encoder and 3 decoder layers;
- "mt5": MT5Config (gated-GELU, untied, never scaled in transformers 5.24), 3 encoder layers and 1 decoder layer.
Every class: float32 outputs within 1e-4 of max |ref| on padded sources (right- and left-padded rows), decoder
lengths 1 and 5 with a decoder mask; labels shifted as HF; the seq2seq cache contract (prefill + steps == full
forward, stacked and unstacked); the HF export equals what transformers itself saves and loads back in it; Orbax
round trip; bad inputs and configs refused like transformers refuses them; dropout keyed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import jaxformers as jf
from jaxformers.core import position_bias
from jaxformers.core.layers import unstack_layers
from jaxformers.models import t5
from hf_helpers import randomize_vectors

TOL = 1e-4
V = 97
SIZES = dict(vocab_size=V, d_model=48, d_kv=10, d_ff=37, num_heads=6, decoder_start_token_id=0)
# name -> (HF config class, config kwargs, untie the head (a distinct lm_head.weight, as Flan-T5 / mT5 ship))
CASES = {
    "t5": ("T5Config", dict(num_layers=2, feed_forward_proj="relu", relative_attention_num_buckets=16,
                            relative_attention_max_distance=12), False),
    "t5-v1_1": ("T5Config", dict(num_layers=2, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False), True),
    "mt5": ("MT5Config", dict(num_layers=3, num_decoder_layers=1, relative_attention_num_buckets=10,
                              relative_attention_max_distance=9, tie_word_embeddings=False), True),
}  # fmt: skip
PREFIX = {"t5": "T5", "t5-v1_1": "T5", "mt5": "MT5"}

RNG = np.random.RandomState(0)
SRC = RNG.randint(0, V, (3, 14)).astype(np.int32)
SRC_MASK = np.ones((3, 14), np.int32)
SRC_MASK[1, 9:] = 0  # right-padded
SRC_MASK[2, :4] = 0  # left-padded (T5's positions are slots, in transformers too)
DEC = RNG.randint(0, V, (3, 5)).astype(np.int32)
DEC_MASK = np.ones((3, 5), np.int32)
DEC_MASK[1, 3:] = 0  # a right-padded target


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def tt(x):
    return torch.tensor(np.asarray(x), dtype=torch.long)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`name -> (directory, HF ForConditionalGeneration model)`, built once for the module."""
    built = {}
    for name, (config_class, kwargs, untie) in CASES.items():
        cfg = getattr(transformers, config_class)(**SIZES, **kwargs)
        torch.manual_seed(0)
        cls = getattr(transformers, PREFIX[name] + "ForConditionalGeneration")
        model = cls(cfg).eval()
        randomize_vectors(model)
        if untie:  # transformers 5 ties a fresh model whatever the config says; Flan-T5 / mT5 ship their own head
            model.lm_head.weight = torch.nn.Parameter(torch.randn(V, SIZES["d_model"]))
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory)
        built[name] = (directory, model)
    return built


def hf_class(name: str, kind: str):
    return getattr(transformers, PREFIX[name] + kind)


# --- buckets and config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 12), (10, 9), (7, 20), (64, 33)])
def test_relative_position_buckets_equal_transformers(num_buckets, max_distance):
    rel = np.arange(-3000, 3000)
    for bidirectional in (True, False):
        ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            torch.tensor(rel), bidirectional, num_buckets, max_distance
        ).numpy()
        got = jax.jit(position_bias.relative_position_bucket, static_argnames=("bidirectional", "num_buckets",
                      "max_distance"))(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                       max_distance=max_distance)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize("config", [
    {}, {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, {"tie_word_embeddings": False},
    {"tie_word_embeddings": True, "scale_decoder_outputs": False}, {"feed_forward_proj": "gated-silu"},
    {"feed_forward_proj": "gelu"}, {"feed_forward_proj": "relu", "is_gated_act": True, "dense_act_fn": "gelu"},
    {"num_layers": 3}, {"num_layers": 3, "num_decoder_layers": 1},
])  # fmt: skip
def test_config_derivations_equal_transformers(config):
    """Gating, activation, decoder depth and logit scaling as transformers derives them (config.json values win)."""
    ref = transformers.T5Config.from_dict(dict(config))
    cfg = t5.T5Config.from_hf(dict(config))
    assert (cfg.gated_act, cfg.act_fn, cfg.decoder_layers) == (ref.is_gated_act, ref.dense_act_fn,
                                                               ref.num_decoder_layers)  # fmt: skip
    assert cfg.scale_logits == ref.scale_decoder_outputs
    assert cfg.untied_head == (not ref.scale_decoder_outputs)  # released checkpoints: unscaled <=> own lm_head
    mt5 = t5.MT5Config.from_hf(dict(config))
    assert mt5.model_type == "mt5" and not mt5.scale_logits and mt5.untied_head  # 5.24's mT5 never scales
    assert t5.MT5Config.from_hf({}).feed_forward_proj == transformers.MT5Config().feed_forward_proj
    assert t5.T5Config.from_hf({}).decoder_start_token_id == 0


def test_config_errors():
    with pytest.raises(Exception, match="not a valid activation"):
        transformers.T5Config.from_dict({"feed_forward_proj": "gelu-gated"})
    with pytest.raises(ValueError, match="feed_forward_proj='gelu-gated' is not a valid feed-forward type"):
        t5.T5Config.from_hf({"feed_forward_proj": "gelu-gated"})
    with pytest.raises(KeyError):  # transformers accepts the config, then fails building the model
        transformers.T5EncoderModel(transformers.T5Config(**SIZES, num_layers=1, feed_forward_proj="gated-foo"))
    with pytest.raises(ValueError, match="'gated-foo' .* names an activation jaxformers does not implement"):
        t5.T5Config.from_hf({"feed_forward_proj": "gated-foo"})
    with pytest.raises(ValueError, match="relative_attention_max_distance=8 must exceed"):
        t5.T5Config.from_hf({"relative_attention_num_buckets": 16, "relative_attention_max_distance": 8})
    with pytest.raises(ValueError, match="relative_attention_num_buckets=2 must be at least 4"):
        t5.T5Config.from_hf({"relative_attention_num_buckets": 2})
    with pytest.raises(ValueError, match="num_decoder_layers=0 must be a positive integer"):
        t5.T5Config.from_hf({"num_decoder_layers": 0})
    with pytest.raises(ValueError, match=r"dropout_rate=1.0 must lie in \[0, 1\)"):
        t5.T5Config.from_hf({"dropout_rate": 1.0})


# --- parity ----------------------------------------------------------------------------------------------------
# Every forward of ours runs jitted, several per compile: eager JAX compiles op by op (seconds per call here).

LABELS = np.where(DEC_MASK == 1, DEC, -100).astype(np.int32)  # ignored positions marked -100, as HF labels
# HF's `_shift_right` by hand: decoder_start_token_id (0) first, the last label dropped, -100 -> pad_token_id (0)
SHIFTED = np.concatenate([np.zeros((3, 1), np.int32), np.where(LABELS == -100, 0, LABELS)[:, :-1]], axis=1)


def run_jitted(fn, *models):
    """`fn(*models)` under one `jax.jit` (the models' states as arguments, inputs as constants)."""
    graphdefs, states = zip(*(nnx.split(m) for m in models))
    return jax.jit(lambda states: fn(*(nnx.merge(g, s) for g, s in zip(graphdefs, states))))(states)


@pytest.fixture(scope="module")
def outputs(checkpoints):
    """`name -> (ours, theirs)`: every class's outputs on the test batch, ours (one compile per checkpoint) and
    transformers' (its own classes loading the same checkpoint)."""
    out = {}
    for name, (directory, ref) in checkpoints.items():
        lm = jf.load(directory)
        base = getattr(t5, PREFIX[name] + "Model").from_pretrained(directory)
        enc = jf.load(directory, task="encoder")
        assert type(lm).__name__ == PREFIX[name] + "ForConditionalGeneration" and lm.can_generate
        assert type(enc).__name__ == PREFIX[name] + "EncoderModel" and not enc.is_encoder_decoder

        def run(lm, base, enc):
            full = lm(SRC, SRC_MASK, DEC, DEC_MASK, output_hidden_states=True)
            b = base(SRC, SRC_MASK, DEC, DEC_MASK)
            got = dict(logits=full.logits, enc=full.encoder_last_hidden_state, dec_hs=full.decoder_hidden_states,
                       enc_hs=full.encoder_hidden_states, base=b.last_hidden_state,
                       base_enc=b.encoder_last_hidden_state, encoder=enc(SRC, SRC_MASK).last_hidden_state)  # fmt: skip
            if name == "t5":  # decoder length 1; labels, and the decoder inputs they shift into
                got.update(one=lm(SRC, SRC_MASK, DEC[:, :1]).logits, labels=lm(SRC, SRC_MASK, labels=LABELS).logits,
                           shifted=lm(SRC, SRC_MASK, SHIFTED).logits)  # fmt: skip
            return got

        ours = jax.tree.map(np.asarray, run_jitted(run, lm, base, enc))
        src, mask, dec, dec_mask = tt(SRC), tt(SRC_MASK), tt(DEC), tt(DEC_MASK)
        hf_base = hf_class(name, "Model").from_pretrained(directory).eval()
        hf_enc = hf_class(name, "EncoderModel").from_pretrained(directory).eval()
        with torch.no_grad():
            full = ref(input_ids=src, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                       output_hidden_states=True)  # fmt: skip
            b = hf_base(input_ids=src, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
            theirs = dict(logits=full.logits, enc=full.encoder_last_hidden_state, dec_hs=full.decoder_hidden_states,
                          enc_hs=full.encoder_hidden_states, base=b.last_hidden_state,
                          base_enc=b.encoder_last_hidden_state,
                          encoder=hf_enc(input_ids=src, attention_mask=mask).last_hidden_state)  # fmt: skip
            if name == "t5":
                theirs.update(one=ref(input_ids=src, attention_mask=mask, decoder_input_ids=dec[:, :1]).logits,
                              labels=ref(input_ids=src, attention_mask=mask, labels=tt(LABELS)).logits)  # fmt: skip
        out[name] = ours, jax.tree.map(lambda x: x.numpy(), theirs)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_lm_parity(outputs, name, checkpoints):
    """ForConditionalGeneration logits (decoder lengths 5 with a decoder mask, and 1), encoder output and every
    hidden state (HF: each layer's input, then the final normed states)."""
    ours, theirs = outputs[name]
    for field in ("logits", "enc", "one"):
        if field in theirs:  # decoder length 1: the "t5" checkpoint only
            assert rel_err(ours[field], theirs[field]) <= TOL, field
    for field in ("dec_hs", "enc_hs"):
        assert len(ours[field]) == len(theirs[field])
        assert max(rel_err(a, b) for a, b in zip(ours[field], theirs[field])) <= TOL, field
    assert len(ours["dec_hs"]) == jf.load(checkpoints[name][0]).config.decoder_layers + 1


@pytest.mark.parametrize("name", list(CASES))
def test_base_and_encoder_model_parity(outputs, name):
    """T5Model (decoder and encoder last hidden states) and T5EncoderModel, loaded from the LM checkpoint."""
    ours, theirs = outputs[name]
    for field in ("base", "base_enc", "encoder"):
        assert rel_err(ours[field], theirs[field]) <= TOL, field


def test_labels_are_shifted_like_transformers(outputs):
    """labels (with -100) -> the logits transformers gives for them, and those of the shifted decoder inputs."""
    ours, theirs = outputs["t5"]
    assert rel_err(ours["labels"], theirs["labels"]) <= TOL
    assert (LABELS == -100).any() and (SHIFTED[:, 1:] == 0).any()
    np.testing.assert_allclose(ours["labels"], ours["shifted"], rtol=1e-6, atol=1e-6)


def test_missing_decoder_inputs_raise_like_transformers(checkpoints):
    directory, ref = checkpoints["t5"]
    with pytest.raises(ValueError):
        ref(input_ids=tt(SRC))
    for cls in (t5.T5ForConditionalGeneration, t5.T5Model):
        with pytest.raises(ValueError, match="needs decoder_input_ids \\(or labels"):
            cls.from_pretrained(directory)(SRC, SRC_MASK)


# --- the seq2seq cache contract ----------------------------------------------------------------------------------


def test_cache_prefill_and_steps_equal_full_forward(checkpoints, outputs):
    """encode + init_cache + a 3-token prefill + 2 single steps == one full forward (1e-5), stacked; one step on an
    unstacked copy (per-layer weights, `cache.unstacked()`) == the stacked step. (Without a cache, `decode` is
    what every forward above runs.)"""
    directory, _ = checkpoints["t5-v1_1"]  # 2 encoder / 3 decoder layers, untied head
    model = jf.load(directory)
    full = outputs["t5-v1_1"][0]["logits"]

    def run(m, unstacked):
        enc = m.encode(SRC, SRC_MASK).last_hidden_state
        cache = m.init_cache(3, 8, enc, SRC_MASK)
        out = m.decode(DEC[:, :3], DEC_MASK[:, :3], cache=cache)
        got = {"prefill": out}
        for t in (3, 4):
            ids, mask = DEC[:, t : t + 1], DEC_MASK[:, t : t + 1]
            if t == 3:
                got["unstacked"] = unstacked.decode(ids, mask, cache=out.cache.unstacked(), logits_to_keep=1)
            out = got[f"step{t}"] = m.decode(ids, mask, cache=out.cache, logits_to_keep=1)
        return got

    got = run_jitted(run, model, unstack_layers(nnx.merge(*nnx.split(model))))
    cache = got["prefill"].cache
    assert cache.cross_k.shape == (3, 3, 14, 6, 10) and not cache.per_layer and int(cache.index) == 3
    one = got["unstacked"]
    assert one.cache.per_layer and int(one.cache.index) == 4 and not got["step3"].cache.per_layer
    np.testing.assert_allclose(one.logits, got["step3"].logits, rtol=1e-5, atol=1e-5 * np.abs(full).max())
    steps = np.concatenate([got[k].logits for k in ("prefill", "step3", "step4")], axis=1)
    assert rel_err(steps, full) <= 1e-5
    cache = got["step4"].cache
    assert int(cache.index) == 5
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.decode(DEC, cache=cache)
    with pytest.raises(ValueError, match="decode\\(\\) needs encoder_hidden_states"):
        model.decode(DEC)


# --- conversion --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t5", "mt5"])
def test_hf_round_trip_is_bit_exact(checkpoints, name, tmp_path):
    """For every class: what jaxformers saves is exactly what transformers saves for that class (same keys, same
    bytes per tensor), and transformers loads it back with identical tensors and config."""
    directory, _ = checkpoints[name]
    for kind in ("ForConditionalGeneration", "Model", "EncoderModel"):
        theirs = hf_class(name, kind).from_pretrained(directory).eval()
        theirs.save_pretrained(tmp_path / f"hf-{kind}")
        ours = getattr(t5, PREFIX[name] + kind).from_pretrained(directory)
        ours.save_pretrained(tmp_path / kind)
        a, b = load_file(tmp_path / kind / "model.safetensors"), load_file(tmp_path / f"hf-{kind}/model.safetensors")
        assert sorted(a) == sorted(b), (kind, sorted(set(a) ^ set(b)))
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), (kind, k)
        back = hf_class(name, kind).from_pretrained(tmp_path / kind)
        assert type(back).__name__ == PREFIX[name] + kind
        sd, ref_sd = back.state_dict(), theirs.state_dict()
        assert sorted(sd) == sorted(ref_sd)
        assert all(torch.equal(sd[k], ref_sd[k]) for k in sd), kind
        for field in ("scale_decoder_outputs", "is_gated_act", "dense_act_fn", "num_decoder_layers"):
            assert getattr(back.config, field, None) == getattr(theirs.config, field, None), field


def test_orbax_round_trip(checkpoints, tmp_path):
    directory, _ = checkpoints["mt5"]
    model = jf.load(directory)
    jf.save_checkpoint(model, tmp_path / "ckpt")
    back = jf.load(tmp_path / "ckpt")
    assert type(back) is t5.MT5ForConditionalGeneration and back.config == model.config
    a, b = nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(back, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))


# --- inputs and dropout ------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused(checkpoints):
    directory, ref = checkpoints["t5"]
    model = jf.load(directory)
    bad = SRC.copy()
    bad[0, 2] = V
    with pytest.raises(IndexError):  # PyTorch
        ref(input_ids=tt(bad), decoder_input_ids=tt(DEC))
    with pytest.raises(ValueError, match="input_ids must be token ids in \\[0, vocab_size=97\\)"):
        model(bad, SRC_MASK, DEC)
    with pytest.raises(ValueError, match="decoder_input_ids must be token ids"):
        model(SRC, SRC_MASK, np.where(DEC == DEC[0, 0], -1, DEC))
    with pytest.raises(ValueError, match="attention_mask shape \\(3, 13\\) must equal input_ids shape"):
        model(SRC, SRC_MASK[:, 1:], DEC)
    with pytest.raises(ValueError, match="attention_mask shape \\(3, 4\\) must equal decoder_input_ids shape"):
        model(SRC, SRC_MASK, DEC, DEC_MASK[:, 1:])
    with pytest.raises(ValueError, match="encoder attention_mask shape \\(2, 14\\)"):
        model.decode(DEC, encoder_hidden_states=np.zeros((3, 14, 48), np.float32), encoder_attention_mask=SRC_MASK[:2])


def test_dropout_is_keyed(checkpoints, outputs):
    """deterministic=False applies dropout_rate (0.1 here, HF's default) under an explicit key: the key decides the
    masks, another key changes them, no key raises; the default is transformers' eval mode."""
    directory, _ = checkpoints["t5-v1_1"]
    model = jf.load(directory)
    with pytest.raises(ValueError, match="deterministic=False applies dropout and needs a PRNG key"):
        model(SRC, SRC_MASK, DEC, DEC_MASK, deterministic=False)
    apply, params = jf.pure(model)

    run = jax.jit(lambda p, k: apply(p, SRC, SRC_MASK, DEC, DEC_MASK, deterministic=False, dropout_rng=k).logits)
    key = jax.random.key(1, impl="rbg")
    a, again, b = (np.asarray(run(params, k)) for k in (key, key, jax.random.key(2, impl="rbg")))
    np.testing.assert_array_equal(a, again)
    det = outputs["t5-v1_1"][0]["logits"]  # the default (deterministic) forward
    assert not np.allclose(a, det, atol=1e-4) and not np.allclose(a, b, atol=1e-4)
    assert rel_err(a, det) < 1  # dropout of 0.1 perturbs, it does not replace the outputs
