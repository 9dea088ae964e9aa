"""The transformers 4.57 reference for the tasks transformers 5 removed (question-answering, summarization,
translation, text2text-generation).

transformers 4.57 cannot share `.venv`'s site-packages with 5.x (and its import-time checks refuse tokenizers 0.23 and
huggingface_hub 1.x), so `bash scripts/setup_env.sh --test` installs it with the versions it accepts into the overlay
`.venv/tf4`, which shadows those three packages for a subprocess started with `PYTHONPATH=.venv/tf4`; torch, numpy and
the rest come from `.venv`.

    results = run_v4_pipeline("question-answering", folder, [
        {"kwargs": {"question": "Who?", "context": "Ann did."}},          # pipe(question=..., context=...)
        {"args": [{"question": "Who?", "context": ""}]},                  # pipe({...}): raises in 4.57
    ])
    results[0]  # {'score': 0.12, 'start': 0, 'end': 3, 'answer': 'Ann'}
    results[1]  # V4Error('ValueError', '`context` cannot be empty')

One subprocess per `run_v4_pipeline` call (about 6 s to import transformers 4.57 and build the pipeline): call it once
per test module from a module-scoped fixture, with every call the module needs.

Results come back through JSON: numpy scalars become python numbers (their `.item()`), numpy arrays and torch tensors
come back as numpy arrays of the same dtype, tuples stay tuples, and a call that raised gives a `V4Error` with the
exception's class name and message (so a test can check that we refuse the same inputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OVERLAY = Path(os.environ.get("JAXFORMERS_TF4", REPO / ".venv" / "tf4"))
VERSION_PREFIX = "4.57."


class V4Error:
    """A call that raised in transformers 4.57: the exception's class name (and its bases') and message."""

    def __init__(self, type: str, message: str, bases: list[str]):
        self.type, self.message, self.bases = type, message, bases

    def __repr__(self) -> str:
        return f"V4Error({self.type!r}, {self.message!r})"

    def isinstance(self, cls: type) -> bool:
        """Whether the 4.57 exception was an instance of the builtin exception class `cls` (e.g. ValueError)."""
        return cls.__name__ in self.bases


class OverlayMissing(RuntimeError):
    pass


def overlay_problem() -> str | None:
    """Why the 4.57 overlay cannot be used (None when it can)."""
    init = OVERLAY / "transformers" / "__init__.py"
    if not init.exists():
        return f"the transformers 4.57 overlay is missing ({init} not found)"
    dist = sorted(OVERLAY.glob("transformers-*.dist-info"))
    if not dist or not dist[-1].name.startswith("transformers-" + VERSION_PREFIX):
        return f"the overlay {OVERLAY} holds {dist[-1].name if dist else 'no dist-info'}, not transformers 4.57"
    return None


def run_v4_pipeline(task: str, folder, calls: list[dict[str, Any]], *, timeout: float = 300,
                    **init_kwargs) -> list:  # fmt: skip
    """Build `transformers.pipeline(task, model=folder, **init_kwargs)` once under transformers 4.57 (in a subprocess)
    and run each call `pipe(*call.get("args", []), **call.get("kwargs", {}))`; one result (or `V4Error`) per call.

    Arguments and init_kwargs must be JSON-serialisable. Raises `OverlayMissing` (a RuntimeError naming the setup
    command) when the overlay is not installed: the comparison tests fail rather than skip."""
    problem = overlay_problem()
    if problem:
        raise OverlayMissing(f"{problem}; install it with `bash scripts/setup_env.sh --test` (it adds .venv/tf4)")
    request = {"task": task, "model": str(folder), "init_kwargs": init_kwargs, "calls": calls}
    with tempfile.TemporaryDirectory(prefix="tf4-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "results.json"
        req.write_text(json.dumps(request))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OVERLAY), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
        proc = subprocess.run([sys.executable, __file__, str(req), str(out)], env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"the transformers 4.57 subprocess failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        payload = json.loads(out.read_text(), object_hook=_decode)
    if not payload["version"].startswith(VERSION_PREFIX):
        raise OverlayMissing(f"the subprocess imported transformers {payload['version']} from {payload['file']}, not "
                             "4.57: run `bash scripts/setup_env.sh --test`")  # fmt: skip
    return payload["results"]


def _decode(obj: dict):
    if "__tuple__" in obj:
        return tuple(obj["__tuple__"])
    if "__ndarray__" in obj:
        import numpy as np

        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__v4error__" in obj:
        return V4Error(*obj["__v4error__"])
    return obj


# --------------------------------------------------------------------------------- the subprocess (4.57 side)
def _encode(value):
    """JSON-ready copy of a pipeline result (tuples and arrays tagged so the parent restores them)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if type(value).__module__ == "torch" and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _main(request_path: str, results_path: str) -> None:
    import transformers

    request = json.loads(Path(request_path).read_text())
    pipe = transformers.pipeline(request["task"], model=request["model"], **request["init_kwargs"])
    results = []
    for call in request["calls"]:
        try:
            results.append(_encode(pipe(*call.get("args", []), **call.get("kwargs", {}))))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # the caller compares error conditions too (the tokenizers' panics included)
            bases = [c.__name__ for c in type(e).__mro__]
            results.append({"__v4error__": [type(e).__name__, str(e), bases]})
    payload = {"version": transformers.__version__, "file": transformers.__file__, "results": results}
    Path(results_path).write_text(json.dumps(payload))


if __name__ == "__main__":
    _main(*sys.argv[1:3])
