"""Model outputs: pytree dataclasses with HF field names (`out.logits`, `out.last_hidden_state`, ...)."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class ModelOutput:
    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return [k for k in self.__dataclass_fields__ if getattr(self, k) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@struct.dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None
    hidden_states: tuple | None = None
    cache: Any = None


@struct.dataclass
class MaskedLMOutput(ModelOutput):
    logits: jax.Array
    hidden_states: tuple | None = None


@struct.dataclass
class CausalLMOutput(ModelOutput):
    logits: jax.Array
    cache: Any = None
    hidden_states: tuple | None = None


@struct.dataclass
class SequenceClassifierOutput(ModelOutput):
    logits: jax.Array
    hidden_states: tuple | None = None


@struct.dataclass
class TokenClassifierOutput(ModelOutput):
    logits: jax.Array
    hidden_states: tuple | None = None


@struct.dataclass
class QuestionAnsweringOutput(ModelOutput):
    start_logits: jax.Array
    end_logits: jax.Array
    hidden_states: tuple | None = None


@struct.dataclass
class Seq2SeqModelOutput(ModelOutput):
    """Encoder-decoder base model: the decoder's last hidden state and the encoder's (HF field names)."""

    last_hidden_state: jax.Array
    encoder_last_hidden_state: jax.Array | None = None
    cache: Any = None
    decoder_hidden_states: tuple | None = None
    encoder_hidden_states: tuple | None = None


@struct.dataclass
class Seq2SeqLMOutput(ModelOutput):
    """Encoder-decoder LM: decoder logits `[B, T, V]` (or the last `logits_to_keep` positions)."""

    logits: jax.Array
    encoder_last_hidden_state: jax.Array | None = None
    cache: Any = None
    decoder_hidden_states: tuple | None = None
    encoder_hidden_states: tuple | None = None
