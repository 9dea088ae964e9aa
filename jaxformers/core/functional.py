"""`pure(model)`: the functional façade for research code (apply function + a plain params pytree)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx


def pure(model: nnx.Module) -> tuple[Callable, dict]:
    """Split a model into `apply(params, *args, **kwargs)` and `params`, a nested dict of jax.Arrays.

    `apply` rebuilds the module from `params` on every call (a trace-time cost only under jit), so it composes with
    `jax.jit`, `jax.grad`, `jax.vmap` and optax exactly like any pure function.
    """
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    treedef = jax.tree.structure(params)
    leaf_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    flat = dict(nnx.to_flat_state(state))
    variables = [flat[tuple(k.key for k in path)] for path in leaf_paths]

    def apply(params, *args, **kwargs):
        leaves = treedef.flatten_up_to(params)
        rebuilt = nnx.from_flat_state(
            [(tuple(k.key for k in p), var.replace(value=x)) for p, var, x in zip(leaf_paths, variables, leaves)]
        )
        return nnx.merge(graphdef, rebuilt)(*args, **kwargs)

    return apply, params
