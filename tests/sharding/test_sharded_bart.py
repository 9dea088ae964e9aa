"""BART-family seq2seq models loaded onto 8 CPU devices under FSDP+TP (fsdp = 2 x tp = 4): the sharded forward equals
the unsharded one, with the big matrices really split (sizes that 2 and 4 divide: d_model 64, 8 heads, ffn 128,
vocab 96), on mBART (pre-LN, final norms) with its LM head: the layers, the shared table and final_logits_bias.
Marian differs only by layer-norm placement, computed positions and (optionally) a second token table with the same
logical axes, so one case covers the family's sharding."""

from __future__ import annotations

import jax
import numpy as np
from sharding_helpers import build_hf, mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params

SIZES = dict(vocab_size=96, d_model=64, encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=128,
             decoder_ffn_dim=128, encoder_layers=2, decoder_layers=3, max_position_embeddings=40)  # fmt: skip
_E, _D = "model.encoder.layers.block.", "model.decoder.layers.block."
# parameter -> the mesh axes that must split it
SPLITS = {
    _E + "self_attn.q_proj.kernel": ("fsdp", "tp"), _E + "fc1.kernel": ("fsdp", "tp"),
    _D + "encoder_attn.k_proj.kernel": ("fsdp", "tp"), _D + "self_attn.out_proj.kernel": ("fsdp", "tp"),
    _D + "fc2.kernel": ("fsdp", "tp"), "model.shared.embedding": ("fsdp", "tp"), "final_logits_bias": ("tp",),
}  # fmt: skip


def _inputs(pad: int, seed: int = 0):
    """8 source rows of 12 tokens (right-padded, then left-padded) and 8 decoder rows of 7 tokens."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, 80, (8, 12)).astype(np.int32)
    n = rng.randint(4, 13, (8, 1))
    slot = np.arange(12)[None, :]
    mask = np.where(np.arange(8)[:, None] < 4, slot < n, slot >= 12 - n).astype(np.int32)
    return np.where(mask == 1, ids, pad).astype(np.int32), mask, rng.randint(3, 80, (8, 7)).astype(np.int32)


def _forward(params, apply, ids, mask, dec):
    return apply(params, ids, mask, dec).logits


_FORWARD = jax.jit(_forward, static_argnums=1)


def test_fsdp_tp_forward_matches_unsharded(tmp_path):
    directory = build_hf("MBartConfig", "MBartForConditionalGeneration", tmp_path, **SIZES, scale_embedding=True)
    ids, mask, dec = _inputs(pad=1)
    apply, params = jf.pure(jf.load(directory))
    reference = np.asarray(_FORWARD(params, apply, ids, mask, dec))
    mesh, rules = mesh_for("fsdp_tp", (2, 4)), shd.PRESETS["fsdp_tp"]
    model = jf.load(directory, mesh=mesh, rules=rules)
    sharded = model_params(model)
    for name, axes in SPLITS.items():
        x, ways = sharded[name], int(np.prod([mesh.shape[a] for a in axes]))
        assert ways > 1 and all(s.data.size * ways == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = np.asarray(_FORWARD(tree, apply, *jf.shard_batch((ids, mask, dec))))
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
