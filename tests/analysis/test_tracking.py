import numpy as np
import pytest

from spectral_edge_fast.analysis import tracking
from spectral_edge_fast.analysis.tracking import EigenTracker, slide_eigen

EPS = np.finfo(np.float64).eps


def stream(rows, n):
    """The extended Grams of every slide over ``rows`` [G, T, P], cut from one
    Gram of the whole stream so consecutive windows share their entries bit
    for bit, as the engine's do."""
    full = rows @ np.swapaxes(rows, 1, 2)
    for t in range(n, rows.shape[1] - 1):
        yield np.ascontiguousarray(full[:, t - n : t + 1, t - n : t + 1])


def units(G, values, vectors):
    """Per group: eigenvalue error against LAPACK, residual and orthogonality,
    in units of n * eps * lambda_1 (n * eps for orthogonality)."""
    n = G.shape[-1]
    ref = np.linalg.eigvalsh(G)[:, ::-1]
    scale = n * EPS * np.maximum(np.abs(ref).max(axis=1), np.finfo(float).tiny)
    err = np.abs(values - ref).max(axis=1) / scale
    res = np.linalg.norm(G @ vectors - vectors * values[:, None, :], axis=(1, 2)) / scale
    orth = np.abs(np.swapaxes(vectors, 1, 2) @ vectors - np.eye(n)).max(axis=(1, 2)) / (n * EPS)
    return err, res, orth


def make_rows(kind, rng, G=4, T=140, P=300):
    if kind == "dense":
        rows = rng.standard_normal((G, T, P))
        rows[:, :, :3] += rng.standard_normal((G, T, 3)) * np.array([6.0, 3.0, 1.5]) * np.sqrt(P / 10)
    elif kind == "rank_deficient":
        rows = rng.standard_normal((G, T, 6))
    elif kind == "filling":  # zero rows while the window fills: many equal (zero) poles
        rows = rng.standard_normal((G, T, P))
        rows[:, :50] = 0.0
    elif kind == "tied":  # orthonormal rows: every eigenvalue equal
        rows = np.zeros((G, T, T))
        rows[:, np.arange(T), np.arange(T)] = 1.0
    elif kind == "duplicates":
        rows = rng.standard_normal((G, T, P))
        rows[:, 1::2] = rows[:, 0:-1:2]
    elif kind == "rank_one":
        rows = np.repeat(rng.standard_normal((G, 1, P)), T, axis=1) * rng.uniform(0.5, 2.0, (G, T, 1))
    elif kind == "dynamic_range":  # update norms spread over e^16: the window's scale changes as rows leave
        rows = rng.standard_normal((G, T, P)) * np.exp(rng.uniform(-8, 8, (G, T, 1)))
    else:
        raise AssertionError(kind)
    return rows


needs_solver = pytest.mark.skipif(not tracking.available(), reason="spectral_edge_fast.analysis._secular is not built")


@needs_solver
@pytest.mark.parametrize("kind", ["dense", "rank_deficient", "filling", "tied", "duplicates", "rank_one"])
def test_tracker_matches_lapack_over_a_stream(kind):
    """Over 100+ slides, every slide takes the fast update (none falls back)
    and stays within a few units of rounding of LAPACK; rounding does not
    accumulate (no refresh here)."""
    rng = np.random.default_rng(len(kind))
    n = 24
    tracker = EigenTracker(refresh_every=10**9)
    slides = 0
    for E in stream(make_rows(kind, rng), n):
        previous, current = tracker.step(E)
        err, res, orth = units(E[:, 1:, 1:], current.values, current.vectors)
        assert err.max() <= 4.0 and res.max() <= 16.0 and orth.max() <= 16.0, (slides, err, res, orth)
        slides += 1
    G = E.shape[0]
    assert slides > 100
    assert tracker.solved == 2 * G  # the first slide only
    assert tracker.updated == (slides - 1) * G


@needs_solver
@pytest.mark.parametrize("kind", ["dense", "rank_deficient", "filling", "tied", "duplicates", "rank_one",
                                  "dynamic_range"])
def test_tracker_over_a_long_stream(kind):
    """360 slides at W = 32, never refreshed: the error stays at the rounding
    of one slide (no drift). Where the window's scale falls by up to e^16 as
    large rows leave, the update carries the rounding of the old, larger
    scale: bounded by a few units of it, and the probe sends the few
    updates it spoils to LAPACK."""
    rng = np.random.default_rng(1)
    n, G = 32, 8
    tracker = EigenTracker(refresh_every=10**9)
    worst = 0.0
    for E in stream(make_rows(kind, rng, G=G, T=n + 362, P=8 if kind == "rank_deficient" else 300), n):
        previous, current = tracker.step(E)
        err, res, orth = units(E[:, 1:, 1:], current.values, current.vectors)
        worst = max(worst, err.max(), res.max(), orth.max())
    updates = tracker.updated + tracker.solved - 2 * G  # the group-slides after the first
    if kind == "dynamic_range":
        assert worst <= 64.0 and tracker.updated >= 0.95 * updates, (worst, tracker.updated, updates)
    else:
        assert worst <= 16.0 and tracker.updated == updates, (worst, tracker.updated, updates)


@needs_solver
def test_slide_eigen_one_slide_and_the_previous_is_reused():
    rng = np.random.default_rng(0)
    n = 40
    grams = list(stream(make_rows("dense", rng, G=5, T=n + 3), n))
    tracker = EigenTracker()
    prev0, cur0 = tracker.step(grams[0])
    prev1, cur1 = tracker.step(grams[1])
    assert prev1 is cur0
    E = grams[1]
    current, updated = slide_eigen(prev1, E)
    assert updated.all()
    np.testing.assert_allclose(current.values, cur1.values, rtol=0, atol=1e-12 * np.abs(cur1.values).max())
    # the same eigenvectors up to sign (the spectrum here has no ties)
    dots = np.abs(np.einsum("gij,gij->gj", current.vectors, cur1.vectors))
    np.testing.assert_allclose(dots, 1.0, atol=1e-9)
    # and the windows' own eigenvectors: v_j^T G v_j = lambda_j
    G1 = E[:, 1:, 1:]
    rayleigh = np.einsum("gij,gik,gkj->gj", current.vectors, G1, current.vectors)
    np.testing.assert_allclose(rayleigh, current.values, atol=64 * n * EPS * np.abs(current.values).max())


@needs_solver
def test_a_wrong_previous_fails_the_check_and_is_recomputed():
    rng = np.random.default_rng(1)
    n = 16
    E = next(iter(stream(make_rows("dense", rng, G=3, T=n + 2), n)))
    w, V = np.linalg.eigh(E[:, :n, :n])
    previous = tracking.Eigen(np.ascontiguousarray(w[:, ::-1]), np.ascontiguousarray(V[:, :, ::-1]))
    bad = tracking.Eigen(previous.values.copy(), previous.vectors.copy())
    bad.values[1] *= 1.01  # group 1 carries a decomposition of another matrix
    current, updated = slide_eigen(bad, E)
    assert updated.tolist() == [True, False, True]
    err, res, orth = units(E[:, 1:, 1:], current.values, current.vectors)
    assert err.max() <= 4.0 and res.max() <= 16.0 and orth.max() <= 16.0


def test_non_finite_group_and_no_solver(monkeypatch):
    rng = np.random.default_rng(2)
    n = 12
    E = next(iter(stream(make_rows("dense", rng, G=3, T=n + 2), n))).copy()
    w, V = np.linalg.eigh(E[:, :n, :n])
    previous = tracking.Eigen(np.ascontiguousarray(w[:, ::-1]), np.ascontiguousarray(V[:, :, ::-1]))
    E[2, -1, :] = E[2, :, -1] = np.nan  # a non-finite entering update in group 2
    current, updated = slide_eigen(previous, E)
    assert not updated[2] and np.isnan(current.values[2]).all()
    assert updated[:2].all() == tracking.available()
    err, _, _ = units(E[:2, 1:, 1:], current.values[:2], current.vectors[:2])
    assert err.max() <= 4.0
    monkeypatch.setattr(tracking, "_secular", None)
    lapack, updated = slide_eigen(previous, E)
    assert not updated.any()
    np.testing.assert_allclose(lapack.values[:2], current.values[:2], rtol=0, atol=1e-12 * np.abs(lapack.values[:2]).max())


def test_tracker_restarts_when_the_windows_do_not_follow():
    rng = np.random.default_rng(3)
    n = 10
    grams = list(stream(make_rows("dense", rng, G=2, T=n + 6), n))
    tracker = EigenTracker()
    tracker.step(grams[0])
    tracker.step(grams[2])  # skipped a slide: both windows eigensolved
    assert tracker.updated == 0 and tracker.solved == 8
    tracker.step(grams[3])
    assert tracker.updated == (2 if tracking.available() else 0)
    tracker.reset()
    tracker.step(grams[4])
    assert tracker.solved == (12 if tracking.available() else 14)


@needs_solver
def test_refresh_every_recomputes_each_group_on_schedule():
    rng = np.random.default_rng(4)
    n, G, slides = 8, 4, 20
    tracker = EigenTracker(refresh_every=4)
    for E in list(stream(make_rows("dense", rng, G=G, T=n + slides + 2), n))[:slides]:
        tracker.step(E)
    # staggered: each group is recomputed once every 4 updates
    refreshed = tracker.solved - 2 * G
    assert (slides - 1) * G // 4 - G <= refreshed <= (slides - 1) * G // 4 + G
    assert tracker.updated + refreshed == (slides - 1) * G


def test_bad_input():
    rng = np.random.default_rng(5)
    E = next(iter(stream(make_rows("dense", rng, G=2, T=12), 8)))
    previous = tracking.Eigen(np.zeros((2, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="previous"):
        slide_eigen(tracking.Eigen(np.zeros((2, 7)), np.zeros((2, 7, 7))), E)
    with pytest.raises(ValueError, match="square"):
        slide_eigen(previous, E[:, :, :-1])
    with pytest.raises(ValueError, match="out"):
        slide_eigen(previous, E, out=tracking.Eigen(np.zeros((2, 8)), np.zeros((2, 7, 7))))
    with pytest.raises(ValueError, match="refresh_every"):
        EigenTracker(refresh_every=0)
