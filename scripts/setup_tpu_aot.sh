#!/usr/bin/env bash
# Install the TPU compiler (libtpu) for ahead-of-time compilation on a host without a TPU (jaxformers.aot, the
# `jaxformers plan` command and the tests in tests/aot), as an overlay: .venv/tpu, outside .venv's site-packages.
# Inside site-packages jax would probe for a TPU in every process; the overlay is loaded only where a TPU topology
# is asked for. The version is the one jax's own [tpu] extra pins for the installed jax. Skipped when present.
#   bash scripts/setup_tpu_aot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
REQ=$("$PY" - <<'PYEOF'
import importlib.metadata as md
reqs = [r.split(";")[0].strip() for r in md.requires("jax") or () if r.startswith("libtpu") and '"tpu"' in r]
if not reqs:
    raise SystemExit("the installed jax names no libtpu in its [tpu] extra")
print(reqs[0].replace(" ", ""))
PYEOF
)
STAMP=.venv/tpu/REQUIREMENT
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQ" ] && [ -f .venv/tpu/libtpu/libtpu.so ]; then
  exit 0
fi
rm -rf .venv/tpu
"$PY" -m pip install -q --no-deps --target .venv/tpu "$REQ"
echo "$REQ" > "$STAMP"
