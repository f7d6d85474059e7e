"""The noise model (docs/math.md#noise-and-the-null): noise scale and BBP threshold, and the
null distribution of the maximum consecutive singular-value ratio (Prop. 6.4).

Under H0 the window's entries are iid ``N(0, nu^2)``; the ratio is scale-free,
so ``nu`` drops out and the eigenvalues of ``G`` are those of a real Wishart
matrix. The Dumitriu-Edelman model (beta = 1) gives them exactly from a random
bidiagonal matrix with ``O(min(W, P))`` chi draws, whatever ``P``; the
eigenvalues of its tridiagonal ``B B^T`` come from one batched eigen-solve per
chunk of draws.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ._common import Result, check_scalar, frozen_array
from .spectrum import Spectrum

_REPORTED_QUANTILES = (0.5, 0.9, 0.95, 0.99)
# Draws per batched eigen-solve: bounds the temporary (chunk, m, m) stack to ~32 MB.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class NullMaxRatio(Result):
    """Monte-Carlo null distribution of ``max_j sigma_j / sigma_{j+1}``.

    Attributes:
        W, P: window length and number of parameters.
        n_samples, seed: the draws (same arguments, same samples).
        samples: the sampled maxima, ascending; not logged.
        quantiles: ``{"0.5": ..., "0.9": ..., "0.95": ..., "0.99": ...}``.
    """

    W: int
    P: int
    n_samples: int
    seed: int
    samples: np.ndarray
    quantiles: dict

    _NOT_LOGGED = ("samples",)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the null maximum ratio."""
        return float(np.quantile(self.samples, q))

    def p_value(self, R: float) -> float:
        """``P(max ratio >= R | H0)``, estimated as ``(1 + #{samples >= R}) / (n + 1)``
        (never 0, valid at every level). NaN when ``R`` is NaN, i.e. an
        undefined gap ratio (see ``Spectrum.status``)."""
        if math.isnan(R):
            return math.nan
        exceed = self.samples.size - np.searchsorted(self.samples, R, side="left")
        return float((1 + exceed) / (1 + self.samples.size))


def _dimensions(W, P):
    if int(W) != W or int(P) != P:
        raise ValueError(f"W and P must be integers, got W={W}, P={P}")
    m, d = sorted((int(W), int(P)))
    if m < 2:
        raise ValueError(f"the maximum ratio needs min(W, P) >= 2 positive eigenvalues, got W={W}, P={P}")
    return m, d


@functools.lru_cache(maxsize=64)
def _sample(m: int, d: int, n_samples: int, seed: int) -> np.ndarray:
    """Sorted maxima of ``sqrt(lambda_j / lambda_{j+1})`` for ``n_samples``
    Wishart draws of dimension ``m`` with ``d >= m`` degrees of freedom.

    The tridiagonal ``B B^T`` is shifted by ``-d I`` before the eigen-solve:
    its eigenvalues sit at ``d + O(sqrt(d m))``, and the shift keeps their
    differences exact to rounding even at ``d = 1e12``."""
    rng = np.random.default_rng(seed)
    diag_df = d - np.arange(m)  # B_ii ~ chi_{d-i+1}
    sub_df = m - 1 - np.arange(m - 1)  # B_{i+1,i} ~ chi_{m-i}
    idx = np.arange(m)
    out = np.empty(n_samples)
    chunk = max(1, _CHUNK_ELEMENTS // (m * m))
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        b_diag2 = rng.chisquare(diag_df, size=(k, m))
        b_sub2 = rng.chisquare(sub_df, size=(k, m - 1))
        T = np.zeros((k, m, m))
        shifted = b_diag2 - d
        shifted[:, 1:] += b_sub2
        T[:, idx, idx] = shifted
        off = np.sqrt(b_diag2[:, :-1] * b_sub2)
        T[:, idx[:-1], idx[1:]] = off
        T[:, idx[1:], idx[:-1]] = off
        mu = np.linalg.eigvalsh(T)[:, ::-1]
        log_ratio = 0.5 * np.log1p((mu[:, :-1] - mu[:, 1:]) / (d + mu[:, 1:]))
        out[start : start + k] = np.exp(log_ratio.max(axis=1))
    out.sort()
    return frozen_array(out)


def null_max_ratio(W: int, P: int, n_samples: int = 20000, seed: int = 0) -> NullMaxRatio:
    """Null distribution of the gap ratio ``R = max_j sigma_j / sigma_{j+1}``
    for a ``W``-row window of ``P`` iid Gaussian coordinates.

    ``P < W`` is allowed (the window then has rank ``P``; the ratio runs over
    the ``P`` positive eigenvalues, as ``spectrum`` does). Results are cached
    per ``(W, P, n_samples, seed)``.

    Raises:
        ValueError: ``min(W, P) < 2``, non-integer sizes or ``n_samples < 1``.
    """
    m, d = _dimensions(W, P)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    samples = _sample(m, d, int(n_samples), int(seed))
    return NullMaxRatio(
        W=int(W),
        P=int(P),
        n_samples=int(n_samples),
        seed=int(seed),
        samples=samples,
        quantiles={str(q): float(np.quantile(samples, q)) for q in _REPORTED_QUANTILES},
    )


def ratio_p_value(R: float, W: int, P: int, n_samples: int = 20000, seed: int = 0) -> float:
    """p-value of an observed gap ratio ``R`` under the isotropic null; see
    ``NullMaxRatio.p_value`` (NaN for a NaN ``R``)."""
    return null_max_ratio(W, P, n_samples, seed).p_value(float(R))


# Draws of the null behind a monitor record's R_pvalue and "null" gap
# thresholds: one sample per (W, P), cached, about 0.2 s at W = 16 and 2 s at
# W = 64; p-values down to 1 / 5001.
MONITOR_SAMPLES = 5000
# The quantiles of the null that "null" gap thresholds take: open above the
# 0.99 quantile (a ratio noise rarely reaches), collapsed below the median (a
# ratio no larger than a noise window's typical maximum).
NULL_OPEN_QUANTILE, NULL_CLOSE_QUANTILE = 0.99, 0.5


def gap_thresholds(open_above, close_below, W: int, P: int, n_samples: int = 20000) -> Tuple[float, Optional[float]]:
    """The gap events' ``(open_above, close_below)`` with a ``"null"`` one
    replaced by the ``NULL_OPEN_QUANTILE`` (opening) or ``NULL_CLOSE_QUANTILE``
    (collapse) quantile of ``null_max_ratio(W, P, n_samples)``; numbers and
    None pass through."""
    null = null_max_ratio(W, P, n_samples) if "null" in (open_above, close_below) else None
    return (null.quantile(NULL_OPEN_QUANTILE) if open_above == "null" else open_above,
            null.quantile(NULL_CLOSE_QUANTILE) if close_below == "null" else close_below)


@dataclass(frozen=True, eq=False)
class BBP(Result):
    """Noise scale and BBP detection threshold of a window (Prop. 6.4).

    Attributes:
        P, W: parameters and analysed window rows (``Spectrum.n``).
        noise_std: per-coordinate noise std ``nu``.
        sigma_noise: noise bulk edge ``nu (sqrt(P) + sqrt(W))``.
        d_crit: detection threshold ``nu (P (W - 1))^(1/4)`` (the author's ``W - 1``).
        sigma_min: smallest singular value of the window.
        sigma_min_over_d_crit: ``>> 1`` means every eigenvalue is signal.
        n_above_noise, n_above_d_crit: singular values above each threshold.
        status, reason: ``"ok"`` or ``"undefined"`` (no rows, ``W = 1`` or ``nu = 0``).
    """

    P: int
    W: int
    noise_std: float
    sigma_noise: float
    d_crit: float
    sigma_min: float
    sigma_min_over_d_crit: float
    n_above_noise: int
    n_above_d_crit: int
    status: str
    reason: str


def bbp(spectrum: Spectrum, P: int, noise_std=None, lr=None, batch_size=None) -> BBP:
    """BBP diagnostics of ``spectrum`` for ``P`` parameters. ``spectrum``: a
    ``Spectrum``, or a window's singular values in descending order (a
    monitor record's ``sigmas``).

    The noise std is ``noise_std`` when given, else the paper's Adam estimate
    ``nu = lr / sqrt(batch_size)``.

    Raises:
        ValueError: neither ``noise_std`` nor both ``lr`` and ``batch_size``,
            or a negative value.
    """
    if noise_std is None:
        if lr is None or batch_size is None:
            raise ValueError("bbp needs noise_std, or lr and batch_size for the estimate nu = lr / sqrt(batch_size)")
        noise_std = check_scalar(lr, "lr") / math.sqrt(check_scalar(batch_size, "batch_size", 1.0))
    nu = check_scalar(noise_std, "noise_std")
    P = int(check_scalar(P, "P", 1.0))
    sigmas = np.asarray(getattr(spectrum, "sigmas", spectrum), dtype=np.float64)
    W = sigmas.size
    sigma_noise = nu * (math.sqrt(P) + math.sqrt(W))
    d_crit = nu * (P * max(W - 1, 0)) ** 0.25
    sigma_min = float(sigmas[-1]) if W else math.nan
    defined = W > 0 and d_crit > 0
    return BBP(
        P=P,
        W=W,
        noise_std=nu,
        sigma_noise=sigma_noise,
        d_crit=d_crit,
        sigma_min=sigma_min,
        sigma_min_over_d_crit=sigma_min / d_crit if defined else math.nan,
        n_above_noise=int(np.count_nonzero(sigmas > sigma_noise)),
        n_above_d_crit=int(np.count_nonzero(sigmas > d_crit)),
        status="ok" if defined else "undefined",
        reason="" if defined else f"d_crit = 0 or no rows (W={W}, noise_std={nu:g}): sigma_min / d_crit undefined",
    )
