"""Weight-matrix probe (docs/math.md#weight-spectra, Section 27): the gap of a 2-D
weight matrix itself, e.g. an attention ``W_Q``, tracked over training."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ._common import Result, frozen_array, zero_tolerance


@dataclass(frozen=True, eq=False)
class WeightSpectrum(Result):
    """Top of the singular spectrum of a weight matrix.

    Attributes:
        shape: the matrix shape.
        singular_values: the ``top`` largest singular values, descending.
        ratio_12: ``sigma_1 / sigma_2``.
        g23: ``sigma_2^2 - sigma_3^2`` (``sigma_3 = 0`` when ``min(shape) = 2``).
        status, reason: ``"ok"`` or ``"undefined"`` (non-finite entries, fewer
            than two rows or columns, or ``sigma_2 = 0`` for the ratio).
    """

    shape: Tuple[int, int]
    singular_values: np.ndarray
    ratio_12: float
    g23: float
    status: str
    reason: str


def weight_spectrum(matrix, top: int = 8) -> WeightSpectrum:
    """``sigma_1 / sigma_2`` and ``sigma_2^2 - sigma_3^2`` of a 2-D matrix
    (anything ``numpy.asarray`` takes, e.g. a CPU tensor).

    Raises:
        ValueError: ``matrix`` is not 2-D.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"weight_spectrum needs a 2-D matrix, got shape {a.shape}")
    shape = (int(a.shape[0]), int(a.shape[1]))
    if min(shape) < 2 or not np.isfinite(a).all():
        why = f"shape {shape}: need at least 2 x 2" if min(shape) < 2 else "the matrix has non-finite entries"
        return WeightSpectrum(shape, frozen_array(np.zeros(0)), math.nan, math.nan, "undefined", why)
    s = np.linalg.svd(a, compute_uv=False)
    s3 = s[2] if s.size > 2 else 0.0
    # sigma_2 within the SVD's own error of zero is zero (the matrix itself is
    # exact: eps = 0): the ratio is undefined.
    defined = s[1] > zero_tolerance(max(shape), s[0], eps=0.0)
    return WeightSpectrum(
        shape=shape,
        singular_values=frozen_array(s[:top]),
        ratio_12=float(s[0] / s[1]) if defined else math.nan,
        g23=float(s[1] ** 2 - s3**2),
        status="ok" if defined else "undefined",
        reason="" if defined else "sigma_2 = 0 (rank <= 1): sigma_1 / sigma_2 undefined",
    )
