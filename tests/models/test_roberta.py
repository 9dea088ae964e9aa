"""RoBERTa and XLM-RoBERTa (`jaxformers.models.roberta`) against transformers + PyTorch on tiny random models.

Three tiny checkpoints, built once for the module: RoBERTa (pad id 1, two token types), XLM-R with pad id 3, a
single token type and ReLU in its layers (so a hard-coded pad id of 1, positions counted from the attention
mask, or `hidden_act` in the masked-LM head would show), and an
untied RoBERTa masked LM (its decoder has its own bias, `lm_head.bias` unused, as in transformers). Every head
class: float32 outputs within 1e-4 of max |ref| on left- and right-padded batches, scanned and unrolled; the HF
export is bit-exact and loads in transformers; Orbax round trip; bad checkpoints and inputs refused like
transformers refuses them.
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
from jaxformers.models import roberta as rb
from hf_helpers import randomize_vectors

TOL = 1e-4
V, T = 97, 9  # vocab_size; tokens per test row, exactly what the position tables below hold (pad id + 1 + T rows)
SIZES = dict(vocab_size=V, hidden_size=48, num_attention_heads=6, intermediate_size=37, num_hidden_layers=2,
             num_labels=3)  # fmt: skip
# name -> (HF config class, config overrides, HF class prefix)
CONFIGS = {
    "roberta": ("RobertaConfig", dict(type_vocab_size=2, max_position_embeddings=T + 2), "Roberta"),
    "xlm-roberta": ("XLMRobertaConfig", dict(type_vocab_size=1, pad_token_id=3, max_position_embeddings=T + 4,
                                             hidden_act="relu"), "XLMRoberta"),  # the LM head keeps exact GELU
    "roberta-untied": ("RobertaConfig", dict(type_vocab_size=1, tie_word_embeddings=False,
                                             max_position_embeddings=T + 2), "Roberta"),
}  # fmt: skip
HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
CASES = [(n, CONFIGS[n][2] + h) for n in ("roberta", "xlm-roberta") for h in HEADS]
CASES.append(("roberta-untied", "RobertaForMaskedLM"))
IDS = [f"{n}-{c}" for n, c in CASES]
OUTPUTS = {"Model": ("last_hidden_state", "pooler_output"), "ForMaskedLM": ("logits",),
           "ForSequenceClassification": ("logits",), "ForTokenClassification": ("logits",),
           "ForQuestionAnswering": ("start_logits", "end_logits")}  # fmt: skip


def outputs_of(hf_class):
    return next(v for k, v in OUTPUTS.items() if hf_class.endswith(k))


def build(name, hf_class, directory, **overrides):
    """A tiny random transformers model saved at `directory`, with random biases and 1-D norm weights (as
    `tests/conftest.py::build_tiny`), so that every parameter and every swapped rule shows in the outputs."""
    config_class, kwargs, _ = CONFIGS[name]
    extra = {"num_labels": 2} if "QuestionAnswering" in hf_class else {}
    cfg = getattr(transformers, config_class)(**{**SIZES, **kwargs, **extra, **overrides})
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


# One batch holds an unpadded row, right-padded rows and left-padded rows (one forward covers both sides).
ROWS = ((T, "right"), (6, "right"), (3, "right"), (6, "left"), (3, "left"))


def batch(name, rows=ROWS, t=T, seed=0):
    """Ids over the whole vocabulary except the pad id (so XLM-R's rows hold id 1, HF's default pad, as a real
    token), each row `(length, side)` padded with the pad id; token types 0/1 where the config has two."""
    cfg = rb.RobertaConfig.from_hf({**SIZES, **CONFIGS[name][1]})
    pad = cfg.pad_token_id
    ids = np.random.RandomState(seed).randint(0, V - 1, (len(rows), t))
    ids = np.where(ids >= pad, ids + 1, ids)  # skip the pad id
    mask = np.zeros_like(ids)
    for i, (n, side) in enumerate(rows):
        mask[i, slice(0, n) if side == "right" else slice(t - n, t)] = 1
    ids = np.where(mask == 1, ids, pad).astype(np.int32)
    types = ((np.arange(t) >= 4) * mask).astype(np.int32) if cfg.type_vocab_size > 1 else None
    return ids, mask.astype(np.int32), types


def torch_out(ref, ids, mask, types, **kw):
    inputs = dict(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    if types is not None:
        inputs["token_type_ids"] = torch.tensor(types).long()
    with torch.no_grad():
        return ref(**inputs, **kw)


def compare(a, b):
    """Every slot, padding included: a pad query still sees the row's real keys, and its position (the pad id) is
    HF's, so its outputs are defined and must match too (the sequence classifier reads slot 0, a pad when
    left-padded)."""
    a, b = np.asarray(a), b.detach().numpy()
    assert a.shape == b.shape
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= TOL, f"max|diff|/max|ref| = {err:.2e}"


# --------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_parity_left_and_right_padding_scanned_and_unrolled(hf_models, jf_models, name, hf_class):
    _, ref = hf_models(name, hf_class)
    ids, mask, types = batch(name)
    theirs = torch_out(ref, ids, mask, types)
    for scan in (True, False):
        model = jf_models(name, hf_class, scan)
        assert type(model) is getattr(rb, hf_class)
        ours = model(ids, mask, token_type_ids=types)
        for key in outputs_of(hf_class):
            compare(ours[key], theirs[key])


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_hidden_states_and_padding_side_invariance(hf_models, jf_models, name):
    """All hidden states match transformers (embeddings + each layer), and a row gives the same outputs padded on
    the left or on the right: positions count the row's own non-pad tokens (HF's rule, whatever the side)."""
    hf_class = CONFIGS[name][2] + "Model"
    _, ref = hf_models(name, hf_class)
    model = jf_models(name, hf_class, scan=False)
    ids, mask, types = batch(name)
    for right, left in ((1, 3), (2, 4)):  # same lengths (ROWS): give them the same tokens and token types
        n = int(mask[right].sum())
        ids[left, T - n :] = ids[right, :n]
        if types is not None:
            types[left, T - n :] = types[right, :n]
    ours = model(ids, mask, token_type_ids=types, output_hidden_states=True)
    theirs = torch_out(ref, ids, mask, types, output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == SIZES["num_hidden_layers"] + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        compare(a, b)
    out = np.asarray(ours.last_hidden_state)
    for right, left in ((1, 3), (2, 4)):
        n = int(mask[right].sum())
        np.testing.assert_allclose(out[left, T - n :], out[right, :n], atol=1e-5, rtol=1e-5)


def test_jit_matches_eager(jf_models):
    """`jf.pure` + `jax.jit` of the scanned layout equals the eager unrolled one."""
    ids, mask, _ = batch("xlm-roberta")
    apply, params = jf.pure(jf_models("xlm-roberta", "XLMRobertaForTokenClassification"))
    jitted = jax.jit(lambda p, i, m: apply(p, i, m).logits)(params, ids, mask)
    eager = jf_models("xlm-roberta", "XLMRobertaForTokenClassification", scan=False)(ids, mask).logits
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_hf_export_is_bit_exact_and_loads_in_transformers(hf_models, jf_models, tmp_path, name, hf_class):
    _, ref = hf_models(name, hf_class)
    jf_models(name, hf_class).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ref.config.model_type and config["architectures"] == [hf_class]
    reloaded, info = getattr(transformers, hf_class).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert reloaded.config.pad_token_id == ref.config.pad_token_id
    want, got = ref.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        assert torch.equal(value, got[key]), key
    if hf_class.endswith("ForMaskedLM"):  # the tie (or its absence) survives: decoder bias is lm_head.bias iff tied
        tied = reloaded.lm_head.decoder.bias.data_ptr() == reloaded.lm_head.bias.data_ptr()
        assert tied == ref.config.tie_word_embeddings


@pytest.mark.parametrize("name,hf_class", [("roberta", "RobertaForMaskedLM"),
                                           ("xlm-roberta", "XLMRobertaForSequenceClassification")])  # fmt: skip
def test_orbax_round_trip(jf_models, tmp_path, name, hf_class):
    from jaxformers.loading import model_params

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


def test_vocab_size_disagreeing_with_the_embedding_is_one_clear_error(hf_models, tmp_path):
    """An XLM-R checkpoint whose config says vocab_size=101 over a 97-row embedding: transformers refuses it, and so
    does jaxformers, in one error naming the field, both sizes and the fix."""
    src, _ = hf_models("xlm-roberta", "XLMRobertaForMaskedLM")
    bad = edited_copy(src, tmp_path / "bad", vocab_size=V + 4)
    with pytest.raises(RuntimeError):
        transformers.XLMRobertaForMaskedLM.from_pretrained(bad)
    with pytest.raises(ConversionError) as err:
        rb.XLMRobertaForMaskedLM.from_pretrained(bad)
    msg = str(err.value)
    assert f"config vocab_size={V + 4}, checkpoint {V}" in msg and "fix config.json" in msg
    assert "roberta.embeddings.word_embeddings.weight" in msg and "lm_head.bias" in msg


def test_head_the_config_does_not_describe_is_a_shape_error(hf_models, tmp_path):
    """A 3-label classifier checkpoint under a config (or an override) saying 5 labels: transformers refuses it
    (without ignore_mismatched_sizes), jaxformers too, naming num_labels and both sizes."""
    src, _ = hf_models("roberta", "RobertaForSequenceClassification")
    bad = edited_copy(src, tmp_path / "bad", id2label={str(i): f"L{i}" for i in range(5)},
                      label2id={f"L{i}": i for i in range(5)})  # fmt: skip
    with pytest.raises(RuntimeError):
        transformers.RobertaForSequenceClassification.from_pretrained(bad)
    override = lambda: jf.AutoModelForSequenceClassification.from_pretrained(src, num_labels=5)  # noqa: E731
    for load in (lambda: jf.load(bad), override):
        with pytest.raises(ConversionError, match=r"classifier\.out_proj\.weight \(3, 48\)") as err:
            load()
        assert "config num_labels=5, checkpoint 3" in str(err.value)


def test_wrong_family_class_refused(hf_models):
    src, _ = hf_models("xlm-roberta", "XLMRobertaModel")
    with pytest.raises(ValueError, match="checkpoint is a 'xlm-roberta' model but RobertaModel was requested"):
        rb.RobertaModel.from_pretrained(src)


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_out_of_range_ids_and_token_types_raise_like_pytorch(hf_models, jf_models, name):
    hf_class = CONFIGS[name][2] + "Model"
    _, ref = hf_models(name, hf_class)
    model = jf_models(name, hf_class)
    ids = np.array([[5, 6, 7, 8]], np.int64)
    types = ref.config.type_vocab_size
    bad = {"input_ids": np.array([[5, V, 7, 8]]), "token_type_ids": np.full((1, 4), types)}
    for arg, value in bad.items():
        inputs = {"input_ids": ids, **{arg: value}}
        with pytest.raises((IndexError, RuntimeError)), torch.no_grad():
            ref(**{k: torch.from_numpy(v).long() for k, v in inputs.items()})
        with pytest.raises(ValueError, match=arg):
            model(**inputs)


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_length_limit_counts_from_the_pad_id(hf_models, jf_models, name):
    """Positions start at pad_token_id + 1, so max_position_embeddings - pad - 1 tokens fit (the full rows of
    `batch`, T = 9, compared with transformers by the parity tests); one more is refused by both."""
    hf_class = CONFIGS[name][2] + "Model"
    _, ref = hf_models(name, hf_class)
    model = jf_models(name, hf_class, scan=False)
    assert ref.config.max_position_embeddings - ref.config.pad_token_id - 1 == T
    ids = np.full((1, T + 1), 5, np.int32)
    with pytest.raises((IndexError, RuntimeError)), torch.no_grad():
        ref(input_ids=torch.tensor(ids).long())
    with pytest.raises(ValueError, match=rf"usable positions .*={T} rows.*truncate to {T} tokens"):
        model(ids)


@pytest.mark.parametrize("change,match", [
    (dict(is_decoder=True), "is_decoder=True"),
    (dict(add_cross_attention=True), "add_cross_attention=True"),
    (dict(pad_token_id=None), "pad_token_id=None"),
    (dict(pad_token_id=511), "pad_token_id=511"),  # no room left in a 512-row table for any token
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
])  # fmt: skip
def test_configs_it_cannot_honour_are_refused(change, match):
    for config_class in (rb.RobertaConfig, rb.XLMRobertaConfig):
        with pytest.raises(ValueError, match=match):
            config_class.from_hf({**SIZES, **change})


# ------------------------------------------------------------------------------------------------------ dropout
def with_rates(jf_models, scan=False, **rates):
    """The loaded RoBERTa classifier rebuilt with other dropout rates (they are static module attributes, so the
    loaded parameters go into the new structure unchanged; nothing is randomly initialised)."""
    from jaxformers.loading import abstract_model

    loaded = jf_models("roberta", "RobertaForSequenceClassification", scan)
    cfg = loaded.config.replace(**rates)
    graphdef, _ = nnx.split(abstract_model(type(loaded), cfg, jf.Options(scan_layers=scan)))
    return nnx.merge(graphdef, nnx.state(loaded))


def test_dropout_is_keyed_reproducible_and_layout_independent(jf_models):
    """Mostly unrolled: eager calls of a scanned model with dropout compile the scan (and its random bits) anew."""
    model = jf_models("roberta", "RobertaForSequenceClassification", scan=False)
    ids, mask, types = batch("roberta")
    eval_out = np.asarray(model(ids, mask, types).logits)
    np.testing.assert_array_equal(np.asarray(model(ids, mask, types, deterministic=True).logits), eval_out)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model(ids, mask, types, deterministic=False)
    train = np.asarray(model(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(1)).logits)
    assert not np.allclose(train, eval_out, atol=1e-4)
    again = model(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(1)).logits
    np.testing.assert_array_equal(np.asarray(again), train)
    other = model(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(2)).logits
    assert not np.allclose(np.asarray(other), train, atol=1e-4)
    scanned = jf_models("roberta", "RobertaForSequenceClassification", scan=True)
    scanned = scanned(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(1)).logits
    np.testing.assert_allclose(np.asarray(scanned), train, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rates,drops", [
    (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0), False),
    (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5, classifier_dropout=0.0), True),
    (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.5), True),
    (dict(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.0, classifier_dropout=0.0), True),
])  # fmt: skip
def test_each_dropout_rate_comes_from_its_config_field(jf_models, rates, drops):
    model = with_rates(jf_models, **rates)
    ids, mask, types = batch("roberta")
    train = model(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(0)).logits
    assert np.allclose(np.asarray(train), np.asarray(model(ids, mask, types).logits), atol=1e-6) != drops
