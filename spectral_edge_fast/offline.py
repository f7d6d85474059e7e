"""Offline analysis of a directory of checkpoints: the same records and report
as a live :class:`SpectralMonitor`, from saved parameters.

Checkpoints are ``.pt`` / ``.pth`` / ``.bin`` files written by ``torch.save``
(a state dict, or a dict holding one under ``"model"`` or ``"state_dict"``)
and ``.safetensors`` files. They are ordered by the step number in their
names (the last number: ``ckpt_1200.pt``, ``step-00400.safetensors``,
``checkpoint-3000/model.safetensors``) and streamed: the window holds its
``W`` update rows and one snapshot, plus the checkpoint being read (``.pt``
files are memory-mapped), never all checkpoints at once.

Every floating-point tensor of the first checkpoint is analysed (BatchNorm
running statistics included); later checkpoints must hold the same names and
shapes. The learning rate of the adiabatic parameter comes from ``lr=`` or, in
a full training checkpoint, from its optimizer state.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .monitor import SpectralMonitor

EXTENSIONS = (".pt", ".pth", ".bin", ".safetensors")
_NUMBER = re.compile(r"\d+")
_NESTED = ("model", "state_dict")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the first one."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


def list_checkpoints(ckpt_dir: str) -> List[Tuple[int, str]]:
    """``(step, path)`` of every checkpoint under ``ckpt_dir``, by step.

    The step is the last number in the path relative to ``ckpt_dir`` (so
    ``checkpoint-3000/model.safetensors`` is step 3000)."""
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir} is not a directory of checkpoints")
    found: Dict[int, str] = {}
    for root, _, files in os.walk(ckpt_dir):
        for name in files:
            if not name.endswith(EXTENSIONS):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, ckpt_dir)
            numbers = _NUMBER.findall(os.path.splitext(rel)[0])
            if not numbers:
                raise CheckpointError(path, "no step number in its name (expected e.g. ckpt_1200.pt)")
            step = int(numbers[-1])
            if step in found:
                raise CheckpointError(path, f"step {step} again (also {found[step]}); keep one file per step")
            found[step] = path
    if not found:
        raise FileNotFoundError(f"no checkpoints ({', '.join(EXTENSIONS)}) in {ckpt_dir}")
    return sorted(found.items())


def _find_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _NESTED:
            if isinstance(obj.get(key), dict):
                return obj[key]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(path, f"holds no state dict (a dict of tensors, or one under {' or '.join(map(repr, _NESTED))})")


def _torch_load(path: str, allow_pickle: bool):
    kwargs = dict(map_location="cpu", weights_only=not allow_pickle)
    try:
        return torch.load(path, mmap=True, **kwargs)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be mapped
            raise
        return torch.load(path, **kwargs)


def load_checkpoint(path: str, allow_pickle: bool = False) -> Tuple[Dict[str, torch.Tensor], Optional[float]]:
    """The floating-point tensors of one checkpoint, by name, and the
    learning rate of its optimizer state when it has one.

    Raises :class:`CheckpointError` naming the file when it cannot be read."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            lr = None
        else:
            obj = _torch_load(path, allow_pickle)
            tensors = _find_state_dict(obj, path)
            lr = _optimizer_lr(obj)
    except CheckpointError:
        raise
    except ImportError as exc:
        raise CheckpointError(path, f"reading it needs the safetensors package (pip install safetensors): {exc}") from exc
    except Exception as exc:  # whatever the reader raises for a corrupt file
        hint = ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            hint = ("; it holds Python objects beyond tensors: re-save the state dict alone, "
                    "or, if you trust the file, allow pickles (--allow-pickle, allow_pickle=True)")
        raise CheckpointError(path, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]}){hint}") from exc
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}, lr


def _optimizer_lr(obj) -> Optional[float]:
    try:
        lr = obj["optimizer"]["param_groups"][0]["lr"]
        return float(lr)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class CheckpointStream:
    """Loads checkpoints one after the other into a fixed set of named
    tensors (the first checkpoint's), checking names and shapes.

    ``tensors`` is the list of ``(name, tensor)`` a :class:`GramWindow`
    monitors; :meth:`load` swaps each tensor's storage for the next
    checkpoint's (the window's views follow the new storage), so no copy of
    the parameters is kept besides the window's own snapshot."""

    def __init__(self, first_path: str, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle
        state, self.lr = load_checkpoint(first_path, allow_pickle)
        if not state:
            raise CheckpointError(first_path, "holds no floating-point tensors")
        self.first_path = first_path
        self.tensors: List[Tuple[str, torch.Tensor]] = [(k, v.contiguous()) for k, v in state.items()]

    def check(self, path: str) -> Tuple[Dict[str, torch.Tensor], Optional[float]]:
        """Read ``path`` and check it against the first checkpoint."""
        state, lr = load_checkpoint(path, self.allow_pickle)
        names = [n for n, _ in self.tensors]
        missing = [n for n in names if n not in state]
        if missing:
            raise CheckpointError(path, f"lacks {len(missing)} tensor(s) of {self.first_path}, e.g. {missing[0]!r}")
        extra = [n for n in state if n not in dict(self.tensors)]
        if extra:
            raise CheckpointError(path, f"has {len(extra)} tensor(s) that {self.first_path} lacks, e.g. {extra[0]!r}")
        for name, t in self.tensors:
            if state[name].shape != t.shape:
                shape, expected = tuple(state[name].shape), tuple(t.shape)
                raise CheckpointError(path, f"tensor {name!r} has shape {shape}, expected {expected} as in {self.first_path}")
        return state, lr

    def load(self, state: Dict[str, torch.Tensor]) -> None:
        for name, t in self.tensors:
            t.data = state[name].to(t.dtype).contiguous()


def analyze_checkpoints(
    ckpt_dir: str,
    out: Optional[str] = None,
    window: int = 16,
    every: int = 1,
    groups="auto",
    on_error: str = "raise",
    lr: Optional[float] = None,
    allow_pickle: bool = False,
    sinks=("jsonl", "csv"),
    progress: bool = True,
    log=print,
) -> SpectralMonitor:
    """Stream the checkpoints of ``ckpt_dir`` through a window and write the
    analysis records (and the report's inputs) to ``out``.

    Args:
        window, every, groups: as for :class:`SpectralMonitor`; ``every``
            counts checkpoints (an update spans ``every`` of them) and each
            slide is analysed.
        on_error: "raise" stops at the first unreadable or mismatched
            checkpoint (a :class:`CheckpointError` naming it); "skip" leaves
            it out, says so through ``log``, and goes on (the next update then
            spans the gap).
        lr: learning rate for the adiabatic parameter; default the one in
            each checkpoint's optimizer state, if any.
        allow_pickle: let ``torch.load`` run the pickled Python objects in the
            files (only for files you trust).

    Returns the monitor (closed), whose ``history`` holds the records; a
    record's ``step`` is the checkpoint's step number.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    checkpoints = list_checkpoints(ckpt_dir)
    out = out or os.path.join("runs", "analyze-" + os.path.basename(os.path.normpath(ckpt_dir)))
    skipped: List[str] = []

    def fail(exc: CheckpointError) -> None:
        if on_error == "raise":
            raise exc
        skipped.append(exc.path)
        log(f"skipping {exc}")

    items: Iterator[Tuple[int, str]] = iter(checkpoints)
    stream = None
    for _, path in items:  # the first readable checkpoint is the reference
        try:
            stream = CheckpointStream(path, allow_pickle)
            break
        except CheckpointError as exc:
            fail(exc)
    if stream is None:
        raise CheckpointError(ckpt_dir, "no readable checkpoint")
    monitor = SpectralMonitor(stream.tensors, window=window, every=every, analyze_every=every, groups=groups,
                              sinks=sinks, log_dir=out)
    monitor.annotate(source=os.path.abspath(ckpt_dir), checkpoints=len(checkpoints), first=stream.first_path)
    bar = _progress(len(checkpoints), progress)
    bar.update(len(skipped) + 1)
    for step, path in items:
        bar.set_postfix_str(os.path.basename(path))
        try:
            state, ckpt_lr = stream.check(path)
        except CheckpointError as exc:
            fail(exc)
            bar.update(1)
            continue
        stream.load(state)
        del state
        monitor.step(lr=lr if lr is not None else ckpt_lr, step=step)
        latest = monitor.latest
        if latest is not None and latest["R"] is not None:
            bar.set_postfix(k=latest["k_star"], R=f"{latest['R']:.3g}", file=os.path.basename(path))
        bar.update(1)
    bar.close()
    if skipped:
        monitor.annotate(skipped=skipped)
        log(f"skipped {len(skipped)} of {len(checkpoints)} checkpoints: {', '.join(map(os.path.basename, skipped))}")
    monitor.close()
    return monitor


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checkpoints", unit="ckpt", disable=not enabled, dynamic_ncols=True)


__all__ = ["CheckpointError", "CheckpointStream", "analyze_checkpoints", "list_checkpoints", "load_checkpoint"]
