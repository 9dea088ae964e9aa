"""Training checkpoints: the `TrainState` and the trainer's own state, through Orbax's `CheckpointManager`.

    manager = CheckpointManager("out/checkpoints", save_total_limit=3, best_metric="eval_loss")
    manager.save(step, state, trainer_state, metrics={"eval_loss": 0.31})      # returns at once (async write)
    state, trainer_state = manager.restore(fresh_state)                       # the latest step, onto fresh_state's
                                                                              # shardings, after checking it matches
Layout: `<directory>/<step>/state` (Orbax PyTree: parameters, optimizer state, step, PRNG key; every process writes
its own shards) and `<directory>/<step>/trainer_state` (JSON: position in the data, best metric, log history, and a
manifest of the state's arrays).

Saves are asynchronous: `save` returns once the arrays are copied off the devices (training may then donate and
overwrite them) and the files are written in the background; `wait()` blocks until they are on disk. They are atomic:
Orbax writes into a temporary directory and renames it into place when complete, so a save interrupted at any point
(even SIGKILL) never looks like a checkpoint; the temporary leftovers are removed when a manager next opens the
directory for writing.

Retention: `save_total_limit` keeps the newest N; with `best_metric`, the best checkpoint by that metric is kept as
well, even when older (transformers' rule for `load_best_model_at_end`). Without a limit every checkpoint is kept.

Restore first reads the manifest and compares it with the state it restores into (tree paths, shapes, dtypes): a
checkpoint of another model, or of another optimizer, raises `CheckpointMismatchError` naming the first difference,
and nothing on disk is changed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_ITEMS = ("state", "trainer_state")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model or optimizer it is restored into."""


def manifest(state) -> dict[str, list]:
    """`{"params/bert/.../kernel": [shape, dtype]}` for every array of a state pytree (what a checkpoint holds)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): [list(x.shape), str(x.dtype)]
            for path, x in leaves}


def check_matches(saved: dict[str, list], current: dict[str, list], where: str) -> None:
    """Raise `CheckpointMismatchError` naming the first array where `saved` (a checkpoint's manifest) and `current`
    (the state being restored into) differ in presence, shape or dtype."""
    hint = ("resume with the model (same architecture, config and head) and the optimizer settings it was trained "
            "with (optimizer, gradient_accumulation_steps, frozen parameters), or train into a new output_dir")
    for path in sorted(saved.keys() | current.keys()):
        if path not in current:
            raise CheckpointMismatchError(f"{where} holds {path} {_describe(saved[path])}, which this model and "
                                          f"optimizer do not have: {hint}")
        if path not in saved:
            raise CheckpointMismatchError(f"{where} lacks {path} {_describe(current[path])}, which this model and "
                                          f"optimizer have: {hint}")
        if saved[path] != current[path]:
            raise CheckpointMismatchError(f"{where} holds {path} as {_describe(saved[path])} but this model and "
                                          f"optimizer have {_describe(current[path])}: {hint}")


def _describe(entry: list) -> str:
    shape, dtype = entry
    return f"{dtype}[{', '.join(map(str, shape))}]"


def _policy(save_total_limit: int | None, best_metric: str | None, greater_is_better: bool):
    if save_total_limit is None:
        return checkpoint_managers.preservation_policy.PreserveAll()
    if best_metric is None:
        return checkpoint_managers.LatestN(n=save_total_limit)
    sign = 1.0 if greater_is_better else -1.0
    best = checkpoint_managers.BestN(get_metric_fn=lambda m: sign * float(m[best_metric]), n=1,
                                     keep_checkpoints_without_metrics=False)  # fmt: skip
    return checkpoint_managers.AnyPreservationPolicy([checkpoint_managers.LatestN(n=max(save_total_limit - 1, 1)),
                                                      best])  # fmt: skip


@contextlib.contextmanager
def _quiet(active: bool):
    """Silence absl's (Orbax's) warnings inside the block when `active`."""
    logger = logging.getLogger("absl")
    level = logger.level
    if active:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CheckpointManager:
    """Saves and restores (TrainState, trainer-state dict) pairs under `directory`, one subdirectory per step.

    save_total_limit / best_metric / greater_is_better: retention (module docstring). async_save: write in the
    background. read_only: only restore (no directory is created, no leftover is removed).
    """

    def __init__(self, directory, *, save_total_limit: int | None = None, best_metric: str | None = None,
                 greater_is_better: bool = False, async_save: bool = True, read_only: bool = False):  # fmt: skip
        self.directory = Path(directory).expanduser().absolute()
        self.best_metric = best_metric
        with _quiet(read_only):  # Orbax warns that a read-only manager will not save: that is the point
            options = ocp.CheckpointManagerOptions(
                preservation_policy=_policy(save_total_limit, best_metric, greater_is_better),
                enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
                cleanup_tmp_directories=not read_only,
            )  # fmt: skip
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    @property
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, trainer_state: dict, metrics: dict | None = None) -> None:
        """Start saving `state` and `trainer_state` (JSON-ready) as checkpoint `step`; `metrics` (floats) rank it
        for best-checkpoint retention. The arrays are copied off the devices before this returns."""
        trainer_state = {**trainer_state, "manifest": manifest(state)}
        if self.best_metric is not None and (metrics is None or self.best_metric not in metrics):
            metrics = None
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), trainer_state=ocp.args.JsonSave(trainer_state))
        self._manager.save(step, args=args, metrics=metrics, force=True)

    def read_trainer_state(self, step: int) -> dict:
        """The trainer-state JSON of checkpoint `step`."""
        return self._manager.restore(step, args=ocp.args.Composite(trainer_state=ocp.args.JsonRestore()))[
            "trainer_state"]

    def restore(self, state, step: int | None = None) -> tuple[object, dict]:
        """Checkpoint `step` (default: the latest) restored into the structure and shardings of `state`, after
        checking it matches; returns (restored state, trainer state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory} has no checkpoint {step}; it has {self.steps}")
        trainer_state = self.read_trainer_state(step)
        check_matches(trainer_state["manifest"], manifest(state), f"checkpoint {self.directory / str(step)}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"], trainer_state

    def wait(self) -> None:
        """Block until every save started so far is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's threads."""
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_of(path) -> tuple[Path, int] | None:
    """(`checkpoints directory`, step) when `path` names one checkpoint (`.../checkpoints/120`), else None."""
    path = Path(path).expanduser().absolute()
    if path.name.isdigit() and (path / "trainer_state").exists():
        return path.parent, int(path.name)
    return None
