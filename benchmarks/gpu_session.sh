#!/usr/bin/env bash
# On a CUDA machine, in one call: build the extension with its CUDA kernels,
# run the whole suite with the cuda and triton backends required on the GPU
# (every kernel test then also runs on the GPU against the float64
# reference), time the engine, and (stage "train") the monitor's overhead on
# a GPT-2 124M training run. Logs and JSON go to $OUT (default
# benchmarks/results/gpu); copy the JSON to benchmarks/results/ and run
# benchmarks/results_table.py to commit it.
#
#   bash benchmarks/gpu_session.sh            # build + tests + benchmark
#   STAGES="bench" bash benchmarks/gpu_session.sh
#   SEF_COMMIT=<sha> ...                       # a copied tree: the commit to record in the JSON
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"build test bench"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MAX_JOBS=${MAX_JOBS:-16}
status=0

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu_env.txt"

if [[ $STAGES == *build* ]]; then
  echo "== build"
  $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  $PY -c "import spectral_edge_fast as s; print(s.backends())" | tee -a "$OUT/gpu_env.txt"
fi
if [[ $STAGES == *test* ]]; then
  echo "== tests"
  xdist=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
  SEF_REQUIRE_BACKENDS=cpp,cuda,triton timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -rs $xdist -p no:cacheprovider tests \
    >"$OUT/tests.log" 2>&1 || status=1
  tail -25 "$OUT/tests.log"
fi
if [[ $STAGES == *bench* ]]; then
  echo "== engine benchmark"
  timeout ${BENCH_TIMEOUT:-600} $PY -m spectral_edge_fast.cli bench --device cuda --only step gram \
    --out "$OUT" >"$OUT/bench.log" 2>&1 || status=1
  tail -60 "$OUT/bench.log"
fi
if [[ $STAGES == *train* ]]; then
  echo "== training overhead"
  timeout ${TRAIN_TIMEOUT:-400} $PY benchmarks/train_overhead.py --out "$OUT/train_overhead.json" >"$OUT/train_overhead.log" 2>&1 || status=1
  tail -30 "$OUT/train_overhead.log"
fi
exit $status
