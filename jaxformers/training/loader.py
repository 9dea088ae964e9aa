"""`DataLoader`: batches of tokenized features, in an order that is a pure function of (seed, epoch), padded to a
few length buckets, and placed on a mesh when one is given.

    loader = DataLoader(features, collator, batch_size=32, seed=0, mesh=mesh, rules=FSDP)
    for batch in loader.batches(epoch=0):              # dicts of numpy arrays, or global jax.Arrays on the mesh
        state, metrics = train_step(state, batch)
    loader.batches(epoch=1, start=17)                  # resume: exactly the batches 17, 18, ... of epoch 1

Order. With `shuffle`, each epoch permutes the examples with `np.random.default_rng([seed, epoch])`; with
`group_by_length` the permutation is cut into mega-batches of 50 batches whose examples are sorted by length, longest
first (transformers' `LengthGroupedSampler`), so a batch holds examples of similar length and little padding; the
full batches are then shuffled, and a final partial batch (unless `drop_last`) comes last. Without `shuffle`,
examples come in dataset order.

Padding. Each batch is padded to a bucket: the smallest power of two >= 16 that holds its longest example, capped
at `max_length` (default: the features' `max_length`), so a run compiles a handful of step programs instead of one
per batch length. Every process computes the bucket from the whole global batch, so all agree on the shape.

Collators. `collator(rows, length=bucket, rng=...)`; a collator with `needs_rng = True` (masked-LM masking) gets
`np.random.default_rng([seed, epoch, batch_index])`, so a resumed run draws the same masks.

Meshes. The batch is split over the mesh axes the rules give the batch (`act_batch`); each process collates only
its rows (its `1/process_count` of every global batch, in process order) and `shard_batch` assembles the global
arrays. A random collator runs on the whole global batch on every process and each keeps its rows, so the masks do
not depend on the number of processes. A final partial batch that the data axes do not divide is replicated on
every device instead (the step then computes it unsplit: one extra compilation, the same numbers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxformers.core.sharding import FSDP, ShardingError, batch_axes, resolve_rules, shard_batch

MIN_BUCKET = 16
MEGABATCH = 50  # batches per length-sorted group (transformers' LengthGroupedSampler)


def bucket_length(longest: int, cap: int | None = None) -> int:
    """The padded length for a batch whose longest example has `longest` tokens: the next power of two >= 16,
    at most `cap` (unless the example itself is longer than `cap`)."""
    bucket = MIN_BUCKET
    while bucket < longest:
        bucket *= 2
    if cap is not None and longest <= cap:
        bucket = min(bucket, cap)
    return bucket


def data_parallel_size(mesh, rules) -> int:
    """How many ways a batch is split on `mesh` under `rules` (1 without a mesh)."""
    if mesh is None:
        return 1
    return batch_axes(resolve_rules(FSDP if rules is None else rules, mesh), dict(mesh.shape))[1]


def _accepts(fn: Callable, name: str) -> bool:
    """Whether `fn` takes the keyword `name` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind == p.VAR_KEYWORD for p in params)


class DataLoader:
    """Batches of `features` (a sequence of example dicts, such as `training.data.Features`) made by `collator`.

    batch_size: the global batch (all processes together). shuffle / seed: order per epoch (see the module
    docstring). drop_last: drop a final partial batch. group_by_length: batch examples of similar length.
    max_length: cap of the padding buckets. mesh / rules: place batches on the mesh (rules default to FSDP, as
    `jf.use_mesh`); batch_size must divide evenly over the batch's mesh axes.
    """

    def __init__(self, features: Sequence[dict], collator: Callable, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, group_by_length: bool = True, max_length: int | None = None,
                 mesh=None, rules=None):  # fmt: skip
        if len(features) == 0:
            raise ValueError("the dataset is empty (0 examples): there is nothing to batch. Check the data file and "
                             "the columns / filters used to build it")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.features, self.collator, self.batch_size = features, collator, batch_size
        self._takes_length = _accepts(collator, "length")
        self.shuffle, self.seed, self.drop_last, self.group_by_length = shuffle, seed, drop_last, group_by_length
        lengths = getattr(features, "lengths", None)
        if lengths is None:
            lengths = [len(features[i]["input_ids"]) for i in range(len(features))]
        self.lengths = np.asarray(lengths, np.int64)
        self.max_length = getattr(features, "max_length", None) if max_length is None else max_length
        self.mesh = mesh
        self.rules = None if mesh is None else resolve_rules(FSDP if rules is None else rules, mesh)
        self.data_parallel = data_parallel_size(mesh, self.rules)
        if batch_size % self.data_parallel:
            axes, n = batch_axes(self.rules, dict(mesh.shape))
            sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
            raise ShardingError(
                f"global batch size {batch_size} is not divisible by the {n} devices the batch is split over (mesh "
                f"axes {sizes}): use a multiple of {n}, e.g. {max(n, batch_size // n * n)} (with the Trainer, "
                f"per_device_train_batch_size x {n})"
            )
        if drop_last and len(features) < batch_size:
            raise ValueError(f"drop_last=True with {len(features)} examples and batch_size {batch_size} leaves no "
                             "batch: lower the batch size or keep the partial batch (drop_last=False)")

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.features)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every batch of `epoch`, in order (a pure function of seed and epoch)."""
        n, size = len(self.features), self.batch_size
        if not self.shuffle:
            order = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            if self.group_by_length:
                mega = size * MEGABATCH
                groups = [order[i : i + mega] for i in range(0, n, mega)]
                # stable sort, longest first, inside each mega-batch: similar lengths share a batch
                order = np.concatenate([g[np.argsort(-self.lengths[g], kind="stable")] for g in groups])
        batches = [order[i : i + size] for i in range(0, n, size)]
        partial = batches.pop() if len(batches[-1]) < size else None
        if self.shuffle and self.group_by_length:
            np.random.default_rng([self.seed, epoch, 1]).shuffle(batches)
        if partial is not None and not self.drop_last:
            batches.append(partial)
        return batches

    def bucket(self, rows: np.ndarray) -> int:
        """The padded length of the batch made of examples `rows`."""
        return bucket_length(int(self.lengths[rows].max()), self.max_length)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        """Yield the batches of `epoch` from batch number `start` on."""
        for index, rows in enumerate(self.batch_indices(epoch)):
            if index >= start:
                yield self.collate(rows, epoch, index)

    def collate(self, rows: np.ndarray, epoch: int, index: int) -> dict:
        """Batch `index` of `epoch` (examples `rows`), collated, and placed on the mesh if there is one."""
        length = self.bucket(rows)
        needs_rng = getattr(self.collator, "needs_rng", False)
        rng = np.random.default_rng([self.seed, epoch, index]) if needs_rng else None
        if self.mesh is None:
            return self._collate(rows, length, rng)
        procs, pid = jax.process_count(), jax.process_index()
        split = len(rows) % self.data_parallel == 0
        local = len(rows) // procs
        if split and procs > 1 and not needs_rng:
            batch = self._collate(rows[pid * local : (pid + 1) * local], length, rng)
        else:
            batch = self._collate(rows, length, rng)
            if split and procs > 1:
                batch = {k: v[pid * local : (pid + 1) * local] for k, v in batch.items()}
        if split:
            return shard_batch(batch, self.mesh, self.rules)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return {k: jax.make_array_from_process_local_data(replicated, np.asarray(v), np.shape(v))
                for k, v in batch.items()}

    def _collate(self, rows: np.ndarray, length: int, rng) -> dict:
        examples = [self.features[int(i)] for i in rows]
        if not self._takes_length:  # a plain `collator(examples)` (e.g. transformers-style): pads as it likes
            return self.collator(examples)
        return self.collator(examples, length=length, rng=rng) if rng is not None else self.collator(
            examples, length=length)
