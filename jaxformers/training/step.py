"""`make_train_step`: a jitted, pure `train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch)`.

    optimizer, schedule = create_optimizer(2e-5, num_train_steps=1000, warmup_ratio=0.1, weight_decay=0.01)
    state = TrainState.create(model, optimizer, seed=0)
    train_step, eval_step = make_train_step(model, optimizer, schedule=schedule)
    for batch in batches:                       # dicts of arrays: input_ids, attention_mask, labels, ...
        state, metrics = train_step(state, batch)

The step closes over the model's structure, never its parameter values: everything that changes is in `state`.
Dropout is on in `train_step` (key = `fold_in(state.rng, state.step)`) and off in `eval_step`. Sharding follows the
state: parameters loaded onto a mesh (`from_pretrained(..., mesh=, rules=)`) keep their shardings after every step,
and a batch placed with `jf.shard_batch` is split over the data axes, so the same code runs replicated, DP, FSDP or
FSDP+TP. Meshes from `jax.make_mesh` (Explicit axes) work too: see `core.sharding.auto_mesh`.
Dropout under sharding draws the masks an unsharded run draws: the key is replicated and every mask is generated
for the global activation shape, so the partitioned program computes the same bits, only split over the devices
(with JAX's default `jax_threefry_partitionable=True` each device computes just its slice; with False the masks
are equal too, but their generation is not split: more work per device, and an all-gather). A run resumed on
another mesh draws the same masks.
Mixed precision: load the model with `Options(dtype="bfloat16")` (fp32 master weights, bf16 compute), or
pass `compute_dtype="bfloat16"` here to cast the parameters inside the step; gradients and updates stay fp32.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import numpy as np
import jax.numpy as jnp
import optax
from flax import nnx

from jaxformers.core import sharding as shd
from jaxformers.core.functional import pure
from jaxformers.training import losses
from jaxformers.training.state import TrainState, merge_params

_CONTROL = {"self", "deterministic", "dropout_rng", "cache", "output_hidden_states", "logits_to_keep"}


def model_input_names(model: nnx.Module) -> frozenset[str]:
    """The batch keys the model's `__call__` takes (labels only where the head itself uses them, as seq2seq)."""
    params = inspect.signature(type(model).__call__).parameters
    return frozenset(n for n, p in params.items() if n not in _CONTROL and p.kind != p.VAR_KEYWORD)


def _with_compute_dtype(model: nnx.Module, dtype) -> nnx.Module:
    """A copy of `model` whose layers compute in `dtype` (parameters untouched: the step keeps fp32 masters)."""
    if dtype is None:
        return model
    model = nnx.clone(model)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and isinstance(getattr(node, "dtype", None), np.dtype):
            node.dtype = np.dtype(dtype)
    return model


def _cast(params, dtype):
    if dtype is None:
        return params
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def _sharding(x):
    return getattr(x, "sharding", None)


class _ShardedJit:
    """`jax.jit(fn, donate_argnums=...)` whose output state keeps the input state's shardings (compiled once per
    sharding layout), so FSDP/TP parameters never drift to a layout the compiler chose.

    Arrays on a mesh with Explicit axes (`jax.make_mesh`'s default) are relabelled for its Auto twin, without a copy,
    and a `jax.set_mesh` context with Explicit axes is entered as its Auto twin (`core.sharding.auto_mesh` says why).
    """

    def __init__(self, fn: Callable, donate: bool, returns_state: bool):
        self._fn, self._donate, self._returns_state, self._compiled = fn, donate, returns_state, {}

    def __call__(self, state, batch):
        state, batch = shd.to_auto((state, batch))
        with shd.auto_context():
            return self._jitted(state)(state, batch)

    def _jitted(self, state):
        """The jitted step for this state's sharding layout (built once per layout)."""
        shardings = jax.tree.map(_sharding, state)
        key = tuple(jax.tree.leaves(shardings, is_leaf=lambda x: x is None))
        jitted = self._compiled.get(key)
        if jitted is None:
            known = all(s is not None for s in key)
            out = ((shardings, None) if self._returns_state else None) if known else None
            jitted = jax.jit(self._fn, out_shardings=out, donate_argnums=(0,) if self._donate else ())
            self._compiled[key] = jitted
        return jitted

    def lower(self, state, batch):
        """Lower without running, exactly as a call compiles it (same output shardings, same donation): for
        ahead-of-time compilation and memory/cost analysis. `state` and `batch` may be `jax.ShapeDtypeStruct`s
        carrying shardings."""
        state, batch = shd.to_auto((state, batch))
        with shd.auto_context():
            return self._jitted(state).lower(state, batch)


def make_train_step(model: nnx.Module, optimizer: optax.GradientTransformation, loss: Callable | str = "auto", *,
                    schedule: Callable | None = None, compute_dtype=None, donate: bool = True,
                    merge_fn: Callable | None = None):
    """Build `(train_step, eval_step)` for `model` (any head with a loss: `losses.for_model`) and `optimizer`.

    loss: "auto" (the head's loss), or `fn(outputs, batch) -> (loss, stats)` (`stats`: sums such as `loss_sum`,
      `count`, `correct`).
    schedule: the optimizer's learning-rate schedule, reported as `metrics["learning_rate"]`.
    compute_dtype: cast floating parameters to this dtype inside the step (fp32 master weights kept in `state`).
    donate: reuse the input state's buffers for the output state (the input state is invalid afterwards).
    merge_fn: `fn(params, frozen) -> full parameter tree` the model is applied with (default: the union of both;
      adapters such as LoRA pass a function that folds their trainable factors into the frozen weights).

    train_step(state, batch) -> (state, metrics): metrics has `loss`, `grad_norm`, the loss's stats and
      `learning_rate` (when `schedule` is given), as device scalars (convert with `float()` when logging).
    eval_step(state, batch) -> stats (`loss_sum`, `count`, `correct`, ...: sums to add over batches).
    """
    apply, _ = pure(_with_compute_dtype(model, compute_dtype))
    loss_fn = losses.for_model(model) if loss == "auto" else loss
    if not callable(loss_fn):
        raise TypeError(f"loss must be 'auto' or fn(outputs, batch) -> (loss, stats), got {loss!r}")
    inputs = model_input_names(model)
    merge = merge_params if merge_fn is None else merge_fn

    def compute_loss(params, frozen, batch, key):
        full = _cast(merge(params, frozen), compute_dtype)
        kwargs = {k: v for k, v in batch.items() if k in inputs}
        outputs = apply(full, **kwargs, deterministic=key is None, dropout_rng=key)
        value, stats = loss_fn(outputs, batch)
        return value.astype(jnp.float32), stats

    def train_step(state: TrainState, batch: dict):
        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (value, stats), grads = grad_fn(state.params, state.frozen, batch, state.dropout_key())
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **stats}
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(_update_count(opt_state, state.step)), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state: TrainState, batch: dict):
        _, stats = compute_loss(state.params, state.frozen, batch, None)
        return stats

    return _ShardedJit(train_step, donate, True), _ShardedJit(eval_step, False, False)


def _update_count(opt_state, step):
    """Optimizer updates taken so far (MultiSteps counts micro-steps in `mini_step`, updates in `gradient_step`)."""
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.gradient_step
    return step


def make_predict_step(model: nnx.Module, compute_dtype=None, merge_fn: Callable | None = None):
    """A jitted `predict_step(state, batch) -> outputs` (dropout off): logits for metrics such as F1."""
    apply, _ = pure(_with_compute_dtype(model, compute_dtype))
    inputs = model_input_names(model)
    merge = merge_params if merge_fn is None else merge_fn

    def predict_step(state: TrainState, batch: dict):
        full = _cast(merge(state.params, state.frozen), compute_dtype)
        return apply(full, **{k: v for k, v in batch.items() if k in inputs})

    return _ShardedJit(predict_step, False, False)
