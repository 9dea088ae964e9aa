"""DeBERTa-v2 (`jaxformers.models.deberta_v2`) masked LM on 8 CPU devices: the FSDP and FSDP+TP forwards equal the
unsharded one, with the big matrices (the relative-position projections included) really split. Its disentangled
attention adds a content-dependent bias `[B, N, T, S]`, built from head-split projections and gathered per relative
position, so this checks that bias under batch and head sharding as well."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_helpers import build_hf, mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params

# v3-like (relative positions only, c2p + p2c, log buckets) with separate position projections; sizes that fsdp = 8
# and tp = 4 divide (8 heads, widths of 64 and 128, vocabulary 96).
SIZES = dict(vocab_size=96, hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=2,
             max_position_embeddings=64, type_vocab_size=0, relative_attention=True, pos_att_type="p2c|c2p",
             share_att_key=False, position_buckets=8, norm_rel_ebd="layer_norm",
             position_biased_input=False)  # fmt: skip
_B = "deberta.encoder.layer.block."
SPLIT = (_B + "attention.query.kernel", _B + "attention.pos_key.kernel", _B + "attention.pos_query.kernel",
         _B + "attention.output.kernel", _B + "intermediate.kernel",
         "deberta.embeddings.word_embeddings.embedding")  # fmt: skip


def _inputs(seed=0):
    """8 rows of 12 tokens, every row live: four right-padded, four left-padded."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, SIZES["vocab_size"], (8, 12)).astype(np.int32)
    lengths = rng.randint(4, 13, 8)
    slots = np.arange(12)[None, :]
    right, left = slots < lengths[:, None], slots >= 12 - lengths[:, None]
    mask = np.where(np.arange(8)[:, None] < 4, right, left).astype(np.int32)
    return ids, mask


def _logits(params, apply, ids, mask):
    return apply(params, ids, mask).logits


_FORWARD = jax.jit(_logits, static_argnums=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, unsharded logits) of a random HF DeBERTa-v2 masked LM, built once for the module."""
    directory = build_hf("DebertaV2Config", "DebertaV2ForMaskedLM", tmp_path_factory.mktemp("deberta-v2"), **SIZES)
    apply, params = jf.pure(jf.AutoModelForMaskedLM.from_pretrained(directory))
    return directory, np.asarray(_FORWARD(params, apply, *_inputs()))


@pytest.mark.parametrize("preset,shape,axes", [("fsdp", (8,), ("fsdp",)), ("fsdp_tp", (2, 4), ("fsdp", "tp"))])
def test_sharded_forward_matches_unsharded(checkpoint, preset, shape, axes):
    directory, reference = checkpoint
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    model = jf.AutoModelForMaskedLM.from_pretrained(directory, mesh=mesh, rules=rules)
    params = model_params(model)
    ways = int(np.prod([mesh.shape[a] for a in axes]))
    for name in SPLIT:
        x = params[name]
        assert ways > 1 and all(s.data.size * ways == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = _FORWARD(tree, apply, *jf.shard_batch(_inputs()))
    np.testing.assert_allclose(np.asarray(out), reference, rtol=1e-5, atol=1e-5)  # padding slots included
