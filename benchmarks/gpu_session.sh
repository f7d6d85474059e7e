#!/usr/bin/env bash
# On a CUDA machine, in one call: build the extension with its CUDA kernels,
# run the whole suite with the cuda and triton backends required on the GPU
# (every kernel test then also runs on the GPU against the float64
# reference), time the sketch kernels alone (stage "sketch": S theta of P =
# 1e8 and 1e9 parameters in 100 tensors, m = 4096 and 65536, against the copy
# bandwidth, into sketch.json), track a 7B-parameter list in sketch mode on
# the one card (stage "scale": W = 64, fp32 and bf16 parameters, into
# sketch_scale_cuda_*.json), time the engine, and (stage "train") the
# monitor's overhead on a GPT-2 124M training run. Logs and JSON go to $OUT (default
# benchmarks/results/gpu); copy the JSON to benchmarks/results/ and run
# benchmarks/results_table.py to commit it.
#
#   bash benchmarks/gpu_session.sh            # build + tests + benchmark
#   STAGES="bench" bash benchmarks/gpu_session.sh
#   STAGES="sketch" SKETCH_P="1e8" bash benchmarks/gpu_session.sh
#   SEF_COMMIT=<sha> ...                       # a copied tree: the commit to record in the JSON
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"build test sketch scale bench"}
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
if [[ $STAGES == *sketch* ]]; then
  echo "== sketch kernels"
  SKETCH_P=${SKETCH_P:-"1e8 1e9"} SKETCH_DEVICE=${SKETCH_DEVICE:-cuda} SKETCH_OUT="$OUT/sketch.json" \
    timeout ${SKETCH_TIMEOUT:-300} $PY - >"$OUT/sketch.log" 2>&1 <<'EOF' || status=1
# Each backend's sketch call alone (out = S theta, the window's per-step
# kernel in sketch mode) on parameters of both storage types; "agree": the
# largest difference from the first backend's S theta, relative to its
# largest bucket (float64 sums in another order: about 1e-15).
import json, os
import torch
from spectral_edge_fast.bench import copy_bandwidth, machine, timed
from spectral_edge_fast.kernels import backend_status, get_backend
from spectral_edge_fast.layout import ParamLayout
from spectral_edge_fast.sketch import SketchPlan

device = torch.device(os.environ["SKETCH_DEVICE"])
bandwidth = copy_bandwidth(device)
rows = []
for P in (int(float(p)) for p in os.environ["SKETCH_P"].split()):
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device=device).manual_seed(0)
        named = [(f"blocks.{i // 10}.t{i % 10}", torch.randn(P // 100, generator=gen, device=device).to(dtype))
                 for i in range(100)]
        layout = ParamLayout(named, None)
        views = layout.views()
        for m in (4096, 65536):
            plan = SketchPlan(layout, None, m)
            first = None
            for name in ("cuda", "cpp", "triton", "torch"):
                if not backend_status(name, device)[0] or (name == "torch" and P > 1e8):  # torch: minutes at 1e9
                    continue
                be = get_backend(name, device)
                out = torch.zeros(plan.size, dtype=torch.float64, device=device)
                scratch = torch.zeros(plan.scratch, dtype=torch.float64, device=device)
                t = timed(lambda: be.sketch(views, plan.segs, plan.groups, out, scratch), device, 7)
                first = out.clone() if first is None else first
                nbytes = layout.numel * dtype.itemsize
                rows.append(dict(backend=name, P=layout.numel, m=m, dtype=str(dtype).split(".")[1], **t,
                                 gbps=nbytes / t["ms"] / 1e6, of_copy=nbytes / t["ms"] * 1e3 / bandwidth,
                                 agree=float((out - first).abs().max() / first.abs().max())))
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
        del named, layout, views
with open(os.environ["SKETCH_OUT"], "w") as f:
    json.dump(dict(benchmark="sketch_kernels", command=f"STAGES=sketch SKETCH_P=\"{os.environ['SKETCH_P']}\" bash benchmarks/gpu_session.sh", machine=machine(device), copy_bandwidth_gbps=bandwidth / 1e9,
                   results=rows), f, indent=1)
EOF
  tail -20 "$OUT/sketch.log"
fi
if [[ $STAGES == *scale* ]]; then
  echo "== 7B parameters in sketch mode"
  for dtype in bf16 fp32; do
    timeout ${SCALE_TIMEOUT:-240} $PY benchmarks/sketch_scale.py --device cuda --P ${SCALE_P:-7e9} --dtype $dtype \
      --out "$OUT/sketch_scale_cuda_$dtype.json" >"$OUT/scale_$dtype.log" 2>&1 || status=1
    tail -4 "$OUT/scale_$dtype.log"
  done
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
