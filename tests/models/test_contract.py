"""The model contract: every registered architecture's record is consistent, the registry reads only records, and
dropout follows `core.dropout` (deterministic by default, an explicit key when training, same masks scanned or
unrolled) with transformers' rates and sites.

Dropout cannot be compared with PyTorch mask for mask (different generators), so these tests check what the
convention promises: the default is transformers' eval mode, the key decides the masks, and the rates are the
config's (measured as the fraction of dropped units where a site is observable).
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxformers as jf
from jaxformers import models
from jaxformers.core import attention as attn
from jaxformers.core.modeling import PreTrainedModel
from jaxformers.models import bert, gpt2, llama

AVAILABLE = [mt for mt in models.MODEL_TYPES if models.is_available(mt)]


@pytest.mark.parametrize("model_type", AVAILABLE)
def test_record_is_consistent(model_type):
    record = models.architecture(model_type)
    tasks = record.tasks(model_type)
    assert "base" in tasks and set(tasks) <= set(models.TASK_NAMES), sorted(tasks)
    names = [cls.hf_architecture for cls in tasks.values()]
    assert len(set(names)) == len(names), f"hf_architecture repeated within {model_type}: {names}"
    config_cls = models.config_class(model_type)
    assert config_cls is tasks["base"].config_class
    assert config_cls.from_hf({"model_type": model_type}).model_type == model_type
    for task, cls in tasks.items():
        assert issubclass(cls, PreTrainedModel), cls
        assert cls.config_class is config_cls, f"{cls.__name__}: all classes of a model type share its config"
        assert issubclass(cls.config_class, record.config_class)
        assert cls.hf_weights is record.weights and cls.hf_weights, f"{cls.__name__}: weight table not bound"
        assert cls.task == task, f"{cls.__name__}.task is {cls.task!r}, listed as {task!r}"
        assert models.model_class(model_type, task) is cls
        # the generating classes are exactly the causal-LM and seq2seq-LM heads; causal LMs run as decoders with a
        # KV cache, seq2seq models declare themselves and offer the contract of core.seq2seq
        assert cls.can_generate == (task in ("causal-lm", "seq2seq-lm")), cls.__name__
        if task == "causal-lm":
            assert cls.is_decoder and not cls.is_encoder_decoder, cls.__name__
        if cls.is_encoder_decoder:
            assert not cls.is_decoder, cls.__name__
            if task != "encoder":
                for method in ("encode", "decode", "init_cache"):
                    assert callable(getattr(cls, method, None)), f"{cls.__name__}.{method}"
        if cls.can_generate:
            assert callable(getattr(cls, "init_cache", None)), cls.__name__
        assert (task == "seq2seq-lm") <= cls.is_encoder_decoder, cls.__name__
    if record.gguf_names is not None:
        for facts in record.gguf_names["architectures"].values():
            assert facts["architecture"] in [c.hf_architecture for c in record.tasks(facts["model_type"]).values()]


def test_llama_family_classes_are_declared():
    """Mistral/Qwen2/Gemma classes are written out (importable, HF names) and the decoders declare themselves."""
    assert llama.MistralForCausalLM.hf_architecture == "MistralForCausalLM"
    assert issubclass(llama.Qwen2ForSequenceClassification, llama.LlamaForSequenceClassification)
    assert models.model_class("gemma", "base") is llama.GemmaModel
    for cls in (llama.LlamaModel, gpt2.GPT2Model):
        assert cls.is_decoder and not cls.can_generate
    for cls in (bert.BertModel, bert.BertForMaskedLM, gpt2.GPT2ForSequenceClassification):
        assert not cls.can_generate


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown model_type 'nope'.*supports"):
        models.architecture("nope")
    with pytest.raises(ValueError, match="unknown task 'fill-mask'"):
        models.model_class("bert", "fill-mask")
    with pytest.raises(ValueError, match="gpt2 has no 'masked-lm' model; available"):
        models.model_class("gpt2", "masked-lm")
    monkeypatch.setitem(models.MODEL_TYPES, "future-arch", "jaxformers.models.not_written_yet")
    assert not models.is_available("future-arch")
    with pytest.raises(ImportError, match="'future-arch' is registered to jaxformers.models.not_written_yet"):
        models.architecture("future-arch")
    monkeypatch.setitem(models.MODEL_TYPES, "bert-twin", "jaxformers.models.bert")
    with pytest.raises(ValueError, match="implements only \\['bert'\\]; add 'bert-twin'"):
        models.architecture("bert-twin")


def test_import_does_not_load_model_files():
    """The registry is lazy: `import jaxformers` (and `jaxformers.models`) imports no model file."""
    code = (
        "import sys, jaxformers, jaxformers.models\n"
        "print(sorted(m for m in sys.modules if m.startswith('jaxformers.models.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- dropout ---------------------------------------------------------------------------------------------------
# Forwards run jitted through `jf.pure` and with "rbg" keys: eager calls compile every op separately and threefry
# bits compile slowly on XLA:CPU (seconds per dropout site); the convention takes any key, so the masks they test
# are the same code.

BERT = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, intermediate_size=37, num_hidden_layers=2,
            max_position_embeddings=64)  # fmt: skip
GPT2 = dict(vocab_size=97, n_embd=48, n_head=6, n_layer=2, n_positions=64, n_inner=37)
LLAMA = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
             intermediate_size=37, num_hidden_layers=2, max_position_embeddings=64, attention_dropout=0.5)  # fmt: skip
IDS = np.random.RandomState(0).randint(3, 97, (2, 9)).astype(np.int32)
MASK = np.array([[1] * 9, [0] * 3 + [1] * 6], np.int32)  # one left-padded row


def key(seed: int):
    return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("model_type", AVAILABLE)
def test_every_call_takes_keyword_only_dropout_arguments(model_type):
    for cls in models.architecture(model_type).tasks(model_type).values():
        params = inspect.signature(cls.__call__).parameters
        for name, default in (("deterministic", True), ("dropout_rng", None)):
            assert name in params, f"{cls.__name__}.__call__ lacks {name}="
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"{cls.__name__}: {name} must be keyword-only"
            assert params[name].default is default, f"{cls.__name__}: {name} must default to {default}"


def build(cls, sizes, scan=True, **overrides):
    """`cls` with random weights (numpy-drawn: initialising through JAX's RNG compiles for seconds on a busy CPU)."""
    cfg = cls.config_class.from_hf({**sizes, **overrides})
    options = jf.Options(scan_layers=scan)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, options=options, rngs=nnx.Rngs(0))))
    rng = np.random.RandomState(0)
    flat = [(path, var.replace(value=jnp.asarray(rng.normal(0, 0.3, var.shape), jnp.float32)))
            for path, var in nnx.to_flat_state(state)]  # fmt: skip
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def main_output(out):
    for name in ("logits", "start_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no output in {type(out).__name__}")


def jitted(model, output=main_output, ids=IDS, mask=MASK, **kw):
    """`run(key=None)`: the model's jitted output, deterministic without a key, with dropout under `key`."""
    apply, params = jf.pure(model)
    def fwd(p, k, det):
        return output(apply(p, ids, mask, deterministic=det, dropout_rng=k, **kw))

    fwd = jax.jit(fwd, static_argnums=2)
    return lambda k=None: np.asarray(fwd(params, k, k is None))


DROPOUT_MODELS = [(bert.BertForSequenceClassification, BERT), (bert.BertForTokenClassification, BERT),
                  (gpt2.GPT2LMHeadModel, GPT2), (llama.LlamaForCausalLM, LLAMA)]  # fmt: skip


@pytest.mark.parametrize("cls,sizes", DROPOUT_MODELS, ids=lambda x: getattr(x, "__name__", ""))
def test_dropout_is_off_by_default_and_keyed(cls, sizes):
    model = build(cls, sizes)
    with pytest.raises(ValueError, match="deterministic=False applies dropout and needs a PRNG key: pass dropout_rng"):
        model(IDS, MASK, deterministic=False)
    run = jitted(model)
    det, a, again, b = run(), run(key(1)), run(key(1)), run(key(2))
    np.testing.assert_array_equal(a, again)  # the key alone decides the masks
    assert not np.allclose(a, det, atol=1e-4) and not np.allclose(a, b, atol=1e-4)
    if cls is bert.BertForSequenceClassification:  # the default is deterministic (the same as transformers' eval)
        apply, params = jf.pure(model)
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda p: apply(p, IDS, MASK).logits)(params)), det)


@pytest.mark.parametrize(
    "cls,sizes", [(bert.BertModel, BERT), (llama.LlamaModel, LLAMA)], ids=lambda x: getattr(x, "__name__", "")
)
def test_dropout_masks_equal_scanned_and_unrolled(cls, sizes):
    scanned, unrolled = build(cls, sizes, scan=True), build(cls, sizes, scan=False)
    a, b = jitted(scanned)(key(7)), jitted(unrolled)(key(7))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_grad_through_dropout():
    apply, params = jf.pure(build(bert.BertForSequenceClassification, BERT))

    def loss(p, k):
        return jnp.sum(apply(p, IDS, MASK, deterministic=False, dropout_rng=k).logits ** 2)

    grad = jax.jit(jax.grad(loss))

    def kernel_grad(k):
        return np.asarray(grad(params, k)["bert"]["encoder"]["layer"]["block"]["intermediate"]["kernel"])

    g1, g2 = kernel_grad(key(3)), kernel_grad(key(4))
    assert np.isfinite(g1).all() and np.abs(g1).max() > 0
    np.testing.assert_array_equal(g1, kernel_grad(key(3)))
    assert not np.allclose(g1, g2, atol=1e-6)  # the masks enter the gradient


@pytest.mark.parametrize(
    "cls,sizes,rate_field",
    [(bert.BertModel, {**BERT, "attention_probs_dropout_prob": 0.0}, "hidden_dropout_prob"),
     (gpt2.GPT2Model, {**GPT2, "attn_pdrop": 0.0, "resid_pdrop": 0.0}, "embd_pdrop")],  # fmt: skip
    ids=["bert", "gpt2"],
)
def test_embedding_dropout_rate_and_scale(cls, sizes, rate_field):
    """hidden_states[0] is the embedding output after its dropout (as in transformers): about `rate` of its units
    are zero and the kept ones are the eval values scaled by 1 / (1 - rate)."""
    ids = np.random.RandomState(1).randint(3, 97, (4, 32)).astype(np.int32)
    model = build(cls, sizes, **{rate_field: 0.5})
    run = jitted(model, lambda out: out.hidden_states[0], ids, np.ones_like(ids), output_hidden_states=True)
    ref, out = run(), run(key(5))
    dropped = out == 0
    assert abs(dropped.mean() - 0.5) < 0.03, dropped.mean()  # 6144 units: 4.7 standard deviations
    np.testing.assert_allclose(out[~dropped], 2 * ref[~dropped], rtol=1e-6, atol=1e-6)


def test_attention_probability_dropout():
    """dot_product_attention(dropout_rate=, dropout_key=): uniform probabilities read back through one-hot values,
    so each output entry is one probability: dropped ones are 0, kept ones 1 / (S (1 - rate)). Kernels fall back to
    XLA while dropout is active (same numbers); without a key the rate is ignored."""
    b, t, s, n = 2, 16, 64, 4
    q = jnp.zeros((b, t, n, s))
    k = jnp.zeros((b, s, 2, s))
    v = jnp.broadcast_to(jnp.eye(s)[None, :, None, :], (b, s, 2, s))  # value of key j = e_j

    @jax.jit
    def run(dropout_key):
        outs = [attn.dot_product_attention(q, k, v, impl=impl, dropout_rate=0.25, dropout_key=dropout_key)
                for impl in ("xla", "auto", "pallas", "cudnn")]  # fmt: skip
        return jnp.stack(outs), attn.dot_product_attention(q, k, v, impl="xla", dropout_rate=0.25)

    outs, no_key = map(np.asarray, run(key(0)))
    out = outs[0]
    dropped = out == 0
    assert abs(dropped.mean() - 0.25) < 0.02, dropped.mean()  # 8192 probabilities: 4 standard deviations
    np.testing.assert_allclose(out[~dropped], 1 / (s * 0.75), rtol=1e-6)
    for other in outs[1:]:
        np.testing.assert_array_equal(other, out)
    np.testing.assert_allclose(no_key, 1 / s, rtol=1e-6)  # plain softmax: every probability 1 / S


def test_dropout_rates_come_from_the_config(tiny_hf):
    directory, ref = tiny_hf("bert", "BertForSequenceClassification")
    cfg = jf.load(directory).config
    fields = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
    assert [getattr(cfg, f) for f in fields] == [getattr(ref.config, f) for f in fields]
    assert bert.BertConfig.from_hf({"classifier_dropout": 0.3}).classifier_rate == 0.3
    assert gpt2.GPT2Config.from_hf({"attn_pdrop": 0.2}).attn_pdrop == 0.2
    with pytest.raises(ValueError, match=r"hidden_dropout_prob=1.0 must lie in \[0, 1\)"):
        bert.BertConfig.from_hf({"hidden_dropout_prob": 1.0})
    with pytest.raises(ValueError, match="attention_dropout=-0.1 must lie in"):
        llama.LlamaConfig.from_hf({"attention_dropout": -0.1})


_TINY_MLM = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=37,
                 max_position_embeddings=64, dim=48, n_layers=2, n_heads=6, hidden_dim=37, embedding_size=48,
                 global_attn_every_n_layers=2, local_attention=8, pad_token_id=0)  # fmt: skip (each arch's names)
MASKED_LM = [mt for mt in AVAILABLE if "masked-lm" in models.architecture(mt).tasks(mt)]


@pytest.mark.parametrize("model_type", MASKED_LM)
def test_masked_lm_logits_at_positions_equal_the_full_forward(model_type):
    """Every masked-LM head takes `logits_positions [B, P]` (`core.modeling.at_positions`; the fill-mask task passes
    its mask positions) and returns the full forward's logits at those positions, `[B, P, V]`; positions outside
    the sequence are refused."""
    assert len(MASKED_LM) >= 6, MASKED_LM  # bert, roberta, xlm-roberta, distilbert, electra, deberta-v2, modernbert
    cfg = models.config_class(model_type).from_hf({"model_type": model_type, **_TINY_MLM})
    model = models.architecture(model_type).tasks(model_type)["masked-lm"](cfg, rngs=nnx.Rngs(0))
    ids = np.random.RandomState(0).randint(3, 97, (2, 9)).astype(np.int32)
    positions = np.array([[1, 4, 4], [8, 0, 2]], np.int32)
    full = np.asarray(model(ids).logits)
    part = np.asarray(model(ids, logits_positions=positions).logits)
    assert part.shape == (2, 3, 97)
    np.testing.assert_allclose(part, np.take_along_axis(full, positions[:, :, None], axis=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="logits_positions"):
        model(ids, logits_positions=np.array([[9], [0]]))



# heads that read only the first token: their last layer computes that row alone (`core.stack.run_layers`' last_rows)
FIRST_TOKEN_HEADS = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")


@pytest.mark.parametrize("model_type,scan", [(mt, False) for mt in FIRST_TOKEN_HEADS] + [("bert", True)])
def test_first_token_classifier_equals_the_full_forward(model_type, scan):
    """A first-token sequence classifier's logits and gradients, with and without dropout, scanned or unrolled,
    equal those of the forward that computes every position of every layer (`output_hidden_states=True` needs
    them all), and its base model's `last_rows=1` output is the full one's first row. Unrolled, the program must
    cost measurably fewer flops (XLA's count takes both branches of the scanned form's `cond`)."""
    assert all("sequence-classification" in models.architecture(mt).tasks(mt) for mt in FIRST_TOKEN_HEADS)
    cfg = models.config_class(model_type).from_hf({"model_type": model_type, **_TINY_MLM, "num_labels": 3})
    model = models.architecture(model_type).tasks(model_type)["sequence-classification"](
        cfg, options=jf.Options(scan_layers=scan), rngs=nnx.Rngs(0)
    )
    graphdef, state = nnx.split(model)
    ids = np.random.RandomState(1).randint(3, 97, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = mask[2, 2:] = 0

    def logits(state, every_row, key):
        m = nnx.merge(graphdef, state)
        return m(ids, mask, output_hidden_states=every_row, deterministic=key is None, dropout_rng=key).logits

    @jax.jit
    def both(state, key):
        out = {}
        for r in (False, True):
            out[r] = (logits(state, r, None), *jax.value_and_grad(lambda s, r=r: logits(s, r, key).sum())(state))
        return out

    out = both(state, jax.random.key(7))
    for a, b in zip(jax.tree.leaves(out[False]), jax.tree.leaves(out[True])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    base = getattr(model, model.base_attr)
    first = base(ids, mask, last_rows=1).last_hidden_state
    assert first.shape == (3, 1, cfg.hidden_size if model_type != "distilbert" else cfg.dim)
    np.testing.assert_allclose(np.asarray(first), np.asarray(base(ids, mask).last_hidden_state[:, :1]), atol=1e-5)
    if not scan:
        cost = [jax.jit(lambda s, r=r: logits(s, r, None)).lower(state).compile().cost_analysis()
                for r in (False, True)]
        part, full = (float((c[0] if isinstance(c, list) else c)["flops"]) for c in cost)
        assert part < 0.9 * full, (part, full)  # 2 layers of 10 positions: the last one's work on 1 of 10 rows
