"""RoBERTa and XLM-RoBERTa loaded onto 8 CPU devices under FSDP and FSDP+TP: the sharded forward equals the
unsharded one, with the big matrices really split (sizes that fsdp = 8, or fsdp = 2 x tp = 4, divide)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sharding_helpers import build_hf, mesh_for

import jaxformers as jf
from jaxformers.core import sharding as shd
from jaxformers.loading import model_params

SIZES = dict(vocab_size=96, hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=2,
             max_position_embeddings=40, type_vocab_size=1)  # fmt: skip
_L = "roberta.encoder.layer.block."
# case -> (HF config class, HF model class, config overrides, output, {preset: {parameter: mesh axes splitting it}})
CASES = {
    "roberta-mlm": ("RobertaConfig", "RobertaForMaskedLM", {}, "logits", {
        "fsdp": {_L + "attention.query.kernel": ("fsdp",), _L + "intermediate.kernel": ("fsdp",),
                 "roberta.embeddings.word_embeddings.embedding": ("fsdp",), "lm_head.bias": ("fsdp",)},
        "fsdp_tp": {_L + "attention.query.kernel": ("fsdp", "tp"), _L + "attention.output.kernel": ("fsdp", "tp"),
                    _L + "output.kernel": ("fsdp", "tp"), "lm_head.dense.kernel": ("fsdp", "tp"),
                    "roberta.embeddings.word_embeddings.embedding": ("fsdp", "tp"), "lm_head.bias": ("tp",)},
    }),
    "xlm-roberta-classifier": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification",
                               dict(pad_token_id=3, num_labels=3), "logits", {
        "fsdp_tp": {_L + "attention.value.kernel": ("fsdp", "tp"), _L + "intermediate.kernel": ("fsdp", "tp"),
                    "classifier.dense.kernel": ("fsdp", "tp"), "classifier.out_proj.kernel": ("tp",)},
    }),
}  # fmt: skip
RUNS = [("roberta-mlm", "fsdp", (8,)), ("roberta-mlm", "fsdp_tp", (2, 4)),
        ("xlm-roberta-classifier", "fsdp_tp", (2, 4))]  # fmt: skip


def _inputs(pad: int, seed: int = 0):
    """8 rows of 12 tokens (never the pad id), padded with it: right-padded rows, then left-padded ones."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(4, SIZES["vocab_size"], (8, 12)).astype(np.int32)
    n = rng.randint(4, 13, (8, 1))
    slot = np.arange(12)[None, :]
    mask = np.where(np.arange(8)[:, None] < 4, slot < n, slot >= 12 - n).astype(np.int32)
    return np.where(mask == 1, ids, pad).astype(np.int32), mask


def _forward(params, apply, ids, mask, key):
    return apply(params, ids, mask)[key]


_FORWARD = jax.jit(_forward, static_argnums=(1, 4))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    built = {}

    def get(case):
        if case not in built:
            config_class, model_class, overrides, _, _ = CASES[case]
            built[case] = build_hf(config_class, model_class, tmp_path_factory.mktemp(case), **SIZES, **overrides)
        return built[case]

    return get


@pytest.mark.parametrize("case,preset,shape", RUNS, ids=[f"{c}-{p}-{s}" for c, p, s in RUNS])
def test_sharded_forward_matches_unsharded(checkpoints, case, preset, shape):
    _, _, overrides, key, splits = CASES[case]
    directory = checkpoints(case)
    ids, mask = _inputs(overrides.get("pad_token_id", 1))
    apply, params = jf.pure(jf.load(directory))
    reference = np.asarray(_FORWARD(params, apply, ids, mask, key))
    mesh, rules = mesh_for(preset, shape), shd.PRESETS[preset]
    model = jf.load(directory, mesh=mesh, rules=rules)
    sharded = model_params(model)
    for name, axes in splits[preset].items():
        x, ways = sharded[name], int(np.prod([mesh.shape[a] for a in axes]))
        assert ways > 1 and all(s.data.size * ways == x.size for s in x.addressable_shards), (name, x.sharding)
    apply, tree = jf.pure(model)
    with jf.use_mesh(mesh, rules):
        out = np.asarray(_FORWARD(tree, apply, *jf.shard_batch((ids, mask)), key))
    if out.ndim == 3:  # per-token logits: padding slots are not compared
        out, reference = out[mask == 1], reference[mask == 1]
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
