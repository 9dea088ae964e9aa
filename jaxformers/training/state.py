"""`TrainState`: everything a training step reads and writes, as one pytree of arrays (so Orbax saves it whole).

    state = TrainState.create(model, optimizer, seed=0)                 # every parameter trainable
    state = TrainState.create(model, optimizer, trainable=r"classifier")  # only matching paths train; the rest are
                                                                        # frozen and hold no optimizer state
The model's module structure is not in the state: `make_train_step(model, ...)` closes over it, and
`update_model(model, state)` writes trained parameters back into the NNX model (for `save_pretrained`).
Parameter paths are "/"-joined, as in `jf.pure(model)`'s nested dict: `bert/encoder/layers/attention/query/kernel`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxformers.core import sharding as shd
from jaxformers.core.functional import pure

Trainable = Callable[[str, Any], bool] | str | None


@struct.dataclass
class TrainState:
    """step: optimizer micro-steps taken (int32 scalar). params: trainable parameters (nested dict, fp32 master
    weights). opt_state: the optax state of `params` only. rng: raw `uint32[2]` PRNG key data (checkpointable; the
    step's dropout key is `fold_in(rng, step)`, so a resumed run draws the same masks). frozen: parameters that do
    not train (nested dict, possibly empty)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    frozen: Any = struct.field(default_factory=dict)

    @classmethod
    def create(cls, model: nnx.Module, optimizer, *, seed: int = 0, trainable: Trainable = None) -> "TrainState":
        """A fresh state for `model` (its current parameters) and an optax `optimizer`.

        trainable: None (everything trains), a regex searched in each parameter path, or `fn(path, array) -> bool`.

        Sharded parameters (a model loaded with `mesh=`): the optimizer state is built directly on the mesh, each
        per-parameter slot (Adam's `mu` / `nu`, MultiSteps' accumulated gradients) sharded like its parameter and
        the rest (step counts) replicated, as are `step` and `rng`; nothing is materialised whole on one device.
        Parameters on a mesh with Explicit axes are relabelled for its Auto twin (`core.sharding.to_auto`).
        """
        _, all_params = pure(model)
        params, frozen = split_params(shd.to_auto(all_params), trainable)
        if not jax.tree.leaves(params):
            raise ValueError(f"trainable={trainable!r} selects no parameter of {type(model).__name__}; nothing would "
                             "train. Match a parameter path such as 'classifier' (see jf.pure(model)[1])")

        def init(params):
            return jnp.zeros((), jnp.int32), optimizer.init(params), jax.random.key_data(jax.random.key(seed))

        mesh = _mesh_of(params)
        if mesh is None:
            step, opt_state, rng = init(params)
        else:
            replicated = NamedSharding(mesh, PartitionSpec())
            out = (replicated, _slot_shardings(jax.eval_shape(optimizer.init, params), params, replicated), replicated)
            step, opt_state, rng = jax.jit(init, out_shardings=out)(params)
        state = cls(step=step, params=params, opt_state=opt_state, rng=rng, frozen=frozen)
        # Commit every array to where it lives: a step's outputs are committed, so uncommitted inputs on the first
        # call would compile the step twice.
        return jax.tree.map(
            lambda x: jax.device_put(x, x.sharding, may_alias=False) if isinstance(x, jax.Array) else x, state
        )

    def dropout_key(self) -> jax.Array:
        """This step's dropout key (a new one every step, reproducible from `rng` and `step`)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def all_params(self):
        """Trainable and frozen parameters merged back into one nested dict (the model's full tree)."""
        return merge_params(self.params, self.frozen)


def _mesh_of(params) -> Mesh | None:
    """The mesh the parameters live on, or None when they are not sharded over one."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _slot_shardings(abstract_opt_state, params, replicated: NamedSharding):
    """Shardings for an optimizer state (from `jax.eval_shape(optimizer.init, params)`): a leaf whose key path ends
    with a parameter's path and has its shape (a per-parameter slot, under whatever wrappers: chain, masked,
    MultiSteps) takes that parameter's sharding; any other leaf is replicated."""
    by_path = {tuple(path): (x.shape, x.sharding) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    lengths = sorted({len(p) for p in by_path}, reverse=True)

    def pick(path, x):
        for n in lengths:
            shape, sharding = by_path.get(tuple(path[-n:]), (None, None)) if len(path) >= n else (None, None)
            if shape == x.shape and isinstance(sharding, NamedSharding):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def _predicate(trainable: Trainable) -> Callable[[str, Any], bool]:
    if trainable is None:
        return lambda path, x: True
    if isinstance(trainable, str):
        pattern = re.compile(trainable)
        return lambda path, x: pattern.search(path) is not None
    if callable(trainable):
        return trainable
    raise TypeError(f"trainable must be None, a regex string or fn(path, array) -> bool, got {type(trainable)}")


def split_params(params: dict, trainable: Trainable = None) -> tuple[dict, dict]:
    """Split a nested parameter dict into (trainable, frozen) nested dicts with disjoint leaves."""
    keep = _predicate(trainable)

    def walk(tree, prefix):
        train, frozen = {}, {}
        for k, v in tree.items():
            path = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, dict):
                t, f = walk(v, path)
                if t:
                    train[k] = t
                if f:
                    frozen[k] = f
            elif keep(path, v):
                train[k] = v
            else:
                frozen[k] = v
        return train, frozen

    return walk(params, "")


def merge_params(a: dict, b: dict) -> dict:
    """Union of two nested dicts with disjoint leaves (the inverse of `split_params`)."""
    if not b:
        return a
    if not a:
        return b
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_params(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def flat_paths(params: dict) -> dict[str, Any]:
    """`{"a/b/c": leaf}` for a nested parameter dict."""
    out = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            path = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, path)
            else:
                out[path] = v

    walk(params, "")
    return out


def update_model(model: nnx.Module, state: TrainState) -> nnx.Module:
    """Write the state's parameters (trainable and frozen) into `model` in place and return it."""
    graph_state = nnx.state(model)
    nnx.replace_by_pure_dict(graph_state, state.all_params())
    nnx.update(model, graph_state)
    return model
