"""The ``spectral-edge`` command.

    spectral-edge demo      train the grokking workload with and without weight
                            decay, monitored live; write the report; summarise
    spectral-edge analyze   the same records and report from a directory of
                            checkpoints
    spectral-edge bench     time the engine's step, sef.gram against x @ x.T, and
                            the analysis
    spectral-edge reproduce one of the paper's experiments (--list names them),
                            with its claims table: the paper's figures beside ours

``python -m spectral_edge_fast.cli ...`` is the same command. A mistake in
the arguments is one ``error:`` line and exit code 2; a failure while running
(a checkpoint that cannot be read, an output directory that cannot be
written) one ``error:`` line and exit code 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import torch

GROUPS = {"auto": "auto", "tensor": "tensor", "none": None}
DESCRIPTION = ("Spectral-edge diagnostics of neural-network training: the rolling-window Gram matrix of parameter "
               "updates, and the gap position k*, gap ratio R and gap events read from its spectrum.")


def at_least(low: int):
    """An argparse type: an integer >= ``low`` (``2e4`` allowed)."""

    def parse(text: str) -> int:
        try:
            number = float(text)
            value = int(number) if number == int(number) else None
        except (ValueError, OverflowError):
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def device_arg(text: str) -> str:
    """An argparse type: a device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise argparse.ArgumentTypeError(f"CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"there is no {text} ({torch.cuda.device_count()} GPU(s) visible)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1)")
    return text


# -- demo ---------------------------------------------------------------------


def describe_events(events: List[dict], grok: Optional[int]) -> List[str]:
    """Lines on the whole model's gap events and where they fall against
    grokking."""
    lines = []
    gap = [e for e in events if not e.get("group") and e["kind"] in ("gap_collapse", "gap_opening")]
    shifts = [e for e in events if not e.get("group") and e["kind"] == "k_star_shift"]
    for e in gap:
        line = f"{e['kind'].replace('_', ' '):>12} at step {e['step']:>5} (R = {e['value']:.3g})"
        if grok is not None:
            lead = grok - e["step"]
            line += (f": {lead} steps before grokking" if lead > 0 else
                     f": {-lead} steps after grokking" if lead < 0 else ": at grokking")
        lines.append(line)
    if not gap:
        lines.append("no gap collapse or opening")
    if shifts:
        last = [e for e in shifts if grok is None or e["step"] <= grok][-3:]
        recent = ", ".join(f"{e['previous']}->{e['value']} at {e['step']}" for e in last)
        where = "the last before grokking" if grok is not None else "the last"
        lines.append(f"k* shifts: {len(shifts)}" + (f" ({where}: {recent})" if recent else ""))
    return lines


def demo(args) -> int:
    from .offline import writable_dir
    from .report import render
    from .reproduce.training import train_monitored
    from .workloads.grokking import GrokkingConfig

    try:
        writable_dir(args.out)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    runs = {}
    print(f"spectral-edge demo: {args.task} mod {args.p}, {args.steps} steps per run, seed {args.seed}, on {args.device}; "
          f"window W={args.window} of updates over {args.every} step(s), analysed every {args.analyze_every} steps")
    for wd in (1.0, 0.0):
        config = GrokkingConfig(task=args.task, p=args.p, weight_decay=wd, seed=args.seed, device=args.device)
        runs[wd] = train_monitored(config, args.steps, os.path.join(args.out, f"wd{wd:g}"), args.window, args.every,
                                   args.analyze_every, args.eval_every, progress=not args.quiet)
    report = render(args.out)
    print()
    for wd, r in runs.items():
        m = r["metrics"]
        head = (f"grokked at step {r['grok_step']}" if r["grok_step"] is not None
                else f"did not grok in {args.steps} steps")
        print(f"weight decay {wd:g}: {head} (final train acc {m['train_acc']:.3f}, test acc {m['test_acc']:.3f})")
        for line in describe_events(r["monitor"].events(), r["grok_step"]):
            print("    " + line)
    print(f"(an event is dated by the last step of the first window that shows it; a window spans the "
          f"{args.window * args.every} steps before it)")
    print(f"\nreport: {os.path.abspath(report)}")
    print(f"records: {os.path.abspath(args.out)}/wd*/spectral.jsonl (one per analysis), metrics.jsonl, *.csv, *.png")
    print(f"wall time: {time.time() - t0:.0f} s")
    return 0


# -- analyze ----------------------------------------------------------------------


def analyze(args) -> int:
    from .offline import CheckpointError, analyze_checkpoints
    from .report import render

    try:
        monitor = analyze_checkpoints(args.ckpt_dir, out=args.out, window=args.window, every=args.every,
                                      groups=GROUPS[args.groups], sketch=args.sketch, backend=args.backend,
                                      storage_dtype=getattr(torch, args.storage_dtype), on_error=args.on_error, lr=args.lr,
                                      allow_pickle=args.allow_pickle, include=args.include, exclude=args.exclude,
                                      probes=args.probes, overwrite=args.overwrite, progress=not args.quiet)
    except (CheckpointError, OSError, ValueError) as exc:
        skippable = isinstance(exc, CheckpointError) and exc.path != args.ckpt_dir and args.on_error == "raise"
        print(f"error: {exc}" + (" (pass --on-error skip to leave such files out)" if skippable else ""),
              file=sys.stderr)
        return 1
    summary = monitor.summary()
    n = summary["analyses"]
    print(f"{n} analys{'is' if n == 1 else 'es'} of {summary['numel']:,} parameters (window {args.window}, "
          f"every {args.every})")
    if monitor.history:
        last = monitor.history[-1]
        if last["R"] is None:
            print(f"last: step {last['step']}, k* and R undefined ({last['spectrum']['reason']})")
        else:
            print(f"last: step {last['step']}, k* = {last['k_star']}, R = {last['R']:.4g}"
                  + ("" if last["A"] is None else f", A = {last['A']:.3g}"))
        if last["n"] < args.window:
            print(f"the window holds {last['n']} of its {args.window} updates "
                  f"({args.window * args.every + 1} checkpoints fill it)")
        if last["lr"] is None:
            print("A not computed: no learning rate in the checkpoints (pass --lr)")
        elif last["lr"] == 0:
            print(f"A not computed at step {last['step']}: its checkpoint's learning rate is 0 (a schedule's end)")
    for line in describe_events(summary["events"], None):
        print("    " + line)
    records = os.path.abspath(monitor.log_dir)
    print(f"records: {os.path.join(records, 'spectral.jsonl')} (one line per analysis), spectral.csv, meta.json")
    if summary["analyses"]:
        print(f"report: {os.path.abspath(render(monitor.log_dir))}")
    else:
        print(f"no analysis: fewer than {args.every + 1} readable checkpoints")
    return 0


# -- reproduce ----------------------------------------------------------------------


def reproduce(args) -> int:
    from . import reproduce as experiments
    from .offline import writable_dir

    if args.list or args.name is None:
        width = max(map(len, experiments.EXPERIMENTS))
        for name, summary in experiments.available().items():
            print(f"{name:<{width}}  {summary}")
        if args.name is None and not args.list:
            print("\nrun one with: spectral-edge reproduce NAME [--quick | --full] [--seeds ...] [--device ...] [--out DIR]")
        elif args.name is not None:
            print(f"\n--list lists the experiments: {args.name} was not run (leave --list out to run it)")
        return 0
    if args.name not in experiments.available():
        args.parser.error(f"no experiment {args.name!r}; choose one of {', '.join(experiments.available())}")
    mode = "quick" if args.quick else "full" if args.full else "default"
    out = args.out or os.path.join("runs", f"reproduce-{args.name}" + ("" if mode == "default" else f"-{mode}"))
    try:  # before the output directory is made
        settings = experiments.Settings(mode=mode, seeds=args.seeds, device=args.device, out=out,
                                        progress=not args.quiet)
        experiments.check(args.name, settings)
    except ValueError as exc:
        args.parser.error(str(exc))
    try:
        writable_dir(out)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"spectral-edge reproduce {args.name} ({mode}: {experiments.MODES[mode]}) on {args.device}: "
          f"writing {os.path.abspath(out)}")
    try:
        results = experiments.run(args.name, settings)
    except KeyboardInterrupt:
        print(f"\ninterrupted: no results; {os.path.abspath(os.path.join(out, 'results.md'))} says so, and the runs "
              "finished so far stay beside it", file=sys.stderr)
        return 130
    print()
    if mode == "quick":
        print(experiments.QUICK_NOTE + "\n")
    for c in results["claims"]:
        print(f"[{c['verdict']}] {c['claim']}\n    paper: {c['paper']}\n    ours:  {c['ours']}")
    print(f"\nresults: {os.path.abspath(os.path.join(out, 'results.md'))} (and results.json)")
    if os.path.exists(os.path.join(out, "report.html")):  # the runs' records, plotted
        print(f"report: {os.path.abspath(os.path.join(out, 'report.html'))}")
    print(f"wall time: {results['wall_s'] / 60:.1f} min")
    return 0


# -- bench ---------------------------------------------------------------------------


def bench(argv: List[str]) -> int:
    from . import bench as harness

    return harness.main(argv, prog="spectral-edge bench")


# -- entry point ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import STORAGE_DTYPES
    from .kernels import _MODULES
    from .reproduce.common import MODES, VERDICTS
    from .workloads.grokking import TASKS

    ap = argparse.ArgumentParser(prog="spectral-edge", description=DESCRIPTION,
                                 epilog="`spectral-edge COMMAND --help` describes a command's options.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="grokking with and without weight decay, monitored live",
                       description="Train modular-arithmetic grokking twice (weight decay 1.0 and 0.0) with the "
                                   "monitor attached, write the report, and summarise the gap events against grokking.")
    d.add_argument("--task", default="add", choices=sorted(TASKS), help="operation mod p (default: add)")
    d.add_argument("--p", type=at_least(3), default=97, help="the modulus (default: 97)")
    d.add_argument("--steps", type=at_least(1), default=3500, help="optimizer steps per run (default: 3500)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--window", type=at_least(2), default=16, help="updates in the window, W (default: 16)")
    d.add_argument("--every", type=at_least(1), default=10,
                   help="stride: an update is the change over this many steps (default: 10)")
    d.add_argument("--analyze-every", type=at_least(1), default=10, help="steps between analyses (default: 10)")
    d.add_argument("--eval-every", type=at_least(1), default=50,
                   help="steps between accuracy evaluations (default: 50)")
    d.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    d.add_argument("--threads", type=at_least(0), default=1,
                   help="torch CPU threads; this model's operations are too small to gain from more (default: 1; 0 "
                        "keeps torch's choice)")
    d.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory (default: runs/demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=demo, parser=d)

    a = sub.add_parser("analyze", help="records and report from a directory of checkpoints",
                       description="Stream a directory of checkpoints through the window and write the records "
                                   "(spectral.jsonl, spectral.csv, meta.json) and report (report.html) to --out. Reads torch.save files "
                                   "(.pt, .pth, .pth.tar, .bin), Lightning .ckpt files, .safetensors, Hugging Face "
                                   "Trainer folders (checkpoint-N/) and sharded weights, torch.distributed.checkpoint "
                                   "(FSDP) folders and DeepSpeed global_stepN/ folders, ordered by step. Tied tensors count once; tensors equal in every checkpoint "
                                   "(frozen parameters, buffers) are left out.")
    a.add_argument("ckpt_dir", help="the folder of checkpoints (its subfolders are searched too)")
    a.add_argument("--window", type=at_least(2), default=16, help="updates in the window, W (default: 16)")
    a.add_argument("--every", type=at_least(1), default=1, help="an update spans this many checkpoints (default: 1)")
    a.add_argument("--groups", default="auto", choices=sorted(GROUPS), help="per-group Grams (default: auto)")
    a.add_argument("--sketch", type=at_least(2), default=None, metavar="M",
                   help="sketch mode: keep each group's update as a sketch of M numbers, memory independent of the "
                        "model's size, Grams estimated (default: exact)")
    a.add_argument("--backend", default="auto", choices=["auto", *sorted(_MODULES)],
                   help="the engine's kernels (default: auto, the compiled extension when it is built)")
    a.add_argument("--storage-dtype", default="float32", choices=[str(d).split(".")[1] for d in STORAGE_DTYPES],
                   help="the window's dtype: bfloat16 halves its memory (default: float32)")
    a.add_argument("--include", action="append", metavar="PATTERN",
                   help="analyse only tensors whose names match this glob (repeatable; default: all)")
    a.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="leave out tensors whose names match this glob (repeatable), e.g. '*.running_*'")
    a.add_argument("--probes", action="append", metavar="PATTERN",
                   help="log the singular values of the 2-D tensors whose names match this glob, or 'attention' for "
                        "each attention layer's W_Q and W_Q^T W_K (repeatable; default: none)")
    a.add_argument("--out", default=None,
                   help="output directory (default: runs/analyze-<dir name>, numbered -2, -3... when taken)")
    a.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    a.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="a checkpoint that cannot be listed, read or matched with the first stops the run (raise) "
                        "or is left out (skip)")
    a.add_argument("--lr", type=positive_number, default=None,
                   help="learning rate for the adiabatic parameter (default: from each checkpoint's optimizer state)")
    a.add_argument("--allow-pickle", action="store_true",
                   help="let torch.load run the Python objects pickled beside the weights (a Lightning checkpoint's "
                        "hyperparameters, a training config): only for files you trust")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=analyze, parser=a)

    r = sub.add_parser("reproduce", help="one of the paper's experiments, with its claims table (--list names them)",
                       description="Run one of the paper's experiments and write OUT/results.json and results.md: "
                                   "each claim of the paper it tests, the paper's figure beside ours, and a verdict "
                                   f"(one of {', '.join(VERDICTS)}). Without --quick or --full: {MODES['default']}. "
                                   "Until the run finishes, results.md says it has not.")
    r.add_argument("name", nargs="?", metavar="NAME", help="the experiment (see --list)")
    r.add_argument("--list", action="store_true", help="name the experiments, one line each")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=MODES["quick"])
    size.add_argument("--full", action="store_true", help=MODES["full"])
    r.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds to run, distinct, from 0 to 2^32 - 1 (default: the mode's own)")
    r.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    r.add_argument("--threads", type=at_least(0), default=1,
                   help="torch CPU threads (default: 1, the small models gain nothing from more; 0 keeps torch's choice)")
    r.add_argument("--out", default=None, help="output directory (default: runs/reproduce-NAME[-quick|-full])")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=reproduce, parser=r)

    b = sub.add_parser("bench", help="time the step, sef.gram and the analysis (options: spectral-edge bench --help)",
                       add_help=False)
    b.set_defaults(func=None)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the benchmark parses its own options
        rest = argv[1:]
        return bench(rest[1:] if rest[:1] == ["--"] else rest)
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported against the subcommand's usage, not the top level's
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
