"""`make_train_step` against PyTorch and against its own promises, on one tiny BERT sequence classifier.

- AdamW + linear decay + clipping: two steps equal `torch.optim.AdamW` (weight decay on the parameters transformers'
  Trainer decays) + `get_linear_schedule_with_warmup` + `clip_grad_norm_` on the transformers model, within 1e-5.
- Schedules equal transformers' (linear, cosine, constant with warmup, warmup_ratio rounded up).
- Dropout: the same (seed, step) gives the same masks, another step or seed other masks; eval_step never drops.
- Accumulation (MultiSteps, k=2) over two equal halves equals one step on the whole batch.
- trainable= leaves frozen parameters bit-identical, and the optimizer state covers the trainable ones only.
- compute_dtype="bfloat16": fp32 master parameters, loss and gradient norm within a stated bound of fp32.
- donate: the input state's buffers are reused (deleted), and the step can be called again and again.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import jaxformers as jf
from jaxformers.training import TrainState, create_optimizer, losses, make_schedule, make_train_step
from jaxformers.training.state import flat_paths, update_model

B, T, V = 4, 8, 97
LR, WD, MAX_NORM, N_STEPS = 1e-2, 0.1, 0.5, 4
ONE_LAYER = dict(num_hidden_layers=1)  # the step's compile time grows with depth; one layer shows every property
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# bf16 compute vs fp32, relative: measured at most 1.1e-4 (loss) and 1.9e-3 (gradient norm) over six batches of
# this shape (the model loaded with dtype="bfloat16"); the bounds leave about 10x.
BF16_LOSS_RTOL, BF16_GRAD_NORM_RTOL = 1e-3, 2e-2


def make_batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, V, (B, T)).astype(np.int32)
    mask = (np.arange(T)[None] < np.array([[T], [6], [T], [5]])).astype(np.int32)
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask, "labels": np.array([0, 2, 1, 2])}


def half(batch, i):
    return {k: v[i * B // 2 : (i + 1) * B // 2] for k, v in batch.items()}


def new_state(model, optimizer, **kwargs) -> TrainState:
    """A TrainState owning its buffers: `TrainState.create` shares the model's own parameter buffers, so a donated
    step would delete the parameters of the module-shared models here (test_donated_step_leaves_the_model_usable)."""
    return jax.tree.map(jnp.copy, TrainState.create(model, optimizer, **kwargs))


def torch_batch(batch):
    return {k: torch.tensor(np.asarray(v, np.int64)) for k, v in batch.items()}


@pytest.fixture(scope="module")
def setup(tiny_hf):
    """The transformers model and ours without dropout, the AdamW optimizer (linear decay over N_STEPS, no warmup,
    clipping at MAX_NORM) and its compiled train step, the batch, and the same weights with dropout (`dir`: the
    checkpoint with BERT's default rates, built from the same seed)."""
    directory, ref = tiny_hf("bert", "BertForSequenceClassification", **ONE_LAYER, **NO_DROPOUT)
    model = jf.load(directory)
    optimizer, schedule = create_optimizer(LR, N_STEPS, weight_decay=WD, max_grad_norm=MAX_NORM)
    train_step, _ = make_train_step(model, optimizer, schedule=schedule)
    return {"dir": tiny_hf("bert", "BertForSequenceClassification", **ONE_LAYER)[0], "nodrop_dir": directory,
            "ref": ref, "model": model, "optimizer": optimizer, "schedule": schedule, "train_step": train_step,
            "batch": make_batch()}  # fmt: skip


def torch_adamw(ref, batch, steps):
    """`steps` optimizer steps as transformers' Trainer takes them: AdamW with its decay groups, the linear schedule,
    gradient clipping. Returns (model, [(loss, grad_norm, lr)])."""
    model = copy.deepcopy(ref)  # eval mode: no dropout, as our model here
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = dict(model.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": WD},
              {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, N_STEPS)
    log = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**torch_batch(batch)).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        log.append((float(loss.detach()), float(norm), sched.get_last_lr()[0]))
        opt.step()
        sched.step()
    return model, log


def test_adamw_steps_equal_pytorch(setup, tmp_path):
    state = new_state(setup["model"], setup["optimizer"])
    log = []
    for _ in range(2):
        previous = state
        state, metrics = setup["train_step"](state, setup["batch"])
        log.append(tuple(float(metrics[k]) for k in ("loss", "grad_norm", "learning_rate")))
        assert all(x.is_deleted() for x in jax.tree.leaves(previous.params))  # donated, then called again
    ref, ref_log = torch_adamw(setup["ref"], setup["batch"], 2)
    assert ref_log[0][1] > MAX_NORM and ref_log[1][1] > MAX_NORM  # clipping is active on both steps
    np.testing.assert_allclose(log, ref_log, rtol=1e-5)
    assert int(state.step) == 2
    update_model(nnx.clone(setup["model"]), state).save_pretrained(tmp_path)
    ours = load_file(tmp_path / "model.safetensors")
    theirs = {n: p.detach().numpy() for n, p in ref.named_parameters()}
    assert sorted(ours) == sorted(theirs)
    before = dict(setup["ref"].named_parameters())
    for name, value in theirs.items():
        # Attention key biases get an exactly zero gradient (softmax ignores a per-query constant) and no decay.
        if not name.endswith("key.bias"):
            assert not np.allclose(value, before[name].detach().numpy(), atol=1e-3), f"{name} did not train"
        np.testing.assert_allclose(ours[name], value, atol=1e-5, err_msg=name)


def hf_lrs(make, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = make(opt)
    return [LR * sched.lr_lambdas[0](s) for s in range(steps)]


def test_schedules_equal_transformers():
    steps = np.arange(11)
    cases = [
        (make_schedule(LR, 10, warmup_steps=3), lambda o: transformers.get_linear_schedule_with_warmup(o, 3, 10)),
        (make_schedule(LR, 10, warmup_ratio=0.25, kind="cosine"),  # ceil(2.5) = 3 warmup steps, as transformers
         lambda o: transformers.get_cosine_schedule_with_warmup(o, 3, 10)),
        (make_schedule(LR, 10, warmup_steps=4, kind="constant_with_warmup"),
         lambda o: transformers.get_constant_schedule_with_warmup(o, 4)),
        (make_schedule(LR, 10, kind="linear"), lambda o: transformers.get_linear_schedule_with_warmup(o, 0, 10)),
    ]  # fmt: skip
    for ours, theirs in cases:
        np.testing.assert_allclose([float(ours(s)) for s in steps], hf_lrs(theirs, len(steps)), rtol=1e-6, atol=1e-12)


def test_dropout_keyed_by_seed_and_step_and_off_in_eval(setup):
    model = jf.load(setup["dir"])  # the checkpoint's dropout rates (0.1)
    train_step, eval_step = make_train_step(model, optax.sgd(0.0))  # lr 0: every step sees the same parameters
    batch = setup["batch"]
    state = new_state(model, optax.sgd(0.0), seed=1)
    losses = []
    for _ in range(2):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    again = [float(train_step(new_state(model, optax.sgd(0.0), seed=s), batch)[1]["loss"]) for s in (1, 2)]
    assert again[0] == losses[0]  # same seed, same step: the same masks
    assert losses[1] != losses[0] and again[1] != losses[0]  # another step or another seed: other masks
    stats = eval_step(state, batch)
    with torch.no_grad():
        expected = float(setup["ref"](**torch_batch(batch)).loss)  # transformers in eval mode
    np.testing.assert_allclose(float(stats["loss_sum"]) / float(stats["count"]), expected, rtol=1e-5)
    assert all(abs(x - expected) > 1e-4 for x in losses)  # training did drop


def test_gradient_accumulation_equals_one_full_batch_step(setup):
    model, batch = setup["model"], setup["batch"]
    full, _ = setup["train_step"](new_state(model, setup["optimizer"]), batch)
    optimizer, schedule = create_optimizer(LR, N_STEPS, weight_decay=WD, max_grad_norm=MAX_NORM,
                                           gradient_accumulation_steps=2)  # fmt: skip
    step, _ = make_train_step(model, optimizer, schedule=schedule)
    state = new_state(model, optimizer)
    initial = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, half(batch, 0))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), initial)  # no update yet
    np.testing.assert_allclose(float(metrics["learning_rate"]), LR, rtol=1e-6)
    state, _ = step(state, half(batch, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.params, full.params)


def test_trainable_regex_freezes_the_rest(setup):
    model = setup["model"]
    state = TrainState.create(model, setup["optimizer"], trainable=r"classifier")
    assert set(flat_paths(state.params)) == {"classifier/kernel", "classifier/bias"}
    step, _ = make_train_step(model, setup["optimizer"], donate=False)
    new, _ = step(state, setup["batch"])
    jax.tree.map(np.testing.assert_array_equal, new.frozen, state.frozen)  # not donated: the input is still alive
    _, all_params = jf.pure(model)
    frozen = flat_paths(new.frozen)
    assert len(frozen) + 2 == len(flat_paths(all_params))
    for path, value in flat_paths(all_params).items():
        if path in frozen:
            np.testing.assert_array_equal(np.asarray(frozen[path]), np.asarray(value))
    kernel = np.asarray(state.params["classifier"]["kernel"])
    assert not np.allclose(np.asarray(new.params["classifier"]["kernel"]), kernel)  # the trainable part trained
    moments = [x for x in jax.tree.leaves(new.opt_state) if x.ndim > 0]  # Adam's mu and nu: trainable shapes only
    expected = sorted([x.shape for x in jax.tree.leaves(new.params)] * 2)
    assert sorted(x.shape for x in moments) == expected


def test_bfloat16_compute_keeps_fp32_master_params(setup):
    """The forward runs in bf16 (the loss sees bf16 logits), the state keeps fp32 parameters, and loss and gradient
    norm stay within the stated bounds of fp32."""
    model, batch = setup["model"], setup["batch"]
    _, fp32 = setup["train_step"](new_state(model, setup["optimizer"]), batch)
    seen = []

    def loss(outputs, batch):
        seen.append(outputs.logits.dtype)  # at trace time
        return losses.for_model(model)(outputs, batch)

    step, _ = make_train_step(model, setup["optimizer"], loss, schedule=setup["schedule"], compute_dtype="bfloat16")
    state, bf16 = step(new_state(model, setup["optimizer"]), batch)
    assert seen == [jnp.bfloat16]
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    assert bf16["loss"].dtype == np.float32
    np.testing.assert_allclose(float(bf16["loss"]), float(fp32["loss"]), rtol=BF16_LOSS_RTOL)
    np.testing.assert_allclose(float(bf16["grad_norm"]), float(fp32["grad_norm"]), rtol=BF16_GRAD_NORM_RTOL)


def test_donated_step_leaves_the_model_usable(setup):
    """After training from `TrainState.create(model, ...)` with donation (the default), the model itself still works
    (for evaluation, or `update_model` + `save_pretrained`)."""
    model = jf.load(setup["nodrop_dir"])
    state = TrainState.create(model, setup["optimizer"])
    setup["train_step"](state, setup["batch"])
    for leaf in jax.tree.leaves(jf.pure(model)[1]):
        np.asarray(leaf)  # RuntimeError: Array has been deleted
