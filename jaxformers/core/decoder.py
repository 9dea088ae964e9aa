"""What decoder-only architectures share before their layer stack (the stack itself is `core.stack.run_layers`)."""

from __future__ import annotations

import jax

from jaxformers.core.modeling import positions_from_mask
from jaxformers.core.stack import NO_WINDOW, run_layers  # noqa: F401  (re-exported for decoder files)


def decoder_positions(key_mask, q_offset, t: int):
    """Position ids of the `t` new tokens: slot minus the row's first real slot (left padding gets 0, 1, ...)."""
    all_pos = positions_from_mask(key_mask)  # [B, S]
    if isinstance(q_offset, int) and q_offset == 0 and key_mask.shape[1] == t:
        return all_pos
    return jax.lax.dynamic_slice_in_dim(all_pos, q_offset, t, axis=1)
