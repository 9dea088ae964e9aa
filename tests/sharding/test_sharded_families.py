"""BERT (encoder, masked LM) and GPT-2 (fused c_attn split into q/k/v on load) loaded onto 8 CPU devices: the sharded
forward equals the unsharded one, with the big matrices really split."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_helpers import BERT, GPT2, build_hf, mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params

# family -> (Auto class, HF config class, HF model class, tiny_hf name, sizes that tp = 4 divides, {param: split axes})
FAMILIES = {
    "bert": (jf.AutoModelForMaskedLM, "BertConfig", "BertForMaskedLM", BERT, {
        "bert.encoder.layer.block.attention.query.kernel": ("fsdp", "tp"),
        "bert.encoder.layer.block.attention.output.kernel": ("fsdp", "tp"),
        "bert.encoder.layer.block.intermediate.kernel": ("fsdp", "tp"),
        "bert.embeddings.word_embeddings.embedding": ("fsdp", "tp"),
    }),
    "gpt2": (jf.AutoModelForCausalLM, "GPT2Config", "GPT2LMHeadModel", GPT2, {
        "transformer.h.block.attn.q_proj.kernel": ("fsdp", "tp"),  # the q/k/v thirds of c_attn
        "transformer.h.block.attn.v_proj.kernel": ("fsdp", "tp"),
        "transformer.h.block.attn.v_proj.bias": ("tp",),
        "transformer.h.block.mlp.c_proj.kernel": ("fsdp", "tp"),
        "transformer.wte.embedding": ("fsdp", "tp"),
    }),
}  # fmt: skip


def _inputs(vocab: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (8, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < rng.randint(4, 13, (8, 1))).astype(np.int32)  # right padding, every row live
    return ids, mask


def _logits(params, apply, ids, mask):
    return apply(params, ids, mask).logits


_FORWARD = jax.jit(_logits, static_argnums=1)


def _check(auto, directory, preset, shape, vocab, splits):
    ids, mask = _inputs(vocab)
    apply, params = jf.pure(auto.from_pretrained(directory))
    reference = np.asarray(_FORWARD(params, apply, ids, mask))
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    model = auto.from_pretrained(directory, mesh=mesh, rules=rules)
    params = model_params(model)
    for name, axes in splits.items():
        x, ways = params[name], int(np.prod([mesh.shape[a] for a in axes]))
        assert ways > 1 and all(s.data.size * ways == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = _FORWARD(tree, apply, *jf.shard_batch((ids, mask)))
    live = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[live], reference[live], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tp_sized(tmp_path_factory):
    """family -> directory of a random HF model with the tp-divisible sizes, built once per module."""
    built = {}

    def get(family):
        if family not in built:
            _, config_class, model_class, sizes, _ = FAMILIES[family]
            built[family] = build_hf(config_class, model_class, tmp_path_factory.mktemp(family), **sizes)
        return built[family]

    return get


@pytest.mark.parametrize("shape", [(2, 4), (4, 2)], ids=str)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fsdp_tp_forward_matches_unsharded(family, shape, tp_sized):
    auto, _, _, sizes, splits = FAMILIES[family]
    _check(auto, tp_sized(family), "fsdp_tp", shape, sizes["vocab_size"], splits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fsdp_forward_matches_unsharded(family, tiny_hf):
    """The conftest's tiny models (hidden 48, 6 heads, odd vocab and MLP sizes) under FSDP on (8,): widths split."""
    auto, _, model_class, _, splits = FAMILIES[family]
    directory, hf = tiny_hf(family, model_class)
    embed_params = {name: ("fsdp",) for name in splits if not name.endswith("bias")}
    _check(auto, directory, "fsdp", (8,), hf.config.vocab_size, embed_params)
