"""Sharding tests run on 8 simulated CPU devices: XLA reads the flag when the backend starts, so it is set here, at
collection time, before any test touches a device. Tiny models have sharded sizes divisible by 8."""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax
import pytest
from sharding_helpers import build_llama


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.fail(
            f"tests/sharding need 8 devices, found {jax.device_count()}: the JAX backend started before this conftest "
            f"set XLA_FLAGS={_FLAG}. Run `pytest tests/sharding` on its own, or set the flag in the environment."
        )


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return build_llama(tmp_path_factory.mktemp("llama"))
