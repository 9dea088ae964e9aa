"""Every loss of `jaxformers.training.losses` equals transformers' own `loss` on the same tiny model and batch.

transformers computes the loss when a head is given labels; ours is computed from our model's outputs (one jitted
`make_predict_step` forward per model, labels passed only where the head takes them, as the train step does) by
`losses.for_model(model)`. Both the scalar the gradient follows and the exact-evaluation sums (`loss_sum / count`)
must match within 1e-5. Batches carry what real data carries: padding, -100 labels, answers outside the sequence.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optax
import pytest
import torch
import transformers

import jaxformers as jf
from hf_helpers import randomize_vectors
from jaxformers.training import TrainState, losses, make_predict_step, model_input_names

B, T, V = 3, 8, 97
RNG = np.random.RandomState(0)
IDS = RNG.randint(3, V, (B, T)).astype(np.int32)
MASK = (np.arange(T)[None] < np.array([[T], [6], [4]])).astype(np.int32)  # right-padded rows of 8, 6 and 4 tokens
IDS = np.where(MASK == 1, IDS, 0).astype(np.int32)


def hf_loss(ref, problem_type=None, **batch) -> float:
    """transformers' loss (`problem_type` set on the config for this call only: HF writes its inferred problem type
    into the shared model's config on the first labelled call)."""
    batch = {k: np.asarray(v, np.int64) if np.issubdtype(np.asarray(v).dtype, np.integer) else v
             for k, v in batch.items()}  # fmt: skip
    ref.config.problem_type = problem_type
    try:
        with torch.no_grad():
            return float(ref(**{k: torch.tensor(np.asarray(v)) for k, v in batch.items()}).loss)
    finally:
        ref.config.problem_type = None


_PREDICT = {}


def ours(model, batch, loss_fn=None):
    """Our (loss, loss_sum / count) from our model's jitted forward on `batch` (compiled once per model)."""
    if id(model) not in _PREDICT:
        _PREDICT[id(model)] = (model, make_predict_step(model), TrainState.create(model, optax.sgd(0.0)))
    _, predict, state = _PREDICT[id(model)]
    inputs = model_input_names(model)
    outputs = predict(state, {k: v for k, v in batch.items() if k in inputs})
    loss, stats = (loss_fn or losses.for_model(model))(outputs, batch)
    return float(loss), float(stats["loss_sum"]) / float(stats["count"])


def check(model, ref, batch, hf_batch=None, problem_type=None, loss_fn=None):
    loss, mean = ours(model, batch, loss_fn)
    expected = hf_loss(ref, problem_type, **(batch if hf_batch is None else hf_batch))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def bert(tiny_hf):
    """`get(hf_class, **overrides) -> (our model, transformers model)` for tiny BERT heads, loaded once each."""
    cache = {}

    def get(hf_class, **overrides):
        key = (hf_class, tuple(sorted(overrides.items())))
        if key not in cache:
            directory, ref = tiny_hf("bert", hf_class, **overrides)
            cache[key] = (jf.load(directory), ref)
        return cache[key]

    return get


def test_sequence_classification_single_label(bert):
    model, ref = bert("BertForSequenceClassification")
    labels = np.array([2, -100, 1])  # -100: an unlabelled row, ignored by both
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels[:, None]})  # [B, 1], flattened


def test_sequence_classification_multi_label_from_float_labels_and_problem_type(bert):
    model, ref = bert("BertForSequenceClassification")
    labels = (RNG.rand(B, 3) > 0.5).astype(np.float32)
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})  # inferred from float labels
    cfg = dataclasses.replace(model.config, extra={**model.config.extra, "problem_type": "multi_label_classification"})
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels},
          problem_type="multi_label_classification", loss_fn=losses.sequence_classification_loss(cfg))


def test_sequence_classification_regression(bert):
    model, ref = bert("BertForSequenceClassification", num_labels=1)
    labels = RNG.randn(B).astype(np.float32)
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})
    # problem_type="regression" with 3 outputs: MSE over every (example, output) pair
    model3, ref3 = bert("BertForSequenceClassification")
    cfg = dataclasses.replace(model3.config, extra={**model3.config.extra, "problem_type": "regression"})
    labels3 = RNG.randn(B, 3).astype(np.float32)
    check(model3, ref3, {"input_ids": IDS, "attention_mask": MASK, "labels": labels3}, problem_type="regression",
          loss_fn=losses.sequence_classification_loss(cfg))


def test_token_classification(bert):
    model, ref = bert("BertForTokenClassification")
    labels = RNG.randint(0, 3, (B, T))
    labels = np.where(MASK == 1, labels, -100)
    labels[:, 0] = -100  # [CLS]
    labels[0, 3] = -100  # a sub-word after the first
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})


def test_question_answering_with_positions_outside_the_sequence(bert):
    """Positions beyond the sequence are clamped to T and ignored; negative ones clamp to 0 and count (HF's rule);
    `[B, 1]` positions are squeezed."""
    model, ref = bert("BertForQuestionAnswering")
    start = np.array([[1], [T + 5], [3]])
    end = np.array([[4], [5], [-3]])
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "start_positions": start, "end_positions": end})


def test_masked_lm(bert):
    model, ref = bert("BertForMaskedLM")
    labels = np.full((B, T), -100)
    for b, cols in enumerate([(1, 5), (2,), (0, 3)]):
        labels[b, list(cols)] = IDS[b, list(cols)]
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})


@pytest.mark.parametrize("name,hf_class", [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_causal_lm_with_ignored_labels_and_padding(tiny_hf, name, hf_class):
    directory, ref = tiny_hf(name, hf_class)
    model = jf.load(directory)
    labels = np.where(MASK == 1, IDS, -100)
    # default labels: input_ids with padding ignored
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK}, {"input_ids": IDS, "attention_mask": MASK,
                                                                    "labels": labels})
    labels[1, 2] = -100
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})


SEQ2SEQ = {
    "t5": ("T5Config", "T5ForConditionalGeneration",
           dict(vocab_size=V, d_model=48, d_kv=10, d_ff=37, num_heads=6, num_layers=2, decoder_start_token_id=0,
                relative_attention_num_buckets=16, relative_attention_max_distance=12)),
    "bart": ("BartConfig", "BartForConditionalGeneration",
             dict(vocab_size=V, d_model=48, encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=37,
                  decoder_ffn_dim=37, max_position_embeddings=16, encoder_layers=2, decoder_layers=1)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_seq2seq_labels(tmp_path, name):
    """Labels (-100 after each target's end) are shifted into the decoder inputs and scored, as transformers."""
    config_class, hf_class, kwargs = SEQ2SEQ[name]
    torch.manual_seed(0)
    ref = getattr(transformers, hf_class)(getattr(transformers, config_class)(**kwargs)).eval()
    randomize_vectors(ref)
    ref.save_pretrained(tmp_path)
    model = jf.load(tmp_path)
    labels = RNG.randint(3, V, (B, 5))
    labels[1, 3:] = -100
    labels[2, 1:] = -100
    check(model, ref, {"input_ids": IDS, "attention_mask": MASK, "labels": labels})
