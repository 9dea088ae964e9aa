"""What every model class shares: the `from_pretrained`/`save_pretrained` façade, input checks, position ids.

Loading and saving live in `jaxformers.loading` (one path); these methods only forward to it.

Input checks: the design. PyTorch raises `IndexError: index out of range in self` for an index outside an embedding
table; JAX's gathers never raise (`jnp.take` fills NaN, `lax.dynamic_update_slice` clamps its start), so a bad input
that is not checked gives a silently wrong number. Every model sends its inputs through the functions of this module
(and a KV cache write through `KVCache.with_tokens`), so each rule lives in one place:
- token ids in `[0, vocab_size)`, checked before the cast to int32 (an int64 id 2**32 + 5 would wrap to 5);
- `token_type_ids` in `[0, type_vocab_size)`; with a learned position table (BERT, GPT-2) `position_ids` in
  `[0, max_position_embeddings)` and at most `max_position_embeddings` tokens per call without a cache, as in
  transformers (RoPE models accept any position, as transformers does);
- a KV cache write of T tokens at `cache.index` must fit its `max_len` slots (`core.cache`);
- `attention_mask`: any nonzero entry means "attend", exactly as transformers (which converts the mask to bool), so
  a float mask of 0.5 or an int mask of 2 behave as 1 there and here; only zeros mask a token out.
How they are checked depends on whether the inputs are concrete:
- eager (numpy / concrete jax arrays): on the host, raising ValueError that names the input, the bad value, the
  valid range and the fix. Cost per call: a min/max of each index input (and one scalar read of `cache.index`).
- traced (`jax.jit`, `jf.pure` under jit, `lax.while_loop`, `vmap`, `grad`): as `checkify.debug_check`, which is
  dropped when the program is not checkified (XLA removes the dead predicate, so the compiled program, and
  generation's jitted loop, are unchanged) and reported when it is:
      err, out = checkify.checkify(jax.jit(apply))(params, **batch); err.throw()
  `checkify.check` cannot be used unconditionally: outside `checkify.checkify` it fails to lower under jit ("Cannot
  abstractly evaluate a checkify.check which was not functionalized"; always on TPU, and on CPU/GPU unless
  `jax_xla_runtime_errors` turns it into a host callback, a per-step device sync).
  Unchecked under jit, an out-of-range token, token-type or position id gives a NaN embedding for that token, and
  through attention every token of its row turns NaN (a masked key still enters `weights @ values` with weight 0,
  and 0 * NaN is NaN). A KV cache write past its end is clamped onto the last slots, overwriting them (wrong
  logits, no NaN). The length limit is a shape check (`check_seq_len`) and raises under jit as well: a batch longer
  than the position table would be NaN in every row, short rows included (their padding slots get positions past
  the table). Host-side wrappers that jit the model (`SentenceEmbedder`) truncate to the position table first.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify


class PreTrainedModel(nnx.Module):
    """Base of every jaxformers model. Class attributes declare what it is; loading, generation and tasks read these
    (and the file's `Architecture` record), never `hasattr`.

    config_class: the architecture's config dataclass. hf_architecture: HF class name written to config.json.
    hf_prefix: HF key prefix of the base model inside head checkpoints (`bert`, `model`, `transformer`).
    base_attr: attribute holding the base model in head classes (None for the base model itself).
    hf_weights: the declarative conversion table of the model file (bound by its `Architecture` record).
    init_if_missing: base-model parameter prefixes that are freshly initialised (with a warning) when absent.
    task: the task name this class serves ("base", "causal-lm", ...: `models.TASK_NAMES`), bound by the record.
    is_decoder: runs causally with a KV cache (`init_cache`, `cache=`). is_encoder_decoder: seq2seq.
    can_generate: `jf.generate` accepts it (a causal or seq2seq LM head); it then carries `generation_config`.
    main_input_name: the input a task feeds first ("input_ids").
    """

    config_class: ClassVar[type]
    hf_architecture: ClassVar[str]
    hf_prefix: ClassVar[str]
    base_attr: ClassVar[str | None] = None
    hf_weights: ClassVar[tuple] = ()
    init_if_missing: ClassVar[tuple[str, ...]] = ()  # base-model path prefixes a checkpoint may lack (BERT pooler)
    task: ClassVar[str] = ""
    is_decoder: ClassVar[bool] = False
    is_encoder_decoder: ClassVar[bool] = False
    can_generate: ClassVar[bool] = False
    main_input_name: ClassVar[str] = "input_ids"
    generation_config = None  # generating heads: the checkpoint's GenerationConfig, set by the loader

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        """Load HF weights (local dir or hub repo id) or a jaxformers Orbax checkpoint into this class."""
        from jaxformers.loading import load

        return load(name_or_path, model_class=cls, **kwargs)

    def save_pretrained(self, directory) -> None:
        """Write `config.json` + `model.safetensors` in HF layout (transformers loads it).

        A model carrying LoRA adapters is refused (ValueError, nothing written): a transformers checkpoint holds the
        base weights only, so the adapters would be silently lost. `jf.lora.save_adapter(model, directory)` writes
        PEFT's adapter files (what PEFT's `PeftModel.save_pretrained` writes); `jf.lora.merge_and_unload(model)`
        folds the adapters into the weights, after which this method saves the merged model."""
        from jaxformers.loading import save_pretrained

        save_pretrained(self, directory)

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """`jf.generate(model, input_ids, attention_mask, **kwargs)` as a method, as transformers' `model.generate`
        (`model.generate(**tok(prompts, padding=True), max_new_tokens=20)`); same keywords, same result."""
        if not self.can_generate:
            raise TypeError(
                f"{type(self).__name__} cannot generate text (it has no language-model head); load the checkpoint "
                "with AutoModelForCausalLM.from_pretrained(...) (or AutoModelForSeq2SeqLM for encoder-decoders)"
            )
        from jaxformers.generation import generate  # generation is large: import it on first use

        return generate(self, input_ids, attention_mask, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameter elements, as transformers' `num_parameters`: tied weights count once (a tied LM head
        is the embedding table itself), and `exclude_embeddings` leaves out the embedding tables (token, position,
        token type: the `Embed` layers, transformers' `nn.Embedding` modules). Every `nnx.Param` is trainable here,
        so `only_trainable` changes nothing (it is accepted for the HF signature)."""
        from jaxformers.core.layers import Embed

        del only_trainable  # all parameters are trainable: nothing is frozen in an nnx.Param tree
        skip: set[int] = set()
        if exclude_embeddings:
            for _, node in nnx.iter_graph(self):
                if isinstance(node, Embed):
                    skip |= {id(v) for _, v in nnx.iter_graph(node) if isinstance(v, nnx.Param)}
        seen: set[int] = set()
        total = 0
        for _, node in nnx.iter_graph(self):  # each graph node once: a shared (tied) Param is visited once
            if isinstance(node, nnx.Param) and id(node) not in seen and id(node) not in skip:
                seen.add(id(node))
                total += int(np.prod(node.shape))
        return total


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The one record a model file exports (as `ARCHITECTURE`); `jaxformers.models` reads nothing else.

    name: the family (file) name. config_class: its config dataclass (a model type's classes may use a subclass,
      e.g. XLMRobertaConfig with its own model_type). weights: the HF weight table.
    classes: `{model_type: {task: class}}` for every HF `model_type` the file implements (families that HF writes as
      copies, e.g. llama/mistral/qwen2/gemma, or roberta/xlm-roberta, share one file and one weight table).
    gguf_names: GGUF tensor-name table where the family has GGUF checkpoints (None otherwise).
    Creating the record binds each class to it (`hf_weights`, `task`), so a class knows its table without a loop in
    the model file.
    """

    name: str
    config_class: type
    weights: tuple
    classes: dict[str, dict[str, type]]
    gguf_names: dict | None = None

    def __post_init__(self):
        for tasks in self.classes.values():
            if "base" not in tasks:
                raise ValueError(f"architecture {self.name}: every model type needs a 'base' class")
            for task, cls in tasks.items():
                # a model type whose HF config differs only in model_type (xlm-roberta) has a config subclass
                if not issubclass(cls.config_class, self.config_class):
                    raise ValueError(
                        f"{cls.__name__}.config_class ({cls.config_class.__name__}) is not "
                        f"{self.config_class.__name__} or a subclass of it"
                    )
                cls.hf_weights, cls.task = self.weights, task

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def tasks(self, model_type: str) -> dict[str, type]:
        """`{task: class}` for `model_type` (a clear error names the supported ones)."""
        if model_type not in self.classes:
            raise ValueError(f"{self.name} implements model types {sorted(self.classes)}, not {model_type!r}")
        return self.classes[model_type]

    def all_classes(self) -> list[type]:
        return [cls for tasks in self.classes.values() for cls in tasks.values()]


def is_traced(x) -> bool:
    """True when `x` is a tracer (under jit / vmap / grad ...): its values cannot be read on the host."""
    return isinstance(x, jax.core.Tracer)


def at_positions(hidden: jax.Array, positions: jax.Array | None) -> jax.Array:
    """`hidden [B, T, D]` at the token positions `positions [B, P]` (-> `[B, P, D]`), or all of it when None.

    Masked-LM heads take `logits_positions=` through this (a jaxformers extension, as `logits_to_keep` is for
    decoders): the head then runs on P rows per sequence instead of T. The `fill-mask` task passes its mask
    positions, which saves the vocabulary projection of every other token (a BERT-base MLM head is ~22% of the
    forward's products). The head is per token, so the logits at those positions are the full forward's."""
    if positions is None:
        return hidden
    positions = jnp.asarray(positions)
    if positions.ndim != 2 or positions.shape[0] != hidden.shape[0]:
        raise ValueError(f"logits_positions must be [batch={hidden.shape[0]}, P] token positions, got shape "
                         f"{tuple(positions.shape)}")  # fmt: skip
    check_range(positions, 0, hidden.shape[1], f"logits_positions must be token positions in [0, {hidden.shape[1]})",
                "pass positions inside the sequence")  # fmt: skip
    return jnp.take_along_axis(hidden, positions[:, :, None].astype(jnp.int32), axis=1)


def _min_max(x) -> tuple[int, int]:
    if isinstance(x, np.ndarray):
        return int(x.min()), int(x.max())
    # on device: two scalars come back rather than the whole array (works for sharded arrays too)
    lo, hi = jax.device_get((jnp.min(x), jnp.max(x)))
    return int(lo), int(hi)


def check_range(x, lo: int, hi: int, what: str, fix: str) -> None:
    """Refuse entries of the integer array `x` outside `[lo, hi)`: ValueError when `x` is concrete (read on the host,
    in `x`'s own dtype so nothing has wrapped yet), `checkify.debug_check` when traced (see the module docstring).

    what: names the input and its valid range for the message ("input_ids must be token ids in [0, vocab_size=97)");
    fix: what to do instead."""
    if x.size == 0:
        return
    if is_traced(x):
        ok = jnp.all((x >= lo) & (x < hi))
        checkify.debug_check(ok, f"{what}; got values from {{lo}} to {{hi}}: {fix}", lo=jnp.min(x), hi=jnp.max(x))
        return
    x_lo, x_hi = _min_max(x)
    if x_lo < lo or x_hi >= hi:
        bad = x_lo if x_lo < lo else x_hi
        raise ValueError(
            f"{what}, got {bad} (values range from {x_lo} to {x_hi}; PyTorch raises an index error here): {fix}"
        )


def check_input_ids(input_ids, attention_mask=None, name: str = "input_ids", *, vocab_size: int | None = None):
    """Validate dtype/rank (and, given `vocab_size`, the range) of token inputs; returns int32 ids and an int32 0/1
    attention mask (all ones by default; any nonzero entry of a given mask counts as 1, as in transformers)."""
    if input_ids is None:
        raise ValueError(f"{name} is required")
    ids = input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [batch, seq_len], got shape {tuple(ids.shape)}; add a batch axis with ids[None]"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}; pass tokenizer output")
    if vocab_size is not None:  # before the cast: int64 ids >= 2**31 would wrap into range
        fix = "pass ids from this model's tokenizer (-100 labels and other markers are not token ids)"
        check_range(ids, 0, vocab_size, f"{name} must be token ids in [0, vocab_size={vocab_size})", fix)
    ids = jnp.asarray(ids, jnp.int32)
    if attention_mask is None:
        return ids, jnp.ones(ids.shape, jnp.int32)
    mask = attention_mask if isinstance(attention_mask, jax.Array) else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} must equal {name} shape {tuple(ids.shape)}")
    # transformers reads the mask as bool: 0.5 or 2 attend like 1. A plain int cast would turn 0.5 into 0 (masked)
    # and a 2 would become the argmax that `positions_from_mask` takes for the first real token.
    return ids, (jnp.asarray(mask) != 0).astype(jnp.int32)


def check_index_input(value, ids_shape: tuple[int, ...], name: str, *, size: int | None = None, fix: str = ""):
    """Validate an optional per-token index input (`token_type_ids`, `position_ids`) against `input_ids`' shape
    `[B, T]`: integer dtype, shape `[B, T]` (or `[1, T]`, broadcast over the batch) and, given `size` (the rows of
    the table it indexes), values in `[0, size)`. Returns int32, or None."""
    if value is None:
        return None
    x = value if isinstance(value, jax.Array) else np.asarray(value)
    b, t = ids_shape
    if x.ndim != 2 or x.shape[1] != t or x.shape[0] not in (1, b):
        raise ValueError(f"{name} shape {tuple(x.shape)} must equal input_ids shape {(b, t)} (or {(1, t)})")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    if size is not None:
        check_range(x, 0, size, f"{name} must lie in [0, {size}) (the rows of its embedding table)",
                    fix or f"pass {name} below {size}")  # fmt: skip
    return jnp.asarray(x, jnp.int32)


def check_seq_len(t: int, max_positions: int, name: str = "max_position_embeddings") -> None:
    """Refuse more tokens than a learned position table has rows (a shape check: free, also under jit)."""
    if t > max_positions:
        raise ValueError(
            f"input_ids has {t} tokens but the model's position table has {name}={max_positions} rows "
            f"(transformers refuses it too); truncate to {max_positions} tokens: "
            f"tokenizer(..., truncation=True, max_length={max_positions})"
        )


def check_learned_positions(position_ids, max_positions: int, *, q_offset=0, name: str = "max_position_embeddings"):
    """Check positions computed from the mask (and a cache offset) against a learned table of `max_positions` rows.

    Eagerly this is free when `q_offset + T <= max_positions` (positions never exceed slot numbers); otherwise the
    largest position is read back (only a left-padded batch can still fit). Traced: a `checkify.debug_check`."""
    t = position_ids.shape[-1]
    if not is_traced(q_offset) and int(q_offset) + t <= max_positions:
        return
    check_range(position_ids, 0, max_positions,
                f"positions must lie in [0, {name}={max_positions}) (the rows of the position table)",
                f"keep prompt plus generated tokens within {max_positions} (truncate the prompt or lower "
                "max_new_tokens)")  # fmt: skip


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids counted from each row's first real token: a left-padded row gets the positions it has alone,
    and a right-padded row gets `arange(T)` exactly as HF's default (padding slots included)."""
    t = attention_mask.shape[-1]
    first = jnp.argmax(attention_mask, axis=-1)[..., None]  # [B, 1] index of the first real token
    return jnp.maximum(jnp.arange(t)[None, :] - first, 0).astype(jnp.int32)


def last_token(x: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, pad_token_id: int | None) -> jax.Array:
    """Rows of `x [B, T, ...]` at each sequence's last real token: HF's rule for decoder sequence classification
    (rightmost token that is not `pad_token_id`; without a pad id, the last position the mask marks real)."""
    real = (input_ids != pad_token_id) if pad_token_id is not None else attention_mask.astype(bool)
    last = jnp.argmax(jnp.arange(input_ids.shape[1]) * real, axis=-1)
    return x[jnp.arange(input_ids.shape[0]), last]
