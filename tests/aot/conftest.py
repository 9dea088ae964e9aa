"""TPU ahead-of-time compilation tests: the real TPU compiler (libtpu) compiles for named topologies on this CPU host.

libtpu is not installed in the test environment itself (jax would then probe for a TPU in every test process):
`scripts/setup_tpu_aot.sh` puts it in `.venv/tpu`, and the `tpu` fixture loads that copy as a compile-only plugin
when the first test here needs it. Without it these tests fail (never skip) with the command that installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxformers import aot

REPO = Path(__file__).resolve().parents[2]
OVERLAY_LIBTPU = REPO / ".venv" / "tpu" / "libtpu" / "libtpu.so"


def pytest_configure(config):
    config.addinivalue_line("markers", "tpu_aot: compiles for TPU topologies (libtpu: bash scripts/setup_tpu_aot.sh)")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.tpu_aot)


@pytest.fixture(scope="session")
def tpu():
    """`tpu(name, num_slices=1)` -> `aot.TpuTopology`, each built once per session."""
    try:
        aot.load_libtpu(str(OVERLAY_LIBTPU) if OVERLAY_LIBTPU.is_file() else None)
    except aot.LibtpuNotFoundError as e:
        pytest.fail(f"{e}\nInstall it for the tests with: bash scripts/setup_tpu_aot.sh", pytrace=False)
    cache: dict = {}

    def get(name: str, num_slices: int = 1) -> aot.TpuTopology:
        if (name, num_slices) not in cache:
            cache[name, num_slices] = aot.tpu_topology(name, num_slices=num_slices)
        return cache[name, num_slices]

    return get
