"""Notebooks are examples, and examples are tests: every code cell of every notebook runs, in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            assert not any(line.lstrip().startswith(("!", "%")) for line in code.splitlines()), "shell magics in code"
            exec(compile(code, f"{path.name}[cell {i}]", "exec"), namespace)
