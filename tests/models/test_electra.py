"""ELECTRA (`jaxformers.models.electra`) against transformers + PyTorch on tiny random models.

Every head (discriminator, generator, classifiers, QA), with and without `embeddings_project` (embedding_size !=
hidden_size): float32 outputs within 1e-4 of max|ref| on left- and right-padded batches, scanned and unrolled;
HF round trip bit-exact (transformers reloads our export with identical outputs); Orbax round trip; dropout per the
contract; bad inputs refused like transformers. The HF models are built once per module, each jaxformers class is
loaded once per layout.
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
from safetensors.numpy import load_file

import jaxformers as jf
from jaxformers.core.options import Options
from jaxformers.models import electra as el
from hf_helpers import randomize_vectors

TOL = 1e-4
CONFIG = dict(vocab_size=97, embedding_size=32, hidden_size=48, num_attention_heads=6, intermediate_size=37,
              num_hidden_layers=2, max_position_embeddings=64, type_vocab_size=2, num_labels=3)  # fmt: skip
# name -> (HF class, config overrides, output key)
CASES = {
    "base": ("ElectraModel", {}, "last_hidden_state"),
    "base-unprojected": ("ElectraModel", {"embedding_size": 48}, "last_hidden_state"),
    "pretraining": ("ElectraForPreTraining", {}, "logits"),
    "masked-lm": ("ElectraForMaskedLM", {}, "logits"),
    "masked-lm-untied-relu": ("ElectraForMaskedLM", {"tie_word_embeddings": False, "hidden_act": "relu"}, "logits"),
    "sequence-classification": ("ElectraForSequenceClassification", {}, "logits"),
    "token-classification": ("ElectraForTokenClassification", {"embedding_size": 48}, "logits"),
    "question-answering": ("ElectraForQuestionAnswering", {"num_labels": 2}, "start_logits"),
}


def build(hf_class: str, directory, **overrides):
    """A tiny random HF model saved to `directory`, with random biases and norm weights (as conftest's build_tiny)."""
    cfg = transformers.ElectraConfig(**{**CONFIG, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, hf_class)(cfg).eval()
    randomize_vectors(model)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """name -> (directory, torch model), built once for the module."""
    out = {}
    for name, (hf_class, overrides, _) in CASES.items():
        directory = tmp_path_factory.mktemp(f"electra-{name}")
        out[name] = (directory, build(hf_class, directory, **overrides))
    return out


@pytest.fixture(scope="module")
def loaded(hf):
    """(name, scan) -> jaxformers model, loaded once."""
    cache = {}

    def get(name: str, scan: bool = True):
        if (name, scan) not in cache:
            cls = getattr(el, CASES[name][0])
            cache[name, scan] = cls.from_pretrained(hf[name][0], options=Options(scan_layers=scan))
        return cache[name, scan]

    return get


def batch(side: str, lengths=(9, 6, 3), t: int = 9):
    """ids, attention mask and token types (0 then 1 from slot 4, a sentence pair), rows of different lengths padded
    on `side` ("left", "right", or "both": the left- then the right-padded rows in one batch, one forward)."""
    if side == "both":
        return tuple(np.concatenate(parts) for parts in zip(batch("left", lengths, t), batch("right", lengths, t)))
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 97, (len(lengths), t)).astype(np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, t - n :] = 1
    types = ((np.arange(t) >= 4) * mask).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask, types


def torch_forward(model, ids, mask, types, **kw):
    """HF given jaxformers' default positions (slot minus the row's first real token; `arange` for right padding)."""
    pos = np.maximum(np.arange(ids.shape[1])[None] - mask.argmax(-1)[:, None], 0)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "position_ids": pos}
    with torch.no_grad():
        return model(**{k: torch.tensor(v).long() for k, v in inputs.items()}, **kw)


def compare(ours, ref, mask):
    a, b = np.asarray(ours), ref.detach().numpy()
    if a.ndim >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: padding positions are undefined
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    assert a.shape == b.shape
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL, f"max|diff|/max|ref| = {err:.2e}"


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("name", list(CASES))
def test_parity_left_and_right_padding(hf, loaded, name, scan):
    _, ref = hf[name]
    model = loaded(name, scan)
    assert type(model).__name__ == CASES[name][0]
    base = model.electra if model.base_attr else model
    assert (base.embeddings_project is None) == (CASES[name][1].get("embedding_size") == CONFIG["hidden_size"])
    key = CASES[name][2]
    ids, mask, types = batch("both")
    ours, theirs = model(ids, mask, types), torch_forward(ref, ids, mask, types)
    compare(ours[key], theirs[key], mask)
    if key == "start_logits":
        compare(ours["end_logits"], theirs["end_logits"], mask)


def test_discriminator_logits_are_per_token(loaded):
    ids, mask, types = batch("both")
    assert loaded("pretraining")(ids, mask, types).logits.shape == ids.shape  # [B, T], as HF


def test_hidden_states_match_transformers(hf, loaded):
    _, ref = hf["base"]
    ids, mask, types = batch("both")
    ours = loaded("base")(ids, mask, types, output_hidden_states=True).hidden_states
    theirs = torch_forward(ref, ids, mask, types, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == CONFIG["num_hidden_layers"] + 1
    for a, b in zip(ours, theirs):
        compare(a, b, mask)


@pytest.mark.parametrize("name", list(CASES))
def test_export_round_trip_is_bit_exact_and_loads_in_transformers(hf, loaded, tmp_path, name):
    directory, ref = hf[name]
    loaded(name).save_pretrained(tmp_path)
    src, out = load_file(directory / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(src) == sorted(out)
    for k in src:
        assert src[k].dtype == out[k].dtype and np.array_equal(src[k], out[k]), k
    reloaded = getattr(transformers, CASES[name][0]).from_pretrained(tmp_path).eval()
    ids, mask, types = batch("both")
    key = CASES[name][2]
    a, b = torch_forward(ref, ids, mask, types)[key], torch_forward(reloaded, ids, mask, types)[key]
    # bit-identical weights (checked above); PyTorch itself may round differently between two instances (seen on an
    # AMD EPYC host for the pre-training head: a few float32 ulps), so the outputs are compared at float32 rounding
    assert (a - b).abs().max() <= 1e-6 * a.abs().max(), float((a - b).abs().max() / a.abs().max())


def test_orbax_round_trip(loaded, tmp_path):
    """save_checkpoint + load restores the same class, config and parameters (bit-exact; here the untied head)."""
    model = loaded("masked-lm-untied-relu")
    jf.save_checkpoint(model, tmp_path / "ckpt")
    restored = jf.load(tmp_path / "ckpt")
    assert type(restored) is type(model) and restored.config == model.config
    want, got = nnx.to_flat_state(nnx.state(model)), dict(nnx.to_flat_state(nnx.state(restored)))
    assert sorted(got) == sorted(path for path, _ in want)
    for path, var in want:
        assert np.array_equal(np.asarray(got[path][...]), np.asarray(var[...])), path


# ------------------------------------------------------------------------------------------------------ dropout
RATES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def rng(seed: int):
    """A dropout key. RBG keys: the same model code path as the default threefry keys (the model only folds and
    passes them on), but dropout programs compile 2-3x faster on XLA:CPU, which keeps these tests fast."""
    return jax.random.key(seed, impl="rbg")


def with_rates(model, **rates):
    """`model` (same parameters) with every dropout rate 0 except `rates`: no new weights to initialise."""
    cfg = model.config.replace(**{**{r: 0.0 for r in RATES}, **rates})
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def jitted(model, key: str):
    """`f(ids, mask, types, dropout_rng=None)` -> output `key`, jitted once (eager scans with dropout are slow)."""
    apply, params = jf.pure(model)
    f = jax.jit(lambda p, ids, mask, types, k: apply(p, ids, mask, types, deterministic=k is None, dropout_rng=k)[key])
    return lambda ids, mask, types, dropout_rng=None: np.asarray(f(params, ids, mask, types, dropout_rng))


def test_dropout_needs_a_key_and_is_reproducible_in_both_layouts(loaded):
    model = loaded("sequence-classification")  # config rates 0.1 / 0.1 / None (= hidden_dropout_prob)
    ids, mask, types = batch("both")
    det = np.asarray(model(ids, mask, types).logits)
    np.testing.assert_array_equal(np.asarray(model(ids, mask, types, deterministic=True).logits), det)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(ids, mask, types, deterministic=False)
    train, key = jitted(model, "logits"), rng(1)
    a = train(ids, mask, types, key)
    assert not np.allclose(a, det, atol=1e-4)
    np.testing.assert_array_equal(train(ids, mask, types, key), a)
    assert not np.allclose(train(ids, mask, types, rng(2)), a, atol=1e-4)
    unrolled = jitted(loaded("sequence-classification", False), "logits")(ids, mask, types, key)
    np.testing.assert_allclose(unrolled, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,rate", [
    ("sequence-classification", None),  # every rate 0: training mode changes nothing
    ("base", "hidden_dropout_prob"),
    ("base", "attention_probs_dropout_prob"),
    ("sequence-classification", "classifier_dropout"),
])  # fmt: skip
def test_each_dropout_rate_comes_from_its_config_field(loaded, name, rate):
    model, key = with_rates(loaded(name), **({rate: 0.5} if rate else {})), CASES[name][2]
    ids, mask, types = batch("both")
    det, train = np.asarray(model(ids, mask, types)[key]), jitted(model, key)(ids, mask, types, rng(0))
    if rate is None:  # (jitted vs eager: equal up to float rounding)
        np.testing.assert_allclose(train, det, atol=1e-6, rtol=1e-6)
    else:
        assert not np.allclose(train, det, atol=1e-4), f"{rate}=0.5 has no effect"


# --------------------------------------------------------------------------------------------------- bad inputs
def test_checkpoint_head_the_config_does_not_describe(hf):
    """A 3-label classifier checkpoint loaded with num_labels=5: transformers refuses (without
    ignore_mismatched_sizes), and so does jaxformers, in one error naming the tensors and the label counts."""
    directory, _ = hf["sequence-classification"]
    with pytest.raises(RuntimeError, match="mismatch"):
        transformers.ElectraForSequenceClassification.from_pretrained(directory, num_labels=5)
    with pytest.raises(ValueError, match=r"(?s)classifier\.out_proj\.weight.*num_labels=5, checkpoint 3") as e:
        el.ElectraForSequenceClassification.from_pretrained(directory, num_labels=5)
    assert "classifier.out_proj.bias" in str(e.value)


def test_question_answering_needs_two_labels(hf):
    """transformers builds ElectraForQuestionAnswering with 3 labels but its forward cannot split them into start and
    end logits; jaxformers refuses at load time, naming the field."""
    directory, _ = hf["sequence-classification"]  # num_labels=3
    ref = transformers.ElectraForQuestionAnswering.from_pretrained(directory).eval()
    with pytest.raises(ValueError, match="too many values to unpack"), torch.no_grad():
        ref(input_ids=torch.ones((1, 4), dtype=torch.long))
    with pytest.raises(ValueError, match="num_labels=2.*num_labels=3"):
        el.ElectraForQuestionAnswering.from_pretrained(directory)


def test_checkpoint_projection_the_config_does_not_describe(hf, tmp_path):
    """A checkpoint with `embeddings_project` (embedding width 32) whose config.json says embedding_size equals
    hidden_size: one error names the projection and the embedding shapes that contradict the config."""
    shutil.copytree(hf["base"][0], tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "embedding_size": 48}))
    with pytest.raises(ValueError, match=r"(?s)embeddings_project\.weight.*project_embeddings=false") as e:
        el.ElectraModel.from_pretrained(tmp_path / "ckpt")
    assert "word_embeddings" in str(e.value)


def test_decoder_config_is_refused(hf):
    config = json.loads((hf["base"][0] / "config.json").read_text())
    with pytest.raises(ValueError, match="is_decoder=True.*not implemented"):
        el.ElectraConfig.from_hf({**config, "is_decoder": True})
    with pytest.raises(ValueError, match=r"hidden_size \(48\) must be divisible by num_attention_heads \(5\)"):
        el.ElectraConfig.from_hf({**config, "num_attention_heads": 5})


def test_out_of_range_ids_raise_like_torch(hf, loaded):
    _, ref = hf["base"]
    ids = np.array([[5, 97, 7]], np.int64)
    with pytest.raises(IndexError), torch.no_grad():
        ref(input_ids=torch.from_numpy(ids))
    with pytest.raises(ValueError, match=r"input_ids must be token ids in \[0, vocab_size=97\).*got 97"):
        loaded("base")(ids)
    types = np.array([[0, 2, 0]])
    with pytest.raises(IndexError), torch.no_grad():
        ref(input_ids=torch.tensor([[5, 6, 7]]), token_type_ids=torch.from_numpy(types))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        loaded("base")(np.array([[5, 6, 7]]), token_type_ids=types)
