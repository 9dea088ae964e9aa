"""What every task shares: loading model + tokenizer, checking the head, shape buckets, batching, compile counting.

A task is a small class whose three parts mirror transformers' pipelines, with the middle one pure and jitted:

    features = task.preprocess(item, **params)     # host: one input -> one or more tokenized features (dicts of
                                                   #       int lists; QA and NER split long inputs into several)
    outputs  = task.run(features)                  # device: features padded to shape buckets and batched, through
                                                   #         the task's pure core (`jaxformers.tasks.<task>`), jitted
    result   = task.postprocess(item, features, outputs, **params)   # host: HF-shaped result

`Task.__call__` handles a single input or a list (lists return lists, a single input returns its own result, as the
pipelines do), per-call options over the options given at construction, and `batch_size`.

Shapes: each batch is padded to a bucket, batch size rounded up to a power of two (at most `batch_size`) and length
rounded up to the next of 16, 32, 48, 64 and then four buckets per doubling (80, 96, 112, 128, 160, ...; capped at
the model's position table), so a stream of inputs of any lengths compiles a bounded number of programs per task
(12 length buckets up to 256 tokens): `TRACES[task name]` counts them. Features are sorted
by length before batching (less padding), and results are returned in input order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from flax import nnx

from jaxformers.core import xla_cpu

# Number of traces (= compilations) of each task's jitted core, keyed by task name: for tests and curious users.
TRACES: collections.Counter = collections.Counter()

MIN_LENGTH_BUCKET = 16


# Length buckets per doubling of the length: between 64 and 128 tokens the buckets are 80, 96, 112 and 128. Inputs
# of 8-256 tokens, sorted and batched by 8, meet 12 buckets (5 with powers of two) and 11% padded tokens (39%):
# `scripts/bench_tasks.py --tasks text-classification` on a 2-core AMD EPYC, warm 44.5 s -> 36.6 s for 256 inputs
# and first call (all compiles included) 46.6 s -> 41.3 s (BENCHMARKS.md, "Tasks").
BUCKETS_PER_OCTAVE = 4


def length_bucket(n: int, limit: int | None = None) -> int:
    """`n` tokens rounded up to the next length bucket, never past `limit` (a position table's size: a bucket there
    would feed positions the model does not have). Buckets: 16, 32, 48, 64, then `BUCKETS_PER_OCTAVE` evenly spaced
    lengths per doubling (80, 96, 112, 128, 160, 192, ...)."""
    p = max(MIN_LENGTH_BUCKET, 1 << max(0, n - 1).bit_length())
    step = max(MIN_LENGTH_BUCKET, p // 2 // BUCKETS_PER_OCTAVE)
    b = max(MIN_LENGTH_BUCKET, -(-n // step) * step)
    return b if limit is None else max(n, min(b, limit))


def batch_bucket(n: int, batch_size: int) -> int:
    """`n` rows rounded up to a power of two, at most `batch_size` (the last bucket)."""
    return min(1 << max(0, n - 1).bit_length(), batch_size)


def check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """Options such as `top_k`, `batch_size`, `stride` are counts: refuse 0, negatives, bools and floats clearly."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Task:
    """Base of every task (see the module docstring). Subclasses set the class attributes and implement
    `preprocess`, `core` and `postprocess`; `run` and `__call__` are shared.

    names: task names (the first is canonical, the others aliases), as transformers spells them.
    heads: the model registry tasks (`jaxformers.models.TASK_NAMES`) whose classes serve this task; loading a path
      uses the first, a loaded model must be one of them.
    default_model: the checkpoint id transformers uses when no model is given.
    defaults: the task's options and their default values (unknown options are refused by name).
    pad_values: how each feature field is padded (input_ids by the tokenizer's pad id, masks by 0, ...).
    per_token: output fields whose axis 1 is the sequence (sliced back to each feature's length).
    """

    names: ClassVar[tuple[str, ...]] = ()
    heads: ClassVar[tuple[str, ...]] = ("base",)
    default_model: ClassVar[str | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    pad_values: ClassVar[dict[str, int | None]] = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0}
    per_token: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, tokenizer, *, batch_size: int = 8, **options):
        from jaxformers.core.modeling import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"{self.name}: model must be a jaxformers model or a path/repo id, got {type(model)}")
        if model.task not in self.heads:
            raise ValueError(
                f"the {self.name!r} task needs a model with a {' or '.join(self.heads)} head, but "
                f"{type(model).__name__} is a {model.task!r} model; load it with jf.task({self.name!r}, model=PATH) "
                f"or the matching Auto class"
            )
        check_positive_int("batch_size", batch_size)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, int(batch_size)
        self.options = self.resolve_options(options, base=self.defaults)
        self.graphdef, self.state = nnx.split(model)
        self._jits: dict[tuple, Callable] = {}  # XLA compiler options -> the jitted core (`_jit_for`)

    # ------------------------------------------------------------------------------------------ for subclasses
    @property
    def name(self) -> str:
        return self.names[0]

    def preprocess(self, item, **params) -> list[dict[str, list[int]]]:
        raise NotImplementedError

    @staticmethod
    def core(model, batch: dict[str, jax.Array], **static) -> dict[str, jax.Array]:
        """The pure core: a batch of padded arrays in, arrays out (the subclass's module-level function)."""
        raise NotImplementedError

    def postprocess(self, item, features: list[dict], outputs: list[dict[str, np.ndarray]], **params):
        raise NotImplementedError

    def check_options(self, params: dict[str, Any]) -> None:
        """Validate the merged options (clear errors); subclasses extend."""

    # ------------------------------------------------------------------------------------------------- shared
    def resolve_options(self, given: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{self.name} got unknown option(s) {unknown}; its options are {sorted(self.defaults) or 'none'}"
            )
        params = {**base, **given}
        self.check_options(params)
        return params

    @property
    def max_length(self) -> int | None:
        """Tokens the model's learned position table holds (None for relative/rotary positions): its rows, or the
        config's `max_tokens` where positions start past the padding index (RoBERTa: 2 rows fewer), so that a
        length bucket never asks for positions the table does not have."""
        cfg = self.model.config
        return getattr(cfg, "max_tokens", None) or getattr(cfg, "max_position_embeddings", None)

    def _jit_for(self, rows: int) -> Callable:
        """The jitted core for batches of `rows` tokens (batch x length): compiled with oneDNN's GEMM where that is
        faster (`core.xla_cpu.gemm_options`: large batches on AVX-512 CPUs), with XLA's defaults otherwise."""
        options = xla_cpu.gemm_options(rows)
        key = tuple(sorted(options.items()))
        jitted = self._jits.get(key)
        if jitted is None:
            jitted = self._jits[key] = jax.jit(self._traced, static_argnums=(0, 1), static_argnames=("static",),
                                               compiler_options=options or None)  # fmt: skip
        return jitted

    def _traced(self, core, graphdef, state, batch, static=()):
        TRACES[self.name] += 1
        return core(nnx.merge(graphdef, state), batch, **dict(static))

    def run(self, features: Sequence[dict[str, list[int]]], static: dict[str, Any] | None = None,
            core: Callable | None = None) -> list[dict[str, np.ndarray]]:  # fmt: skip
        """Every feature through the jitted core, in shape-bucketed batches; one dict of numpy outputs per feature
        (fields in `per_token` cut to the feature's length), in the order given.

        static: hashable keyword options of the core that change the compiled program (e.g. a pooling choice)."""
        core = core or type(self).core
        static_items = tuple(sorted((static or {}).items()))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        lengths = [len(f["input_ids"]) for f in features]
        order = sorted(range(len(features)), key=lambda i: -lengths[i])
        results: list[dict[str, np.ndarray] | None] = [None] * len(features)
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            tb = length_bucket(max(lengths[i] for i in rows), self.max_length)
            bb = batch_bucket(len(rows), self.batch_size)
            batch = {}
            for field in features[rows[0]]:
                pad = self.pad_values.get(field, 0)
                if pad is None:
                    pad = pad_id if pad_id is not None else 0
                arr = np.full((bb, tb), pad, np.int32)
                for r, i in enumerate(rows):
                    values = features[i][field]
                    arr[r, : len(values)] = values
                batch[field] = arr
            if "attention_mask" in batch:
                batch["attention_mask"][len(rows) :, 0] = 1  # filler rows: one real token, never an all-masked row
            jitted = self._jit_for(bb * tb)
            out = jax.device_get(jitted(core, self.graphdef, self.state, batch, static=static_items))
            for r, i in enumerate(rows):
                results[i] = {
                    k: (np.asarray(v[r, : lengths[i]]) if k in self.per_token else np.asarray(v[r]))
                    for k, v in out.items()
                }
        return results

    def __call__(self, inputs, **kwargs):
        batch_size = kwargs.pop("batch_size", None)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        params = self.resolve_options(kwargs, base=self.options)
        single = not isinstance(inputs, (list, tuple)) or self.is_single(inputs)
        items = [inputs] if single else list(inputs)
        saved = self.batch_size
        try:
            if batch_size is not None:
                self.batch_size = int(batch_size)
            results = self.process(items, params)
        finally:
            self.batch_size = saved
        return results[0] if single else results

    def is_single(self, inputs) -> bool:
        """Whether a list/tuple input is one item (e.g. a text pair, chat messages) rather than a batch."""
        return False

    def process(self, items: list, params: dict[str, Any]) -> list:
        """All items: preprocess each, run every feature together (batching across items), postprocess each."""
        per_item = [self.preprocess(item, **params) for item in items]
        flat = [f for feats in per_item for f in feats]
        outputs = self.run(flat, static=self.static_options(params)) if flat else []
        results, pos = [], 0
        for item, feats in zip(items, per_item):
            results.append(self.postprocess(item, feats, outputs[pos : pos + len(feats)], **params))
            pos += len(feats)
        return results

    def static_options(self, params: dict[str, Any]) -> dict[str, Any]:
        """The options the core takes as static (compile-time) arguments; none by default."""
        return {}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax on the host (float64 accumulation, then float32 like the pipelines' numpy)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)

