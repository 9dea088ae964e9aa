"""HF-familiar generation helpers: `TextStreamer` (print text as `generate` produces it) and `set_seed`.

    jf.set_seed(42)                                      # reproducible sampling without passing key= each time
    jf.generate(model, ids, do_sample=True, max_new_tokens=40, streamer=jf.TextStreamer(tok, skip_prompt=True))

`generate(streamer=...)` takes either a callable, called with each `[B, n]` chunk of new token ids, or an object
with transformers' streamer protocol (`put(ids)` / `end()`: this module's `TextStreamer`, and transformers' own
`TextStreamer` / `TextIteratorStreamer`): `put` first receives the prompt ids `[B, T]` (as transformers' `generate`
sends them, so that `skip_prompt` works), then each chunk, and `end()` once generation has finished. Chunks come
every `chunk_steps` decode steps (8 by default), not every token: the decode loop returns to the host per chunk.
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections.abc import Callable

import numpy as np


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and, if torch is already imported, torch (as
    `transformers.set_seed`), and make `seed` the sampling seed of `jf.generate` / `jf.stream` calls that pass no
    `key=`.

    Each such call then samples from `jax.random.key(seed)`: the same call gives the same tokens every time, until
    the next `set_seed` (JAX keys are explicit values, not a global generator that advances as transformers' torch
    generator does; pass `key=` to draw different samples call by call)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"set_seed expects an int seed, got {seed!r} of type {type(seed).__name__}")
    seed = int(seed)
    from jaxformers import generation

    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seed must lie in [0, 2**32)
    torch = sys.modules.get("torch")  # never imported here: only seeded when the program already uses it
    if torch is not None and hasattr(torch, "manual_seed"):
        torch.manual_seed(seed)
    generation.DEFAULT_SEED = seed


class TextStreamer:
    """Print generated text to stdout as it is produced, as transformers' `TextStreamer`:

        jf.generate(model, tok("Once upon a time", return_tensors="np")["input_ids"], max_new_tokens=30,
                    streamer=jf.TextStreamer(tok, skip_prompt=True))

    skip_prompt: do not print the prompt (which `generate` sends first). decode_kwargs: passed to
    `tokenizer.decode` (e.g. `skip_special_tokens=True`). Text is printed with transformers' (5.x) rules, so the
    output is the same: letters, digits and spaces at once, whole lines, CJK characters; after a symbol, only up
    to the last space (it may start formatting or be part of an incomplete character); the rest at `end()`,
    followed by a newline. A batch of one only, as in transformers (`jf.stream(..., tokenizer=tok)` yields the text
    of every row of a batch).
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value) -> None:
        """Take token ids (`[1, n]` or `[n]`): the prompt on the first call, then each chunk of new tokens."""
        ids = np.asarray(value)
        if ids.ndim > 1 and ids.shape[0] > 1:
            raise ValueError(
                f"TextStreamer prints a single sequence, but got token ids of shape {ids.shape} (a batch of "
                f"{ids.shape[0]}); generate one prompt at a time, or use jf.stream(model, ids, tokenizer=tok), "
                "which yields the text of every row"
            )
        ids = ids.reshape(-1)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        self.token_cache.extend(int(t) for t in ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):  # a finished line: print it all; the last token stays as context (leading spaces)
            printable = text[self.print_len :]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache[-1], **self.decode_kwargs))
        elif text and _is_cjk(text[-1]):  # CJK text has no spaces: each character is final
            printable = text[self.print_len :]
            self.print_len += len(printable)
        elif all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text[self.print_len :]):
            # letters, marks, digits and spaces print at once (long words and unspaced scripts stream too)
            printable = text[self.print_len :]
            self.print_len += len(printable)
        else:  # symbols wait for the next space: they may start formatting or be an incomplete character (U+FFFD)
            printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        """Print what is left and a newline; ready for the next `generate`."""
        printable = ""
        if self.token_cache:
            printable = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len :]
        self.token_cache, self.print_len, self.next_tokens_are_prompt = [], 0, True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Where final text goes (stdout); override to send it elsewhere."""
        print(text, flush=True, end="" if not stream_end else None)


def _is_cjk(char: str) -> bool:
    """A CJK ideograph (the Unicode blocks transformers' `TextStreamer` checks)."""
    cp = ord(char)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def callbacks(streamer, input_ids) -> tuple[Callable | None, Callable[[], None]]:
    """`(on_chunk, on_end)` for `generate(streamer=...)`: `on_chunk` (None without a streamer) is called with each
    `[B, n]` chunk of new tokens, `on_end()` once generation has finished. A put/end object gets the prompt at once,
    before anything compiles, as transformers' `generate` sends it (so a streamer that refuses a batch fails fast)."""
    if streamer is None:
        return None, lambda: None
    put, end = getattr(streamer, "put", None), getattr(streamer, "end", None)
    if callable(put) and callable(end):
        put(np.asarray(input_ids))
        return put, end
    if callable(streamer):
        return streamer, lambda: None
    raise TypeError(
        f"streamer must be a callable (called with each [batch, n] chunk of new token ids) or an object with put() "
        f"and end() methods, like jf.TextStreamer(tokenizer); got {type(streamer).__name__}"
    )


__all__ = ["TextStreamer", "set_seed"]
