"""Loading paths and bad input: each problem raises one clear error that names it."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

import jaxformers as jf
from jaxformers.convert.engine import ConversionError

IDS = np.array([[5, 8, 13, 21, 34, 55]], np.int32)


def copy_model(tiny_hf, tmp_path, name="bert", hf_class="BertModel"):
    src, ref = tiny_hf(name, hf_class)
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst, ref


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def test_unknown_model_type(tiny_hf, tmp_path):
    d, _ = copy_model(tiny_hf, tmp_path)
    edit_config(d, model_type="mamba9")
    with pytest.raises(ValueError, match="unknown model_type 'mamba9'.*supports"):
        jf.AutoModel.from_pretrained(d)


def test_missing_config_and_missing_weights(tiny_hf, tmp_path):
    d, _ = copy_model(tiny_hf, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights found.*model.safetensors"):
        jf.AutoModel.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        jf.AutoModel.from_pretrained(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors(tiny_hf, tmp_path, damage):
    d, _ = copy_model(tiny_hf, tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 8 + data[8:])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        jf.AutoModel.from_pretrained(d)


def test_config_contradicting_weights_lists_every_problem(tiny_hf, tmp_path):
    d, _ = copy_model(tiny_hf, tmp_path)
    edit_config(d, intermediate_size=40, num_hidden_layers=3)
    with pytest.raises(ConversionError) as err:
        jf.AutoModel.from_pretrained(d)
    msg = str(err.value)
    assert "layers [2] missing" in msg  # config says 3 layers, checkpoint has 2
    assert "intermediate.kernel" in msg and "shape" in msg
    assert msg.count("\n") >= 4  # all problems in one report


def test_unexpected_and_missing_tensors_reported_together(tiny_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    d, _ = copy_model(tiny_hf, tmp_path)
    tensors = load_file(d / "model.safetensors")
    tensors["encoder.layer.0.attention.self.extra.weight"] = np.zeros((2, 2), np.float32)
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ConversionError) as err:
        jf.AutoModel.from_pretrained(d)
    assert "unexpected checkpoint tensor 'encoder.layer.0.attention.self.extra.weight'" in str(err.value)
    assert "encoder.layer.block.output.bias: layers [1] missing" in str(err.value)


def test_config_switching_off_biases_the_checkpoint_has(tiny_hf, tmp_path):
    """A checkpoint with q/k/v/o and MLP biases, config.json edited to attention_bias / mlp_bias false: one error
    naming each tensor family and the contradicting flag, never a silent drop (that would change the outputs)."""
    d, _ = copy_model(tiny_hf, tmp_path, "llama-tied-bias", "LlamaForCausalLM")
    edit_config(d, attention_bias=False, mlp_bias=False)
    with pytest.raises(ConversionError) as err:
        jf.AutoModelForCausalLM.from_pretrained(d)
    msg = str(err.value)
    assert (
        "checkpoint has model.layers.0.self_attn.q_proj.bias (and 1 more) but the config builds no such parameter "
        "(attention_bias=false?)" in msg
    )
    for family in ["k_proj", "v_proj", "o_proj"]:
        assert f"model.layers.0.self_attn.{family}.bias (and 1 more)" in msg
    for family in ["gate_proj", "up_proj", "down_proj"]:
        assert f"model.layers.0.mlp.{family}.bias (and 1 more) but the config builds no such parameter " \
               "(mlp_bias=false?)" in msg  # fmt: skip
    assert "7 problem(s)" in msg  # one line per tensor family, in one report


def test_base_model_drops_only_head_tensors(tiny_hf, caplog):
    """AutoModel on a classification checkpoint: the classifier is dropped (logged like transformers' "weights not
    used"), the outputs are the base model's; a class without a pooler drops the checkpoint's pooler the same way."""
    d, ref = tiny_hf("bert", "BertForSequenceClassification")
    with caplog.at_level("INFO", logger="jaxformers"):
        base = jf.AutoModel.from_pretrained(d)
    assert "not used" in caplog.text and "classifier.weight" in caplog.text and "classifier.bias" in caplog.text
    with torch.no_grad():
        want = ref.bert(torch.tensor(IDS).long()).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(base(IDS).last_hidden_state), want, atol=1e-5)
    caplog.clear()
    with caplog.at_level("INFO", logger="jaxformers"):
        jf.AutoModelForTokenClassification.from_pretrained(d)
    assert "bert.pooler.dense.weight" in caplog.text


MODELS = [("bert", "BertModel"), ("gpt2", "GPT2Model"), ("llama", "LlamaModel")]


@pytest.mark.parametrize("name,hf_class", MODELS)
def test_wrong_input_dtype_and_rank(tiny_hf, name, hf_class):
    model = jf.AutoModel.from_pretrained(tiny_hf(name, hf_class)[0])
    with pytest.raises(TypeError, match="integer token ids"):
        model(IDS.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        model(IDS[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(IDS, np.ones((1, 3), np.int32))
    pos = np.arange(IDS.shape[1], dtype=np.int32)[None]
    with pytest.raises(ValueError, match=r"position_ids shape \(1, 3\) must equal input_ids shape \(1, 6\)"):
        model(IDS, position_ids=pos[:, :3])
    with pytest.raises(ValueError, match="position_ids shape"):
        model(IDS, position_ids=pos[0])
    with pytest.raises(TypeError, match="position_ids must hold integers, got dtype float32"):
        model(IDS, position_ids=pos.astype(np.float32))
    if name == "bert":
        with pytest.raises(ValueError, match=r"token_type_ids shape \(2, 6\) must equal"):
            model(IDS, token_type_ids=np.zeros((2, 6), np.int32))
        with pytest.raises(TypeError, match="token_type_ids must hold integers"):
            model(IDS, token_type_ids=np.zeros(IDS.shape, np.float32))


def test_pickled_bin_needs_opt_in(tiny_hf, tmp_path):
    from safetensors.numpy import load_file

    d, ref = copy_model(tiny_hf, tmp_path)
    tensors = load_file(d / "model.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="allow_pickle=True"):
        jf.AutoModel.from_pretrained(d)
    model = jf.AutoModel.from_pretrained(d, allow_pickle=True)
    with torch.no_grad():
        want = ref(torch.tensor(IDS).long()).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model(IDS).last_hidden_state), want, atol=1e-5)


class NotATensor:
    """Any pickled object other than tensors and plain containers: what a malicious .bin would carry."""

    def __init__(self):
        self.payload = "would run on unpickling with weights_only=False"


def test_pickled_bin_with_objects_refused_even_with_opt_in(tiny_hf, tmp_path):
    from safetensors.numpy import load_file

    d, _ = copy_model(tiny_hf, tmp_path)
    tensors = {k: torch.from_numpy(v) for k, v in load_file(d / "model.safetensors").items()}
    torch.save({**tensors, "evil": NotATensor()}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"other than tensors.*weights_only=True\) refused it.*NotATensor"):
        jf.AutoModel.from_pretrained(d, allow_pickle=True)


def test_pickled_bin_without_torch_installed(tiny_hf, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    d, _ = copy_model(tiny_hf, tmp_path)
    torch.save({k: torch.from_numpy(v) for k, v in load_file(d / "model.safetensors").items()}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="loading pytorch_model.bin needs torch"):
        jf.AutoModel.from_pretrained(d, allow_pickle=True)


def test_sharded_safetensors_index(tiny_hf, tmp_path):
    _, ref = tiny_hf("llama", "LlamaForCausalLM")
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = jf.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        want = ref(torch.tensor(IDS).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(IDS).logits), want, atol=1e-5)
    # a shard missing from disk is named
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        jf.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_head_from_base_checkpoint_and_base_from_head_checkpoint(tiny_hf, caplog):
    base_dir, _ = tiny_hf("bert", "BertModel")
    with caplog.at_level("WARNING", logger="jaxformers"):
        clf = jf.AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=5)
    assert "classifier.kernel" in caplog.text  # newly initialised head, announced
    assert clf(IDS).logits.shape == (1, 5)
    assert clf.config.num_labels == 5
    mlm_dir, mlm_ref = tiny_hf("bert", "BertForMaskedLM")
    base = jf.AutoModel.from_pretrained(mlm_dir)  # cls.* keys are known and skipped
    with torch.no_grad():
        want = mlm_ref.bert(torch.tensor(IDS).long()).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(base(IDS).last_hidden_state), want, atol=1e-5)


def test_wrong_class_for_checkpoint(tiny_hf):
    from jaxformers.models.bert import BertModel

    with pytest.raises(ValueError, match="checkpoint is a 'llama' model but BertModel"):
        BertModel.from_pretrained(tiny_hf("llama", "LlamaModel")[0])


def test_hub_repo_id_from_cache_and_offline_miss(tiny_hf, tmp_path, monkeypatch):
    """A repo id resolves through huggingface_hub's cache layout; an uncached one fails saying it is offline."""
    src, ref = tiny_hf("bert", "BertModel")
    snap = tmp_path / "hub" / "models--tiny--bert" / "snapshots" / ("a" * 40)
    shutil.copytree(src, snap)
    (tmp_path / "hub" / "models--tiny--bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--bert" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = jf.AutoModel.from_pretrained("tiny/bert", cache_dir=tmp_path / "hub")
    with torch.no_grad():
        want = ref(torch.tensor(IDS).long()).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model(IDS).last_hidden_state), want, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache and the hub is offline"):
        jf.AutoModel.from_pretrained("tiny/not-cached", cache_dir=tmp_path / "hub")


def test_orbax_checkpoint_round_trip(tiny_hf, tmp_path):
    model = jf.load(tiny_hf("gemma", "GemmaForCausalLM")[0])
    jf.save_checkpoint(model, tmp_path / "ckpt")
    restored = jf.load(tmp_path / "ckpt")
    assert type(restored).__name__ == "GemmaForCausalLM"
    np.testing.assert_array_equal(np.asarray(restored(IDS).logits), np.asarray(model(IDS).logits))
