"""Fresh random windows with planted structure, built explicitly in parameter
space so every quantity can be checked against an SVD of ``X``."""
import numpy as np
import pytest


def _orthonormal(rng, rows, cols):
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diagonal(r))


def planted(rng, sigmas, P, noise_std=0.0):
    """``X = U diag(sigmas) V^T + noise``: ``len(sigmas)`` rows, ``P`` columns,
    Haar-random ``U`` and ``V``."""
    W = len(sigmas)
    X = _orthonormal(rng, W, W) @ (np.asarray(sigmas, dtype=np.float64)[:, None] * _orthonormal(rng, P, W).T)
    return X + noise_std * rng.standard_normal((W, P)) if noise_std else X


def explicit_directions(X):
    """Singular values and right singular vectors (rows) of ``X`` by SVD."""
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    return s, vt


@pytest.fixture
def make_window():
    return planted


@pytest.fixture
def svd_directions():
    return explicit_directions
