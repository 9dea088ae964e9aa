"""ModernBERT (`jaxformers.models.modernbert`) against transformers + PyTorch (eager attention) on tiny random models.

The tiny configs make every mechanism matter: 3 layers with `global_attn_every_n_layers=2` (global, local, global:
both layer kinds, and under `scan_layers` a stack whose windows are scanned data) and `local_attention=4` (a band of
2 on each side) on inputs of 11 tokens, so the local window cuts most of each row; one config has explicit
`layer_types` with a local layer 0 and its own RoPE thetas, one has a single layer (HF's layer 0 only). Every head class: float32 outputs within 1e-4 of max |ref|
on left- and right-padded batches, scanned and unrolled; the HF export is bit-exact and loads in transformers; Orbax
round trip; checkpoints and inputs that transformers refuses are refused.
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

import jaxformers as jf
from jaxformers.convert.engine import ConversionError
from jaxformers.models import modernbert as mb
from hf_helpers import randomize_vectors

TOL = 1e-4
V, T = 97, 11
SIZES = dict(vocab_size=V, hidden_size=48, num_attention_heads=6, intermediate_size=37, num_hidden_layers=3,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
             sep_token_id=2, global_attn_every_n_layers=2, local_attention=4, num_labels=3)  # fmt: skip
BIASES = dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True)
DROPOUT = dict(attention_dropout=0.1, embedding_dropout=0.1, mlp_dropout=0.1, classifier_dropout=0.1)
LOCAL_FIRST = dict(layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                   rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 40.0}})  # fmt: skip
# name -> (HF class, config overrides, outputs compared)
CASES = {
    "base": ("ModernBertModel", {}, ("last_hidden_state",)),
    "mlm": ("ModernBertForMaskedLM", {}, ("logits",)),
    "mlm-untied-biases": ("ModernBertForMaskedLM", dict(tie_word_embeddings=False, **BIASES), ("logits",)),
    "seq-cls": ("ModernBertForSequenceClassification", {}, ("logits",)),
    "seq-mean-local-first": ("ModernBertForSequenceClassification", dict(classifier_pooling="mean", **LOCAL_FIRST),
                             ("logits",)),  # fmt: skip
    "token": ("ModernBertForTokenClassification", dict(DROPOUT), ("logits",)),  # eval mode: rates must not matter
    "qa": ("ModernBertForQuestionAnswering", dict(num_labels=2, **BIASES), ("start_logits", "end_logits")),
    "one-layer": ("ModernBertModel", dict(num_hidden_layers=1), ("last_hidden_state",)),  # no `layers` stack
}


def build(hf_class, directory, **overrides):
    """A tiny random transformers model saved at `directory` and reloaded with eager attention, with random biases
    and 1-D norm weights (as `tests/conftest.py::build_tiny`), so that every parameter and every swapped rule shows
    in the outputs."""
    cfg = transformers.ModernBertConfig(**{**SIZES, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, hf_class)(cfg).eval()
    randomize_vectors(model)
    model.save_pretrained(directory)
    return getattr(transformers, hf_class).from_pretrained(directory, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """`get(case) -> (directory, torch model)`, each built once for the module."""
    cache = {}

    def get(case):
        if case not in cache:
            hf_class, overrides, _ = CASES[case]
            directory = tmp_path_factory.mktemp(case)
            cache[case] = (directory, build(hf_class, directory, **overrides))
        return cache[case]

    return get


@pytest.fixture(scope="module")
def jf_models(hf_models):
    """`get(case, scan) -> jaxformers model` (loaded through its own class), each loaded once for the module."""
    cache = {}

    def get(case, scan=True):
        if (case, scan) not in cache:
            directory, _ = hf_models(case)
            cls = getattr(mb, CASES[case][0])
            cache[case, scan] = cls.from_pretrained(directory, options=jf.Options(scan_layers=scan))
        return cache[case, scan]

    return get


def batch(side: str, lengths=(T, 7, 4), seed: int = 0):
    """Token ids in [3, V) with rows of different lengths padded (id 0) on `side` ("right", "left", or "both": the
    right-padded rows, then the left-padded ones)."""
    if side == "both":
        (a, m), (b, n) = batch("right", lengths, seed), batch("left", lengths, seed)
        return np.concatenate([a, b]), np.concatenate([m, n])
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, V, (len(lengths), T)).astype(np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    if side == "left":
        mask = mask[:, ::-1].copy()
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def torch_forward(model, ids, mask, **kw):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(), **kw)


def rel_err(ours, ref, mask):
    a, b = np.asarray(ours), ref.detach().numpy()
    if a.ndim >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: padding slots are undefined
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    assert a.shape == b.shape
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("case", list(CASES))
def test_parity_left_and_right_padding_scanned_and_unrolled(case, hf_models, jf_models):
    """One batch holds the right- and the left-padded rows (one eager call per layout: an eager `lax.scan` compiles
    on every call)."""
    _, ref = hf_models(case)
    ids, mask = batch("both")
    want = torch_forward(ref, ids, mask)
    got = {scan: jf_models(case, scan)(ids, mask) for scan in (True, False)}
    for key in CASES[case][2]:
        for scan in (True, False):
            for side, rows in (("right", slice(0, 3)), ("left", slice(3, 6))):
                err = rel_err(np.asarray(got[scan][key])[rows], want[key][rows], mask[rows])
                assert err <= TOL, f"{side} padding, scan_layers={scan}: {key} max|diff|/max|ref| = {err:.2e}"
        np.testing.assert_allclose(np.asarray(got[True][key]), np.asarray(got[False][key]), rtol=1e-5, atol=1e-5)


def test_hidden_states_match_transformers(hf_models, jf_models):
    """HF's hidden_states: the embeddings, each layer's output, and the last one after `final_norm`."""
    _, ref = hf_models("base")
    ids, mask = batch("right")
    want = torch_forward(ref, ids, mask, output_hidden_states=True).hidden_states
    got = jf_models("base", scan=False)(ids, mask, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == SIZES["num_hidden_layers"] + 1
    for ours, theirs in zip(got, want):
        assert rel_err(ours, theirs, mask) <= TOL


def test_layer_kinds_windows_and_rope_from_the_config():
    """Both config styles resolve as transformers resolves them: 4.x (`global_attn_every_n_layers`,
    `global_rope_theta` / `local_rope_theta`) and 5.x (`layer_types`, `rope_parameters` per layer kind)."""
    old = dict(SIZES, num_hidden_layers=5, global_attn_every_n_layers=3, global_rope_theta=1000.0,
               local_rope_theta=50.0, local_attention=8)  # fmt: skip
    ours, theirs = mb.ModernBertConfig.from_hf(old), transformers.ModernBertConfig(**old)
    assert list(ours.layer_kinds) == theirs.layer_types
    assert ours.windows == (None, 4, 4, None, 4)  # local_attention // 2 on each side
    for kind in (mb.GLOBAL, mb.LOCAL):
        assert ours.rope(kind)["rope_theta"] == theirs.rope_parameters[kind]["rope_theta"]
    new = mb.ModernBertConfig.from_hf({**SIZES, **LOCAL_FIRST})
    assert new.layer_kinds == tuple(LOCAL_FIRST["layer_types"]) and new.windows == (2, 2, None)
    assert (new.rope(mb.GLOBAL)["rope_theta"], new.rope(mb.LOCAL)["rope_theta"]) == (500.0, 40.0)
    defaults = mb.ModernBertConfig.from_hf({})
    assert (defaults.rope(mb.GLOBAL)["rope_theta"], defaults.rope(mb.LOCAL)["rope_theta"]) == (160_000.0, 10_000.0)
    # a config read without the optional 4.x/5.x fields writes none of them back as null (transformers 5 cannot
    # read `global_attn_every_n_layers: null`)
    assert "global_attn_every_n_layers" not in defaults.to_hf() and "layer_types" not in defaults.to_hf()


def test_local_window_is_exercised(hf_models, jf_models, tmp_path):
    """The same weights with a window covering the whole input give outputs that differ by far more than the parity
    tolerance (so the parity tests would see a missing or misplaced band), and match transformers with that window
    too."""
    directory, _ = hf_models("mlm")
    ids, mask = batch("right")
    windowed = np.asarray(jf_models("mlm", scan=False)(ids, mask).logits)
    wide = tmp_path / "wide"
    shutil.copytree(directory, wide)
    config = json.loads((wide / "config.json").read_text())
    config["local_attention"] = 64
    (wide / "config.json").write_text(json.dumps(config))
    model = mb.ModernBertForMaskedLM.from_pretrained(wide, options=jf.Options(scan_layers=False))
    assert model.config.windows == (None, 32, None)
    full = np.asarray(model(ids, mask).logits)
    assert rel_err(full, torch.tensor(windowed), mask) > 10 * TOL
    ref = transformers.ModernBertForMaskedLM.from_pretrained(wide, attn_implementation="eager").eval()
    assert rel_err(full, torch_forward(ref, ids, mask).logits, mask) <= TOL


def test_auto_classes_pick_the_checkpoint_architecture(hf_models):
    for case, auto in [("mlm", jf.AutoModelForMaskedLM), ("qa", jf.AutoModelForQuestionAnswering)]:
        directory, _ = hf_models(case)
        assert type(auto.from_pretrained(directory)).__name__ == CASES[case][0]
    directory, _ = hf_models("seq-cls")
    assert type(jf.load(directory)) is mb.ModernBertForSequenceClassification


@pytest.mark.parametrize("case", list(CASES))
def test_export_round_trip_is_bit_exact_and_loads_in_transformers(case, hf_models, jf_models, tmp_path):
    from safetensors.numpy import load_file

    directory, ref = hf_models(case)
    jf_models(case).save_pretrained(tmp_path)
    src, out = load_file(directory / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(src) == sorted(out)
    for k in src:
        assert src[k].dtype == out[k].dtype and np.array_equal(src[k], out[k]), k
    hf_class, _, outputs = CASES[case]
    reloaded = getattr(transformers, hf_class).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = batch("right")
    a, b = torch_forward(ref, ids, mask), torch_forward(reloaded, ids, mask)
    for key in outputs:
        assert torch.equal(a[key], b[key]), key


def test_orbax_round_trip(jf_models, tmp_path):
    model = jf_models("mlm-untied-biases", scan=False)
    jf.save_checkpoint(model, tmp_path / "ckpt")
    restored = jf.load(tmp_path / "ckpt", options=jf.Options(scan_layers=False))
    assert type(restored) is type(model) and restored.config == model.config
    ids, mask = batch("left")
    np.testing.assert_array_equal(np.asarray(restored(ids, mask).logits), np.asarray(model(ids, mask).logits))


def test_jit_matches_eager(jf_models):
    """The scanned layers (windows as traced data) under `jax.jit` give the eager unrolled numbers."""
    ids, mask = batch("left")
    apply, params = jf.pure(jf_models("seq-mean-local-first", scan=True))
    jitted = jax.jit(lambda p, i, m: apply(p, i, m).logits)(params, ids, mask)
    eager = jf_models("seq-mean-local-first", scan=False)(ids, mask).logits
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-5)


def test_dropout_is_keyed_and_equal_scanned_and_unrolled(jf_models):
    """The "token" config has every dropout rate at 0.1: off by default (the parity test is eval mode), applied
    under a key, the same masks whether the layers are scanned or unrolled."""
    scanned, unrolled = jf_models("token", True), jf_models("token", False)
    ids, mask = batch("right")
    default = np.asarray(unrolled(ids, mask).logits)
    with pytest.raises(ValueError, match="deterministic=False applies dropout and needs a PRNG key"):
        scanned(ids, mask, deterministic=False)

    def training(model):  # jitted: eager dropout compiles every random op of every layer
        apply, params = jf.pure(model)
        f = jax.jit(lambda p, k: apply(p, ids, mask, deterministic=False, dropout_rng=k).logits)
        return lambda key: np.asarray(f(params, key))

    train_scanned, train_unrolled = training(scanned), training(unrolled)
    a, b = train_scanned(jax.random.key(3)), train_unrolled(jax.random.key(3))
    other = train_unrolled(jax.random.key(4))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, default, atol=1e-4) and not np.allclose(a, other, atol=1e-4)


def test_embedding_dropout_rate_and_scale(jf_models):
    """hidden_states[0] is the embedding output after `embedding_dropout` (0.1 in the "token" config, as in
    transformers): about that fraction of its units are zero, the kept ones are the eval values scaled by 1 / 0.9."""
    apply, params = jf.pure(jf_models("token", scan=False))
    ids = np.random.RandomState(1).randint(3, V, (4, 32)).astype(np.int32)

    @jax.jit  # only the embeddings are live: XLA drops the layers
    def embeddings(p, key):
        kw = dict(deterministic=False, dropout_rng=key) if key is not None else {}
        return apply(p, ids, output_hidden_states=True, **kw).hidden_states[0]

    ref, out = np.asarray(embeddings(params, None)), np.asarray(embeddings(params, jax.random.key(5)))
    dropped = out == 0
    assert abs(dropped.mean() - 0.1) < 0.015, dropped.mean()  # 6144 units: 4 standard deviations
    np.testing.assert_allclose(out[~dropped], ref[~dropped] / 0.9, rtol=1e-6, atol=1e-6)


# --- bad checkpoints, configs and inputs --------------------------------------------------------------------------


def test_classifier_head_the_config_does_not_describe(hf_models, tmp_path):
    """A 3-label classifier under a config.json edited to 2 labels: transformers refuses it (size mismatch), and so
    does jaxformers, naming the head tensor and the config field."""
    directory, _ = hf_models("seq-cls")
    shutil.copytree(directory, tmp_path / "two")
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "NEG", "1": "POS"}, {"NEG": 0, "POS": 1}
    (tmp_path / "two" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="mismatch"):
        transformers.ModernBertForSequenceClassification.from_pretrained(tmp_path / "two")
    with pytest.raises(ConversionError) as err:
        mb.ModernBertForSequenceClassification.from_pretrained(tmp_path / "two")
    assert "classifier.kernel" in str(err.value) and "num_labels=2" in str(err.value)


def test_missing_layer_is_named_by_its_hf_index(hf_models, tmp_path):
    """config.json says 4 layers, the checkpoint has 3: the error names HF layer 3 (the `layers` stack holds HF
    layers 1..3, its slot 2) for every per-layer family, the layer-0-less `attn_norm` included."""
    directory, _ = hf_models("base")
    shutil.copytree(directory, tmp_path / "deeper")
    config = json.loads((tmp_path / "deeper" / "config.json").read_text())
    config["num_hidden_layers"], config["layer_types"] = 4, config["layer_types"] + ["sliding_attention"]
    (tmp_path / "deeper" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError) as err:
        mb.ModernBertModel.from_pretrained(tmp_path / "deeper")
    msg = str(err.value)
    for family in ("attn_norm.scale", "attn.query.kernel", "mlp.Wi_gate.kernel", "mlp.Wo.kernel"):
        assert f"layers.block.{family}: layers [3] missing / [] unexpected (this stack holds HF layers 1..3)" in msg
    assert "first_layer" not in msg


def test_head_tensor_the_config_switches_off_is_dropped_like_transformers(hf_models, tmp_path, caplog):
    """`decoder.bias` in the checkpoint but `decoder_bias: false` in config.json: transformers builds no bias and
    drops the tensor with a warning; jaxformers does the same (a warning naming it), and the logits agree."""
    directory, _ = hf_models("mlm")
    shutil.copytree(directory, tmp_path / "nobias")
    config = json.loads((tmp_path / "nobias" / "config.json").read_text())
    config["decoder_bias"] = False
    (tmp_path / "nobias" / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="jaxformers"):
        model = mb.ModernBertForMaskedLM.from_pretrained(tmp_path / "nobias", options=jf.Options(scan_layers=False))
    assert "not used" in caplog.text and "decoder.bias" in caplog.text
    ref = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path / "nobias", attn_implementation="eager").eval()
    ids, mask = batch("right")
    assert rel_err(model(ids, mask).logits, torch_forward(ref, ids, mask).logits, mask) <= TOL


@pytest.mark.parametrize(
    "change,message,hf_refuses",
    [({"classifier_pooling": "max"}, "classifier_pooling='max' must be 'cls' or 'mean'", True),
     ({"layer_types": ["full_attention"]}, "layer_types must list 3 entries", True),
     ({"local_attention": 2.5}, "local_attention=2.5 must be an integer >= 0", True),
     # transformers accepts these, then masks every key of the local layers / drops everything in training
     ({"local_attention": -4}, "local_attention=-4 must be an integer >= 0", False),
     ({"mlp_dropout": 1.0}, r"mlp_dropout=1.0 must lie in \[0, 1\)", False)],  # fmt: skip
    ids=["pooling", "layer_types", "local_attention-float", "local_attention-negative", "dropout"],
)
def test_bad_config_values_are_refused(change, message, hf_refuses):
    if hf_refuses:
        with pytest.raises(Exception, match="(?i)validation error"):
            transformers.ModernBertConfig(**{**SIZES, **change})
    with pytest.raises(ValueError, match=message):
        mb.ModernBertConfig.from_hf({**SIZES, **change})


def test_question_answering_needs_two_labels():
    cfg = mb.ModernBertConfig.from_hf(SIZES)  # 3 labels
    with pytest.raises(ValueError, match="needs num_labels=2"):
        mb.ModernBertForQuestionAnswering(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [V, -1, 2**32 + 5], ids=["vocab_size", "negative", "wraps-in-int32"])
def test_out_of_range_token_ids_raise_like_torch(bad, hf_models, jf_models):
    _, ref = hf_models("base")
    ids = np.array([[5, 6, bad, 8]], np.int64)
    with pytest.raises((IndexError, RuntimeError)), torch.no_grad():
        ref(input_ids=torch.from_numpy(ids))
    with pytest.raises(ValueError, match=rf"input_ids must be token ids in \[0, vocab_size={V}\)"):
        jf_models("base")(ids)
