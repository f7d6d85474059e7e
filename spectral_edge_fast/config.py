"""The window's and the monitor's options, defined and checked once.

:class:`GramWindow`, :class:`SpectralMonitor`, both callbacks and
:func:`analyze_checkpoints` take an options object (``options=``) and/or its
fields as keywords (``window=16, backend="cpp"``...), resolved by
:func:`resolve`: a new option is one field here, accepted and checked by every
entry point.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .analysis.events import K_STAR_MARGIN, OPEN_ABOVE
from .kernels import _MODULES
from .layout import GroupSpec, _group_fn

STORAGE_DTYPES = (torch.float32, torch.bfloat16)
# Analyses over which the adiabatic parameter's running median is taken (the
# least `history` a monitor keeps).
A_MEDIAN_SPAN = 50
# Buckets per group of sketch mode that the accuracy study supports
# (docs/engine.md#sketch-mode), and the most the hash can address.
SKETCH_M = 1 << 16
SKETCH_MAX = 1 << 30


def integer(name: str, value, least: int) -> int:
    """``value`` as a plain int: any integer type (``np.int64`` too), not a
    bool, a float or a string."""
    try:
        n = operator.index(value) if not isinstance(value, (bool, np.bool_)) else None
    except TypeError:
        n = None
    if n is None or n < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return n


@dataclass(frozen=True)
class WindowOptions:
    """A :class:`~spectral_edge_fast.GramWindow`'s options.

    Args:
        window: ``W``, rows kept (an integer of any integer type, 2 or more).
        every: stride ``s``: an update is ``theta_t - theta_{t-s}``.
        groups: "auto" (one group per repeated block, embeddings and head
            their own), "tensor", None (one group) or a callable name -> group.
        storage_dtype: the ring's dtype, ``torch.float32`` or ``torch.bfloat16``.
        backend: "auto" or a name from :func:`spectral_edge_fast.backends`.
        sketch: None (exact: the ring holds the updates) or ``m``, from 2 to
            ``2**30``: the ring holds each group's update sketched to ``m``
            numbers (docs/engine.md#sketch-mode; ``SKETCH_M`` is the size
            the documentation recommends).
    """

    window: int = 16
    every: int = 1
    groups: GroupSpec = "auto"
    storage_dtype: torch.dtype = torch.float32
    backend: str = "auto"
    sketch: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "window", integer("window", self.window, 2))
        object.__setattr__(self, "every", integer("every", self.every, 1))
        _group_fn(self.groups)  # raises on a spec ParamLayout would refuse
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be torch.float32 or torch.bfloat16, got {self.storage_dtype}")
        # Availability depends on the device: GramWindow checks it.
        if not (isinstance(self.backend, str) and (self.backend == "auto" or self.backend in _MODULES)):
            raise ValueError(f"backend must be 'auto' or one of {sorted(_MODULES)}, got {self.backend!r}")
        if self.sketch is not None:
            object.__setattr__(self, "sketch", integer("sketch", self.sketch, 2))
            if self.sketch > SKETCH_MAX:
                raise ValueError(f"sketch must be an integer from 2 to 2**30 (or None), got {self.sketch}")


@dataclass(frozen=True)
class MonitorOptions(WindowOptions):
    """A :class:`~spectral_edge_fast.SpectralMonitor`'s options: those of its
    window, and

    Args:
        analyze_every: optimizer steps between analyses.
        history: records kept in memory (at least ``A_MEDIAN_SPAN``), or None
            for all of them.
        sinks: sink names or :class:`~spectral_edge_fast.sinks.Sink` objects.
        log_dir: directory of the run's files (None: a new default one).
        probes: weight-matrix probes logged at each analysis: None,
            "attention" (every attention module's ``W_Q`` and score
            operator), or fnmatch patterns of 2-D parameter names (a string
            or a list, which may hold "attention" too).
        gap_open_above, gap_close_below: the gap events' thresholds on ``R``
            (open while ``R >= gap_open_above``, collapsed while ``R <
            gap_close_below``; None: ``1 + (gap_open_above - 1) / 2``), or
            "null": the 0.99 (opening) and 0.5 (collapse) quantiles of the
            null distribution of ``R`` at the run's ``W`` and ``P``.
        k_star_margin: a record's ``k*`` is decisive when the ratio at
            ``k*`` exceeds the runner-up's by at least this factor
            (``k_margin >= k_star_margin``); only decisive positions make
            ``k*`` shifts (1.0: every defined ``k*``).
    """

    analyze_every: int = 10
    history: Optional[int] = 1000
    sinks: object = ("jsonl",)
    log_dir: Optional[str] = None
    probes: Union[None, str, Tuple[str, ...]] = None
    gap_open_above: Union[float, str] = OPEN_ABOVE
    gap_close_below: Union[None, float, str] = None
    k_star_margin: float = K_STAR_MARGIN

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "analyze_every", integer("analyze_every", self.analyze_every, 1))
        if self.history is not None:
            object.__setattr__(self, "history", integer("history", self.history, A_MEDIAN_SPAN))
        probes = self.probes
        if probes is not None:
            probes = (probes,) if isinstance(probes, str) else tuple(probes) if isinstance(probes, (list, tuple)) else ()
            if not probes or not all(isinstance(p, str) and p for p in probes):
                raise ValueError("probes must be None, 'attention' or fnmatch patterns of 2-D parameter names, "
                                 f"got {self.probes!r}")
            object.__setattr__(self, "probes", probes)
        for name in ("gap_open_above", "gap_close_below"):
            value, x = getattr(self, name), _real(getattr(self, name))
            if not (value == "null" or (value is None and name == "gap_close_below") or (x is not None and x > 1)):
                raise ValueError(f"{name} must be a number > 1 or 'null'{' or None' * (name == 'gap_close_below')}"
                                 f", got {value!r}")
            if x is not None:
                object.__setattr__(self, name, x)
        if all(isinstance(getattr(self, n), float) for n in ("gap_open_above", "gap_close_below")) \
                and self.gap_close_below > self.gap_open_above:
            raise ValueError(f"gap_close_below must be <= gap_open_above, got {self.gap_close_below} > "
                             f"{self.gap_open_above}")
        margin = _real(self.k_star_margin)
        if margin is None or not margin >= 1:
            raise ValueError(f"k_star_margin must be a number >= 1, got {self.k_star_margin!r}")
        object.__setattr__(self, "k_star_margin", margin)


def _real(value) -> Optional[float]:
    """``value`` as a float when it is a real number (not a bool or a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def resolve(cls, options: Optional[WindowOptions], overrides: dict, where: str):
    """``cls`` from ``options`` (any options object: its fields that ``cls``
    has are taken) with ``overrides`` on top; an unknown keyword raises a
    TypeError naming it and ``where``."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"{where} got unknown option(s) {', '.join(unknown)}; its options are {', '.join(names)}")
    if options is not None and not isinstance(options, WindowOptions):
        raise TypeError(f"{where}: options must be a WindowOptions or MonitorOptions, got {type(options).__name__}")
    base = {} if options is None else {
        f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name in names}
    return cls(**{**base, **overrides})


__all__ = ["A_MEDIAN_SPAN", "MonitorOptions", "SKETCH_M", "SKETCH_MAX", "STORAGE_DTYPES", "WindowOptions", "integer", "resolve"]
