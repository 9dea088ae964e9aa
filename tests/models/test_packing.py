"""Packed sequences in decoder models: `segment_ids` make a row of several documents behave as the documents alone.

Documents are packed back to back in a row (`segment_ids` 1, 2, ... per document, 0 for padding); each token's
logits must equal those of its document run alone (through jaxformers and through transformers on the same
weights), and the causal LM loss over the packed batch must equal transformers' loss over the separate documents.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
import torch

import jaxformers as jf
from jaxformers.training import TrainState, losses, make_predict_step

CASES = [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel"), ("mistral", "MistralForCausalLM")]
# Mistral is Llama's code plus a sliding window: the logits test covers it; the rest runs on the two code paths.
ROPE_AND_LEARNED = pytest.mark.parametrize("case", CASES[:2], ids=[c[1] for c in CASES[:2]], indirect=True)
# Row 0: three documents and two padding slots; row 1: two documents filling the row (mistral's window of 3 is
# shorter than most documents, so the window and the segments must combine).
LENGTHS = ((5, 3, 4), (9, 5))
T = 14


def packed_batch(seed: int = 0):
    """`(ids [2, T], segment_ids [2, T], docs)`: docs[b] lists the (start, ids) of row b's documents."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((len(LENGTHS), T), np.int32)
    seg = np.zeros((len(LENGTHS), T), np.int32)
    docs = []
    for b, lengths in enumerate(LENGTHS):
        start, row = 0, []
        for d, n in enumerate(lengths):
            doc = rng.randint(3, 97, n).astype(np.int32)
            ids[b, start : start + n], seg[b, start : start + n] = doc, d + 1
            row.append((start, doc))
            start += n
        docs.append(row)
    return ids, seg, docs


def separate_batch(docs):
    """Every document in its own right-padded row: `(ids [n_docs, max_len], attention_mask)`."""
    flat = [doc for row in docs for _, doc in row]
    ids = np.zeros((len(flat), max(map(len, flat))), np.int32)
    mask = np.zeros_like(ids)
    for i, doc in enumerate(flat):
        ids[i, : len(doc)], mask[i, : len(doc)] = doc, 1
    return ids, mask


def hf_logits(ref, ids, mask=None, position_ids=None):
    kw = {"input_ids": torch.tensor(ids).long()}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask).long()
    if position_ids is not None:
        kw["position_ids"] = torch.tensor(position_ids).long()
    with torch.no_grad():
        return ref(**kw).logits.numpy()


@jax.jit
def logits(model, ids, **kw):
    """One compiled forward per input signature (eager calls of the scanned stack are far slower)."""
    return model(ids, **kw).logits


@pytest.fixture(scope="module", params=CASES, ids=[c[1] for c in CASES])
def case(request, tiny_hf):
    """(model, transformers reference, packed batch, our outputs on it), shared by the tests of one architecture.
    The packed forward is the training code path: `make_predict_step` hands the batch's `segment_ids` to the model
    as `make_train_step` does."""
    directory, ref = tiny_hf(*request.param)
    model = jf.load(directory)
    ids, seg, docs = packed_batch()
    outputs = make_predict_step(model)(TrainState.create(model, optax.sgd(0.0)), {"input_ids": ids, "segment_ids": seg})
    return model, ref, (ids, seg, docs), outputs


def test_packed_logits_equal_each_document_alone(case):
    """Each document alone = in its own right-padded row (padding is masked; test_parity checks padded rows equal
    rows alone), through jaxformers (1e-5) and transformers (parity tolerance, 1e-4 of max |logit|)."""
    model, ref, (_, _, docs), outputs = case
    packed = np.asarray(outputs.logits)
    alone_ids, alone_mask = separate_batch(docs)
    alone = np.asarray(logits(model, alone_ids, attention_mask=alone_mask))
    hf = hf_logits(ref, alone_ids, alone_mask)
    i = 0
    for b, row in enumerate(docs):
        for start, doc in row:
            got, n = packed[b, start : start + len(doc)], len(doc)
            np.testing.assert_allclose(got, alone[i, :n], atol=1e-5, rtol=1e-5)
            assert np.abs(got - hf[i, :n]).max() <= 1e-4 * np.abs(hf[i, :n]).max()
            i += 1


@ROPE_AND_LEARNED
def test_explicit_position_ids_are_used_as_given(case):
    """With `position_ids`, positions do not restart: a document keeps the ones it is given (1, 3, 5, ... from
    slot 0, not a shift that RoPE could not tell apart), as transformers on the document alone with the same ids."""
    model, ref, (ids, seg, docs), outputs = case
    restarted = np.asarray(outputs.logits)
    pos = np.broadcast_to(2 * np.arange(T, dtype=np.int32) + 1, ids.shape)
    out = np.asarray(logits(model, ids, segment_ids=seg, position_ids=pos))
    start, doc = docs[0][1]
    hf = hf_logits(ref, doc[None], position_ids=pos[:1, start : start + len(doc)])[0]
    got = out[0, start : start + len(doc)]
    assert np.abs(got - hf).max() <= 1e-4 * np.abs(hf).max()
    assert not np.allclose(got, restarted[0, start : start + len(doc)], atol=1e-3)


@ROPE_AND_LEARNED
def test_packed_loss_equals_transformers_loss_over_the_documents(case):
    """The causal LM loss of the packed batch is the token-weighted mean of transformers' loss on each document
    alone: no target crosses a document boundary and padding never counts."""
    model, ref, (ids, seg, docs), outputs = case
    loss, stats = losses.for_model(model)(outputs, {"input_ids": ids, "segment_ids": seg})
    total, count = 0.0, 0
    for row in docs:
        for _, doc in row:
            with torch.no_grad():
                hf = ref(input_ids=torch.tensor(doc[None]).long(), labels=torch.tensor(doc[None]).long()).loss
            total += float(hf) * (len(doc) - 1)
            count += len(doc) - 1
    assert float(stats["count"]) == count
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(stats["loss_sum"]) / count, total / count, rtol=1e-5, atol=1e-6)


@ROPE_AND_LEARNED
def test_segment_ids_refused_with_a_cache_or_a_bad_shape(case):
    model, _, (ids, seg, _), _ = case
    with pytest.raises(ValueError, match="segment_ids .* without a KV cache"):
        model(ids, segment_ids=seg, cache=model.init_cache(2, 20))
    with pytest.raises(ValueError, match="segment_ids shape"):
        model(ids, segment_ids=seg[:, :-1])
    with pytest.raises(TypeError, match="segment_ids must hold integers"):
        model(ids, segment_ids=seg.astype(np.float32))
