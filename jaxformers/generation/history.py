"""What logits processors see of the tokens so far: a static-size buffer plus the offsets that map it to HF's view.

The jitted decoding loop keeps every row's tokens in one `[B, L]` buffer: first the columns added to round the
prompt length up to a compile bucket (never part of the sequence), then exactly what `transformers` calls
`input_ids` at that step (the caller's left-padded prompt followed by the generated tokens). Processors read HF's
`input_ids` as `ids[:, start:cur]`, so they reproduce HF's semantics exactly, padding included.
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class History:
    """Token history of a batch inside the decoding loop (all fields are arrays, so it is a jit-friendly pytree).

    ids: `[B, L]` int32 buffer; columns `>= cur` are unspecified (not yet written).
    start: `()` int32, first column of HF's `input_ids` (columns before it are bucket padding).
    pad_len: `[B]` int32, left-padding columns of each row inside HF's `input_ids` (HF's `padding_lengths`).
    prompt_len: `()` int32, HF's prompt length (`input_ids.shape[1]` before generation).
    cur: `()` int32, columns `[0, cur)` are written; HF's `input_ids.shape[1]` is `cur - start`.
    """

    ids: jax.Array
    start: jax.Array
    pad_len: jax.Array
    prompt_len: jax.Array
    cur: jax.Array

    @property
    def hf_len(self) -> jax.Array:
        """HF's `input_ids.shape[-1]` (prompt plus generated tokens so far)."""
        return self.cur - self.start

    @property
    def new_tokens(self) -> jax.Array:
        """Tokens generated so far."""
        return self.cur - self.start - self.prompt_len
