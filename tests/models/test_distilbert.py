"""DistilBERT (`jaxformers.models.distilbert`) against transformers + PyTorch on tiny random models.

Every head: float32 outputs within 1e-4 of max|ref| on left- and right-padded batches, scanned and unrolled layers;
HF round trip bit-exact (transformers reloads our export with identical outputs); Orbax round trip; dropout per the
contract; bad inputs refused like transformers. The HF models are built once per module, each jaxformers class is
loaded once per layout.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import jaxformers as jf
from jaxformers.core.options import Options
from jaxformers.models import distilbert as db
from hf_helpers import randomize_vectors

TOL = 1e-4
CONFIG = dict(vocab_size=97, dim=48, n_heads=6, hidden_dim=37, n_layers=2, max_position_embeddings=64, num_labels=3)
# name -> (HF class, config overrides, output key)
CASES = {
    "base": ("DistilBertModel", {}, "last_hidden_state"),
    "base-sinusoidal": ("DistilBertModel", {"sinusoidal_pos_embds": True}, "last_hidden_state"),
    "masked-lm": ("DistilBertForMaskedLM", {}, "logits"),
    "masked-lm-untied-relu": ("DistilBertForMaskedLM", {"tie_word_embeddings": False, "activation": "relu"}, "logits"),
    "sequence-classification": ("DistilBertForSequenceClassification", {}, "logits"),
    "token-classification": ("DistilBertForTokenClassification", {}, "logits"),
    "question-answering": ("DistilBertForQuestionAnswering", {"num_labels": 2}, "start_logits"),
}


def build(hf_class: str, directory, **overrides):
    """A tiny random HF model saved to `directory`, with random biases and norm weights (as conftest's build_tiny)."""
    cfg = transformers.DistilBertConfig(**{**CONFIG, **overrides})
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
        directory = tmp_path_factory.mktemp(f"distilbert-{name}")
        out[name] = (directory, build(hf_class, directory, **overrides))
    return out


@pytest.fixture(scope="module")
def loaded(hf):
    """(name, scan) -> jaxformers model, loaded once."""
    cache = {}

    def get(name: str, scan: bool = True):
        if (name, scan) not in cache:
            cls = getattr(db, CASES[name][0])
            cache[name, scan] = cls.from_pretrained(hf[name][0], options=Options(scan_layers=scan))
        return cache[name, scan]

    return get


def batch(side: str, lengths=(9, 6, 3), t: int = 9):
    """Rows of different lengths padded on `side` ("left", "right", or "both": the left- then the right-padded
    rows in one batch, one forward for both)."""
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
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def torch_forward(model, ids, mask, **kw):
    """HF given jaxformers' default positions (slot minus the row's first real token; `arange` for right padding)."""
    pos = np.maximum(np.arange(ids.shape[1])[None] - mask.argmax(-1)[:, None], 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                     position_ids=torch.tensor(pos).long(), **kw)  # fmt: skip


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
    key = CASES[name][2]
    ids, mask = batch("both")
    ours, theirs = model(ids, mask), torch_forward(ref, ids, mask)
    compare(ours[key], theirs[key], mask)
    if key == "start_logits":
        compare(ours["end_logits"], theirs["end_logits"], mask)


def test_hidden_states_match_transformers(hf, loaded):
    _, ref = hf["base"]
    ids, mask = batch("both")
    ours = loaded("base")(ids, mask, output_hidden_states=True).hidden_states
    theirs = torch_forward(ref, ids, mask, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == CONFIG["n_layers"] + 1
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
    ids, mask = batch("both")
    key = CASES[name][2]
    assert torch.equal(torch_forward(ref, ids, mask)[key], torch_forward(reloaded, ids, mask)[key])


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
RATES = ("dropout", "attention_dropout", "seq_classif_dropout", "qa_dropout")


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
    """`f(ids, mask, dropout_rng=None)` -> output `key`, jitted once (eager scans with dropout are slow on CPU)."""
    apply, params = jf.pure(model)
    f = jax.jit(lambda p, ids, mask, k: apply(p, ids, mask, deterministic=k is None, dropout_rng=k)[key])
    return lambda ids, mask, dropout_rng=None: np.asarray(f(params, ids, mask, dropout_rng))


def test_dropout_needs_a_key_and_is_reproducible_in_both_layouts(loaded):
    model = loaded("sequence-classification")  # config rates 0.1 / 0.1 / 0.2
    ids, mask = batch("both")
    det = np.asarray(model(ids, mask).logits)
    np.testing.assert_array_equal(np.asarray(model(ids, mask, deterministic=True).logits), det)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(ids, mask, deterministic=False)
    train, key = jitted(model, "logits"), rng(1)
    a = train(ids, mask, key)
    assert not np.allclose(a, det, atol=1e-4)
    np.testing.assert_array_equal(train(ids, mask, key), a)
    assert not np.allclose(train(ids, mask, rng(2)), a, atol=1e-4)
    unrolled = jitted(loaded("sequence-classification", False), "logits")(ids, mask, key)
    np.testing.assert_allclose(unrolled, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,rate", [
    ("sequence-classification", None),  # every rate 0: training mode changes nothing
    ("base", "dropout"),
    ("base", "attention_dropout"),
    ("sequence-classification", "seq_classif_dropout"),
    ("question-answering", "qa_dropout"),
])  # fmt: skip
def test_each_dropout_rate_comes_from_its_config_field(loaded, name, rate):
    model, key = with_rates(loaded(name), **({rate: 0.5} if rate else {})), CASES[name][2]
    ids, mask = batch("both")
    det, train = np.asarray(model(ids, mask)[key]), jitted(model, key)(ids, mask, rng(0))
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
        transformers.DistilBertForSequenceClassification.from_pretrained(directory, num_labels=5)
    with pytest.raises(ValueError, match=r"(?s)classifier\.weight.*num_labels=5, checkpoint 3") as e:
        db.DistilBertForSequenceClassification.from_pretrained(directory, num_labels=5)
    assert "classifier.bias" in str(e.value)


def test_question_answering_needs_two_labels(hf):
    """transformers' DistilBertForQuestionAnswering refuses num_labels != 2; so does jaxformers, naming the field."""
    directory, _ = hf["sequence-classification"]  # num_labels=3
    with pytest.raises(ValueError, match="num_labels should be 2"):
        transformers.DistilBertForQuestionAnswering.from_pretrained(directory)
    with pytest.raises(ValueError, match="num_labels=2.*num_labels=3"):
        db.DistilBertForQuestionAnswering.from_pretrained(directory)


def test_token_type_ids_are_ignored_like_transformers(hf, loaded):
    """DistilBERT has no token types; transformers accepts and ignores them, so BERT-style batches (and callers passing
    `(ids, mask, token_type_ids)` positionally, like the sentence embedder) give the same numbers."""
    ids, mask = batch("both")
    types = ((np.arange(ids.shape[1]) >= 4) * mask).astype(np.int32)
    ours = loaded("base")(ids, mask, types).last_hidden_state
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(loaded("base")(ids, mask).last_hidden_state))
    theirs = torch_forward(hf["base"][1], ids, mask, token_type_ids=torch.tensor(types)).last_hidden_state
    compare(ours, theirs, mask)


def test_bad_config_and_ids_are_refused(hf, loaded):
    config = json.loads((hf["base"][0] / "config.json").read_text())
    with pytest.raises(ValueError, match=r"dim \(48\) must be divisible by n_heads \(5\)"):
        db.DistilBertConfig.from_hf({**config, "n_heads": 5})
    with pytest.raises(ValueError, match="unsupported activation 'swiglu'"):
        db.DistilBertConfig.from_hf({**config, "activation": "swiglu"})
    ids = np.array([[5, 97, 7]], np.int64)
    with pytest.raises(IndexError), torch.no_grad():
        hf["base"][1](input_ids=torch.from_numpy(ids))
    with pytest.raises(ValueError, match=r"input_ids must be token ids in \[0, vocab_size=97\).*got 97"):
        loaded("base")(ids)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        loaded("base")(np.ones((1, 65), np.int32))
