"""core.host_memory: glibc keeps freed memory, so XLA:CPU's per-execution block of temporaries stops page-faulting.

The effect is measured in fresh processes (it must be applied before JAX's backend starts): a program whose
temporaries take 64 MiB page-faults each of its calls with glibc's defaults and not at all once memory is retained.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings

import pytest

from jaxformers.core import host_memory

PROBE = r"""
import json, resource, sys
import jaxformers as jf
import jax, jax.numpy as jnp

@jax.jit
def f(x, w, w2):  # y: a [4096, 4096] float32 temporary (64 MiB) between two matrix products
    y = jnp.tanh(x @ w)
    return jnp.sum(y @ w2)

args = jnp.ones((4096, 64)), jnp.ones((64, 4096)), jnp.ones((4096, 8))
f(*args).block_until_ready(); f(*args).block_until_ready()
faults = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(*args).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"faults": faults, "applied": jf.retain_host_memory(warn=False)}))
"""

glibc_linux = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="glibc's mallopt on Linux only")  # fmt: skip


def _probe(setting: str) -> dict:
    env = {**os.environ, host_memory.ENV_VAR: setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_retained_memory_stops_the_page_faults_of_each_call():
    default, retained = _probe("0"), _probe("1")
    pages = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    assert not default["applied"] and retained["applied"]
    assert min(default["faults"]) > pages // 2, default  # glibc returns the block: its pages fault in again
    assert max(retained["faults"]) < pages // 20, retained  # the same block is reused, already in memory


def test_setting_parses_the_variable_and_refuses_nonsense(monkeypatch):
    for value, want in (("1", True), ("on", True), ("0", False), ("false", False), ("", None)):
        monkeypatch.setenv(host_memory.ENV_VAR, value)
        assert host_memory.setting() is want
    monkeypatch.setenv(host_memory.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="JAXFORMERS_RETAIN_HOST_MEMORY must be 1 or 0"):
        host_memory.setting()


@glibc_linux
def test_too_late_in_a_running_process_warns_and_changes_nothing(monkeypatch):
    import jax.numpy as jnp

    jnp.ones(2).block_until_ready()  # this process's backend has started
    monkeypatch.setattr(host_memory, "_applied", False)
    monkeypatch.setenv(host_memory.ENV_VAR, "1")
    with pytest.warns(UserWarning, match="after JAX's backend started.*JAXFORMERS_RETAIN_HOST_MEMORY=1"):
        assert host_memory.retain_host_memory() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host_memory.retain_host_memory(warn=False) is False  # entry points: silent
    monkeypatch.setenv(host_memory.ENV_VAR, "0")
    assert host_memory.retain_host_memory() is False  # off wins, before anything else is checked
