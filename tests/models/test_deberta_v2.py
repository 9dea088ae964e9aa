"""DeBERTa-v2/v3 (`jaxformers.models.deberta_v2`) against transformers + PyTorch on tiny random models.

Five tiny configurations, each built once for the module, together covering the disentangled-attention options:
- "abs": absolute positions and two token types, c2p + p2c through the shared key/query projections
  (share_att_key), 8 log buckets, LayerNorm-ed relative table;
- "c2p": c2p only through `pos_key_proj`, no buckets (a 2 * max_relative_positions table, clamped at 6), relative
  positions only;
- "v3": deberta-v3's layout (p2c|c2p string, shared key, buckets, no absolute positions or token types) with the
  `lm_predictions` masked-LM head (legacy=false), and max_position_embeddings=8 below the batch length 9 (no limit
  without absolute positions, as in transformers);
- "proj": embedding_size 32 != hidden 48 (embed_proj), p2c only through `pos_query_proj`, untied legacy decoder;
- "conv": v2-xlarge's ConvLayer after layer 0 (kernel 3, two groups, gelu).
Every head class: float32 outputs (and every hidden state) within 1e-4 of max |ref| at every position, padding
included, on one batch of right- and left-padded rows, scanned (under jit) and unrolled; the HF export is bit-exact
and loads in transformers; Orbax round trip; bad configs, checkpoints and inputs refused.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

import jaxformers as jf
from jaxformers.convert.engine import ConversionError
from jaxformers.loading import abstract_model, model_params
from jaxformers.models import deberta_v2 as dv
from hf_helpers import randomize_vectors

TOL = 1e-4
V, T = 97, 9  # vocab_size, batch length
SIZES = dict(vocab_size=V, hidden_size=48, num_attention_heads=6, intermediate_size=37, num_hidden_layers=2,
             max_position_embeddings=64, num_labels=3)  # fmt: skip
REL = dict(relative_attention=True, norm_rel_ebd="layer_norm")
CONFIGS = {
    "abs": dict(REL, type_vocab_size=2, pos_att_type="c2p|p2c", share_att_key=True, position_buckets=8,
                max_relative_positions=32),  # fmt: skip
    "c2p": dict(REL, pos_att_type=["c2p"], share_att_key=False, max_relative_positions=6, position_biased_input=False),
    "v3": dict(REL, pos_att_type="p2c|c2p", share_att_key=True, position_buckets=6, max_position_embeddings=8,
               position_biased_input=False, legacy=False),  # fmt: skip
    "proj": dict(relative_attention=True, type_vocab_size=2, embedding_size=32, pos_att_type=["p2c"],
                 share_att_key=False, tie_word_embeddings=False),  # fmt: skip
    "conv": dict(REL, pos_att_type="p2c|c2p", share_att_key=True, position_buckets=8, position_biased_input=False,
                 conv_kernel_size=3, conv_groups=2, conv_act="gelu"),  # fmt: skip
}
CASES = [
    ("abs", "DebertaV2ForMaskedLM"),
    ("abs", "DebertaV2ForQuestionAnswering"),
    ("c2p", "DebertaV2ForTokenClassification"),
    ("v3", "DebertaV2ForMaskedLM"),
    ("v3", "DebertaV2ForSequenceClassification"),
    ("proj", "DebertaV2ForMaskedLM"),
    ("conv", "DebertaV2Model"),
]
IDS = [f"{n}-{c}" for n, c in CASES]
OUTPUTS = {"Model": ("last_hidden_state",), "ForMaskedLM": ("logits",), "ForSequenceClassification": ("logits",),
           "ForTokenClassification": ("logits",), "ForQuestionAnswering": ("start_logits", "end_logits")}  # fmt: skip


def outputs_of(hf_class):
    return next(v for k, v in OUTPUTS.items() if hf_class.endswith(k))


def build(name, hf_class, directory, **overrides):
    """A tiny random transformers model saved at `directory`, with random biases and 1-D norm weights (as
    `tests/conftest.py::build_tiny`), so that every parameter and every swapped rule shows in the outputs."""
    extra = {"num_labels": 2} if "QuestionAnswering" in hf_class else {}
    cfg = transformers.DebertaV2Config(**{**SIZES, **CONFIGS[name], **extra, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, hf_class)(cfg).eval()
    randomize_vectors(model)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """`get(name, hf_class) -> (directory, torch model)`, each built once for the module."""
    cache = {}

    def get(name, hf_class):
        if (name, hf_class) not in cache:
            directory = tmp_path_factory.mktemp(f"{name}-{hf_class}")
            cache[name, hf_class] = (directory, build(name, hf_class, directory))
        return cache[name, hf_class]

    return get


@pytest.fixture(scope="module")
def jf_models(hf_models):
    """`get(name, hf_class, scan) -> jaxformers model` loaded through the registry (`jf.load`), once each."""
    cache = {}

    def get(name, hf_class, scan=True):
        if (name, hf_class, scan) not in cache:
            cache[name, hf_class, scan] = jf.load(hf_models(name, hf_class)[0], options=jf.Options(scan_layers=scan))
        return cache[name, hf_class, scan]

    return get


def batch(seed=0):
    """Six rows of length T: three right-padded (lengths 9, 6, 3), three left-padded (8, 5, 1); token types 0/1
    (ignored, by both, where type_vocab_size is 0); positions counted from each row's first real token (jaxformers'
    default, given to transformers explicitly; ignored without absolute positions)."""
    ids = np.random.RandomState(seed).randint(3, V, (6, T))
    mask = np.zeros_like(ids)
    for i, n in enumerate((9, 6, 3)):
        mask[i, :n] = 1
    for i, n in enumerate((8, 5, 1)):
        mask[3 + i, T - n :] = 1
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    types = ((np.arange(T) >= 4) * mask).astype(np.int32)
    positions = np.maximum(np.arange(T)[None] - mask.argmax(-1)[:, None], 0).astype(np.int32)
    return ids, mask.astype(np.int32), types, positions


def torch_out(ref, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kw):
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  position_ids=position_ids)  # fmt: skip
    with torch.no_grad():
        return ref(**{k: torch.from_numpy(np.asarray(v)).long() for k, v in inputs.items() if v is not None}, **kw)


def compare(a, b):
    """Every position, padding included: the pairwise attention mask and zeroed padding embeddings follow HF's."""
    a, b = np.asarray(a), b.detach().numpy()
    assert a.shape == b.shape
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL, f"max|diff|/max|ref| = {err:.2e}"


# --------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_parity_left_and_right_padding_scanned_and_unrolled(hf_models, jf_models, name, hf_class):
    _, ref = hf_models(name, hf_class)
    ids, mask, types, positions = batch()
    theirs = torch_out(ref, ids, mask, types, positions, output_hidden_states=True)
    scanned, unrolled = jf_models(name, hf_class, True), jf_models(name, hf_class, False)
    assert type(scanned) is type(unrolled) is getattr(dv, hf_class)
    apply, params = jf.pure(scanned)
    ours = {
        "scanned": jax.jit(lambda p: apply(p, ids, mask, types, output_hidden_states=True))(params),
        "unrolled": unrolled(ids, mask, types, output_hidden_states=True),
    }
    for layout, out in ours.items():
        for key in outputs_of(hf_class):
            compare(out[key], theirs[key])
        assert len(out.hidden_states) == len(theirs.hidden_states) == SIZES["num_hidden_layers"] + 1, layout
        for a, b in zip(out.hidden_states, theirs.hidden_states):  # embeddings, then each layer (conv included)
            compare(a, b)


def test_relative_position_buckets_equal_transformers():
    """The host-side buckets (float32 log / divide / ceil as in torch) equal HF's for real and odd sizes, long
    sequences included: one differing bucket would change a score silently."""
    for buckets, max_position in [(256, 512), (256, 1024), (8, 32), (6, 8), (3, 64), (64, 64)]:
        for t in (1, 9, 700):
            x = torch.zeros(1, t, 1)
            want = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0].numpy()
            np.testing.assert_array_equal(dv.relative_positions(t, buckets, max_position), want)
    x = torch.zeros(1, 9, 1)
    np.testing.assert_array_equal(dv.relative_positions(9, -1, 64), build_relative_position(x, x)[0].numpy())


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_hf_export_is_bit_exact_and_loads_in_transformers(hf_models, jf_models, tmp_path, name, hf_class):
    from safetensors.numpy import load_file

    src, ref = hf_models(name, hf_class)
    jf_models(name, hf_class).save_pretrained(tmp_path)
    want, got = load_file(src / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        assert value.dtype == got[key].dtype and np.array_equal(value, got[key]), key
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "deberta-v2" and config["architectures"] == [hf_class]
    reloaded, info = getattr(transformers, hf_class).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_defaults = {"share_att_key": False, "position_buckets": -1, "norm_rel_ebd": "none", "conv_kernel_size": 0}
    for field in ("pos_att_type", "position_biased_input", "legacy", "embedding_size", *hf_defaults):
        default = hf_defaults.get(field)  # read by transformers with getattr(config, field, default)
        assert getattr(reloaded.config, field, default) == getattr(ref.config, field, default), field
    ids, mask, types, positions = batch()
    for key in outputs_of(hf_class):
        a, b = torch_out(ref, ids, mask, types, positions), torch_out(reloaded.eval(), ids, mask, types, positions)
        assert torch.equal(a[key], b[key]), key
    if hf_class == "DebertaV2ForMaskedLM" and ref.config.legacy:  # the decoder tie (or its absence) survives
        head = reloaded.cls.predictions
        assert (head.decoder.bias.data_ptr() == head.bias.data_ptr()) == ref.config.tie_word_embeddings


@pytest.mark.parametrize("name,hf_class", [("v3", "DebertaV2ForMaskedLM"), ("conv", "DebertaV2Model")])
def test_orbax_round_trip(jf_models, tmp_path, name, hf_class):
    model = jf_models(name, hf_class)
    jf.save_checkpoint(model, tmp_path / "ckpt")
    restored = jf.load(tmp_path / "ckpt")
    assert type(restored) is type(model) and restored.config == model.config
    want, got = model_params(model), model_params(restored)
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


# --------------------------------------------------------------------------------------------------- bad inputs
def edited_copy(src, dst, **changes):
    """A copy of checkpoint `src` at `dst` whose config.json has `changes` applied."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


@pytest.mark.parametrize("value", ["c2p|c2x", ["p2c", "c2x"], "p2p"])
def test_unknown_pos_att_type_is_refused(hf_models, tmp_path, value):
    """transformers silently ignores an unknown entry (a typo would drop a score term); jaxformers names the field,
    the entry and the allowed values, from a config and from a checkpoint."""
    match = r"pos_att_type=.*unknown entries \['(c2x|p2p)'\]; the allowed values are \['c2p', 'p2c'\]"
    with pytest.raises(ValueError, match=match):
        dv.DebertaV2Config.from_hf({**SIZES, "relative_attention": True, "pos_att_type": value})
    src, _ = hf_models("c2p", "DebertaV2ForTokenClassification")
    with pytest.raises(ValueError, match=match):
        jf.load(edited_copy(src, tmp_path / "bad", pos_att_type=value))


def test_checkpoint_parts_the_config_does_not_describe_are_refused(hf_models, tmp_path):
    """Tensors the config switches off would silently change the outputs if dropped: each is one clear error naming
    the tensor and the config field to check (separate position projections under share_att_key=true; a ConvLayer
    under conv_kernel_size=0; relative embeddings under relative_attention=false)."""
    src, _ = hf_models("c2p", "DebertaV2ForTokenClassification")
    with pytest.raises(ConversionError, match=r"pos_key_proj\.weight \(and 1 more\).*not share_att_key\]=false\?"):
        jf.load(edited_copy(src, tmp_path / "shared", share_att_key=True))
    with pytest.raises(ConversionError, match=r"encoder\.rel_embeddings\.weight.*relative_attention=false\?"):
        jf.load(edited_copy(src, tmp_path / "absolute", relative_attention=False))
    src, _ = hf_models("conv", "DebertaV2Model")
    with pytest.raises(ConversionError, match=r"encoder\.conv\.conv\.weight.*conv_kernel_size > 0\]=false\?"):
        jf.load(edited_copy(src, tmp_path / "noconv", conv_kernel_size=0))


def test_head_the_config_does_not_describe_is_a_shape_error(hf_models, tmp_path):
    """A 3-label classifier checkpoint under a config (or an override) saying 5 labels: transformers refuses it
    (without ignore_mismatched_sizes), jaxformers too, naming num_labels and both sizes."""
    src, _ = hf_models("v3", "DebertaV2ForSequenceClassification")
    bad = edited_copy(src, tmp_path / "bad", id2label={str(i): f"L{i}" for i in range(5)},
                      label2id={f"L{i}": i for i in range(5)})  # fmt: skip
    with pytest.raises(RuntimeError):
        transformers.DebertaV2ForSequenceClassification.from_pretrained(bad)
    auto = jf.AutoModelForSequenceClassification
    for load in (lambda: jf.load(bad), lambda: auto.from_pretrained(src, num_labels=5)):
        with pytest.raises(ConversionError, match=r"classifier\.weight \(3, 48\)") as err:
            load()
        assert "config num_labels=5, checkpoint 3" in str(err.value)
    with pytest.raises(ValueError, match="deberta-v2 has no 'causal-lm' model; available"):
        jf.load(src, task="causal-lm")


def test_original_v3_checkpoint_tensors_are_ignored_like_transformers(hf_models, jf_models, tmp_path):
    """An original v3 checkpoint also holds the replaced-token-detection head (`mask_predictions.*`) and may hold
    absolute position embeddings its config does not use: transformers ignores both, and so does jaxformers (the
    masked LM loads its `lm_predictions` head unchanged; a classifier leaves the LM head unused)."""
    from safetensors.numpy import load_file, save_file

    src, _ = hf_models("v3", "DebertaV2ForMaskedLM")
    dst = shutil.copytree(src, tmp_path / "v3")
    d, rng = SIZES["hidden_size"], np.random.RandomState(0)
    extra = {"mask_predictions.dense.weight": (d, d), "mask_predictions.dense.bias": (d,),
             "mask_predictions.LayerNorm.weight": (d,), "mask_predictions.LayerNorm.bias": (d,),
             "mask_predictions.classifier.weight": (1, d), "mask_predictions.classifier.bias": (1,),
             "deberta.embeddings.position_embeddings.weight": (8, d)}  # fmt: skip
    tensors = load_file(src / "model.safetensors") | {k: rng.randn(*s).astype(np.float32) for k, s in extra.items()}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    _, info = transformers.DebertaV2ForMaskedLM.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) <= set(extra), info
    want, got = model_params(jf_models("v3", "DebertaV2ForMaskedLM")), model_params(jf.load(dst))
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)
    assert type(jf.load(dst, task="sequence-classification")) is dv.DebertaV2ForSequenceClassification


@pytest.mark.parametrize("change,match", [
    (dict(legacy=False, embedding_size=32), "legacy=false .* embedding_size \\(32\\)"),
    (dict(attention_head_size=10), "attention_head_size=10 times num_attention_heads"),
    (dict(conv_kernel_size=2), "conv_kernel_size=2 must be odd"),
    (dict(conv_kernel_size=3, conv_groups=5), "conv_groups=5 must divide hidden_size"),
    (dict(position_buckets=1), "position_buckets=1 is not a valid bucket count"),
    (dict(pooler_hidden_size=32), "pooler_hidden_size=32 must equal hidden_size"),
    (dict(norm_rel_ebd="layernorm"), r"norm_rel_ebd='layernorm' has unknown entries \['layernorm'\]"),
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
])  # fmt: skip
def test_configs_it_cannot_honour_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        cfg = dv.DebertaV2Config.from_hf({**SIZES, **change})
        dv.DebertaV2ForMaskedLM(cfg, rngs=nnx.Rngs(0))


def test_out_of_range_inputs_raise_like_pytorch(hf_models, jf_models):
    """Ids outside the vocabulary, token types outside the table and more tokens than absolute positions: transformers
    fails on each, jaxformers raises a ValueError naming the input (before any compute)."""
    _, ref = hf_models("abs", "DebertaV2ForQuestionAnswering")
    model = jf_models("abs", "DebertaV2ForQuestionAnswering", False)
    ids = np.array([[5, 6, 7, 8]], np.int64)
    for arg, value in {"input_ids": np.array([[5, V, 7, 8]]), "token_type_ids": np.full((1, 4), 2)}.items():
        inputs = {"input_ids": ids, arg: value}
        with pytest.raises((IndexError, RuntimeError)):
            torch_out(ref, **inputs)
        with pytest.raises(ValueError, match=arg):
            model(**inputs)
    long = np.full((1, SIZES["max_position_embeddings"] + 1), 5)
    with pytest.raises((IndexError, RuntimeError)):
        torch_out(ref, long)
    with pytest.raises(ValueError, match="truncate to 64 tokens"):
        model(long)


# ------------------------------------------------------------------------------------------------------ dropout
def test_dropout_is_keyed_reproducible_layout_independent_and_uses_the_config_rates(jf_models):
    """deterministic=True (the default) is transformers' eval mode (the parity tests); deterministic=False needs a
    key, which alone decides the masks, scanned or unrolled; with every rate of the config at 0 nothing drops.
    Keys use the "rbg" generator: the same model code, but XLA:CPU compiles it in a fraction of threefry's time."""
    name, hf_class = "abs", "DebertaV2ForQuestionAnswering"
    unrolled, scanned = jf_models(name, hf_class, False), jf_models(name, hf_class)
    ids, mask, types, _ = batch()
    eval_out = np.asarray(unrolled(ids, mask, types).start_logits)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        unrolled(ids, mask, types, deterministic=False)
    key = jax.random.key(1, impl="rbg")
    train = np.asarray(unrolled(ids, mask, types, deterministic=False, dropout_rng=key).start_logits)
    assert not np.allclose(train, eval_out, atol=1e-4)
    again = unrolled(ids, mask, types, deterministic=False, dropout_rng=key).start_logits
    np.testing.assert_array_equal(np.asarray(again), train)
    other = unrolled(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(2, impl="rbg")).start_logits
    assert not np.allclose(np.asarray(other), train, atol=1e-4)
    apply, params = jf.pure(scanned)
    fwd = jax.jit(lambda p, k: apply(p, ids, mask, types, deterministic=False, dropout_rng=k).start_logits)
    np.testing.assert_allclose(np.asarray(fwd(params, key)), train, atol=1e-5, rtol=1e-5)
    rates = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_dropout=0.0, cls_dropout=0.0)
    quiet = abstract_model(type(unrolled), unrolled.config.replace(**rates), jf.Options(scan_layers=False))
    nnx.update(quiet, nnx.state(unrolled, nnx.Param))  # the same weights, built without random init
    out = quiet(ids, mask, types, deterministic=False, dropout_rng=key).start_logits
    np.testing.assert_allclose(np.asarray(out), eval_out, atol=1e-6, rtol=1e-6)
