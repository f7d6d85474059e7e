"""Spectral diagnostics of the window's Gram matrices (docs/math.md).

NumPy, float64, no torch (except ``curvature.py``, which runs the model for
Hessian-vector products): every function takes the small matrices and
vectors the engine reads back (Gram ``G``, extended Gram, projections ``p = X y``)
and returns a frozen dataclass whose ``to_dict()`` is plain, JSON-ready Python.
Two optional compiled modules (plain C++, ``csrc/analysis``) speed up the
streaming path, the eigen-update and the per-slide ``O(n^2)`` sums; without
them the same results come from LAPACK and NumPy.

Conventions
-----------
* ``G`` is ``n x n``, rows oldest first. The extended Gram is
  ``(n+1) x (n+1)``: row 0 the update that left the window (zeros while the
  window fills), the last row the update that entered.
* Mode numbers (``k_star``, clusters) are 1-based; arrays are indexed ``j - 1``.
* One tolerance decides zeros and ties, ``tol = n * (eps + 8 eps64) *
  lambda_1`` (``_common.zero_tolerance``): eigenvalues ``<= tol`` count as
  zero, eigenvalues (and gaps) within it as tied. ``eps`` is the unit
  roundoff of the Gram's entries; every function that takes it defaults to
  float32's (``_common.ENGINE_EPS``), the precision the engine accumulates
  in, so ``spectrum(window.gram())`` gives the monitor's answer. Pass
  ``eps=_common.EPS`` (float64's) only for Grams computed exactly in
  float64; the ``8 eps64`` term covers the eigensolver's own error.
* Undefined is a status, never an exception: each result has ``status`` and
  ``reason``; undefined floats are NaN, undefined integers None. Statuses:
  ``"ok"``; ``"partial"`` (a secondary value undefined, see ``reason``);
  ``"nonfinite_rows"`` (NaN/inf rows left out, the rest computed);
  ``"tied"`` (``spectrum`` only: all positive eigenvalues equal, no gap
  position); ``"undefined"`` (the main values undefined: empty or all-zero
  window, rank one, non-finite input where rows cannot be dropped).
  Exceptions (``ValueError``) are for caller errors only: a matrix that is
  not square or not symmetric beyond rounding, shapes that do not match,
  arguments out of range.
* Time-series functions (``events``, ``collapse_order``) read records as
  ``Spectrum.to_dict()`` plus a ``"step"`` key (details: ``events.__doc__``).
* Pass a ``Spectrum`` computed once to the functions that take one, so each
  window is eigendecomposed once.
* Many groups at once: ``analyze_slides`` computes the per-slide pipeline
  (spectrum, stability, adiabatic, window overlaps, eigen flow) for a
  [G, n+1, n+1] stack, vectorised over the groups. With an ``EigenTracker``
  (a monitor that analyses every slide) the current windows' eigenpairs are
  updated from the previous ones by the rank-two secular solver
  (``tracking.py``, compiled from ``csrc/analysis/secular.cpp``; checked
  every slide, LAPACK when a check fails or the module is not built).
  ``spectrum_batch``: the spectrum alone of each window of a [G, n, n]
  stack, from eigenvalues (what summaries of many groups need).
"""
from .batch import SlideBatch, SpectrumBatch, analyze_slides, spectrum_batch
from .decomposition import (
    FirstOrderSplit,
    LossDecomposition,
    Projections,
    first_order_split,
    loss_decomposition,
    projections,
)
from .events import CollapseOrder, Event, EventStream, LeadLag, ThreePhase, collapse_order, events, lead_lag, three_phase
from .curvature import Curvatures, adam_preconditioner, direction_curvatures, window_directions
from .eigen import Eigen, eigen_batch
from .flow import EigenFlow, delta_c_fro, eigen_flow
from .gapflow import Fit, GapFlow, RepulsionFit, gap_flow, gap_rate, level_repulsion, prediction_fit
from .null import BBP, NullMaxRatio, bbp, gap_thresholds, null_max_ratio, ratio_p_value
from .spectrum import Spectrum, spectrum
from .stability import (
    Adiabatic,
    Overlaps,
    Stability,
    adiabatic,
    half_window_overlaps,
    stability,
    window_overlaps,
)
from .tracking import EigenTracker, slide_eigen
from .weights import AttentionSpectrum, WeightSpectrum, attention_spectrum, weight_spectrum

__all__ = [
    "Adiabatic",
    "AttentionSpectrum",
    "BBP",
    "CollapseOrder",
    "Curvatures",
    "Eigen",
    "EigenFlow",
    "EigenTracker",
    "Event",
    "EventStream",
    "Fit",
    "FirstOrderSplit",
    "GapFlow",
    "LeadLag",
    "LossDecomposition",
    "NullMaxRatio",
    "Overlaps",
    "Projections",
    "RepulsionFit",
    "SlideBatch",
    "Spectrum",
    "SpectrumBatch",
    "Stability",
    "ThreePhase",
    "WeightSpectrum",
    "adam_preconditioner",
    "adiabatic",
    "analyze_slides",
    "attention_spectrum",
    "bbp",
    "collapse_order",
    "delta_c_fro",
    "direction_curvatures",
    "eigen_batch",
    "eigen_flow",
    "events",
    "first_order_split",
    "gap_thresholds",
    "gap_flow",
    "gap_rate",
    "half_window_overlaps",
    "lead_lag",
    "level_repulsion",
    "loss_decomposition",
    "null_max_ratio",
    "prediction_fit",
    "projections",
    "ratio_p_value",
    "slide_eigen",
    "spectrum",
    "spectrum_batch",
    "stability",
    "three_phase",
    "weight_spectrum",
    "window_directions",
    "window_overlaps",
]
