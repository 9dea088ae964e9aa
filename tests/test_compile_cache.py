"""The persistent compilation cache (`jaxformers.core.compile_cache`).

- Across processes, on XLA:CPU: a fresh process compiles a model's jitted forward and writes the cache; a second fresh
  process reads every program back (cache hits, no misses: JAX's monitoring events) and computes the same logits.
- Bounded without slowing compilation: a folder over the cap loses its oldest entries when a process starts, and
  JAX's own cap (a scan of the whole folder on every write) stays off.
- Settings: the default folder honours XDG_CACHE_HOME, `JAXFORMERS_COMPILE_CACHE=0` leaves the cache off, a path
  moves it, and a cache folder or threshold the user set for JAX itself is never overridden.
Every test uses its own temporary folder (the user's cache is never touched) and restores JAX's settings, so the rest
of the suite runs as it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxformers.core import compile_cache

# A fresh process: a tiny Llama (random weights, no torch) through one jitted forward, with JAX's cache events counted.
CHILD = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from flax import nnx
    from jax._src import monitoring

    events = {}
    monitoring.register_event_listener(lambda e, **kw: events.__setitem__(e, events.get(e, 0) + 1))
    import jaxformers
    from jaxformers.core import compile_cache
    from jaxformers.core.options import Options
    from jaxformers.models import llama

    folder = compile_cache.configure()  # what `import jaxformers` does; a no-op once JAX has a folder
    cfg = llama.LlamaConfig.from_hf(dict(model_type="llama", vocab_size=97, hidden_size=48, num_attention_heads=6,
                                         num_key_value_heads=2, head_dim=10, intermediate_size=37,
                                         num_hidden_layers=2))
    model = llama.LlamaForCausalLM(cfg, options=Options(), rngs=nnx.Rngs(0))
    ids = np.arange(14, dtype=np.int32).reshape(2, 7) + 3
    before = dict(events)
    logits = jax.jit(lambda m, i: m(i, jax.numpy.ones_like(i)).logits)(model, ids)
    key = "/jax/compilation_cache/"
    count = lambda name: events.get(key + name, 0) - before.get(key + name, 0)
    print(json.dumps({"folder": str(folder), "hits": count("cache_hits"), "misses": count("cache_misses"),
                      "logits": np.asarray(logits).ravel()[:50].tolist()}))
    """
)


def run_child(env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))} | env
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_compiled_programs_back(tmp_path):
    env = {"JAXFORMERS_COMPILE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    cold = run_child(env)
    assert cold["folder"] == str(tmp_path / "cache")
    assert cold["misses"] >= 1 and cold["hits"] == 0
    written = compile_cache.entries(tmp_path / "cache")
    assert len(written) >= cold["misses"]  # every program compiled, however fast, was stored
    warm = run_child(env)
    assert warm["hits"] == cold["misses"] and warm["misses"] == 0
    assert warm["logits"] == cold["logits"]  # the executable read back computes the same numbers
    assert compile_cache.entries(tmp_path / "cache") == written


@pytest.fixture
def jax_cache_settings():
    """Restore JAX's cache settings after a test that changes them in this process (no program is compiled in
    between, so JAX never opens the folders these tests point it at)."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_compilation_cache_max_size", "jax_enable_compilation_cache")  # fmt: skip
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_compilation_cache_max_size", -1)
    jax.config.update("jax_enable_compilation_cache", True)
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def test_settings_default_folder_off_moved_and_the_users_own(tmp_path, monkeypatch, jax_cache_settings):
    for name in ("JAXFORMERS_COMPILE_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    monkeypatch.setenv("JAXFORMERS_COMPILE_CACHE", "0")
    assert compile_cache.configure() is None and jax.config.jax_compilation_cache_dir is None

    monkeypatch.delenv("JAXFORMERS_COMPILE_CACHE")
    default = tmp_path / "xdg" / "jaxformers" / "jax"
    assert compile_cache.default_dir() == default
    assert compile_cache.configure() == default and default.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(default)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_SECS
    assert jax.config.jax_compilation_cache_max_size == -1  # bounded by `prune` at start, not by JAX per write
    assert compile_cache.configure(str(tmp_path / "other")) == default  # JAX has a folder now: kept

    jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.configure(str(tmp_path / "moved")) == tmp_path / "moved"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "moved")

    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))  # the user's own JAX setting wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")
    assert compile_cache.configure(str(tmp_path / "moved")) == tmp_path / "users"
    jax.config.update("jax_compilation_cache_dir", None)
    compile_cache.configure(str(tmp_path / "moved"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0  # set through JAX's variable: kept

    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    assert compile_cache.configure(str(tmp_path / "moved")) is None
    assert jax.config.jax_compilation_cache_dir is None


def test_a_folder_over_the_cap_loses_its_oldest_entries_at_start(tmp_path, monkeypatch, jax_cache_settings):
    folder = tmp_path / "cache"
    folder.mkdir()
    for i in range(10):  # entry i written at time i; JAX's LRU recorded a recent use of entry 0
        (folder / f"k{i}-cache").write_bytes(b"x" * 1000)
        os.utime(folder / f"k{i}-cache", ns=(i * 10**9, i * 10**9))
    (folder / "k0-atime").write_bytes((20 * 10**9).to_bytes(8, "little"))
    (folder / "other-file").write_bytes(b"y" * 5000)  # not an entry: neither counted nor removed
    assert compile_cache.prune(folder, max_bytes=20_000) == 0  # under the cap: nothing happens
    assert len(compile_cache.entries(folder)) == 10

    assert compile_cache.prune(folder, max_bytes=8000, to=0.5) == 6  # down to 4 entries: the newest and entry 0
    assert [p.name for p in compile_cache.entries(folder)] == ["k0-cache", "k7-cache", "k8-cache", "k9-cache"]
    assert (folder / "k0-atime").exists() and (folder / "other-file").exists()

    monkeypatch.delenv("JAX_COMPILATION_CACHE_MAX_SIZE", raising=False)
    monkeypatch.setattr(compile_cache, "MAX_SIZE_BYTES", 3000)  # what `import jaxformers` does: prune, then use
    assert compile_cache.configure(str(folder)) == folder
    assert [p.name for p in compile_cache.entries(folder)] == ["k0-cache", "k9-cache"]
    assert jax.config.jax_compilation_cache_max_size == -1
