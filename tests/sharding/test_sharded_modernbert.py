"""ModernBERT masked LM loaded onto 8 CPU devices under FSDP and FSDP+TP: the sharded forward equals the unsharded
one, with the big matrices (the q/k/v thirds of the fused `Wqkv`, the GeGLU halves of `Wi`, the separate layer-0
stack) really split. 3 layers, global / local / global, with a local band narrower than the input, so the scanned
per-layer windows and the band mask run under the mesh too."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_helpers import build_hf, mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params
from jaxformers.models.modernbert import ModernBertForMaskedLM

# sizes that fsdp = 8 and tp = 4 divide: width 64, 8 heads, MLP 128, vocabulary 96
SIZES = dict(vocab_size=96, hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=3,
             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
             sep_token_id=2, global_attn_every_n_layers=2, local_attention=4)  # fmt: skip
SPLIT = ["model.first_layer.block.attn.query.kernel", "model.layers.block.attn.value.kernel",
         "model.layers.block.attn.Wo.kernel", "model.layers.block.mlp.Wi_gate.kernel",
         "model.first_layer.block.mlp.Wo.kernel", "model.embeddings.tok_embeddings.embedding"]  # fmt: skip


def _inputs(seed: int = 0):
    """8 rows of 12 tokens: 4 right-padded, 4 left-padded, every row live."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, SIZES["vocab_size"], (8, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < rng.randint(4, 13, (8, 1))).astype(np.int32)
    mask[4:] = mask[4:, ::-1]
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def _logits(params, apply, ids, mask):
    return apply(params, ids, mask).logits


_FORWARD = jax.jit(_logits, static_argnums=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(directory, unsharded logits) of a random HF ModernBertForMaskedLM, built once for the module."""
    directory = build_hf("ModernBertConfig", "ModernBertForMaskedLM", tmp_path_factory.mktemp("modernbert"), **SIZES)
    apply, params = jf.pure(ModernBertForMaskedLM.from_pretrained(directory))
    return directory, np.asarray(_FORWARD(params, apply, *_inputs()))


@pytest.mark.parametrize("preset,shape", [("fsdp", (8,)), ("fsdp_tp", (2, 4))], ids=["fsdp-8", "fsdp_tp-2x4"])
def test_sharded_forward_matches_unsharded(preset, shape, reference):
    directory, want = reference
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    model = ModernBertForMaskedLM.from_pretrained(directory, mesh=mesh, rules=rules)
    params = model_params(model)
    for name in SPLIT:
        x = params[name]
        # FSDP: the embed (or vocab) axis over all 8 devices; FSDP+TP: embed over fsdp and heads / mlp / vocab over tp
        assert all(s.data.size * 8 == x.size for s in x.addressable_shards), (name, x.sharding)
    ids, mask = _inputs()
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = _FORWARD(tree, apply, *jf.shard_batch((ids, mask)))
    live = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[live], want[live], rtol=1e-5, atol=1e-5)
