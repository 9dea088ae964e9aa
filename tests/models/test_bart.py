"""BART, mBART and Marian (`jaxformers.models.bart`) against transformers + PyTorch on tiny random models.

Five tiny configurations, each transformers model built once for the module (odd sizes: vocab 97, d_model 48, 6
heads of 8, ffn 37, encoder_layers != decoder_layers): BART, BART with `scale_embedding` and ReLU, mBART (pre-LN,
final norms, its language-id shift, scaled embeddings), Marian sharing one vocabulary (sinusoidal positions, swish,
pad id as decoder start) and Marian with a separate 83-token decoder vocabulary. Every class: float32 outputs within
1e-4 of max |ref| on sources padded on the right and on the left; labels shifted into decoder inputs as HF; the cache
contract of `core.seq2seq` (prefill + steps = one forward; unstacked = stacked); HF export bit-exact with exactly the
keys transformers 5.24 writes; Orbax round trip; bad inputs refused as transformers refuses them; dropout.

Models mostly run eagerly with unrolled layers (scan_layers=False): eager ops are compiled once per shape and shared
by every model here, while an eager scan compiles anew on each call; the scanned layout runs through one jitted
forward per model structure.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

import jaxformers as jf
from jaxformers.core.layers import unstack_layers
from jaxformers.loading import abstract_model, model_params
from jaxformers.models import bart
from hf_helpers import randomize_vectors

TOL = 1e-4
V, MAX_POS = 97, 12
B, S, T = 4, 9, 7  # batch, source length, decoder length: the same shapes everywhere, so compiled ops are shared
SIZES = dict(vocab_size=V, d_model=48, encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=37,
             decoder_ffn_dim=37, max_position_embeddings=MAX_POS, num_labels=3)  # fmt: skip
_MARIAN = dict(pad_token_id=96, decoder_start_token_id=96, eos_token_id=0, scale_embedding=True,
               activation_function="swish", encoder_layers=2, decoder_layers=3)  # fmt: skip
# name -> (HF config class, overrides, HF class prefix)
CONFIGS = {
    "bart": ("BartConfig", dict(encoder_layers=2, decoder_layers=3), "Bart"),
    "bart-scaled": ("BartConfig", dict(encoder_layers=3, decoder_layers=2, scale_embedding=True,
                                       activation_function="relu"), "Bart"),  # fmt: skip
    "mbart": ("MBartConfig", dict(encoder_layers=3, decoder_layers=2, scale_embedding=True), "MBart"),
    "marian": ("MarianConfig", _MARIAN, "Marian"),
    "marian-separate": ("MarianConfig", {**_MARIAN, "share_encoder_decoder_embeddings": False,
                                         "decoder_vocab_size": 83, "pad_token_id": 82,
                                         "decoder_start_token_id": 82}, "Marian"),  # fmt: skip
}
HEADS = ("Model", "ForConditionalGeneration", "ForSequenceClassification", "ForQuestionAnswering")
CASES = [(n, CONFIGS[n][2] + h) for n in ("bart", "mbart") for h in HEADS]
CASES += [("bart-scaled", "BartForConditionalGeneration"), ("marian", "MarianModel"), ("marian", "MarianMTModel"),
          ("marian-separate", "MarianModel"), ("marian-separate", "MarianMTModel")]  # fmt: skip
IDS = [f"{n}-{c}" for n, c in CASES]
LM = {"bart": "BartForConditionalGeneration", "bart-scaled": "BartForConditionalGeneration",
      "mbart": "MBartForConditionalGeneration", "marian": "MarianMTModel",
      "marian-separate": "MarianMTModel"}  # fmt: skip


def outputs_of(hf_class):
    if hf_class.endswith("Model") and not hf_class.endswith("MTModel"):
        return ("last_hidden_state", "encoder_last_hidden_state")
    if hf_class.endswith("QuestionAnswering"):
        return ("start_logits", "end_logits")
    return ("logits",)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """`get(name, hf_class) -> (directory, torch model)`: a tiny random transformers model with random biases and
    norm weights, saved by transformers' own save_pretrained; each built once for the module."""
    cache = {}

    def get(name, hf_class):
        if (name, hf_class) not in cache:
            config_class, overrides, _ = CONFIGS[name]
            cfg = getattr(transformers, config_class)(**{**SIZES, **overrides})
            torch.manual_seed(0)
            model = getattr(transformers, hf_class)(cfg).eval()
            randomize_vectors(model)
            if hasattr(model, "final_logits_bias"):  # a buffer (zeros when built): make a swapped rule show
                model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias) * 0.1)
            directory = tmp_path_factory.mktemp(f"{name}-{hf_class}")
            model.save_pretrained(directory)
            cache[name, hf_class] = (directory, model)
        return cache[name, hf_class]

    return get


@pytest.fixture(scope="module")
def jf_models(hf_models):
    """`get(name, hf_class, scan=False) -> jaxformers model` loaded through the registry (`jf.load`), once each."""
    cache = {}

    def get(name, hf_class, scan=False):
        if (name, hf_class, scan) not in cache:
            directory = hf_models(name, hf_class)[0]
            cache[name, hf_class, scan] = jf.load(directory, options=jf.Options(scan_layers=scan))
        return cache[name, hf_class, scan]

    return get


def config(name):
    return getattr(bart, CONFIGS[name][0]).from_hf({**SIZES, **CONFIGS[name][1]})


def source(name, seed=0):
    """`[B, S]` source ids (never pad or eos inside a row) ending each row with one eos: a full row, two rows
    right-padded to 6 and 4 tokens, one left-padded to 5."""
    cfg = config(name)
    ids = np.random.RandomState(seed).randint(3, 80, (B, S))
    mask = np.zeros((B, S), np.int32)
    for row, (n, side) in enumerate(((S, "right"), (6, "right"), (4, "right"), (5, "left"))):
        real = slice(0, n) if side == "right" else slice(S - n, S)
        mask[row, real] = 1
        ids[row, real.stop - 1] = cfg.eos_token_id
    return np.where(mask == 1, ids, cfg.pad_token_id).astype(np.int32), mask


def targets(seed=1):
    """`[B, T]` decoder ids (valid in every decoder vocabulary here) and their mask, one row right-padded to 5."""
    ids = np.random.RandomState(seed).randint(3, 80, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[2, 5:] = 0
    return ids, mask


def uses_decoder_inputs(hf_class):
    """Heads whose parity runs on explicit decoder inputs (Marian has no default; BART-family sequence
    classification and QA run on input_ids shifted right, as transformers does)."""
    return "Sequence" not in hf_class and "Question" not in hf_class


def torch_out(ref, **inputs):
    with torch.no_grad():
        return ref(**{k: torch.from_numpy(np.asarray(v)).long() if isinstance(v, np.ndarray) else v
                      for k, v in inputs.items()})  # fmt: skip


def compare(a, b, tol=TOL):
    a, b = np.asarray(a), b.detach().numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err <= tol, f"max|diff|/max|ref| = {err:.2e}"


_FORWARD = jax.jit(lambda graphdef, state, *a, **k: nnx.merge(graphdef, state)(*a, **k), static_argnums=0,
                   static_argnames=("output_hidden_states", "deterministic"))


def jitted(model, *args, **kwargs):
    """`model(*args, **kwargs)` jitted (cached per model structure and shapes: a scanned model runs compiled once)."""
    graphdef, state = nnx.split(model)
    return _FORWARD(graphdef, state, *args, **kwargs)


# --------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_parity_padded_sources(hf_models, jf_models, name, hf_class):
    _, ref = hf_models(name, hf_class)
    model = jf_models(name, hf_class)
    assert type(model) is getattr(bart, hf_class) and model.is_encoder_decoder
    ids, mask = source(name)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if uses_decoder_inputs(hf_class):
        dec, dec_mask = targets()
        inputs |= dict(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    theirs = torch_out(ref, **inputs)
    ours = model(**inputs)
    for key in outputs_of(hf_class):
        compare(ours[key], theirs[key])


@pytest.mark.parametrize("name", ["mbart", "marian-separate"])
def test_hidden_states(hf_models, jf_models, name):
    """Every encoder and decoder hidden state equals transformers' (HF's tuples: embeddings, each layer, the last one
    after mBART's final norm), and so does the encoder output."""
    _, ref = hf_models(name, LM[name])
    ids, mask = source(name)
    dec, dec_mask = targets()
    theirs = torch_out(ref, input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                       output_hidden_states=True)  # fmt: skip
    ours = jf_models(name, LM[name])(ids, mask, dec, dec_mask, output_hidden_states=True)
    compare(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state)
    for key in ("encoder_hidden_states", "decoder_hidden_states"):
        assert len(ours[key]) == len(theirs[key]) == 1 + ref.config.to_dict()[key[:7] + "_layers"]
        for a, b in zip(ours[key], theirs[key]):
            compare(a, b)


def test_scanned_layout_jitted(hf_models, jf_models):
    """The scanned layout (compiled once through jit, as training runs it) equals transformers too."""
    _, ref = hf_models("mbart", "MBartForConditionalGeneration")
    ids, mask = source("mbart")
    dec, dec_mask = targets()
    theirs = torch_out(ref, input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    ours = jitted(jf_models("mbart", "MBartForConditionalGeneration", scan=True), ids, mask, dec, dec_mask)
    compare(ours.logits, theirs.logits)
    compare(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state)


@pytest.mark.parametrize("name", ["bart", "mbart"])
def test_base_model_without_decoder_inputs_shifts_input_ids(hf_models, jf_models, name):
    """BART and mBART base models decode input_ids shifted right (mBART: the row's last non-pad token first) when
    given no decoder inputs, as transformers does; the decoder states equal the ones of explicit shifted ids."""
    hf_class = CONFIGS[name][2] + "Model"
    _, ref = hf_models(name, hf_class)
    model = jf_models(name, hf_class)
    ids, mask = source(name)
    compare(model(ids, mask).last_hidden_state, torch_out(ref, input_ids=ids, attention_mask=mask).last_hidden_state)
    shifted = model.config.shift_tokens_right(ids)
    explicit = model(ids, mask, decoder_input_ids=shifted).last_hidden_state
    np.testing.assert_array_equal(np.asarray(model(ids, mask).last_hidden_state), np.asarray(explicit))


# ------------------------------------------------------------------------------------------------- labels -> inputs
@pytest.mark.parametrize("name", ["bart", "mbart", "marian"])
def test_labels_are_shifted_into_decoder_inputs_as_hf(hf_models, jf_models, name):
    """Labels with -100 in their padding: the decoder inputs (BART/Marian: decoder start + labels[:-1], -100 -> pad;
    mBART: each row's last non-pad label first) and so the logits equal transformers'."""
    _, ref = hf_models(name, LM[name])
    model = jf_models(name, LM[name])
    ids, mask = source(name)
    labels, label_mask = targets(seed=2)
    labels = np.where(label_mask == 1, labels, -100)
    labels[:, 4] = model.config.eos_token_id
    module = {"bart": transformers.models.bart.modeling_bart, "mbart": transformers.models.mbart.modeling_mbart,
              "marian": transformers.models.marian.modeling_marian}[name]  # fmt: skip
    cfg = ref.config
    args = (cfg.pad_token_id,) if name == "mbart" else (cfg.pad_token_id, cfg.decoder_start_token_id)
    want = module.shift_tokens_right(torch.from_numpy(labels).long(), *args).numpy()
    np.testing.assert_array_equal(model.config.shift_tokens_right(labels), want)
    np.testing.assert_array_equal(np.asarray(model.config.shift_tokens_right(jax.numpy.asarray(labels))), want)
    compare(model(ids, mask, labels=labels).logits, torch_out(ref, input_ids=ids, attention_mask=mask,
                                                              labels=labels).logits)  # fmt: skip


def test_marian_needs_decoder_inputs_like_transformers(hf_models, jf_models):
    """transformers' Marian has no default decoder inputs (its decoder raises): neither has jaxformers'."""
    for hf_class in ("MarianModel", "MarianMTModel"):
        _, ref = hf_models("marian", hf_class)
        ids, mask = source("marian")
        with pytest.raises(ValueError):
            torch_out(ref, input_ids=ids, attention_mask=mask)
        with pytest.raises(ValueError, match="needs decoder_input_ids .or labels"):
            jf_models("marian", hf_class)(ids, mask)


# ---------------------------------------------------------------------------------------------------------- cache
@pytest.mark.parametrize("name", ["mbart", "marian-separate"])
def test_cache_prefill_and_steps_equal_one_forward(jf_models, name):
    """encode + init_cache + a 3-token prefill + token-by-token decode give the full forward's logits (1e-5); the
    cache advances by each call's tokens and keeps the encoder mask (a left-padded source row included)."""
    model = jf_models(name, LM[name])
    ids, mask = source(name)
    dec, _ = targets()
    full = np.asarray(model(ids, mask, dec).logits)
    enc = model.encode(ids, mask)
    cache = model.init_cache(B, T + 2, enc.last_hidden_state, mask)
    assert int(cache.index) == 0 and cache.max_len == T + 2
    assert cache.cross_k.shape == cache.cross_v.shape == (model.config.decoder_layers, B, S, 6, 8)
    out = model.decode(dec[:, :3], cache=cache)
    steps, cache = [np.asarray(out.logits)], out.cache
    for t in range(3, T):
        out = model.decode(dec[:, t : t + 1], cache=cache, logits_to_keep=1)
        steps.append(np.asarray(out.logits))
        cache = out.cache
    assert int(cache.index) == T
    np.testing.assert_array_equal(np.asarray(cache.encoder_mask), mask.astype(bool))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-5 * np.abs(full).max())
    # decode without a cache (cross K/V from the encoder output), and a forward given encoder_outputs, compute the same
    direct = model.decode(dec, encoder_hidden_states=enc.last_hidden_state, encoder_attention_mask=mask).logits
    given = model(None, mask, dec, encoder_outputs=enc).logits
    for other in (direct, given):
        np.testing.assert_allclose(np.asarray(other), full, rtol=0, atol=1e-6 * np.abs(full).max())


def test_decode_step_unstacked_and_jitted_equals_stacked(jf_models):
    """Generation's decode loop: a jitted step on `unstack_layers` of a fresh copy with `cache.unstacked()` (per-layer
    self-attention arrays; cross K/V stay stacked) equals the step of the model as loaded (stacked layers, stacked
    cache)."""
    model = jf_models("bart", "BartForConditionalGeneration")
    ids, mask = source("bart")
    dec, _ = targets()
    enc = model.encode(ids, mask)
    prefilled = model.decode(dec[:, :3], cache=model.init_cache(B, T + 2, enc.last_hidden_state, mask)).cache
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, cache):
        per_layer = unstack_layers(nnx.merge(graphdef, state))
        out = per_layer.decode(tokens, cache=cache.unstacked(), logits_to_keep=1)
        return out.logits, out.cache

    logits, cache = step(state, dec[:, 3:4], prefilled)
    stacked = model.decode(dec[:, 3:4], cache=prefilled, logits_to_keep=1)
    assert cache.per_layer and not stacked.cache.per_layer and int(cache.index) == 4 == int(stacked.cache.index)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(stacked.logits), rtol=1e-5, atol=1e-5)
    for k_per_layer, k_stacked in zip(cache.self_attn.k, stacked.cache.self_attn.k):
        np.testing.assert_allclose(np.asarray(k_per_layer), np.asarray(k_stacked), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------- round trips
def tensors(directory) -> dict[str, np.ndarray]:
    with safe_open(directory / "model.safetensors", "np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


@pytest.mark.parametrize("name,hf_class", CASES, ids=IDS)
def test_hf_export_is_bit_exact_and_loads_in_transformers(hf_models, jf_models, tmp_path, name, hf_class):
    """The export holds exactly the keys transformers 5.24 saves for the class (tied tables once, Marian's
    sinusoidal tables for MarianModel only, final_logits_bias), bit for bit, and transformers loads it cleanly."""
    directory, ref = hf_models(name, hf_class)
    jf_models(name, hf_class).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ref.config.model_type and config["architectures"] == [hf_class]
    theirs, ours = tensors(directory), tensors(tmp_path)
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    reloaded, info = getattr(transformers, hf_class).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    want, got = ref.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        assert torch.equal(value, got[key]), key


def test_untied_bart_has_four_tables_like_transformers(tmp_path):
    """tie_word_embeddings=false: transformers 5 keeps shared, encoder/decoder embed_tokens and lm_head apart (shared
    unused); loading, the forward and the export follow."""
    cfg = transformers.BartConfig(**{**SIZES, **CONFIGS["bart"][1], "tie_word_embeddings": False})
    torch.manual_seed(1)
    ref = transformers.BartForConditionalGeneration(cfg).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = jf.load(tmp_path / "hf", options=jf.Options(scan_layers=False))
    assert model.model.decoder.embed_tokens is not None and model.lm_head is not None
    ids, mask = source("bart")
    dec, _ = targets()
    compare(model(ids, mask, dec).logits, torch_out(ref, input_ids=ids, attention_mask=mask,
                                                    decoder_input_ids=dec).logits)  # fmt: skip
    model.save_pretrained(tmp_path / "ours")
    theirs, ours = tensors(tmp_path / "hf"), tensors(tmp_path / "ours")
    assert sorted(ours) == sorted(theirs) and "model.shared.weight" in theirs


def test_orbax_round_trip(jf_models, tmp_path):
    model = jf_models("mbart", "MBartForConditionalGeneration")
    jf.save_checkpoint(model, tmp_path / "ckpt")
    restored = jf.load(tmp_path / "ckpt")
    assert type(restored) is type(model) and restored.config == model.config
    want, got = model_params(model), model_params(restored)
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


def test_registry_and_auto_classes(hf_models):
    directory, _ = hf_models("marian", "MarianMTModel")
    model = jf.AutoModelForSeq2SeqLM.from_pretrained(directory)
    assert type(model) is bart.MarianMTModel and model.can_generate and model.generation_config is not None
    assert type(jf.load(directory, task="base")) is bart.MarianModel
    assert bart.BartConfig.from_hf({}).num_labels == 3 == transformers.BartConfig().num_labels
    assert bart.MBartConfig.from_hf({}).num_labels == 2 == transformers.MBartConfig().num_labels


# --------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", ["bart", "marian"])
def test_position_table_limit_encoder_decoder_and_cache(hf_models, jf_models, name):
    """max_position_embeddings tokens fit (BART's table has 2 more rows for its offset, Marian's sinusoidal table
    exactly that many); one more is refused in the source, the decoder inputs and a cache, as transformers does."""
    _, ref = hf_models(name, LM[name])
    model = jf_models(name, LM[name])
    ids, mask = source(name)
    dec, _ = targets()
    long = np.full((B, MAX_POS + 1), 5, np.int32)
    for inputs in (dict(input_ids=long, decoder_input_ids=dec), dict(input_ids=ids, decoder_input_ids=long)):
        with pytest.raises((IndexError, RuntimeError)):
            torch_out(ref, **inputs)
        with pytest.raises(ValueError, match=rf"max_position_embeddings={MAX_POS} rows.*truncate"):
            model(**inputs)
    cache = model.init_cache(B, MAX_POS + 4, model.encode(ids, mask).last_hidden_state, mask)
    full = cache.replace(self_attn=cache.self_attn.replace(index=jax.numpy.asarray(MAX_POS - 1)))
    model.decode(dec[:, :1], cache=full)  # the last position of the table
    with pytest.raises(ValueError, match=rf"max_position_embeddings={MAX_POS} rows"):
        model.decode(dec[:, :1], cache=full.advance(1))


def test_out_of_range_ids_raise_like_pytorch(hf_models, jf_models):
    """Source ids index the 97-row encoder table, decoder ids the 83-row decoder table (separate vocabularies)."""
    _, ref = hf_models("marian-separate", "MarianMTModel")
    model = jf_models("marian-separate", "MarianMTModel")
    ids, mask = source("marian-separate")
    dec, _ = targets()
    bad_ids, bad_dec = ids.copy(), dec.copy()
    bad_ids[1, 2], bad_dec[2, 3] = V, 90
    for inputs, name in ((dict(input_ids=bad_ids, decoder_input_ids=dec), "input_ids"),
                         (dict(input_ids=ids, decoder_input_ids=bad_dec), "decoder_input_ids")):  # fmt: skip
        with pytest.raises((IndexError, RuntimeError)):
            torch_out(ref, **inputs)
        with pytest.raises(ValueError, match=rf"{name} must be token ids in \[0, vocab_size="):
            model(**inputs)


def test_sequence_classification_eos_rules_match_transformers(hf_models, jf_models):
    """HF pools at each row's last eos token and raises when rows hold different numbers of eos tokens (or none)."""
    _, ref = hf_models("bart", "BartForSequenceClassification")
    model = jf_models("bart", "BartForSequenceClassification")
    ids, mask = source("bart")
    two = ids.copy()
    two[0, 2] = 2  # row 0 now has two eos tokens, the others one
    none = np.where(ids == 2, 5, ids)
    for bad, match in ((two, "same number of <eos> tokens"), (none, "at least one <eos> token")):
        with pytest.raises(ValueError, match=match):
            torch_out(ref, input_ids=bad, attention_mask=mask)
        with pytest.raises(ValueError, match=match):
            model(bad, mask)
    with pytest.raises(ValueError, match="decoder inputs must be as long as input_ids"):
        model(ids, mask, decoder_input_ids=targets()[0])


def test_decode_and_init_cache_check_their_inputs(jf_models):
    model = jf_models("bart", "BartForConditionalGeneration")
    ids, mask = source("bart")
    enc = model.encode(ids, mask).last_hidden_state
    dec, _ = targets()
    with pytest.raises(ValueError, match="decode needs the encoder's output"):
        model.decode(dec)
    with pytest.raises(ValueError, match=r"encoder_attention_mask shape \(4, 8\) must be"):
        model.decode(dec, encoder_hidden_states=enc, encoder_attention_mask=mask[:, :8])
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \[2, source_len, d_model=48\]"):
        model.init_cache(2, T, enc)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.decode(dec, cache=model.init_cache(B, T - 1, enc, mask))


def test_wrong_family_class_refused(hf_models):
    src, _ = hf_models("mbart", "MBartModel")
    with pytest.raises(ValueError, match="checkpoint is a 'mbart' model but BartModel was requested"):
        bart.BartModel.from_pretrained(src)


@pytest.mark.parametrize("config_class,change,match", [
    (bart.BartConfig, dict(d_model=50), r"d_model \(50\) must be divisible by encoder_attention_heads"),
    (bart.MBartConfig, dict(decoder_attention_heads=7), "decoder_attention_heads"),
    (bart.BartConfig, dict(is_decoder=True), "is_decoder=true"),
    (bart.MarianConfig, dict(decoder_vocab_size=0), "decoder_vocab_size=0 must be a positive integer"),
    (bart.BartConfig, dict(activation_function="gelu_bogus"), "unsupported activation"),
    (bart.BartConfig, dict(attention_dropout=1.0), "attention_dropout"),
])  # fmt: skip
def test_configs_it_cannot_honour_are_refused(config_class, change, match):
    with pytest.raises(ValueError, match=match):
        config_class.from_hf({**SIZES, **change})


# ------------------------------------------------------------------------------------------------------ dropout
def with_rates(jf_models, **rates):
    """The loaded BART classifier rebuilt with other dropout rates (static module attributes: the loaded
    parameters go into the new structure unchanged)."""
    loaded = jf_models("bart", "BartForSequenceClassification")
    cfg = loaded.config.replace(**rates)
    graphdef, _ = nnx.split(abstract_model(type(loaded), cfg, jf.Options(scan_layers=False)))
    return nnx.merge(graphdef, nnx.state(loaded))


def key(seed: int):
    return jax.random.key(seed, impl="rbg")  # threefry bits compile slowly on XLA:CPU; the convention takes any key


ZERO = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, classifier_dropout=0.0,
            encoder_layerdrop=0.0, decoder_layerdrop=0.0)  # fmt: skip


def test_dropout_is_keyed_reproducible_and_layout_independent(jf_models):
    model = with_rates(jf_models, **{**ZERO, "dropout": 0.2, "attention_dropout": 0.2, "activation_dropout": 0.2})
    ids, mask = source("bart")
    eval_out = np.asarray(model(ids, mask).logits)
    np.testing.assert_array_equal(np.asarray(jf_models("bart", "BartForSequenceClassification")(ids, mask).logits),
                                  eval_out)  # fmt: skip
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model(ids, mask, deterministic=False)
    train = np.asarray(model(ids, mask, deterministic=False, dropout_rng=key(1)).logits)
    assert not np.allclose(train, eval_out, atol=1e-4)
    again = model(ids, mask, deterministic=False, dropout_rng=key(1)).logits
    np.testing.assert_array_equal(np.asarray(again), train)
    other = model(ids, mask, deterministic=False, dropout_rng=key(2)).logits
    assert not np.allclose(np.asarray(other), train, atol=1e-4)
    scanned = nnx.merge(nnx.split(abstract_model(type(model), model.config, jf.Options()))[0],
                        nnx.state(jf_models("bart", "BartForSequenceClassification", scan=True)))  # fmt: skip
    scanned = jitted(scanned, ids, mask, deterministic=False, dropout_rng=key(1)).logits
    np.testing.assert_allclose(np.asarray(scanned), train, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field", [None, "dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
                                   "encoder_layerdrop", "decoder_layerdrop"])  # fmt: skip
def test_each_dropout_rate_comes_from_its_config_field(jf_models, field):
    """Only the named rate is nonzero (0.5): the training forward differs from evaluation iff one is."""
    model = with_rates(jf_models, **{**ZERO, **({field: 0.5} if field else {})})
    ids, mask = source("bart")
    train = model(ids, mask, deterministic=False, dropout_rng=key(0)).logits
    assert np.allclose(np.asarray(train), np.asarray(model(ids, mask).logits), atol=1e-6) == (field is None)
