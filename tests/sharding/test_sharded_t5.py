"""T5 (v1.1-style: gated-GELU, untied head, more decoder than encoder layers) loaded onto 8 CPU devices under
FSDP+TP (fsdp = 2 x tp = 4): the sharded forward equals the unsharded one, with the big matrices (attention heads,
the feed-forward, the shared embedding and the LM head) really split."""

from __future__ import annotations

import jax
import numpy as np
from sharding_helpers import mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params

# d_kv * num_heads = 128 != d_model = 64; every sharded size divisible by fsdp = 2 and tp = 4
SIZES = dict(vocab_size=96, d_model=64, d_kv=16, d_ff=128, num_heads=8, num_layers=2, num_decoder_layers=3,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)  # fmt: skip
_E, _D = "encoder.block.block.", "decoder.block.block."
SPLITS = {  # parameter -> the mesh axes that split it under FSDP_TP
    _E + "SelfAttention.q.kernel": ("fsdp", "tp"), _E + "SelfAttention.o.kernel": ("fsdp", "tp"),
    _E + "DenseReluDense.wi_0.kernel": ("fsdp", "tp"), _D + "EncDecAttention.k.kernel": ("fsdp", "tp"),
    _D + "DenseReluDense.wo.kernel": ("fsdp", "tp"), "shared.embedding": ("fsdp", "tp"),
    "lm_head.kernel": ("fsdp", "tp"), "decoder.relative_attention_bias.embedding": ("tp",),
}  # fmt: skip


def _build(directory):
    """A tiny random HF T5 with random norm weights and its own LM head (as Flan-T5 ships: transformers 5 ties a
    fresh model's head whatever the config says), saved at `directory`."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**SIZES)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + 1.0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(SIZES["vocab_size"], SIZES["d_model"]))
    model.save_pretrained(directory)
    return directory


def _forward(params, apply, ids, mask, dec, dec_mask):
    return apply(params, ids, mask, dec, dec_mask).logits


_FORWARD = jax.jit(_forward, static_argnums=1)


def test_sharded_t5_matches_unsharded(tmp_path):
    directory = _build(tmp_path / "t5")
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 96, (8, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < rng.randint(4, 13, (8, 1))).astype(np.int32)  # right-padded sources
    dec = rng.randint(0, 96, (8, 5)).astype(np.int32)
    dec_mask = np.ones_like(dec)
    dec_mask[::3, 3:] = 0
    model = jf.load(directory)
    assert model.lm_head is not None
    apply, params = jf.pure(model)
    reference = np.asarray(_FORWARD(params, apply, ids, mask, dec, dec_mask))
    mesh, rules = mesh_for("fsdp_tp", (2, 4)), shd.FSDP_TP
    model = jf.load(directory, mesh=mesh, rules=rules)
    sharded = model_params(model)
    for name, axes in SPLITS.items():
        x, ways = sharded[name], int(np.prod([mesh.shape[a] for a in axes]))
        assert ways > 1 and all(s.data.size * ways == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = np.asarray(_FORWARD(tree, apply, *jf.shard_batch((ids, mask, dec, dec_mask))))
    # reductions split over devices add in another order: float32 noise, relative to the logits' scale
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
