"""Sketch mode against exact mode on the same training run.

One exact window and one sketched window per m (2^12 ... 2^18) are stepped
after every optimizer step of the same run, so all see the same updates.
At every slide of the full window, each Gram's spectrum is compared with the
exact one: the relative error of sigma_1 ... sigma_5, whether k* agrees
where the exact k* is decisive (k_margin >= K_STAR_MARGIN), the relative
error of R, the Gram's observed relative error in Frobenius norm and the
one the record predicts (``sketch.rel_err``).

Workloads: grokking (modular addition, d_model 128, ~290k parameters) and
the same transformer at d_model 384, d_ff 1536 (~3.6M parameters).

    nice -n 10 python benchmarks/sketch_accuracy.py [--quick] [--threads 1]

writes benchmarks/results/sketch_accuracy.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from spectral_edge_fast import GramWindow
from spectral_edge_fast.analysis import spectrum
from spectral_edge_fast.analysis.events import K_STAR_MARGIN
from spectral_edge_fast.workloads.grokking import GrokkingConfig, GrokkingRun

HERE = os.path.dirname(os.path.abspath(__file__))
SIGMAS = 5  # the leading sigma_j compared

WORKLOADS = {
    # name: (config, steps, every, window); quick: a smoke run of the same code
    "grokking": (dict(d_model=128), 3000, 10, 16),
    "grokking_d384": (dict(d_model=384, d_ff=1536, batch_size=128), 600, 5, 16),
}
QUICK = {"grokking": 200, "grokking_d384": 20}


def run_workload(name: str, ms, quick: bool) -> dict:
    overrides, steps, every, W = WORKLOADS[name]
    if quick:
        steps, every, W = QUICK[name], 2, 4
    run = GrokkingRun(GrokkingConfig(**overrides))
    exact = GramWindow(run.model, window=W, every=every)
    sketched = {m: GramWindow(run.model, window=W, every=every, sketch=m) for m in ms}
    rows = {m: [] for m in ms}
    t0 = time.perf_counter()
    step_s = {m: 0.0 for m in ["exact", *ms]}
    for _ in range(steps):
        run.train_step()
        t = time.perf_counter()
        slid = exact.step()
        step_s["exact"] += time.perf_counter() - t
        for m, win in sketched.items():
            t = time.perf_counter()
            win.step()
            step_s[m] += time.perf_counter() - t
        if not slid or exact.count < W:
            continue
        state = exact.state()
        G = state.gram()
        ref = spectrum(G, vectors=False)
        for m, win in sketched.items():
            st = win.state()
            Gs = st.gram()
            sk = spectrum(Gs, vectors=False)
            k = min(SIGMAS, int(np.sum(ref.sigmas > 0)))
            rows[m].append({
                "sigma_rel": (np.abs(sk.sigmas[:k] - ref.sigmas[:k]) / ref.sigmas[:k]).tolist(),
                "k_exact": ref.k_star, "k_sketch": sk.k_star,
                "decisive": bool(ref.k_star is not None and ref.k_margin >= K_STAR_MARGIN),
                "R_rel": abs(sk.gap_ratio - ref.gap_ratio) / ref.gap_ratio if np.isfinite(ref.gap_ratio) else None,
                "gram_rel": float(np.linalg.norm(Gs - G) / np.linalg.norm(G)),
                "predicted": st.sketch_error()["rel_err"],
            })
    out = {"workload": name, "config": GrokkingConfig(**overrides).to_dict(), "params": run.n_params,
           "steps": steps, "every": every, "window": W, "groups": exact.groups, "wall_s": time.perf_counter() - t0,
           "results": []}
    for m in ms:
        r = rows[m]
        sig = np.array([x["sigma_rel"] for x in r]) if r else np.zeros((0, 1))
        decisive = [x for x in r if x["decisive"]]
        R = [x["R_rel"] for x in r if x["R_rel"] is not None]
        win = sketched[m]
        out["results"].append({
            "m": m, "analyses": len(r),
            "exact_groups": int(sum(win._plan.identity)), "groups": len(win.groups),
            "sigma_rel_median": np.median(sig, axis=0).tolist() if len(sig) else [],
            "sigma_rel_p90": np.quantile(sig, 0.9, axis=0).tolist() if len(sig) else [],
            "sigma1_rel_max": float(sig[:, 0].max()) if len(sig) else None,
            "decisive": len(decisive),
            "k_agree": (sum(x["k_sketch"] == x["k_exact"] for x in decisive) / len(decisive)) if decisive else None,
            "R_rel_median": float(np.median(R)) if R else None,
            "R_rel_p90": float(np.quantile(R, 0.9)) if R else None,
            "gram_rel_median": float(np.median([x["gram_rel"] for x in r])) if r else None,
            "predicted_rel_median": float(np.median([x["predicted"] for x in r])) if r else None,
            "memory_bytes": win.memory_bytes(),
            "step_ms": 1e3 * step_s[m] / steps,
        })
    out["exact"] = {"memory_bytes": exact.memory_bytes(), "step_ms": 1e3 * step_s["exact"] / steps}
    return out


def table(result: dict) -> str:
    lines = ["| workload | P | m | exact groups | σ₁ rel. err (median / p90) | σ₂…σ₅ rel. err (median) | "
             "k* agrees (decisive) | R rel. err (median / p90) | Gram rel. err: seen / predicted | memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in result["workloads"]:
        lines.append(f"| {w['workload']} | {w['params']:,} | exact | {len(w['groups'])} | | | | | | "
                     f"{w['exact']['memory_bytes'] / 1e6:.3g} MB |")
        for r in w["results"]:
            med = r["sigma_rel_median"]
            agree = "n/a" if r["k_agree"] is None else f"{100 * r['k_agree']:.0f}% of {r['decisive']}"
            lines.append(
                f"| | | 2^{int(np.log2(r['m']))} | {r['exact_groups']}/{r['groups']} | "
                f"{med[0]:.2%} / {r['sigma_rel_p90'][0]:.2%} | {', '.join(f'{x:.1%}' for x in med[1:])} | {agree} | "
                f"{r['R_rel_median']:.1%} / {r['R_rel_p90']:.1%} | {r['gram_rel_median']:.2%} / "
                f"{r['predicted_rel_median']:.2%} | {r['memory_bytes'] / 1e6:.3g} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps, W = 4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sketch_accuracy.json"))
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ms = [1 << e for e in range(12, 19)]
    t0 = time.perf_counter()
    result = {"benchmark": "sketch_accuracy", "command": " ".join(["python", *sys.argv]),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "k_star_margin": K_STAR_MARGIN,
              "workloads": [run_workload(name, ms, args.quick) for name in args.workloads]}
    result["wall_s"] = time.perf_counter() - t0
    if not args.quick:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
