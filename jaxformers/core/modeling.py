"""What every model class shares: the `from_pretrained`/`save_pretrained` façade, input checks, position ids.

Loading and saving live in `jaxformers.loading` (one path); these methods only forward to it.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class PreTrainedModel(nnx.Module):
    """Base of every jaxformers model. Class attributes tie it to its config, HF names and weight table.

    config_class: the architecture's config dataclass. hf_architecture: HF class name written to config.json.
    hf_prefix: HF key prefix of the base model inside head checkpoints (`bert`, `model`, `transformer`).
    base_attr: attribute holding the base model in head classes (None for the base model itself).
    hf_weights: the declarative conversion table of the model file.
    init_if_missing: base-model parameter prefixes that are freshly initialised (with a warning) when absent.
    """

    config_class: ClassVar[type]
    hf_architecture: ClassVar[str]
    hf_prefix: ClassVar[str]
    base_attr: ClassVar[str | None] = None
    hf_weights: ClassVar[tuple] = ()
    init_if_missing: ClassVar[tuple[str, ...]] = ()  # base-model path prefixes a checkpoint may lack (BERT pooler)
    generation_config = None  # causal LMs: the checkpoint's GenerationConfig, set by the loader (jf.generate reads it)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        """Load HF weights (local dir or hub repo id) or a jaxformers Orbax checkpoint into this class."""
        from jaxformers.loading import load

        return load(name_or_path, model_class=cls, **kwargs)

    def save_pretrained(self, directory) -> None:
        """Write `config.json` + `model.safetensors` in HF layout (transformers loads it)."""
        from jaxformers.loading import save_pretrained

        save_pretrained(self, directory)


def check_input_ids(input_ids, attention_mask=None, name: str = "input_ids"):
    """Validate dtype/rank of token inputs; returns int32 arrays and a default all-ones attention mask."""
    if input_ids is None:
        raise ValueError(f"{name} is required")
    ids = input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [batch, seq_len], got shape {tuple(ids.shape)}; add a batch axis with ids[None]"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}; pass tokenizer output")
    ids = jnp.asarray(ids, jnp.int32)
    if attention_mask is None:
        return ids, jnp.ones(ids.shape, jnp.int32)
    mask = jnp.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} must equal {name} shape {tuple(ids.shape)}")
    return ids, mask.astype(jnp.int32)


def check_index_input(value, ids_shape: tuple[int, ...], name: str):
    """Validate an optional per-token index input (`token_type_ids`, `position_ids`) against `input_ids`' shape
    `[B, T]`: integer dtype and shape `[B, T]` (or `[1, T]`, broadcast over the batch). Returns int32, or None."""
    if value is None:
        return None
    x = value if isinstance(value, jax.Array) else np.asarray(value)
    b, t = ids_shape
    if x.ndim != 2 or x.shape[1] != t or x.shape[0] not in (1, b):
        raise ValueError(f"{name} shape {tuple(x.shape)} must equal input_ids shape {(b, t)} (or {(1, t)})")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    return jnp.asarray(x, jnp.int32)


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
