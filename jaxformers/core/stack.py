"""The layer stack: run a `Stacked` (or `Unstacked`) container over its layers, scanned or unrolled, one place.

Every architecture, encoder or decoder, calls `run_layers`; the choice of layout (scan for compile time and
training, unrolled for decode speed), how a KV cache and per-layer dropout keys are threaded through, and per-layer
sliding windows are decided here, not per model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxformers.core.cache import KVCache
from jaxformers.core.layers import Stacked

NO_WINDOW = 2**30  # "no sliding window" as a number, for layers mixed with windowed ones under scan


def run_layers(
    layers: Stacked,
    x,
    call: Callable,
    *,
    cache: KVCache | None,
    scan: bool,
    remat: bool = False,
    windows: tuple[int | None, ...] | None = None,
    keys: jax.Array | None = None,
    xs=None,
    last_rows: int | None = None,
):
    """Apply `call(layer, x, kv, window, key) -> (x, kv)` layer by layer (encoders and decoders alike).

    kv is None without a cache, else the layer's `(k [B, S, K, H], v)`; the cache may be stacked `[L, ...]` or
    per layer (`KVCache.per_layer`, unrolled only). windows: per-layer sliding window (None =
    full attention); passed as a Python value when all layers agree, as a scanned int array otherwise.
    keys: per-layer dropout keys `[L]` (`core.dropout.layer_keys`) or None (no dropout: `key` is None in `call`).
    xs: optional per-layer data of the model's own (a pytree of arrays with a leading `[L]` axis, e.g. a flag marking
      the one layer followed by an extra op, as DeBERTa-v2's ConvLayer after layer 0); when given, `call` also gets
      its layer's slice as the keyword `xs=`, scanned or unrolled alike.
    last_rows: the last layer computes only the first `last_rows` positions (its queries, residual, feed-forward
      and output; keys and values still cover every position), for a head that reads only those (CLS pooling: 1).
      `call` then gets `rows=last_rows` for that layer and must return `[B, last_rows, ...]`, the same values the
      whole layer would give there (dropout included: `core.dropout.dropout(full_shape=)`). A BERT-style layer
      does 1/6 of its products per position in keys and values, so this saves ~5/6 of the last layer's work.
    Returns `(x, hidden_states tuple, cache)`; hidden_states holds each layer's output (the last one cut to
    `last_rows` positions when that is set).
    """
    if last_rows is not None and cache is not None:
        raise ValueError("last_rows is for encoders: a KV cache needs every position of every layer")
    windows = windows or (None,) * layers.n
    uniform = len(set(windows)) == 1
    if scan:
        if cache is not None and cache.per_layer:
            raise ValueError("a per-layer KV cache needs unrolled layers (scan_layers=False or unstack_layers)")
        w_xs = None if uniform else jnp.asarray([NO_WINDOW if w is None else w for w in windows], jnp.int32)
        kv_xs = None if cache is None else (cache.k, cache.v)

        last = None if last_rows is None else jnp.arange(layers.n) == layers.n - 1

        def body(layer, carry, scanned):
            kv, w, key, extra, is_last = scanned
            more = {} if xs is None else {"xs": extra}
            window = windows[0] if uniform else w
            if is_last is None:
                y, kv = call(layer, carry, kv, window, key, **more)
                return y, (y, kv)

            def part(carry):  # the last layer, on its first rows, written over the carry's first rows
                y, _ = call(layer, carry, None, window, key, rows=last_rows, **more)
                return carry.at[:, :last_rows].set(y.astype(carry.dtype))

            # one scan over all the layers (slicing the stacked weights apart would copy them); the branch not
            # taken does not run
            y = jax.lax.cond(is_last, part, lambda c: call(layer, c, None, window, key, **more)[0], carry)
            return y, (y, None)

        x, (hs, kv) = layers.scan(body, x, (kv_xs, w_xs, keys, xs, last), remat=remat)
        if cache is not None:
            cache = cache.replace(k=kv[0], v=kv[1])
        hs = [hs[i] for i in range(hs.shape[0])]
        if last_rows is not None:
            x = hs[-1] = x[:, :last_rows]
        return x, tuple(hs), cache
    hs, ks, vs = [], [], []
    blocks = layers.all_layers()
    for i in range(layers.n):
        kv = None if cache is None else (cache.k[i], cache.v[i])
        more = {} if xs is None else {"xs": jax.tree.map(lambda a, i=i: a[i], xs)}
        if last_rows is not None and i == layers.n - 1:
            more["rows"] = last_rows
        x, kv = call(blocks[i], x, kv, windows[i], None if keys is None else keys[i], **more)
        if cache is not None:
            ks.append(kv[0])
            vs.append(kv[1])
        hs.append(x)
    if cache is not None:
        per_layer = cache.per_layer
        cache = cache.replace(k=tuple(ks) if per_layer else jnp.stack(ks), v=tuple(vs) if per_layer else jnp.stack(vs))
    return x, tuple(hs), cache
