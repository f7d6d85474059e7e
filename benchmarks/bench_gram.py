"""Time one slide of the rolling-window Gram: naive torch, incremental torch
and every available compiled backend; print the table and write JSON with
the device and commit to benchmarks/results/.

    python benchmarks/bench_gram.py                       # CPU: P=4e7, W=16, 100 tensors
    python benchmarks/bench_gram.py --device cuda --gpt2 --storage fp32 bf16
"""
import os
import sys

from spectral_edge_fast.bench import main, parse_args

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        device = parse_args(argv).device.split(":")[0]
        argv += ["--out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"gram_{device}.json")]
    sys.exit(main(argv))
