"""Offline analysis of a folder of checkpoints: the same records and report
as a live :class:`SpectralMonitor`, from saved parameters.

Layouts read, anywhere under the folder:

* files written by ``torch.save`` (``.pt``, ``.pth``, ``.pth.tar``,
  ``.bin``): a state dict, or a dict holding one under ``"model"``,
  ``"state_dict"``, ``"model_state_dict"`` (PyTorch's tutorial) or
  ``"module"`` (DeepSpeed's) (a dict with tensors beside
  dicts of tensors under other keys is refused, not guessed), or, with
  ``allow_pickle``, a module saved whole (``torch.save(model)``), alone or
  under one of those keys;
* PyTorch Lightning ``.ckpt`` files (the weights under ``"state_dict"``,
  named as the LightningModule names them, e.g. ``model.layers.0.w``);
* ``.safetensors`` files;
* Hugging Face Trainer folders (``checkpoint-500/`` holding
  ``model.safetensors`` or ``pytorch_model.bin``, or a PEFT adapter's
  ``adapter_model.*``): only the weights are read; ``optimizer.pt`` gives
  the learning rate, the other files are left alone;
* training state is never a checkpoint, in any folder: ``optimizer.pt``,
  ``scheduler.pt``, ``scaler.pt`` (or ``.bin``, ``_1``...),
  ``rng_state*.pth``, ``training_args.bin``; a folder of its own holding
  such files and no weights is a save that did not finish, named as such;
* sharded weights (``model-00001-of-00002.safetensors``,
  ``pytorch_model-00001-of-00003.bin``, with or without their
  ``*.index.json``): the shards of one checkpoint are read as one state dict;
* ``torch.distributed.checkpoint`` (DCP) folders, as FSDP, Lightning's and
  Accelerate's sharded saves and torchtitan write them (``.metadata`` beside
  ``__0_0.distcp``...): read on this process alone, without a process group,
  each tensor assembled from its shards; only the model's weights are read
  (optimizer state is left alone), named as the model names them; an
  optimizer's own folder (Accelerate's ``optimizer_0``) is not a checkpoint.
  The pickled ``.metadata`` is loaded only as the classes it is made of
  unless ``allow_pickle``. DCP stores a tied weight under each of its names:
  a tensor equal to another in every checkpoint is counted once;
* DeepSpeed tag folders (``global_step500/mp_rank_00_model_states.pt``, the
  weights under ``"module"`` as ZeRO stages 0-2 save them); the optimizer
  partitions (``*_optim_states.pt``) are training state. A ZeRO-3 save (its
  weights partitioned into those files) and a model-parallel one are
  refused, saying to convert them first (DeepSpeed's ``zero_to_fp32.py``);
  the tag folder inside a Trainer checkpoint that holds the weights is
  left alone.

A checkpoint's step is, in this order: ``global_step`` of a Trainer folder's
``trainer_state.json``; a number tagged ``step`` in its name (``step=1200``,
``step_1200``; Lightning's ``epoch=3-step=1200.ckpt``); ``global_step``
inside a ``.ckpt``; the last number in its path below the folder that
is not joined to letters before it (``ckpt_1200.pt``, ``model_1200_bf16.pt``,
``checkpoint-1200/model.safetensors``: ``bf16``, ``v2`` and ``run3`` name no
step), or the only number there is (``iter1200.pt``). A name of
``key=value`` fields without a step (``epoch=3.pt``) has none. Copies of the
newest checkpoint yield to it: Lightning's ``last.ckpt``, and the final model
a Trainer saves beside its ``checkpoint-N`` folders (read only when its
``trainer_state.json`` gives its step); a link to another checkpoint is read
once. Accelerate's ``pytorch_model_fsdp_0`` takes the step of the folder
holding it; a Lightning DCP folder named without its step (``last.ckpt/``)
the ``global_step`` of its ``meta.pt``.

Which tensors: the floating-point ones of the first readable checkpoint,
narrowed by ``include`` / ``exclude`` name patterns (fnmatch globs). A tensor
stored twice on one storage in a ``torch.save`` file (a head tied to its
embedding) is counted once, under its first name; ``save_model`` and
``save_pretrained`` already store tied tensors once in ``.safetensors``
files. A tensor equal in every checkpoint (a frozen parameter, a buffer such
as a positional table or a causal mask) is left out: its updates are zero,
and the live monitor, which sees only trainable parameters, has none of it.
Which tensors never change is found by a first pass that compares each
checkpoint with the first (tensors already seen changing are not read
again), which also checks every checkpoint's names, shapes and dtypes
before any record is written (an update across a change of dtype, float32
checkpoints and then bfloat16 ones, would be mostly the cast's rounding).
Each of these choices is logged and kept in ``meta.json``.

The second pass streams the checkpoints through the window: it holds the
window's rows and snapshot and the checkpoint being read (``.pt`` files are
memory-mapped), never all checkpoints at once. The first checkpoint holding
NaN or inf (a run that diverged) is logged and kept in ``meta.json``.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import pickle
import re
import stat
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch

from .config import MonitorOptions, WindowOptions, resolve
from .monitor import SpectralMonitor, _lr_of
from .sinks import clear_records

EXTENSIONS = (".pt", ".pth", ".pth.tar", ".bin", ".safetensors", ".ckpt")
# Weight files of a Hugging Face folder, preferred first.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
              "adapter_model.safetensors", "adapter_model.bin")
# Training state a Trainer, Accelerate or a loop saves beside the weights: never a checkpoint.
_TRAINING_STATE = re.compile(r"^((optimizer|scheduler|scaler)(_\d+)?\.(pt|bin)|rng_state(_\d+)?\.pth|training_args\.bin"
                             r"|.*optim_states\.pt)$")  # the last: DeepSpeed's optimizer partitions
_SHARD = re.compile(r"^(?P<stem>.*)-(?P<k>\d+)-of-(?P<n>\d+)(?P<ext>\.safetensors|\.bin|\.pth?)$")
_STEP = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)
_FIELD = re.compile(r"[A-Za-z_]+=\d")
_NUMBER = re.compile(r"\d+")
_ALONE = re.compile(r"(?<![A-Za-z\d])\d+")  # not joined to letters before it, as in bf16, v2, gpt2
_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")
_TRAINER_DIR = re.compile(r"^checkpoint-\d+$")
_NESTED = ("model", "state_dict", "model_state_dict", "module")  # "module": DeepSpeed's
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# torch.distributed.checkpoint (DCP) folders: a pickled .metadata beside the *.distcp shards; Accelerate names the
# model's folder pytorch_model_fsdp_<k> (its step is the folder above's) and the optimizer's optimizer_<k>
_DCP_METADATA = ".metadata"
_DCP_MODEL = re.compile(r"^pytorch_model_fsdp_\d+$")
_DCP_OPTIMIZER = re.compile(r"^optimizer(_\d+)?$")
# DeepSpeed: global_step<N>/ holding mp_rank_<mp>_model_states.pt (ZeRO 0-2: the weights under "module") or, under
# ZeRO-3, zero_pp_rank_<dp>_mp_rank_<mp>_model_states.pt (the weights partitioned into the *_optim_states.pt files)
_DEEPSPEED = re.compile(r"^(?P<zero3>zero_pp_rank_\d+_)?mp_rank_(?P<mp>\d+)_model_states\.pt$")
_DEEPSPEED_TAG = re.compile(r"^global_step\d+$")
# the floating-point dtypes of a .safetensors header
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the first one."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: its step, the path messages name, the weight files to
    read (a checkpoint's shards, in order) and, in a Trainer folder, the
    optimizer state beside them (for the learning rate)."""

    step: int
    path: str
    files: Tuple[str, ...]
    optimizer: Optional[str] = None
    # a copy of the newest checkpoint (Lightning's last.ckpt, a Trainer's final save beside its
    # checkpoint folders): it yields to a checkpoint of the same step
    secondary: bool = False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _check_file(path: str, need_data: bool = False) -> None:
    """Only regular files are read (a FIFO would block the reader), and an
    empty one is named as such."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({_first_line(exc)})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, "is not a regular file (a FIFO, socket or device); only files are read")
    if need_data and st.st_size == 0:
        raise CheckpointError(path, "is empty (0 bytes): a save that did not finish?")


def _torch_load(path: str, allow_pickle: bool):
    kwargs = dict(map_location="cpu", weights_only=not allow_pickle)
    try:
        return torch.load(path, mmap=True, **kwargs)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be mapped
            raise
        return torch.load(path, **kwargs)


def _unreadable(path: str, exc: Exception) -> CheckpointError:
    """A reader's exception as a :class:`CheckpointError` naming the file."""
    if isinstance(exc, ImportError):
        return CheckpointError(path, f"reading it needs the safetensors package (pip install safetensors): {exc}")
    text = str(exc)
    if "Unsupported global" in text:
        found = ", ".join(sorted(set(_GLOBAL.findall(text))))
        return CheckpointError(path, f"cannot be read without running pickled code: it holds Python objects beyond "
                                     f"tensors{' (' + found + ')' if found else ''}, which torch.load runs only when "
                                     "allowed: if you trust the file, pass --allow-pickle (allow_pickle=True), or "
                                     "re-save the state dict alone")
    truncated = _safetensors_truncation(path) if path.endswith(".safetensors") else None
    if truncated is not None:
        return CheckpointError(path, truncated)
    if "central directory" in text:  # torch.save's zip archive ends with it
        return CheckpointError(path, "is truncated or corrupt (its zip archive has no central directory): a save "
                                     "that did not finish?")
    if isinstance(exc, ModuleNotFoundError) or "Can't get attribute" in text:  # a pickled class not importable here
        return CheckpointError(path, f"cannot be unpickled here ({_first_line(exc)}): it holds Python objects whose "
                                     "code does not import in this process (a model saved whole by "
                                     "torch.save(model)?); run where that code imports, or re-save "
                                     "model.state_dict()")
    return CheckpointError(path, f"cannot be read ({_first_line(exc)})")


def _safetensors_truncation(path: str) -> Optional[str]:
    """Says so when a ``.safetensors`` file is shorter than its header says
    (an 8-byte length, the JSON header, then the tensors' bytes); None when
    it is not, or when the header itself cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if n > size:  # the header itself cut short, or no header at all
                return None
            header = json.loads(f.read(n))
        expected = 8 + n + max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                               default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return f"is truncated: {size} of {expected} bytes (a save that did not finish?)" if size < expected else None


def _global_step(path: str, allow_pickle: bool) -> Optional[int]:
    try:
        _check_file(path, need_data=True)
        obj = _torch_load(path, allow_pickle)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    step = obj.get("global_step") if isinstance(obj, dict) else None
    return int(step) if isinstance(step, (int, torch.Tensor)) else None


def _step_of_name(rel: str) -> Optional[int]:
    stem = os.path.splitext(rel)[0]
    tagged = _STEP.findall(stem)
    if tagged:
        return int(tagged[-1])
    if _FIELD.search(os.path.basename(stem)):  # epoch=3: a counter, not the step
        return None
    alone, numbers = _ALONE.findall(stem), _NUMBER.findall(stem)
    return int(alone[-1]) if alone else int(numbers[0]) if len(numbers) == 1 else None


def _file_step(path: str, rel: str, allow_pickle: bool) -> int:
    step = None
    if path.endswith(".ckpt") and not _STEP.search(os.path.basename(rel)):
        step = _global_step(path, allow_pickle)
    if step is None:
        step = _step_of_name(rel)
    if step is None:
        numbers = _NUMBER.findall(os.path.splitext(rel)[0])
        why = (f": its numbers ({', '.join(numbers)}) are each joined to letters, as in bf16 or v2, which name no step"
               if len(numbers) > 1 and not _FIELD.search(os.path.basename(rel)) else "")
        raise CheckpointError(path, f"no step number in its name{why} (expected e.g. ckpt_1200.pt or "
                                    "epoch=0-step=1200.ckpt)")
    return step


def _folder_step(root: str, rel: str) -> int:
    state = os.path.join(root, "trainer_state.json")
    if os.path.isfile(state):
        try:
            with open(state) as f:
                return int(json.load(f)["global_step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(state, f"cannot be read ({_first_line(exc)})") from exc
    step = _step_of_name(rel if rel != "." else os.path.basename(os.path.abspath(root)))
    if step is None:
        raise CheckpointError(root, "no step number in the folder's name (expected e.g. checkpoint-1200) "
                                    "and no trainer_state.json")
    return step


def _index_shards(index: str) -> Tuple[str, ...]:
    """The shard files an ``*.index.json`` names, each checked present."""
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(index, f"cannot be read ({_first_line(exc)})") from exc
    files = tuple(os.path.join(os.path.dirname(index), n) for n in names)
    for file in files:
        if not os.path.lexists(file):
            raise CheckpointError(file, f"is missing, though {os.path.basename(index)} names it (a save that did not "
                                        "finish?)")
        _check_file(file)
    return files


def _in_folder(root: str, rel: str, names: List[str], dirs: List[str], allow_pickle: bool,
               problem: Callable[[CheckpointError], None]) -> Iterable[Checkpoint]:
    present = set(names)
    if _DCP_METADATA in present:  # a torch.distributed.checkpoint folder: one checkpoint (or an optimizer's state)
        folder = os.path.basename(os.path.abspath(root))
        if _DCP_OPTIMIZER.match(folder):
            return
        try:
            _check_file(os.path.join(root, _DCP_METADATA))
            step = None
            if _DCP_MODEL.match(folder):
                step = _folder_step(os.path.dirname(os.path.abspath(root)), os.path.dirname(rel) or ".")
            elif "meta.pt" in present and not _STEP.search(folder):  # Lightning's: the checkpoint's other entries
                step = _global_step(os.path.join(root, "meta.pt"), allow_pickle)
            if step is None:
                step = _folder_step(root, rel)
        except CheckpointError as exc:
            problem(exc)
            return
        yield Checkpoint(step, root, (root,), secondary=bool(_LAST.match(folder)))
        return
    weights = next((w for w in HF_WEIGHTS if w in present), None)
    if weights is None and "trainer_state.json" in present:  # its .pt/.pth/.bin files are training state
        if not any(_DCP_MODEL.match(d) or _DEEPSPEED_TAG.match(d) for d in dirs):  # FSDP's or DeepSpeed's weights
            problem(CheckpointError(root, f"a Trainer checkpoint folder without model weights "
                                          f"({', '.join(HF_WEIGHTS)})"))
        return
    state = [n for n in names if _TRAINING_STATE.match(n)]
    names = [n for n in names if n not in state]
    # a folder of its own holding training state and no weights: a checkpoint whose weights were never written
    # (training_args.bin alone is a Trainer's output folder, whose final save may be absent)
    held = [n for n in state if n != "training_args.bin"]
    if weights is None and held and not dirs and not any(n.endswith(EXTENSIONS) for n in names):
        problem(CheckpointError(root, f"training state ({', '.join(held)}) without model weights: a save that did not "
                                      "finish?"))
        return
    if weights is not None:  # a Trainer / save_pretrained folder: one checkpoint
        final = any(_TRAINER_DIR.match(d) for d in dirs)  # the final save beside the checkpoint folders
        if final and "trainer_state.json" not in present:
            return  # no step to place it at
        path = os.path.join(root, weights)
        try:
            step = _folder_step(root, rel)
            _check_file(path)
            files = _index_shards(path) if path.endswith(".index.json") else (path,)
        except CheckpointError as exc:
            problem(exc)
            return
        optimizer = os.path.join(root, "optimizer.pt") if "optimizer.pt" in present else None
        dirs[:] = [d for d in dirs if not _DEEPSPEED_TAG.match(d)]  # DeepSpeed's copy of these weights
        yield Checkpoint(step, path, files, optimizer, secondary=final)
        return
    deepspeed = {n: m for n in names for m in [_DEEPSPEED.match(n)] if m}
    if deepspeed:  # a DeepSpeed tag folder: one checkpoint
        path = os.path.join(root, min(deepspeed))
        try:
            if any(m["zero3"] for m in deepspeed.values()):
                raise CheckpointError(root, "a DeepSpeed ZeRO-3 checkpoint: its weights are partitioned across the "
                                            "ranks' *_optim_states.pt files; convert it to one state dict first with "
                                            "the zero_to_fp32.py DeepSpeed saves beside the tag folders (python "
                                            "zero_to_fp32.py CKPT_DIR OUT_DIR -t TAG) and analyse those files")
            ranks = {int(m["mp"]) for m in deepspeed.values()}
            if ranks != {0}:
                raise CheckpointError(root, f"a DeepSpeed model-parallel checkpoint ({len(ranks)} "
                                            "mp_rank_*_model_states.pt files, each a slice of the weights): merge "
                                            "them into one state dict first")
            _check_file(path)
            step = _file_step(path, os.path.join(rel, os.path.basename(path)), allow_pickle)
        except CheckpointError as exc:
            problem(exc)
            return
        yield Checkpoint(step, path, (path,))
        return
    shards: Dict[Tuple[str, int, str], Dict[int, str]] = {}
    for name in names:
        if not name.endswith(EXTENSIONS):
            continue
        path = os.path.join(root, name)
        m = _SHARD.match(name)
        if m:
            shards.setdefault((m["stem"], int(m["n"]), m["ext"]), {})[int(m["k"])] = path
            continue
        try:
            _check_file(path)
            step = _file_step(path, os.path.join(rel, name), allow_pickle)
        except CheckpointError as exc:
            problem(exc)
            continue
        yield Checkpoint(step, path, (path,), secondary=bool(_LAST.match(name)))
    for (stem, n, ext), parts in sorted(shards.items()):
        index = os.path.join(root, stem + ext + ".index.json")
        path = index if os.path.isfile(index) else parts[min(parts)]
        try:
            missing = [k for k in range(1, n + 1) if k not in parts]
            if missing:
                raise CheckpointError(path, f"shard {missing[0]} of {n} is missing")
            for part in parts.values():
                _check_file(part)
            step = _step_of_name(os.path.join(rel, stem))
            if step is None:
                raise CheckpointError(path, "no step number in its folder's or its shards' names")
        except CheckpointError as exc:
            problem(exc)
            continue
        yield Checkpoint(step, path, tuple(parts[k] for k in range(1, n + 1)))


def _distinct(found: List[Checkpoint]) -> List[Checkpoint]:
    """The checkpoints of one step that are not copies of another: a link is
    read once, and a secondary copy yields to the checkpoint it copies."""
    by_file: Dict[str, Checkpoint] = {}
    for c in found:
        by_file.setdefault(os.path.realpath(c.path), c)
    unique = list(by_file.values())
    return [c for c in unique if not c.secondary] or unique


def list_checkpoints(ckpt_dir: str, allow_pickle: bool = False,
                     on_problem: Optional[Callable[[CheckpointError], None]] = None) -> List[Checkpoint]:
    """The checkpoints under ``ckpt_dir``, by step (see the module's
    docstring for the layouts and how a step is found).

    A file or folder that cannot be listed, a checkpoint without a step and
    two checkpoints of one step (each of them) raise a
    :class:`CheckpointError`, or are passed to ``on_problem`` and left out
    when it is given. ``allow_pickle`` as for :func:`load_checkpoint` (a
    ``.ckpt`` named without its step is opened for its ``global_step``)."""
    if not os.path.isdir(ckpt_dir):
        if os.path.exists(ckpt_dir):
            raise NotADirectoryError(f"{ckpt_dir} is not a directory of checkpoints but a file: name the folder "
                                     "that holds the checkpoints")
        raise FileNotFoundError(f"{ckpt_dir} is not a directory of checkpoints: it does not exist")

    problems = []

    def problem(exc: CheckpointError) -> None:
        if on_problem is None:
            raise exc
        problems.append(exc)
        on_problem(exc)

    def walk_error(err: OSError) -> None:
        path = str(err.filename or ckpt_dir)
        exc = CheckpointError(path, f"cannot be read ({_first_line(err)})")
        if os.path.abspath(path) == os.path.abspath(ckpt_dir):
            raise exc
        problem(exc)

    found: Dict[int, List[Checkpoint]] = {}
    for root, dirs, files in os.walk(ckpt_dir, onerror=walk_error):
        dirs.sort()
        for c in _in_folder(root, os.path.relpath(root, ckpt_dir), sorted(files), dirs, allow_pickle, problem):
            found.setdefault(c.step, []).append(c)
    if not found and not problems:
        raise FileNotFoundError(f"no checkpoints ({', '.join(EXTENSIONS)} files, or Hugging Face, "
                                f"torch.distributed.checkpoint or DeepSpeed checkpoint folders) in {ckpt_dir}")
    out = []
    for step in sorted(found):
        same = _distinct(found[step])
        if len(same) > 1:
            for c in same:
                others = ", ".join(o.path for o in same if o is not c)
                problem(CheckpointError(c.path, f"step {step} again (also {others}); keep one checkpoint per step"))
            continue
        out.append(same[0])
    return out



class Weights(NamedTuple):
    """What one checkpoint holds for the analysis."""

    shapes: Dict[str, Tuple[int, ...]]  # every floating-point tensor, file order, tied copies left out
    dtypes: Dict[str, torch.dtype]  # theirs, as stored
    tensors: Dict[str, torch.Tensor]  # those asked for
    tied: Dict[str, str]  # a tied copy -> the name it is counted under
    lr: Optional[float]  # the optimizer state's learning rate, when the checkpoint has one


def _holds_tensors(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    known = f"{', '.join(map(repr, _NESTED[:-1]))} or {_NESTED[-1]!r}"
    if isinstance(obj, torch.nn.Module):  # saved whole: torch.save(model)
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in _NESTED:
            if isinstance(obj.get(key), torch.nn.Module):
                return obj[key].state_dict()
            if _holds_tensors(obj.get(key)):
                return obj[key]
        # tensors beside dicts of tensors (a loss beside the weights): which are the model's is not known
        nested = [k for k, v in obj.items() if _holds_tensors(v)]
        if nested:
            raise CheckpointError(path, f"holds dicts of tensors under {', '.join(map(repr, nested))}, none under "
                                        f"{known}: re-save the model's state dict alone, or under 'model'")
        if _holds_tensors(obj):
            return obj
    raise CheckpointError(path, f"holds no state dict (a dict of tensors, or one under {known})")


def _optimizer_lr(obj) -> Optional[float]:
    """The first parameter group's learning rate of an optimizer state: a
    training checkpoint's ``"optimizer"`` or ``"optimizer_state_dict"``,
    Lightning's first ``"optimizer_states"``, or a Trainer folder's
    ``optimizer.pt`` itself."""
    for get in (lambda o: o["optimizer"], lambda o: o["optimizer_state_dict"], lambda o: o["optimizer_states"][0],
                lambda o: o):
        try:
            return float(_lr_of(get(obj)["param_groups"]))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            continue
    return None


def _torch_tensors(state: dict, names: Optional[Set[str]]):
    """Floating-point tensors of a loaded state dict; a tensor that views the
    same storage, offset, shape and strides as an earlier one is a tied copy."""
    shapes, dtypes, tensors, tied, seen = {}, {}, {}, {}, {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if key in seen:
                tied[name] = seen[key]
                continue
            seen[key] = name
        shapes[name], dtypes[name] = tuple(t.shape), t.dtype
        if names is None or name in names:
            tensors[name] = t
    return shapes, dtypes, tensors, tied


def _safetensors(path: str, names: Optional[Set[str]]):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        shapes, dtypes = {}, {}
        for name in f.keys():
            part = f.get_slice(name)
            if part.get_dtype() in _SAFETENSORS_DTYPES:
                shapes[name], dtypes[name] = tuple(part.get_shape()), _SAFETENSORS_DTYPES[part.get_dtype()]
        tensors = {n: f.get_tensor(n) for n in shapes if names is None or n in names}
    return shapes, dtypes, tensors


class _DcpMetadata(pickle.Unpickler):
    """A DCP folder's ``.metadata`` is a pickle: unless ``allow_pickle``,
    only the classes it is made of are loaded."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
               ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath")}

    def find_class(self, module, name):
        if ((module, name) in self.ALLOWED or module == "torch.distributed.checkpoint.metadata"
                or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")  # named as torch.load names it


def _dcp_entries(metadata, folder: str):
    """The model's floating-point tensors in a DCP checkpoint (name ->
    metadata key) and the key of its first optimizer's learning rate.

    A saved dict is flattened into keys (``model.layers.0.weight``), each
    with its path (``("model", "layers.0.weight")``). An optimizer's state is
    the dict holding ``param_groups`` (or, flattened by
    ``flatten_optimizer_state_dict``, ``param_groups.<name>...`` keys); the
    model's weights are the floating-point tensors of the one other dict
    holding some (or of the one under "model", "state_dict"...), named as
    in that dict: as the model names them."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    planner_data = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    paths = {key: tuple(planner_data.get(key) or (key,)) for key in metadata.state_dict_metadata}

    def is_groups(part) -> bool:
        return isinstance(part, str) and (part == "param_groups" or part.startswith("param_groups."))

    optimizers = list(dict.fromkeys(p[:i] for p in paths.values() for i, part in enumerate(p) if is_groups(part)))
    containers: Dict[Tuple, Dict[str, str]] = {}
    lr_key = None
    for key, path in paths.items():
        entry = metadata.state_dict_metadata[key]
        within = next((o for o in optimizers if path[:len(o)] == o), None)
        if within is not None:
            rest = path[len(within):]
            if (lr_key is None and within == optimizers[0] and isinstance(entry, BytesStorageMetadata)
                    and (rest[:1] + rest[2:] == ("param_groups", "lr") and rest[1] == 0
                         or len(rest) == 1 and is_groups(rest[0]) and rest[0].endswith(".lr"))):
                lr_key = key
        elif isinstance(entry, TensorStorageMetadata) and entry.properties.dtype.is_floating_point:
            containers.setdefault(path[:-1], {})[str(path[-1])] = key
    if not containers:
        raise CheckpointError(folder, "holds no model weights (no floating-point tensor outside optimizer state)")
    if len(containers) > 1:
        named = [c for c in containers if c and c[-1] in _NESTED]
        if len(named) != 1:
            where = ", ".join(repr(".".join(map(str, c))) if c else "the top level" for c in containers)
            raise CheckpointError(folder, f"holds tensors under {where}: which are the model's is not known; save "
                                          "the model's state dict alone, or under 'model'")
        containers = {named[0]: containers[named[0]]}
    return next(iter(containers.values())), lr_key


def _distributed_checkpoint(folder: str, names: Optional[Set[str]], allow_pickle: bool):
    """A torch.distributed.checkpoint folder read on this process alone,
    without a process group: the model's tensors asked for, whole (the
    shards of each assembled), and the learning rate."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    path = os.path.join(folder, _DCP_METADATA)
    _check_file(path, need_data=True)
    try:
        with open(path, "rb") as f:
            metadata = pickle.load(f) if allow_pickle else _DcpMetadata(f).load()
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    entries, lr_key = _dcp_entries(metadata, folder)
    shapes, dtypes = {}, {}
    for name, key in entries.items():
        props = metadata.state_dict_metadata[key]
        shapes[name], dtypes[name] = tuple(props.size), props.properties.dtype
    tensors = {n: torch.empty(shapes[n], dtype=dtypes[n]) for n in entries if names is None or n in names}

    class Reader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):  # the one read above, not pickle.load again
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # the learning rate: a float, unpickled without running code
            try:
                self.lr = float(torch.load(value, weights_only=not allow_pickle))
            except Exception:  # the learning rate only: one that cannot be read is left unknown
                self.lr = None

    request = {entries[n]: t for n, t in tensors.items()}
    planner = Planner(flatten_state_dict=False)
    if lr_key is not None:
        request[lr_key] = None
    with warnings.catch_warnings():  # that it reads on this process alone, as asked
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        try:
            dcp.load(request, storage_reader=Reader(folder), planner=planner, no_dist=True)
        except CheckpointException as exc:  # a BaseException wrapping the reader's own exception
            raise next(iter(exc.failures.values()))[0] from exc
    return shapes, dtypes, tensors, getattr(planner, "lr", None)


def read_weights(checkpoint: Union[Checkpoint, str], allow_pickle: bool = False,
                 names: Optional[Iterable[str]] = None) -> Weights:
    """Read one checkpoint (a :class:`Checkpoint`, or the path of one file):
    the shapes of all its floating-point tensors, and the tensors themselves
    for ``names`` (default all; a ``.safetensors`` file reads only those).

    Raises :class:`CheckpointError` naming the file when it cannot be read."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(-1, checkpoint, (checkpoint,))
    wanted = None if names is None else set(names)
    shapes: Dict[str, Tuple[int, ...]] = {}
    dtypes: Dict[str, torch.dtype] = {}
    tensors: Dict[str, torch.Tensor] = {}
    tied: Dict[str, str] = {}
    lr = None
    for file in ckpt.files:
        try:
            if os.path.isdir(file):  # a torch.distributed.checkpoint folder
                part_shapes, part_dtypes, part, part_lr = _distributed_checkpoint(file, wanted, allow_pickle)
                lr = part_lr if lr is None else lr
            elif file.endswith(".safetensors"):
                _check_file(file, need_data=True)
                part_shapes, part_dtypes, part = _safetensors(file, wanted)
            else:
                _check_file(file, need_data=True)
                obj = _torch_load(file, allow_pickle)
                part_shapes, part_dtypes, part, part_tied = _torch_tensors(_find_state_dict(obj, file), wanted)
                tied.update(part_tied)
                lr = _optimizer_lr(obj) if lr is None else lr
        except CheckpointError:
            raise
        except Exception as exc:  # whatever the reader raises for a corrupt file
            raise _unreadable(file, exc) from exc
        again = next((n for n in part_shapes if n in shapes), None)
        if again is not None:
            raise CheckpointError(file, f"holds tensor {again!r} that another shard of {ckpt.path} holds too")
        shapes.update(part_shapes)
        dtypes.update(part_dtypes)
        tensors.update(part)
    if lr is None and ckpt.optimizer is not None:
        try:  # the learning rate only: an optimizer state that cannot be read leaves it unknown
            lr = _optimizer_lr(_torch_load(ckpt.optimizer, allow_pickle))
        except Exception:
            lr = None
    return Weights(shapes, dtypes, tensors, tied, lr)


def load_checkpoint(checkpoint: Union[Checkpoint, str], allow_pickle: bool = False
                    ) -> Tuple[Dict[str, torch.Tensor], Optional[float]]:
    """The floating-point tensors of one checkpoint, by name (tied copies
    once), and the learning rate of its optimizer state when it has one.

    ``allow_pickle`` lets ``torch.load`` run the pickled Python objects a file
    holds besides tensors (a Lightning checkpoint's hyperparameters, a
    training checkpoint's config): only for files you trust.
    Raises :class:`CheckpointError` naming the file when it cannot be read."""
    weights = read_weights(checkpoint, allow_pickle)
    return weights.tensors, weights.lr


def _check_against(weights: Weights, names: Sequence[str], reference: Dict[str, Tuple[int, ...]],
                   dtypes: Dict[str, torch.dtype], ckpt: Checkpoint, first: Checkpoint) -> None:
    """``ckpt`` holds the tensors ``names`` with the shapes and dtypes of
    ``first`` (``reference``: the shapes of all of its floating-point
    tensors; ``dtypes``: theirs) and no others."""
    missing = [n for n in names if n not in weights.shapes]
    if missing:
        # the same tensor under a wrapper's prefix (torch.compile's "_orig_mod.", DDP's "module."), or without it
        alias = next((n for n in weights.shapes if n.endswith("." + missing[0]) or missing[0].endswith("." + n)), None)
        raise CheckpointError(ckpt.path, f"lacks {len(missing)} tensor(s) of {first.path}, e.g. {missing[0]!r}" + (
            f", which it holds as {alias!r}: save every checkpoint from the model wrapped the same way (torch.compile "
            "and DDP prefix the names, a LightningModule its attribute's name)" if alias else ""))
    extra = [n for n in weights.shapes if n not in reference]
    if extra:
        raise CheckpointError(ckpt.path, f"has {len(extra)} tensor(s) that {first.path} lacks, e.g. {extra[0]!r}")
    for name in names:
        if weights.shapes[name] != reference[name]:
            raise CheckpointError(ckpt.path, f"tensor {name!r} has shape {weights.shapes[name]}, expected "
                                             f"{reference[name]} as in {first.path}")
        if weights.dtypes[name] != dtypes[name]:  # an update across the cast would be mostly its rounding
            found, expected = (str(d).replace("torch.", "") for d in (weights.dtypes[name], dtypes[name]))
            raise CheckpointError(ckpt.path, f"tensor {name!r} is {found}, not {expected} as in {first.path}: an "
                                             "update across a change of dtype holds the cast's rounding; analyse "
                                             "checkpoints of one dtype")


def _select(shapes: Dict[str, Tuple[int, ...]], include: Optional[Sequence[str]],
            exclude: Optional[Sequence[str]]) -> List[str]:
    include, exclude = ([p] if isinstance(p, str) else p for p in (include, exclude))

    def matches(name, patterns):
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    names = [n for n in shapes if (not include or matches(n, include)) and not matches(n, exclude or ())]
    if not names:
        raise ValueError(f"no tensor of the first checkpoint matches --include {list(include or ['*'])} and "
                         f"--exclude {list(exclude or [])}; its floating-point tensors are e.g. {list(shapes)[:5]}")
    return names


class _Survey(NamedTuple):
    checkpoints: List[Checkpoint]  # the readable ones, by step
    names: List[str]  # the tensors to analyse
    shapes: Dict[str, Tuple[int, ...]]  # the first checkpoint's
    dtypes: Dict[str, torch.dtype]  # the first checkpoint's
    unchanged: List[str]  # equal in every checkpoint: left out
    excluded: List[str]  # left out by the name patterns
    tied: Dict[str, str]


def _survey(checkpoints: List[Checkpoint], allow_pickle: bool, include, exclude,
            fail: Callable[[CheckpointError], None], bar) -> _Survey:
    """The first pass: which checkpoints can be read and match the first,
    and which tensors change. Only tensors not yet seen changing are read
    (and of ``.pt`` files, which are memory-mapped, only those pages), and
    of a DCP checkpoint those still equal to another."""
    readable: List[Checkpoint] = []
    names: List[str] = []
    shapes: Dict[str, Tuple[int, ...]] = {}
    dtypes: Dict[str, torch.dtype] = {}
    first_ckpt, weights = None, None
    reference: Dict[str, torch.Tensor] = {}  # the first checkpoint's tensors not yet seen changing
    tied: Dict[str, str] = {}
    copies: Dict[str, str] = {}  # a tensor equal to another in every checkpoint so far -> that one
    for ckpt in checkpoints:
        bar.set_postfix_str(f"reading step {ckpt.step}")
        try:
            if first_ckpt is None:
                weights = read_weights(ckpt, allow_pickle)
                names = _select(weights.shapes, include, exclude)
                shapes, dtypes, tied, first_ckpt = weights.shapes, weights.dtypes, dict(weights.tied), ckpt
                reference = {n: weights.tensors[n] for n in names}
                # a DCP checkpoint stores a tied weight under each of its names: a copy is a tensor equal to another
                # in every checkpoint
                copies = _equal_to_another(weights.tensors, names) if os.path.isdir(ckpt.files[0]) else {}
            else:
                weights = read_weights(ckpt, allow_pickle, names=set(reference) | set(copies) | set(copies.values()))
                _check_against(weights, names, shapes, dtypes, ckpt, first_ckpt)
                for name in [n for n, t in reference.items() if not torch.equal(weights.tensors[n], t)]:
                    del reference[name]
                for name in [n for n, o in copies.items() if not torch.equal(weights.tensors[n], weights.tensors[o])]:
                    del copies[name]
            readable.append(ckpt)
        except CheckpointError as exc:
            fail(exc)
        finally:
            weights = None
            bar.update(1)
    unchanged = [n for n in names if n in reference] if len(readable) > 1 else []
    if len(readable) > 1:
        tied.update((n, o) for n, o in copies.items() if n not in reference)
    excluded = [n for n in shapes if n not in names]
    return _Survey(readable, [n for n in names if n not in unchanged and n not in tied], shapes, dtypes, unchanged,
                   excluded, tied)


def _equal_to_another(tensors: Dict[str, torch.Tensor], names: Sequence[str]) -> Dict[str, str]:
    """Each tensor equal to an earlier one -> that one's name (candidates
    are found by shape, dtype, first values and sum, then compared)."""
    copies: Dict[str, str] = {}
    seen: Dict[tuple, List[str]] = {}
    for name in names:
        t = tensors[name]
        key = (tuple(t.shape), t.dtype, tuple(t.reshape(-1)[:16].tolist()), float(t.sum(dtype=torch.float64)))
        same = seen.setdefault(key, [])
        original = next((o for o in same if torch.equal(tensors[o], t)), None)
        if original is None:
            same.append(name)
        else:
            copies[name] = original
    return copies


def _has_results(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    with os.scandir(path) as entries:  # closed, though any() stops at the first
        return any(True for _ in entries)


def _output_dir(ckpt_dir: str, out: Optional[str], overwrite: bool) -> str:
    """``out``, or ``runs/analyze-<folder name>`` with ``-2``, ``-3``... until
    one holds no results; created and checked writable. Results already in
    an explicit ``out`` are replaced only with ``overwrite``."""
    if out is None:
        base = os.path.join("runs", "analyze-" + os.path.basename(os.path.abspath(ckpt_dir)))
        out, k = base, 1
        while _has_results(out):
            k += 1
            out = f"{base}-{k}"
    elif _has_results(out):
        if not overwrite:
            raise FileExistsError(f"{out} holds results of an earlier analysis; name another output directory "
                                  f"(--out), or pass --overwrite (overwrite=True) to replace them")
        clear_records(out)  # as asked
    return writable_dir(out)


def writable_dir(path: str) -> str:
    """``path``, created if needed, once a file could be written in it;
    otherwise an ``OSError`` of one line naming it."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise type(exc)(f"cannot write the results to {path} ({_first_line(exc)})") from exc
    return path


def analyze_checkpoints(
    ckpt_dir: str,
    out: Optional[str] = None,
    options: Optional[WindowOptions] = None,
    *,
    on_error: str = "raise",
    lr: Optional[float] = None,
    allow_pickle: bool = False,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    sinks=("jsonl", "csv"),
    progress: bool = True,
    log=print,
    **overrides,
) -> SpectralMonitor:
    """Stream the checkpoints of ``ckpt_dir`` through a window and write the
    analysis records (and the report's inputs) to ``out``.

    Args:
        out: output directory; default ``runs/analyze-<folder name>``, or
            that name with ``-2``, ``-3``... when it already holds results.
            An explicit ``out`` holding results is refused unless
            ``overwrite``.
        options: a :class:`~spectral_edge_fast.config.WindowOptions` or
            ``MonitorOptions``; its fields may also be given, or overridden,
            as keywords, as for :class:`SpectralMonitor`: the window's
            (``window``, ``every``, ``groups``, ``storage_dtype``,
            ``backend``, ``sketch``), ``history``, ``probes`` (computed from
            each checkpoint's tensors; without the model, the attention
            operators have no per-head entries) and the event rule
            (``gap_open_above``, ``gap_close_below``, ``k_star_margin``).
            ``every`` counts checkpoints (an update spans ``every`` of them)
            and each slide is analysed, into ``out``: ``analyze_every`` and
            ``log_dir`` are refused.
        on_error: "raise" stops at the first checkpoint that cannot be
            listed, read, or matched with the first (a
            :class:`CheckpointError` naming it); "skip" leaves it out, says so
            through ``log``, and goes on (the next update then spans the gap).
        lr: learning rate for the adiabatic parameter; default the one in
            each checkpoint's optimizer state, if any (the Trainer and loops
            that step the scheduler before saving store the rate of the step
            after the checkpoint; a rate that changes is logged).
        allow_pickle: let ``torch.load`` run the pickled Python objects in the
            files (only for files you trust).
        include, exclude: fnmatch patterns of tensor names: analyse the
            tensors matching one of ``include`` (default all) and none of
            ``exclude``.

    Returns the monitor (closed), whose ``history`` holds the records; a
    record's ``step`` is the checkpoint's step number.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fixed = sorted({"analyze_every", "log_dir"} & set(overrides))
    if fixed:
        raise TypeError(f"analyze_checkpoints sets {', '.join(fixed)} itself (each slide is analysed, into out)")
    options = resolve(MonitorOptions, options, overrides, "analyze_checkpoints")
    skipped: List[str] = []

    def fail(exc: CheckpointError) -> None:
        if on_error == "raise":
            raise exc
        skipped.append(exc.path)
        log(f"skipping {exc}")

    checkpoints = list_checkpoints(ckpt_dir, allow_pickle, on_problem=fail)
    total = len(checkpoints) + len(skipped)
    out = _output_dir(ckpt_dir, out, overwrite)
    with _progress(len(checkpoints), progress, "1/2 checking") as bar:
        survey = _survey(checkpoints, allow_pickle, include, exclude, fail, bar)
    if not survey.checkpoints:
        raise CheckpointError(ckpt_dir, "no readable checkpoint")
    if not survey.names:
        raise CheckpointError(ckpt_dir, f"no tensor changes between its {len(survey.checkpoints)} checkpoints")
    for what, names in (("tied to another (counted once)", list(survey.tied)),
                        ("equal in every checkpoint (frozen or a buffer)", survey.unchanged),
                        ("excluded by --include/--exclude", survey.excluded)):
        if names:
            log(f"left out {len(names)} tensor(s) {what}: {', '.join(names)}")
    _log_modules(survey, log)
    _log_spacing(survey.checkpoints, options.every, log)

    monitor = None
    with _progress(len(survey.checkpoints), progress, "2/2 analysing") as bar:
        shown = ""  # the newest analysis, which lags the checkpoint being read
        nonfinite = None  # the first checkpoint holding NaN or inf (a run that diverged)
        rates: List[Tuple[int, float]] = []  # (step, the learning rate its optimizer state holds)
        for ckpt in survey.checkpoints:
            bar.set_postfix_str(f"reading step {ckpt.step}{shown}")
            try:
                weights = read_weights(ckpt, allow_pickle, names=survey.names)
                _check_against(weights, survey.names, survey.shapes, survey.dtypes, ckpt, survey.checkpoints[0])
            except CheckpointError as exc:  # changed since the first pass
                fail(exc)
                bar.update(1)
                continue
            if weights.lr is not None:
                rates.append((ckpt.step, weights.lr))
            if nonfinite is None:
                bad = next((n for n in survey.names if not bool(torch.isfinite(weights.tensors[n]).all())), None)
                if bad is not None:
                    nonfinite = {"path": ckpt.path, "step": ckpt.step, "tensor": bad}
                    log(f"{ckpt.path} (step {ckpt.step}): tensor {bad!r} holds non-finite values (NaN or inf); the "
                        "updates to and from it are non-finite and left out of each spectrum (status "
                        "'nonfinite_rows', 'undefined' once no finite update is left in the window)")
            if monitor is None:
                # owned copies, updated in place from each checkpoint as an optimizer updates parameters
                params = [(n, weights.tensors[n].clone(memory_format=torch.contiguous_format)) for n in survey.names]
                monitor = SpectralMonitor(params, None, options, analyze_every=options.every, sinks=sinks, log_dir=out)
                monitor.annotate(source=os.path.abspath(ckpt_dir), checkpoints=total, first=ckpt.path,
                                 left_out={"tied": survey.tied, "unchanged": survey.unchanged,
                                           "excluded": survey.excluded})
            else:
                for name, t in params:
                    t.copy_(weights.tensors[name])
                step_lr = lr if lr is not None else weights.lr
                weights = None
                monitor.step(lr=step_lr, step=ckpt.step)
                latest = monitor.latest
                if latest is not None and latest["R"] is not None:
                    shown = f"; analysis of step {latest['step']}: k*={latest['k_star']}, R={latest['R']:.3g}"
            weights = None
            bar.update(1)
    if monitor is None:
        raise CheckpointError(ckpt_dir, "no readable checkpoint")
    if nonfinite is not None:
        monitor.annotate(nonfinite=nonfinite)
    if lr is None and len({r for _, r in rates}) > 1:
        (a, ra), (b, rb) = rates[0], rates[-1]
        log(f"the learning rate changes between checkpoints ({ra:.3g} at step {a}, {rb:.3g} at step {b}): each "
            "record takes its checkpoint's, which the Trainer and loops that step the scheduler before saving set "
            "for the step after it, so A is off by one step's change of the rate (--lr sets one rate)")
    if skipped:
        monitor.annotate(skipped=skipped)
        names = ", ".join(os.path.relpath(p, ckpt_dir) for p in skipped)
        log(f"skipped {len(skipped)} of {total} checkpoints: {names}")
    monitor.close()
    return monitor


def _log_modules(survey: _Survey, log, shown: int = 8) -> None:
    """What is analysed, by the first part of the tensors' names: a copy
    that changes with the model (an EMA, a teacher) is analysed with it
    unless excluded, and shows here."""
    modules: Dict[str, List[int]] = {}
    for name in survey.names:
        counts = modules.setdefault(name.split(".")[0] + (".*" if "." in name else ""), [0, 0])
        counts[0] += math.prod(survey.shapes[name])
        counts[1] += 1
    parts = [f"{m} {numel:,} ({k} tensor{'s' if k > 1 else ''})" for m, (numel, k) in modules.items()]
    more = f" and {len(parts) - shown} more" if len(parts) > shown else ""
    log(f"analysing {sum(n for n, _ in modules.values()):,} numbers in {len(survey.names)} tensors: "
        f"{', '.join(parts[:shown])}{more}")


def _log_spacing(checkpoints: List[Checkpoint], every: int, log) -> None:
    """Name the intervals between checkpoints that differ from the most
    common one: an update spans ``every`` intervals, whatever their steps."""
    gaps = [(a.step, b.step) for a, b in zip(checkpoints, checkpoints[1:])]
    lengths = Counter(b - a for a, b in gaps)
    if len(lengths) > 1:
        usual = lengths.most_common(1)[0][0]
        odd = [f"{a} -> {b} ({b - a} steps)" for a, b in gaps if b - a != usual]
        log(f"checkpoints unevenly spaced (most {usual} steps apart): {', '.join(odd[:5])}"
            f"{f' and {len(odd) - 5} more' if len(odd) > 5 else ''}; an update spans {every} interval(s) between "
            "checkpoints, so these updates span more or fewer steps than the others")


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ckpt", disable=not enabled, dynamic_ncols=True)


__all__ = ["Checkpoint", "CheckpointError", "Weights", "analyze_checkpoints", "list_checkpoints", "load_checkpoint",
           "read_weights", "writable_dir"]
