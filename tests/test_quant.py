"""Weight-only quantization (`jaxformers.core.quant`, `load(..., quantization=...)`): numerics against transformers +
PyTorch in float32, the quantized matmul against a numpy statement of its formula, caches, Orbax, HF export,
sharding on 8 CPU devices, and the errors.

Bounds (logits of the tiny parity models, valid tokens of a left-padded batch, against PyTorch float32):
  int8, one scale per output channel, both compute modes:  mean KL(fp32 || int8) < 1e-4, top-1 agreement >= 95%
  int4, groups of 16:                                       mean KL < 1e-3,             top-1 agreement >= 75%
(bfloat16's bound, tests/models/test_parity.py, is KL < 1e-2 and 90%.) Tiny random models have nearly flat logits
(max |logit| ~0.5), which makes top-1 fragile: int4 measured KL 8e-5 and 83% agreement, int8 KL <= 2e-6 and 100%.
"""

from __future__ import annotations

import os

# 8 simulated CPU devices for the sharding test, as tests/sharding/conftest.py sets them: XLA reads the flag when
# its backend starts, which has not happened while test modules are being collected.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import jaxformers as jf  # noqa: E402
from jaxformers.core import quant  # noqa: E402
from jaxformers.core import sharding as shd  # noqa: E402
from jaxformers.core.quant import QuantizationConfig, QuantSpec  # noqa: E402

INT8_BOUND = dict(kl=1e-4, agree=0.95)
INT4_BOUND = dict(kl=1e-3, agree=0.75)
# every input size a multiple of 16 (int4 groups) and every sharded size of 8 (the sharding test)
SIZES = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8, intermediate_size=128)
INT4 = QuantizationConfig(bits=4, group_size=16)


def _batch(t: int = 9, lengths=(9, 6, 3)):
    ids = np.random.RandomState(0).randint(3, 97, (len(lengths), t)).astype(np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, t - n :] = 1  # left padding
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def _torch_logits(model, ids, mask) -> np.ndarray:
    """transformers' logits given the position ids jaxformers uses by default (slot minus the first real token)."""
    positions = np.maximum(np.arange(ids.shape[1])[None] - mask.argmax(-1)[:, None], 0)
    kw = dict(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
              position_ids=torch.tensor(positions).long())  # fmt: skip
    with torch.no_grad():
        return model(**kw).logits.numpy()


def _kl_agree(ref: np.ndarray, out: np.ndarray, mask) -> tuple[float, float]:
    valid = mask.astype(bool)
    p, q = jax.nn.log_softmax(ref[valid]), jax.nn.log_softmax(out[valid])
    kl = float(np.mean(np.sum(np.exp(p) * (p - q), -1)))
    return kl, float(np.mean(ref[valid].argmax(-1) == out[valid].argmax(-1)))


# ---------------------------------------------------------------------------------------------------------------------
# Numerics against PyTorch float32


@pytest.mark.parametrize("name,hf_class,compute", [("bert", "BertForMaskedLM", "int8"),
                                                   ("gpt2", "GPT2LMHeadModel", "int8"),
                                                   ("llama", "LlamaForCausalLM", "int8"),
                                                   ("llama", "LlamaForCausalLM", "weight_only")])  # fmt: skip
def test_int8_stays_close_to_float32(tiny_hf, name, hf_class, compute):
    directory, ref = tiny_hf(name, hf_class)
    ids, mask = _batch()
    model = jf.load(directory, quantization=QuantizationConfig(bits=8, compute=compute))
    kl, agree = _kl_agree(_torch_logits(ref, ids, mask), np.asarray(model(ids, mask).logits), mask)
    assert kl < INT8_BOUND["kl"] and agree >= INT8_BOUND["agree"], (kl, agree)
    quantized = quant.quantized_modules(model)
    assert len(quantized) == {"bert": 6, "gpt2": 6, "llama": 7}[name]  # every Dense of the blocks
    assert all(path[0] == model.base_attr for path in quantized)  # the head stays float by default


@pytest.fixture(scope="module")
def int4_llama(tiny_hf):
    """(directory, torch model, int4 model with groups of 16) of a tiny Llama whose sizes suit int4 and 8 devices."""
    directory, ref = tiny_hf("llama", "LlamaForCausalLM", **SIZES)
    return directory, ref, jf.load(directory, quantization=INT4)


def test_int4_groups_stay_close_to_float32(int4_llama):
    _, ref, model = int4_llama
    ids, mask = _batch()
    kl, agree = _kl_agree(_torch_logits(ref, ids, mask), np.asarray(model(ids, mask).logits), mask)
    assert kl < INT4_BOUND["kl"] and agree >= INT4_BOUND["agree"], (kl, agree)
    up = model.model.layers.block.mlp.up_proj
    assert up.kernel[...].dtype == jnp.uint8 and up.kernel.shape == (2, 64 // 2, 128)  # two codes per byte
    assert up.kernel_scale.shape == (2, 64 // 16, 128) and up.kernel_scale[...].dtype == jnp.float32


def test_quantized_embeddings_and_tied_head(tiny_hf):
    """GPT-2 ties its LM head to the token table: with quantize_embeddings both read the int8 table, and bytes
    drop accordingly (the position table stays float)."""
    directory, ref = tiny_hf("gpt2", "GPT2LMHeadModel")
    ids, mask = _batch()
    model = jf.load(directory, quantization=QuantizationConfig(quantize_embeddings=True))
    kl, agree = _kl_agree(_torch_logits(ref, ids, mask), np.asarray(model(ids, mask).logits), mask)
    assert kl < INT8_BOUND["kl"] and agree >= INT8_BOUND["agree"], (kl, agree)
    wte, wpe = model.transformer.wte, model.transformer.wpe
    assert wte.quant is not None and wte.embedding[...].dtype == jnp.int8 and wpe.quant is None
    floats = jf.load(directory)
    assert quant.param_bytes(model) < 0.4 * quant.param_bytes(floats)


# ---------------------------------------------------------------------------------------------------------------------
# The quantized matmul against its formula


def _numpy_int8_matmul(x, w_values, scale, zero, group):
    """The "int8" compute mode stated in numpy: activations rounded to int8 per row and weight group, exact integer
    products, float32 rescaling; plus sum(x) * zero per group."""
    m, k = x.shape
    g = k // group
    xg = x.reshape(m, g, group).astype(np.float64)
    xs = np.abs(xg).max(-1) / 127
    xq = np.round(xg / np.where(xs == 0, 1, xs)[..., None])
    acc = np.einsum("mgk,gkn->mgn", xq, w_values.reshape(g, group, -1).astype(np.float64))
    y = np.einsum("mgn,mg,gn->mn", acc, xs, scale)
    return y if zero is None else y + xg.sum(-1) @ zero


@pytest.mark.parametrize("bits,group,zero,unsigned", [(8, None, False, False), (4, None, False, False),
                                                      (4, 16, True, True)])  # fmt: skip
def test_matmul_matches_its_formula(bits, group, zero, unsigned):
    """Both compute modes, codes `[K', N]` and transposed `[N, K']` (a tied head), one row (padded internally) and
    several: "weight_only" equals x @ dequantized W; "int8" equals the numpy statement of dynamic int8 products."""
    rng = np.random.default_rng(bits)
    k, n = 64, 24
    lo, hi = (0, 16) if unsigned else (-8, 8) if bits == 4 else (-127, 128)
    values = rng.integers(lo, hi, (k, n)).astype(np.int8)
    spec = QuantSpec(bits, group, zero=zero, unsigned=unsigned)
    g = spec.groups(k)
    scale = rng.uniform(0.01, 0.1, (g, n)).astype(np.float32)
    zero_arr = rng.uniform(-0.5, 0.5, (g, n)).astype(np.float32) if zero else None
    w = (values.reshape(g, -1, n) * scale[:, None] + (0 if zero_arr is None else zero_arr[:, None])).reshape(k, n)
    codes = jnp.asarray(quant.pack(values.reshape(g, k // g, n), spec, axis=1).reshape(-1, n))
    codes_t = jnp.asarray(quant.pack(values.T.reshape(n, g, k // g), spec, axis=-1).reshape(n, -1))
    z = None if zero_arr is None else jnp.asarray(zero_arr)
    for rows in (1, 5):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        for compute, want in (("weight_only", x @ w), ("int8", _numpy_int8_matmul(x, values, scale, zero_arr, k // g))):
            s = QuantSpec(bits, group, zero=zero, unsigned=unsigned, compute=compute)
            got = quant.matmul(jnp.asarray(x), codes, jnp.asarray(scale), z, s, jnp.float32)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5, err_msg=f"{compute} {rows}")
            got = quant.matmul(jnp.asarray(x), codes_t, jnp.asarray(scale.T), None if z is None else z.T, s,
                               jnp.float32, transposed=True)  # fmt: skip
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5, err_msg=f"{compute} {rows} T")


def test_matmul_gradient_is_that_of_the_dequantized_product():
    """The input gradient (what adapters over frozen quantized weights train with) is `dy @ W.T` for the
    dequantized W in both compute modes, the rounded int8 activations included (a straight-through gradient)."""
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((64, 24)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((3, 64)).astype(np.float32))
    for spec in (QuantSpec(4, 16, compute="int8"), QuantSpec(8, None, compute="weight_only")):
        codes, scale = quant.quantize_kernel(w, spec, lead=0, n_in=1)
        dense = quant.dequantize_kernel(codes, scale, None, spec, lead=0, in_shape=(64,))
        grad = jax.grad(lambda v: jnp.sum(jnp.sin(quant.matmul(v, codes, scale, None, spec, jnp.float32))))(x)
        y = quant.matmul(x, codes, scale, None, spec, jnp.float32)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(jnp.cos(y) @ dense.T), rtol=1e-5, atol=1e-6)


def test_scale_after_form_equals_the_dequantized_product(monkeypatch):
    """The GPU form of weight-only products, `(x @ codes) * scale` (measured faster there: XLA:GPU fuses the codes'
    convert into its GEMM but not the dequantization), forced on this backend: it is taken only for per-channel int8
    codes, equals x @ dequantized W (float32 tight, bfloat16 within its rounding), keeps the same input gradient, and
    leaves this backend's default (the exact dequantize-then-dot form) untouched when not forced."""
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.standard_normal((64, 24)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((3, 64)).astype(np.float32))
    spec = QuantSpec(8, None, compute="weight_only")
    codes, scale = quant.quantize_kernel(w, spec, lead=0, n_in=1)
    dense = quant.dequantize_kernel(codes, scale, None, spec, lead=0, in_shape=(64,))
    assert not quant._scale_after(codes, scale, None, spec, False)  # not on CPU by default
    monkeypatch.setattr(quant, "SCALE_AFTER_PLATFORMS", (jax.default_backend(),))
    assert quant._scale_after(codes, scale, None, spec, False)
    c4, s4 = quant.quantize_kernel(w, QuantSpec(4, 16), lead=0, n_in=1)
    c8g, s8g = quant.quantize_kernel(w, QuantSpec(8, 16), lead=0, n_in=1)
    assert not quant._scale_after(c4, s4, None, QuantSpec(4, 16), False)  # 4-bit
    assert not quant._scale_after(c8g, s8g, None, QuantSpec(8, 16), False)  # several groups
    assert not quant._scale_after(codes, scale, scale, spec, False)  # a zero point
    assert not quant._scale_after(codes.T, scale.T, None, spec, True)  # a transposed (tied) table
    jaxpr = jax.make_jaxpr(lambda x: quant.matmul(x, codes, scale, None, spec, jnp.float32))(x)
    assert "dot_general" in str(jaxpr) and str(jaxpr).index("dot_general") < str(jaxpr).rindex("mul"), jaxpr
    got = quant.matmul(x, codes, scale, None, spec, jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x @ dense), rtol=1e-5, atol=1e-5)
    got16 = quant.matmul(x.astype(jnp.bfloat16), codes, scale, None, spec, jnp.bfloat16)
    assert got16.dtype == jnp.bfloat16
    ref16 = np.asarray(x @ dense)
    assert np.abs(np.asarray(got16, np.float32) - ref16).max() <= 2e-2 * np.abs(ref16).max()
    grad = jax.grad(lambda v: jnp.sum(jnp.sin(quant.matmul(v, codes, scale, None, spec, jnp.float32))))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(jnp.cos(got) @ dense.T), rtol=1e-5, atol=1e-6)


def test_quantize_round_trip_error_is_half_a_step():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 3, 8)).astype(np.float32))  # [L, K, N, H]
    for spec in (QuantSpec(8, None), QuantSpec(4, 16)):
        codes, scale = quant.quantize_kernel(w, spec, lead=1, n_in=1)
        back = quant.dequantize_kernel(codes, scale, None, spec, lead=1, in_shape=(32,))
        step = np.repeat(np.asarray(scale), 32 // scale.shape[1], axis=1)  # [L, K, N, H]
        assert back.shape == w.shape and np.all(np.abs(np.asarray(back - w)) <= step / 2 + 1e-7), spec
        groups = np.abs(np.asarray(w)).reshape(2, scale.shape[1], -1, 3, 8).max(2)
        np.testing.assert_allclose(np.asarray(scale) * spec.qmax, groups, rtol=1e-6)  # absmax maps to qmax


# ---------------------------------------------------------------------------------------------------------------------
# Models: caches and generation, save / restore, export


def test_generation_and_cached_decoding_equal_the_full_forward(tiny_hf):
    """`generate` (its decode copy of the layers) makes the tokens a full forward picks, and prefill then one-token
    steps (one-row products, padded for XLA:CPU) give the full forward's logits."""
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.load(directory, quantization="int8")
    forward = jax.jit(lambda m, ids, cache: (lambda o: (o.logits, o.cache))(m(ids, cache=cache)))
    seq = np.asarray(jf.generate(model, _batch()[0][:1, :5], max_new_tokens=4, eos_token_id=None))
    full = np.asarray(forward(model, seq, None)[0])
    np.testing.assert_array_equal(full[0, 4:8].argmax(-1), seq[0, 5:9])
    logits, cache = forward(model, seq[:, :5], model.init_cache(1, 12))
    steps = [np.asarray(logits)]
    for i in range(5, 9):
        logits, cache = forward(model, seq[:, i : i + 1], cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


PALLAS_CONFIGS = [QuantizationConfig(bits=8, compute="pallas"), QuantizationConfig(bits=4, group_size=32, compute="pallas")]


@pytest.mark.parametrize("config", PALLAS_CONFIGS, ids=["int8", "int4"])
def test_pallas_compute_runs_the_kernel_with_the_weight_only_numbers(int4_llama, config):
    """compute="pallas" (the GPU decoding default; interpreted here) puts every block product of a model through
    the Pallas kernel, gives the weight-only logits (same weights; float32 sums in another order), and `generate`
    picks the same tokens."""
    directory = int4_llama[0]
    model = jf.load(directory, quantization=config)
    ids, mask = _batch()
    jaxpr = str(jax.make_jaxpr(lambda i, m: model(i, m).logits)(ids, mask))
    assert jaxpr.count("pallas_call") == len(quant.quantized_modules(model)) == 7, jaxpr.count("pallas_call")
    got = np.asarray(model(ids, mask).logits)
    want = np.asarray(quant.set_compute(jf.load(directory, quantization=config), "weight_only")(ids, mask).logits)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    prompt = ids[:1, :5]
    with_kernel = np.asarray(jf.generate(model, prompt, max_new_tokens=4, eos_token_id=None))
    quant.set_compute(model, "weight_only")
    np.testing.assert_array_equal(with_kernel, jf.generate(model, prompt, max_new_tokens=4, eos_token_id=None))


def _leaves(model) -> dict:
    return {k: np.asarray(v) for k, v in jf.loading.model_params(model).items()}


def test_orbax_round_trip_and_quantizing_a_float_checkpoint(int4_llama, tmp_path):
    directory, _, model = int4_llama
    jf.save_checkpoint(model, tmp_path / "int4")
    restored = jf.load(tmp_path / "int4")
    assert quant.quantized_modules(restored) == quant.quantized_modules(model)
    want = _leaves(model)
    got = _leaves(restored)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="holds a quantized model already; load it without quantization="):
        jf.load(tmp_path / "int4", quantization="int8")
    jf.save_checkpoint(jf.load(directory), tmp_path / "float")
    got = _leaves(jf.load(tmp_path / "float", quantization=INT4))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_save_pretrained_writes_the_dequantized_weights(tiny_hf, tmp_path):
    """The export holds `quant.dequantize`'s float weights: transformers reloads it and computes the quantized
    model's own (weight-only) logits, while the model itself stays quantized."""
    import transformers

    directory, _ = tiny_hf("llama", "LlamaForCausalLM", **SIZES)
    model = jf.load(directory, quantization=QuantizationConfig(bits=4, group_size=16, compute="weight_only"))
    model.save_pretrained(tmp_path)
    assert len(quant.quantized_modules(model)) == 7
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids, mask = _batch()
    ours, theirs = np.asarray(model(ids, mask).logits), _torch_logits(reloaded, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(ours - theirs)[valid].max() <= 1e-4 * np.abs(theirs).max()


# ---------------------------------------------------------------------------------------------------------------------
# Sharding: codes split like the float kernels


def test_sharded_quantized_model(int4_llama):
    """FSDP + TP on a (2, 4) mesh: codes split over fsdp and tp as the float kernels are, scales over their output
    axes; the sharded forward equals the unsharded one."""
    if jax.device_count() < 8:
        pytest.fail(f"needs 8 devices, found {jax.device_count()}: the JAX backend started before this module set "
                    f"XLA_FLAGS={_FLAG}; run it on its own or set the flag in the environment")  # fmt: skip
    directory, _, _ = int4_llama
    ids = np.random.RandomState(1).randint(3, 97, (8, 8)).astype(np.int32)
    # weight-only products: exact to the weights, so sharding may only reorder float sums. (Dynamic int8 activations
    # amplify such reorderings into whole rounding steps of an activation code: up to 6e-4 here on an AMD host.)
    int4_exact = QuantizationConfig(bits=4, group_size=16, compute="weight_only")
    reference = np.asarray(jax.jit(lambda m, x: m(x).logits)(jf.load(directory, quantization=int4_exact), ids))
    mesh, rules = jf.make_mesh((2, 4), ("fsdp", "tp")), shd.FSDP_TP
    model = jf.load(directory, mesh=mesh, rules=rules, quantization=int4_exact)
    layers = model.model.layers.block
    expected = [  # codes [L, K/2, *out] and scales [L, G, *out], written out from the rules
        (layers.self_attn.q_proj.kernel, (None, "fsdp", "tp", None)),  # in: embed -> fsdp; heads -> tp
        (layers.self_attn.q_proj.kernel_scale, (None, None, "tp", None)),  # the group axis stays unnamed
        (layers.self_attn.o_proj.kernel, (None, "tp", "fsdp")),  # the flattened (heads, head_dim): heads' axis
        (layers.mlp.down_proj.kernel, (None, "tp", "fsdp")),
        (layers.mlp.down_proj.kernel_scale, (None, None, "fsdp")),
    ]
    for var, spec in expected:
        got = tuple(var[...].sharding.spec)
        assert got + (None,) * (var[...].ndim - len(got)) == spec, (var.shape, got, spec)
    with shd.use_mesh(mesh, rules):
        logits = jax.jit(lambda m, x: m(x).logits)(model, ids)
    np.testing.assert_allclose(np.asarray(logits), reference, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Choosing layers, and bad input


def test_modules_to_not_convert_and_head_default(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.load(directory)

    def names(**kw):
        return {".".join(p) for p in quant.default_specs(model, QuantizationConfig(**kw))}

    everything = names(modules_to_not_convert=())
    assert "lm_head" in everything and "model.layers.block.mlp.down_proj" in everything
    assert names() == everything - {"lm_head"}  # default: the head stays float
    assert names(modules_to_not_convert=["mlp", "lm_head"]) == {n for n in names() if ".mlp." not in n}
    assert "model.embed_tokens" in names(quantize_embeddings=True)


def test_bad_input_is_a_clear_error(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")  # hidden 48, heads x head_dim 60, intermediate 37
    with pytest.raises(ValueError, match=r"(?s)cannot quantize these layers as asked"  # every layer, one error
                                         r"(?=.*group_size=32 does not fit the input dimension 48 of model\.layers"
                                         r"\.block\.self_attn\.q_proj.*e\.g\. \[16\])(?=.*dimension 60 of model"
                                         r"\.layers\.block\.self_attn\.o_proj)(?=.*dimension 37 of model\.layers"
                                         r"\.block\.mlp\.down_proj)"):  # fmt: skip
        jf.load(directory, quantization=QuantizationConfig(bits=4, group_size=32))
    with pytest.raises(ValueError, match=r"odd input dimension 37 of model\.layers\.block\.mlp\.down_proj"):
        jf.load(directory, quantization=QuantizationConfig(bits=4, group_size=None))
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        QuantizationConfig(bits=3)
    with pytest.raises(ValueError, match="compute must be one of"):
        QuantizationConfig(compute="fast")
    with pytest.raises(ValueError, match="modules_to_not_convert must be a list of module names"):
        QuantizationConfig(modules_to_not_convert="lm_head")
    with pytest.raises(ValueError, match=r"quantization='nf4': pass a jaxformers QuantizationConfig"):
        jf.load(directory, quantization="nf4")
    with pytest.raises(ValueError, match="not loaded from a GGUF file"):
        jf.load(directory, quantization="gguf")
