"""Notebooks are examples, and examples are tests: each notebook runs top to bottom in a real Jupyter kernel.

nbclient executes every cell in order through ipykernel, with IPython syntax (`%pip`), as Colab or Jupyter would. The
kernel is this interpreter (`sys.executable`, the test environment's Python): a kernelspec naming it is written to a
temporary directory and handed to nbclient's kernel manager, so no system-wide "python3" kernel can stand in. The
kernel's environment carries `JAXFORMERS_NOTEBOOK_SMALL=1` (each notebook's first cell reads it: fewer examples and
steps), `JAX_PLATFORMS=cpu` (the same run on any test machine) and the XLA device count (8 simulated CPU devices
for scaling.ipynb, the default single device otherwise).
Each notebook asserts what it shows inside its cells, so a wrong result fails the cell and this test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
KERNEL = "jaxformers-test-python"

# notebook -> simulated CPU devices its kernel starts with (None: the platform default, one CPU device)
NOTEBOOKS = {"quickstart.ipynb": None, "fine_tuning.ipynb": None, "scaling.ipynb": 8}


def test_every_notebook_is_run_here():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_is_valid_and_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before saving"
    assert "%pip install" in code[0].source and "JAXFORMERS_NOTEBOOK_SMALL" in code[0].source  # install + small
    assert all(c.metadata.get("tags", []) == [] for c in code)  # no cell is marked to be skipped or to raise


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec for this interpreter, in a directory of its own."""
    root = tmp_path_factory.mktemp("kernels")
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "jaxformers tests", "language": "python"}  # fmt: skip
    (root / KERNEL).mkdir()
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return root


def kernel_env(devices: int | None) -> dict[str, str]:
    """This process's environment with the small-settings switch and exactly the requested simulated devices (the
    sharding tests' conftest may have put a device count into XLA_FLAGS of this process), and XLA's default code
    generation (without the suite's compile-fast flags, tests/conftest.py): a notebook runs as a user runs it."""
    env = dict(os.environ, JAXFORMERS_NOTEBOOK_SMALL="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    suite_only = set(env.get("JAXFORMERS_TEST_XLA_FLAGS", "").split())
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG) and f not in suite_only]
    if devices is not None:
        flags.append(f"{DEVICE_FLAG}={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def test_kernels_get_xla_defaults_and_only_the_devices_asked_for(monkeypatch):
    suite_only = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    monkeypatch.setenv("JAXFORMERS_TEST_XLA_FLAGS", suite_only)
    monkeypatch.setenv("XLA_FLAGS", f"{DEVICE_FLAG}=8 --xla_cpu_enable_fast_math=false {suite_only}")
    assert kernel_env(None)["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert kernel_env(2)["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {DEVICE_FLAG}=2"


def execute(path: Path, kernel_dir: Path, workdir: Path, devices: int | None):
    """Run the notebook at `path` in `workdir` (files it writes land there); raises on the first failing cell."""
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(workdir)}})
    # cleanup_kc: shut the kernel down afterwards (nbclient keeps a kernel whose manager it was given alive, and each
    # idle kernel would hold its 1.5-2.5 GB until the test run ends)
    client.execute(env=kernel_env(devices), cleanup_kc=True)
    assert not km.is_alive(), "the notebook's kernel still runs after the notebook"
    return nb


def text_output(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, kernel_dir, tmp_path):
    nb = execute(NOTEBOOK_DIR / name, kernel_dir, tmp_path, NOTEBOOKS[name])
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)  # every code cell ran
    setup = text_output(code[0])  # the kernel saw the backend and devices its environment asked for
    assert f"backend cpu, {NOTEBOOKS[name] or 1} device(s)" in setup, setup
