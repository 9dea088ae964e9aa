#!/usr/bin/env bash
# Everything that needs a real GPU, in one call: native kernel tests, the attention benchmarks (prefill and decode),
# generation in bf16 against PyTorch on CUDA (with the memory bandwidth each decode step reaches), int8 decoding and
# the quantized matmul's compiled form. Each stage has its own time limit and log; a failing stage does not stop the
# next one. Needs a CUDA GPU, jax with its CUDA plugin, torch and transformers; installs nothing from the network.
#
#   bash scripts/gpu_check.sh [OUTDIR [STAGE...]]   # logs and summary.txt in OUTDIR (default: $OUT, else
#                                                   # gpu-check/); the stages named, or the default set
#   QUICK=1 bash scripts/gpu_check.sh               # fewer repeats (a re-run on a tight budget)
# Stages (default set first): kernels attention generate generate_1b decode quant_matmul | tune attention_f32
# generate_int8 generate_f32 | quant_kernels quant_pallas quant_tune quant_rows quant_q8 generate_quant (the Pallas
# quantized matmul; generate_quant reads GEN_NEW and ATTN_IMPL)
#
# jaxformers runs from this checkout without an install (a `jaxformers/kernels` link to `kernels/` is made, as the
# package-dir mapping of an install would). If the machine's flax/optax/orbax/chex fail to import jaxformers, wheels
# of the versions this project pins are installed from .whl/ when that folder exists (pip download them there).
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false JAXFORMERS_COMPILE_CACHE=0
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU in the generation benchmark
REPEATS=10 GEN_REPEATS=3
[ -n "${QUICK:-}" ] && REPEATS=5 GEN_REPEATS=2
T0=$(date +%s)

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run with a limit, log to OUTDIR/NAME.log, print its tail
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  rc=$?
  echo "=== $name: rc=$rc in $(($(date +%s) - start)) s (limit $limit s; $(($(date +%s) - T0)) s since start)" \
    | tee -a "$OUTDIR/summary.txt"
  tail -n "${TAIL:-25}" "$OUTDIR/$name.log"
}

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import jaxformers.kernels" 2>/dev/null || ln -sfn ../kernels jaxformers/kernels  # not installed
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, jax, jaxlib, flax, optax, torch, transformers; print(sys.version.split()[0], 'jax', \
jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', \
torch.__version__, 'transformers', transformers.__version__); print(jax.devices())" 2>&1
} | tee "$OUTDIR/env.log"
import_check() {
  "$PY" -c "import jax, jax.numpy as jnp, jaxformers as jf, jaxformers.kernels
from jaxformers.training import make_train_step
assert jax.default_backend() == 'gpu', jax.default_backend()
print('jaxformers imports; a bf16 product on', jax.devices()[0].device_kind, float(jnp.ones((8, 8), jnp.bfloat16).sum()))"
}
if ! import_check >>"$OUTDIR/env.log" 2>&1; then
  tail -n 5 "$OUTDIR/env.log"
  if [ -d .whl ]; then
    echo "# the machine's packages do not import jaxformers: installing .whl/" | tee -a "$OUTDIR/env.log"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$OUTDIR/env.log" 2>&1
    export PYTHONPATH=/tmp/site:$PYTHONPATH
    import_check >>"$OUTDIR/env.log" 2>&1 || { tail -n 20 "$OUTDIR/env.log"; exit 1; }
  else
    exit 1
  fi
fi
tail -n 1 "$OUTDIR/env.log"

run_stage() {
  case $1 in
    kernels) stage kernels 150 "$PY" -m pytest -m gpu tests/kernels -q -p no:cacheprovider -n 4 -rfE ;;
    attention) stage attention 170 "$PY" scripts/bench_attention.py --emit-table --repeats "$REPEATS" ;;
    generate) stage generate 170 "$PY" scripts/bench_generate.py --dtype bfloat16 --bandwidth --models gpt2 llama \
      --batches 1 8 --repeats "$GEN_REPEATS" ;;
    generate_1b) stage generate_1b 130 "$PY" scripts/bench_generate.py --dtype bfloat16 --bandwidth \
      --models llama-1b --batches 1 --quant int8 --repeats "$GEN_REPEATS" ;;
    decode) stage decode 50 "$PY" scripts/bench_attention.py --decode --heads 32 --kv-heads 8 --emit-table \
      --repeats "$REPEATS" ;;
    quant_matmul) stage quant_matmul 40 "$PY" scripts/bench_quant_matmul.py --rows 1 8 64 ;;
    # tuning and second-look stages
    tune) stage tune 130 "$PY" scripts/tune_attention.py ;;
    attention_f32) stage attention_f32 70 "$PY" scripts/bench_attention.py --dtype float32 --lengths 1024 4096 8192 \
      --impls pallas xla --emit-table --repeats "$REPEATS" ;;
    generate_int8) stage generate_int8 90 "$PY" scripts/bench_generate.py --dtype bfloat16 --bandwidth \
      --models llama-1b --batches 1 --quant int8 --quant-compute int8 --no-torch --repeats "$GEN_REPEATS" ;;
    # the Pallas quantized matmul (issue 17): native tests, against XLA's forms, its tiles, decoding end to end
    quant_kernels) stage quant_kernels 100 "$PY" -m pytest -m gpu tests/kernels/test_quant_matmul.py -q \
      -p no:cacheprovider -n 4 -rfE ;;
    quant_pallas) stage quant_pallas 80 "$PY" scripts/bench_quant_matmul.py --rows 1 8 64 --bits 8 4 \
      --repeats 20 ;;
    quant_tune) stage quant_tune 100 "$PY" scripts/bench_quant_matmul.py --tune --rows 1 --bits 8 4 --repeats 20 ;;
    quant_rows) stage quant_rows 60 "$PY" scripts/bench_quant_matmul.py --rows 16 32 --bits 8 4 --repeats 50 ;;
    quant_q8) stage quant_q8 60 "$PY" scripts/bench_quant_matmul.py --rows 1 8 64 --bits 8 --int8-group-size 32 \
      --repeats 50 ;;
    generate_quant) stage generate_quant 170 "$PY" scripts/bench_generate.py --dtype bfloat16 --bandwidth \
      --models llama-1b --batches 1 --quant int8 int4 --quant-compute auto weight_only --no-torch --repeats 2 \
      --new "${GEN_NEW:-128}" --attn-impl "${ATTN_IMPL:-auto}" ;;
    # float32 at full precision on both sides: tokens must agree (bf16 greedy on random weights diverges at ties)
    generate_f32) JAX_DEFAULT_MATMUL_PRECISION=highest stage generate_f32 60 "$PY" scripts/bench_generate.py \
      --dtype float32 --models gpt2 llama --batches 8 --new 32 --repeats 1 ;;
    *) echo "unknown stage $1" ;;
  esac
}
shift $(($# > 0 ? 1 : 0))
STAGES=("$@")
# in order of importance: a cut-off run loses the last stages only
[ ${#STAGES[@]} -gt 0 ] || STAGES=(kernels attention generate generate_1b decode quant_matmul)
for s in "${STAGES[@]}"; do run_stage "$s"; done
echo "=== done in $(($(date +%s) - T0)) s" | tee -a "$OUTDIR/summary.txt"
