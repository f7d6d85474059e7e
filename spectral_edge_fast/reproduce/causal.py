"""``spectral-edge reproduce causal``: Section 28, the causal test of the loss
decomposition (Thm 17.1).

The multi-task modular model (add, mul and x^2+y^2 mod 97, one model with a
task token and a head per task, ~315K parameters, weight decay 1.0, seed 42)
is trained through grokking while its parameters are kept every
``interval`` steps. At nine timepoints across the grokking transition and
for windows of ``W = 10, 20, 30, 40`` checkpoint updates centred on each:

* the window ``X`` (rows ``theta_{i+1} - theta_i``) gives the signal
  directions ``v_j`` and strengths ``sigma_j`` (its exact float64 Gram);
  the first ``modes`` of those both half-windows resolve are scored;
* ``alpha_j`` is the overlap of mode ``j`` between the two half-windows
  (``half_window_overlaps``);
* ``G_j^train``, ``G_j^val``: the training- and test-loss gradients at the
  centre, projected on ``v_j`` (``loss_decomposition``, which also gives
  ``I_j = alpha_j G_j^train G_j^val``); every loss and gradient is taken
  on the same fixed random ``examples`` pairs of each split;
* the actual effect of direction ``j``: the test loss at the window's end
  with ``v_j`` projected out of the window's total update ``Delta``, minus
  the test loss at its end (positive: removing the direction hurts), and the
  first-order Taylor term of the paper, ``-<grad L_test, v_j><v_j, Delta>``
  (``first_order_split``, gradient at the window's end).

The claims are the Spearman rank correlations of ``I_j`` (and of
``G_j^train G_j^val`` alone) with the effect, pooled over timepoints and
directions, per ``W``.
"""
from __future__ import annotations

import json
import os
import time
from typing import List, Sequence

import numpy as np

from .common import Settings, claim, table

SUMMARY = ("Section 28: per-direction loss decomposition I_j = alpha_j G_j^train G_j^val against removing v_j "
           "from the update, multi-task grokking, W = 10..40")
#: one model and its checkpoints: another seed is another run of the command
MAX_SEEDS = 1

TASKS = "add,mul,x2+y2"


def plan(settings: Settings, seed: int) -> dict:
    """Model, schedule, checkpoint interval, windows and timepoints of this mode."""
    from ..workloads.grokking import GrokkingConfig

    p, d = settings.pick((23, 64), (97, 128), (97, 128))
    config = GrokkingConfig(task=TASKS, p=p, d_model=d, d_ff=2 * d, weight_decay=1.0, seed=seed,
                            device=settings.device)
    steps, interval, eval_every = settings.pick((800, 10, 50), (6000, 25, 100), (30000, 200, 200))
    windows = settings.pick((4, 6, 8, 10), (10, 20, 30, 40), (10, 20, 30, 40))
    return {"config": config, "steps": steps, "interval": interval, "eval_every": eval_every,
            "windows": windows, "timepoints": settings.pick(5, 9, 9), "modes": settings.pick(4, 10, 20),
            "examples": settings.pick(512, 4096, 16384)}


def run_dir(settings: Settings, seed: int) -> str:
    return os.path.join(settings.out, f"seed{seed}")


def train(settings: Settings, seed: int) -> None:
    """Train until every task has grokked and the widest window fits after
    it (or the plan's steps), keeping the flat parameters every ``interval``
    steps in ``checkpoints.npy`` and the metrics in ``metrics.jsonl``."""
    import torch
    from tqdm.auto import tqdm

    from ..workloads.grokking import GROK_ACCURACY, GrokkingRun

    p = plan(settings, seed)
    out = run_dir(settings, seed)
    os.makedirs(out, exist_ok=True)
    run = GrokkingRun(p["config"])
    params = list(run.model.parameters())
    n_max = p["steps"] // p["interval"] + 1
    store = np.lib.format.open_memmap(os.path.join(out, "checkpoints.partial.npy"), mode="w+", dtype=np.float32,
                                      shape=(n_max, sum(x.numel() for x in params)))
    keys = [f"test_acc_{t}" for t in run.tasks]
    grokked, metrics, stop = None, [], p["steps"]
    margin = max(p["windows"]) // 2 * p["interval"]
    t0 = time.time()
    bar = tqdm(total=p["steps"], desc=f"causal seed {seed}", unit="step", disable=not settings.progress,
               dynamic_ncols=True, mininterval=0.5)
    while run.step <= stop:
        if run.step % p["interval"] == 0:
            store[run.step // p["interval"]] = torch.nn.utils.parameters_to_vector(params).detach().cpu().numpy()
        if run.step % p["eval_every"] == 0:
            m = {"step": run.step, **run.evaluate()}
            metrics.append(m)
            if grokked is None and all(m[k] >= GROK_ACCURACY for k in keys):
                grokked = run.step  # every task has grokked: train on until the widest window fits after it
                stop = min(stop, grokked + 2 * margin)
            bar.set_postfix(test=f"{m['test_acc']:.2f}", refresh=False)
        if run.step == stop:
            break
        run.train_step()
        bar.update(1)
    bar.close()
    store.flush()
    n = run.step // p["interval"] + 1
    np.save(os.path.join(out, "checkpoints.npy"), np.asarray(store[:n]))
    del store
    os.remove(os.path.join(out, "checkpoints.partial.npy"))
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"config": p["config"].to_dict(), "plan": {k: p[k] for k in ("steps", "interval", "eval_every")},
                   "steps": run.step, "grokked": grokked, "n_params": run.n_params, "train_s": time.time() - t0}, f)


def finished(settings: Settings, seed: int):
    """``{"meta", "metrics", "checkpoints"}`` of a run :func:`train` finished
    in :func:`run_dir` with this mode's plan, else None (an analysis change
    then reruns without training)."""
    p = plan(settings, seed)
    out = run_dir(settings, seed)
    path = os.path.join(out, "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    want = {"config": json.loads(json.dumps(p["config"].to_dict())),
            "plan": {k: p[k] for k in ("steps", "interval", "eval_every")}}
    if any(meta.get(k) != v for k, v in want.items()):
        return None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    return {"meta": meta, "metrics": metrics, "checkpoints": np.load(os.path.join(out, "checkpoints.npy"), mmap_mode="r")}


def timepoints(metrics: Sequence[dict], grokked, interval: int, n_checkpoints: int, half: int, count: int) -> List[int]:
    """``count`` checkpoint indices evenly across the grokking transition:
    from the first evaluation with test accuracy at least 0.1 to the step at
    which every task has grokked (the last step when not all did), each with
    ``half`` checkpoints on either side.

    Raises:
        RuntimeError: fewer than ``2 half + 1`` checkpoints.
    """
    lo, hi = half, n_checkpoints - 1 - half
    if hi < lo:
        raise RuntimeError(f"{n_checkpoints} checkpoints: the widest window needs at least {2 * half + 1}; "
                           "train longer or keep checkpoints more often")
    end = grokked if grokked is not None else metrics[-1]["step"]
    start = next((m["step"] for m in metrics if m["test_acc"] >= 0.1), end)
    idx = np.round(np.linspace(min(start, end), end, count) / interval).astype(int)
    return [int(i) for i in np.clip(idx, lo, hi)]


class _Evaluator:
    """Loss and gradient of the run's model at flat parameter vectors
    (float64 in, float64 out; the model computes in float32), on a fixed
    random subset of ``examples`` pairs of each split: every loss and
    gradient of the analysis sees the same pairs."""

    def __init__(self, config, examples: int):
        import torch

        from ..workloads.grokking import GrokkingRun

        self.torch = torch
        self.run = GrokkingRun(config)
        self.run.model.eval()
        self.params = list(self.run.model.parameters())
        pick = torch.Generator().manual_seed(config.seed + 3)
        self.sets = {}
        for split, (x, y) in (("train", (self.run.train_x, self.run.train_y)), ("test", (self.run.test_x, self.run.test_y))):
            idx = torch.randperm(len(x), generator=pick)[:examples]
            self.sets[split] = (x[idx], y[idx])

    def _load(self, theta: np.ndarray) -> None:
        self.torch.nn.utils.vector_to_parameters(self.torch.from_numpy(np.array(theta, dtype=np.float32)), self.params)

    def _losses(self, split: str, chunk: int = 4096):
        F = self.torch.nn.functional
        x, y = self.sets[split]
        for i in range(0, len(x), chunk):
            yield F.cross_entropy(self.run.model(x[i : i + chunk]), y[i : i + chunk], reduction="sum").double() / len(x)

    def loss(self, theta: np.ndarray, split: str = "test") -> float:
        self._load(theta)
        with self.torch.no_grad():
            return float(sum(self._losses(split)))

    def gradient(self, theta: np.ndarray, split: str) -> np.ndarray:
        self._load(theta)
        self.run.model.zero_grad(set_to_none=False)
        for part in self._losses(split):
            part.backward()
        return self.torch.nn.utils.parameters_to_vector([p.grad for p in self.params]).double().numpy()


def analyse(files: dict, windows: Sequence[int], count: int, modes: int, examples: int) -> dict:
    """Every window's predictions and measured effects at each timepoint, for
    the first ``modes`` directions (at most) that both half-windows resolve,
    losses and gradients on ``examples`` pairs of each split."""
    from ..analysis import first_order_split, half_window_overlaps, loss_decomposition, spectrum
    from ..analysis._common import EPS
    from ..analysis.decomposition import spearman
    from ..analysis.events import _pearson
    from ..workloads.grokking import GrokkingConfig

    meta, metrics, ckpt = files["meta"], files["metrics"], files["checkpoints"]
    config = GrokkingConfig(**meta["config"])
    interval = meta["plan"]["interval"]
    ev = _Evaluator(config, examples)
    points = timepoints(metrics, meta["grokked"], interval, len(ckpt), max(windows) // 2, count)
    at = {c: {s: ev.gradient(ckpt[c], s) for s in ("train", "test")} for c in sorted(set(points))}
    per_window = {}
    for W in windows:
        h = W // 2
        rows = []
        for c in points:
            thetas = np.asarray(ckpt[c - h : c + h + 1], dtype=np.float64)
            X = np.diff(thetas, axis=0)  # W updates, oldest first
            G = X @ X.T  # exact in float64: the rows are float32 differences
            spec = spectrum(G, eps=EPS)
            ov = half_window_overlaps(G, eps=EPS)
            m = min(ov.n_modes, modes)  # modes both half-windows resolve
            alpha = np.zeros(spec.n)
            alpha[:m] = ov.overlaps[:m]
            dec = loss_decomposition(G, X @ at[c]["train"], X @ at[c]["test"], alpha, config.lr, spectrum=spec)
            r_total = G.sum(axis=1)  # X Delta, Delta the window's whole update
            end = thetas[-1]
            g_end = ev.gradient(end, "test")
            taylor = first_order_split(G, X @ g_end, r_total, spectrum=spec)
            centre = first_order_split(G, X @ at[c]["test"], r_total, grad_dot_update=float(at[c]["test"] @ (end - thetas[0])),
                                       spectrum=spec)
            loss_end, loss_start = ev.loss(end), ev.loss(thetas[0])
            removal = []
            for j in range(m):
                v = X.T @ spec.vectors[:, j] / spec.sigmas[j]
                removal.append(ev.loss(end - taylor.update_coefficients[j] * v) - loss_end)
            rows.append({
                "step": c * interval, "modes": m, "sigma": spec.sigmas[:m].tolist(), "alpha": alpha[:m].tolist(),
                "grad_train": dec.grad_train[:m].tolist(), "grad_val": dec.grad_val[:m].tolist(),
                "importance": dec.importance[:m].tolist(),
                "removal": removal, "taylor": (-taylor.terms[:m]).tolist(),
                "loss_change": loss_end - loss_start, "taylor_total": centre.total, "taylor_in_span": centre.in_span,
            })
        pooled = {k: np.concatenate([r[k] for r in rows]) for k in ("sigma", "alpha", "grad_train", "grad_val",
                                                                     "importance", "removal", "taylor")}
        no_alpha = pooled["grad_train"] * pooled["grad_val"]
        per_window[W] = {
            "timepoints": rows, "directions": int(pooled["removal"].size),
            "rho_alpha": spearman(pooled["importance"], pooled["removal"]),
            "rho_no_alpha": spearman(no_alpha, pooled["removal"]),
            "rho_alpha_taylor": spearman(pooled["importance"], pooled["taylor"]),
            "rho_no_alpha_taylor": spearman(no_alpha, pooled["taylor"]),
            "rho_taylor_removal": spearman(pooled["taylor"], pooled["removal"]),
            "rho_sigma": spearman(pooled["sigma"], pooled["removal"]),
            "mean_alpha": float(np.mean(pooled["alpha"])),
            "r_total": _pearson(np.array([r["taylor_total"] for r in rows]), np.array([r["loss_change"] for r in rows])),
        }
    return {"seed": config.seed, "steps": meta["steps"], "grokked": meta["grokked"], "n_params": meta["n_params"],
            "interval": interval, "timepoint_steps": [c * interval for c in points],
            "train_s": round(meta["train_s"], 1), "windows": {str(W): v for W, v in per_window.items()}}


PAPER_ALPHA = {10: 0.21, 20: 0.42, 30: 0.75, 40: 0.68}
PAPER_NO_ALPHA = {10: 0.76, 20: 0.72, 30: 0.63, 40: 0.35}


def _rhos(r: dict, key: str) -> str:
    return ", ".join(f"{float(v[key]):.2f}" for v in r["windows"].values())


def claims(r: dict) -> List[dict]:
    """The paper's Section 28 beside this run, with verdicts."""
    w = {int(k): v for k, v in r["windows"].items()}
    Ws = sorted(w)
    small, large = Ws[: len(Ws) // 2], Ws[len(Ws) // 2 :]
    names = "/".join(map(str, Ws))
    out = []
    good = [W for W in Ws if w[W]["rho_alpha"] > 0]
    out.append(claim(f"I_j = alpha_j G_j^train G_j^val ranks the directions by their effect on the test loss "
                     f"(Spearman rho, W = {names})", "0.21, 0.42, 0.75, 0.68",
                     f"removal: {_rhos(r, 'rho_alpha')}; Taylor: {_rhos(r, 'rho_alpha_taylor')}",
                     "reproduced" if all(w[W]["rho_alpha"] >= 0.5 for W in large) and len(good) == len(Ws) else
                     "partly" if good else "not reproduced",
                     f"removal and the first-order term rank the effects alike only loosely (rho "
                     f"{_rhos(r, 'rho_taylor_removal')}): removing a whole direction is far from first order. "
                     "Effect of v_j: test loss at the window's end with v_j projected out of the window's update, "
                     "minus the loss at its end; pooled over timepoints and scored modes. "
                     "reproduced: rho >= 0.5 at the larger windows and > 0 at all"))
    out.append(claim(f"The gradient projections alone, G_j^train G_j^val, rank them (W = {names})",
                     "0.76, 0.72, 0.63, 0.35", f"removal: {_rhos(r, 'rho_no_alpha')}; Taylor: "
                     f"{_rhos(r, 'rho_no_alpha_taylor')}",
                     "reproduced" if all(w[W]["rho_no_alpha"] >= 0.5 for W in small) else
                     "partly" if any(w[W]["rho_no_alpha"] > 0 for W in Ws) else "not reproduced",
                     ("against removal they rank the effects backwards at every W; "
                      if all(w[W]["rho_no_alpha"] < 0 for W in Ws) else "")
                     + "reproduced: rho >= 0.5 at the smaller windows"))
    helps = [W for W in Ws if w[W]["rho_alpha"] > w[W]["rho_no_alpha"]]
    crossover = bool(helps) and helps == Ws[Ws.index(helps[0]):] and helps[0] in large and Ws[0] not in helps
    out.append(claim("alpha helps only from W = 30 on (a crossover: the half-windows need enough updates)",
                     "helps at W = 30, 40; not at 10, 20",
                     "alpha helps at W = " + (", ".join(map(str, helps)) if helps else "none"),
                     "reproduced" if crossover and helps[0] == large[0] else "partly" if crossover or
                     (helps and helps[-1] == Ws[-1]) else "not reproduced",
                     f"mean alpha {_rhos(r, 'mean_alpha')} for W = {names}; "
                     "partly: a crossover at another W, or alpha helping at the largest W only"))
    out.append(claim("The first-order Taylor term predicts the total test-loss change across timepoints (Pearson r)",
                     "a high r (the text gives no figure)",
                     f"r = {_rhos(r, 'r_total')} (W = {names}, {len(r['timepoint_steps'])} timepoints)",
                     "reproduced" if all(w[W]["r_total"] >= 0.7 for W in Ws) else
                     "partly" if any(w[W]["r_total"] >= 0.7 for W in Ws) else "not reproduced",
                     "the first-order term tracks each window's total change in test loss "
                     "(<grad L_test(centre), Delta> against L_test(end) - L_test(start)); reproduced: r >= 0.7 at every W"
                     if all(w[W]["r_total"] >= 0.7 for W in Ws) else
                     "<grad L_test(centre), Delta> against L_test(end) - L_test(start); reproduced: r >= 0.7 at every W"))
    out.append(claim("sigma_j alone does not rank the instantaneous effects",
                     "a low rho for sigma_j (the text gives no figure)", f"rho = {_rhos(r, 'rho_sigma')}",
                     "reproduced" if all(abs(w[W]["rho_sigma"]) < 0.3 for W in Ws) else
                     "partly" if any(abs(w[W]["rho_sigma"]) < 0.3 for W in Ws) else "not reproduced",
                     ("in the wider windows the strongest directions are the ones whose removal costs most; "
                      if w[Ws[-1]]["rho_sigma"] >= 0.3 else "")
                     + "Spearman rho of sigma_j with the removal effect; reproduced: |rho| < 0.3 at every W"))
    out.append(claim("Post-convergence, sigma_j predicts each direction's total causal importance", "a high rho",
                     "—", "not testable here",
                     "needs each direction's importance integrated over training, which the windows here do not "
                     "accumulate; this run measures instantaneous effects only"))
    return out


def tables(r: dict) -> List[dict]:
    from ..analysis.decomposition import spearman

    rows = [[int(W), v["directions"], v["mean_alpha"], v["rho_alpha"], v["rho_no_alpha"], v["rho_alpha_taylor"],
             v["rho_no_alpha_taylor"], v["rho_taylor_removal"], v["rho_sigma"], v["r_total"],
             PAPER_ALPHA.get(int(W)), PAPER_NO_ALPHA.get(int(W))] for W, v in r["windows"].items()]
    out = [table("Spearman rho per window", ["W", "directions", "mean alpha", "I vs removal", "G G vs removal",
                                             "I vs Taylor", "G G vs Taylor", "Taylor vs removal", "sigma vs removal",
                                             "Taylor total r", "paper I", "paper G G"], rows)]
    steps = r["timepoint_steps"]
    per_point = []
    for i, s in enumerate(steps):
        row = [s]
        for v in r["windows"].values():
            t = v["timepoints"][i]
            row += [spearman(t["importance"], t["removal"]),
                    spearman(np.multiply(t["grad_train"], t["grad_val"]), t["removal"])]
        per_point.append(row)
    cols = ["step"] + [f"W={W} {k}" for W in r["windows"] for k in ("I", "G G")]
    out.append(table("Spearman rho against removal at each timepoint", cols, per_point))
    return out


def run(settings: Settings) -> dict:
    seed = settings.seeds_or([42], [42], [42])[0]
    p = plan(settings, seed)
    files = finished(settings, seed)
    if files is None:
        train(settings, seed)
        files = finished(settings, seed)
    r = analyse(files, p["windows"], p["timepoints"], p["modes"], p["examples"])
    grok = f"every task grokked at step {r['grokked']}" if r["grokked"] is not None else "not every task grokked"
    return {
        "experiment": "causal",
        "config": {"model": p["config"].to_dict(), "seeds": [seed], "n_params": r["n_params"],
                   **{k: p[k] for k in ("steps", "interval", "eval_every", "windows", "timepoints", "modes", "examples")}},
        "summary": (f"{TASKS.replace(',', ', ')} mod {p['config'].p} in one {r['n_params'] / 1e3:.0f}K-parameter model, "
                    f"weight decay 1.0, seed {seed}, parameters kept every {p['interval']} steps; {grok}, "
                    f"training stopped at {r['steps']} ({r['train_s'] / 60:.0f} min). Timepoints at steps "
                    f"{', '.join(map(str, r['timepoint_steps']))}."),
        "claims": claims(r),
        "tables": tables(r),
        "runs": [r],
    }
