"""analyze_slides against the per-group functions, group by group."""
import dataclasses
import json
import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import batch
from spectral_edge_fast.analysis._common import ENGINE_EPS, zero_tolerance
from spectral_edge_fast.analysis import (
    Eigen,
    EigenTracker,
    adiabatic,
    analyze_slides,
    delta_c_fro,
    eigen_batch,
    eigen_flow,
    spectrum,
    spectrum_batch,
    stability,
    window_overlaps,
)

# a RuntimeWarning would mean arithmetic on NaN, inf or zero divisors that no mask kept out
pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def slide_terms(request, monkeypatch):
    """Every test runs with the compiled O(n^2) sums and with their NumPy form."""
    if request.param == "numpy":
        monkeypatch.setattr(batch, "_slide_terms", None)
    elif batch._slide_terms is None:
        pytest.skip("spectral_edge_fast.analysis._slide_terms is not built")
    return request.param

# Tolerance unit of each float field: lambda_1, sigma_1 or 1 (dimensionless).
EIGEN_UNITS = (
    "eigenvalues tol eig_gap g23 neighbour_gaps delta_c_fro cluster_gap measured entering exiting first_order "
    "second_order a_perp_norm2 gap_increment gap_first_order gap_second_order level_repulsion"
).split()
SIGMA_UNITS = ["sigmas", "gap"]
PLAIN_UNITS = "gap_ratio edge_ratio pc1_fraction alpha A rotation_bounds overlaps subspace_overlaps".split()
EXACT = "n_positive k_star weighted_k_star k_q status n_modes valid".split()

OPTIONS = [
    dict(lr=1e-3),
    dict(lr=None, q=0.5, eps=1e-10, C=0.5, squared=False, validity_factor=0.5, cluster_gap=0.05),
    dict(lr=1.0, C=0.0, validity_factor=0.0, cluster_gap=0.0),
]


def planted_rows(rng, n, P):
    """n + 1 updates with three planted directions over isotropic noise, as
    ``stream_grams`` in spectral_edge_fast/bench/analysis.py builds them."""
    basis = np.linalg.qr(rng.standard_normal((P, 3)))[0].T
    signal = rng.standard_normal((n + 1, 3)) * np.array([6.0, 3.0, 1.5]) @ basis
    return signal + rng.standard_normal((n + 1, P)) / np.sqrt(P)


def planted_grams(rng, groups, n, P):
    return np.array([Y @ Y.T for Y in (planted_rows(rng, n, P) for _ in range(groups))])


def edge_case_grams(rng, n=12, P=40):
    """Planted groups mixed with the cases the masks and the fallback handle."""
    rows = [planted_rows(rng, n, P) for _ in range(2)]
    filling = rng.standard_normal((n + 1, P))
    filling[:4] = 0.0  # row 0 and the three oldest rows: the window is still filling
    rows.append(filling)
    rows.append(np.outer(rng.standard_normal(n + 1), rng.standard_normal(P)))  # rank one
    rows.append(np.zeros((n + 1, P)))
    rows.append(2.0 * np.eye(n + 1, P))  # orthogonal rows of equal norm: all tied
    rows.append(rng.standard_normal((n + 1, 2)) * np.array([3.0, 1.0]) @ rng.standard_normal((2, P)))  # rank two
    clustered = np.eye(n + 1, P) * np.array([1.0, 5.0, 3.0, 3.0, 3.0] + [1.0] * (n - 4))[:, None]
    rows.append(clustered)  # exactly tied modes below a defined gap
    rows.append(np.eye(n + 1, P) * 2.0 ** (3.0 - np.arange(n + 1))[:, None])  # every ratio exactly 2
    for bad_row in (5, 0, n):  # inside the window, leaving, entering
        Y = rng.standard_normal((n + 1, P))
        Y[bad_row] = np.nan
        rows.append(Y)
    grams = [Y @ Y.T for Y in rows]
    grams[-1][n, :] = grams[-1][:, n] = np.inf  # an overflowed entering update
    # previous window 4 I up to rounding (eigenvalues apart by a few ulps, within
    # tol) with the entering update inside its span: flow denominators and
    # clusters that only the zero tolerance ties
    near = np.eye(n + 1)
    near[n, :n] = rng.standard_normal(n)
    near = 4.0 * near @ near.T
    noise = 1e-16 * rng.standard_normal((n, n))
    near[:n, :n] += noise + noise.T
    grams.append(near)
    return np.array(grams)


def per_group(E, lr=None, q=0.95, eps=ENGINE_EPS, C=1.0, squared=True, validity_factor=2.0, cluster_gap=None):
    """The per-group pipeline, its arrays NaN-padded to n as analyze_slides has them."""
    n = E.shape[0] - 1
    cur = spectrum(E[1:, 1:], q, eps=eps)
    prev = spectrum(E[:n, :n], q, eps=eps)
    dc = delta_c_fro(E)
    st = stability(cur, dc, C, squared)
    ad = adiabatic(cur, dc, 0.0 if lr is None else lr)
    ov = window_overlaps(E, prev, cur, cluster_gap, principal_angles=False)
    fl = eigen_flow(E, prev, cur, validity_factor)
    ref = {}
    for part in (fl, ov, ad, st, cur):  # the spectrum's k_star / neighbour_gaps win over the flow's
        ref.update((f.name, getattr(part, f.name)) for f in dataclasses.fields(part))
    for name in ("k_star", "weighted_k_star", "k_q"):
        ref[name] = ref[name] or 0
    for name, value in ref.items():
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.size < n:
            fill = False if value.dtype == bool else math.nan
            ref[name] = np.concatenate((value, np.full(n - value.size, fill, dtype=value.dtype)))
    return ref, cur


def assert_matches(batch, grams, check_current=True, **options):
    for g, E in enumerate(grams):
        ref, cur = per_group(E, **options)
        lam1 = float(np.nanmax(np.abs(ref["eigenvalues"]), initial=0.0))
        for name in EXACT:
            np.testing.assert_array_equal(getattr(batch, name)[g], ref[name], err_msg=f"group {g} {name}")
        for names, unit in ((EIGEN_UNITS, lam1), (SIGMA_UNITS, math.sqrt(lam1)), (PLAIN_UNITS, 1.0)):
            for name in names:
                np.testing.assert_allclose(
                    getattr(batch, name)[g], ref[name], rtol=1e-9, atol=1e-12 * unit, equal_nan=True,
                    err_msg=f"group {g} {name}",
                )
        for name in ("eigenvalues", "measured"):  # what the zero tolerance zeroes is exactly zero
            np.testing.assert_array_equal(getattr(batch, name)[g] == 0, ref[name] == 0, err_msg=f"group {g} {name}")
        assert bool(batch.fallback[g]) == (not np.isfinite(E).all())
        if not check_current:
            continue
        if cur.n == E.shape[0] - 1:  # the current window is finite: its decomposition is kept
            assert_decomposes(E[1:, 1:], batch.current.values[g], batch.current.vectors[g], batch.eigenvalues[g])
        else:
            assert np.isnan(batch.current.values[g]).all() and np.isnan(batch.current.vectors[g]).all()


def assert_decomposes(G, values, vectors, eigenvalues):
    """``(values, vectors)`` is an eigendecomposition of ``G`` within a few
    units of the eigensolver's rounding (not LAPACK's bits: a batched and a
    single solve may round differently), its values those the batch reports."""
    np.testing.assert_array_equal(values, eigenvalues)
    n = G.shape[0]
    unit = n * np.finfo(float).eps * max(np.abs(G).max(), np.finfo(float).tiny)
    tol = zero_tolerance(n, values[0], ENGINE_EPS)  # zeroed eigenvalues are off by up to the tolerance
    assert np.abs(G @ vectors - vectors * values).max() <= 16 * unit + tol
    assert np.abs(vectors.T @ vectors - np.eye(n)).max() <= 16 * n * np.finfo(float).eps


def assert_same_batch(a, b):
    """Two analyses of the same windows from decompositions computed apart:
    the same discrete results, floats within rounding (in units of each
    group's lambda_1, sigma_1 or 1, as assert_matches)."""
    assert a.to_dict().keys() == b.to_dict().keys()
    lam1 = np.nanmax(np.abs(a.eigenvalues), axis=1, initial=0.0)
    units = {**dict.fromkeys(EIGEN_UNITS, lam1), **dict.fromkeys(SIGMA_UNITS, np.sqrt(lam1))}
    for name in a.to_dict():
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if name in units or name in PLAIN_UNITS:
            unit = units.get(name, np.ones_like(lam1))
            atol = 1e-12 * (unit[:, None] if x.ndim == 2 else unit)
            far = ~np.isclose(x, y, rtol=1e-9, atol=atol, equal_nan=True)
            assert not far.any(), (name, x[far], y[far])
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("groups, n, P", [(6, 12, 200), (3, 64, 1024)])
def test_planted_stack_matches_per_group(groups, n, P, options):
    grams = planted_grams(np.random.default_rng(groups * n), groups, n, P)
    batch = analyze_slides(grams, **options)
    assert (batch.k_star > 0).all() and (batch.n_modes == n).all() and not batch.fallback.any()
    if options.get("cluster_gap") != 0.0:  # the bulk forms clusters: subspace_overlaps is more than the diagonal
        assert (batch.subspace_overlaps != batch.overlaps).any()
    assert batch.valid.any()
    assert_matches(batch, grams, **options)


@pytest.mark.parametrize("options", OPTIONS)
def test_edge_cases_match_per_group(options):
    grams = edge_case_grams(np.random.default_rng(7))
    n = grams.shape[1] - 1
    batch = analyze_slides(grams, **options)
    assert set(batch.status) == {"ok", "partial", "tied", "undefined", "nonfinite_rows"}
    assert (batch.k_star > 0).sum() >= 3 and (batch.k_star == 0).sum() >= 3
    assert ((batch.n_positive > 0) & (batch.n_positive < n)).sum() >= 2
    assert batch.fallback.sum() == 3 and (batch.n_modes == 0).sum() >= 4
    assert np.isfinite(batch.second_order).any(axis=1).sum() >= 5
    assert batch.k_star[8] == 1  # exact ties of the ratios go to the smaller j
    assert np.isnan(batch.gap_increment[-1])  # the previous window is tied within tol: no gap position
    assert np.nanmin(batch.a_perp_norm2) >= 0.0
    assert_matches(batch, grams, **options)


def test_one_row_windows():
    grams = np.array([[[1.0, 0.5], [0.5, 2.0]], [[0.0, 0.0], [0.0, 3.0]], [[4.0, 0.0], [0.0, 0.0]]])
    batch = analyze_slides(grams, 1e-3)
    assert batch.status.tolist() == ["undefined"] * 3 and batch.n_modes.tolist() == [1, 0, 0]
    assert_matches(batch, grams, lr=1e-3)


def test_zero_eps_leaves_the_solvers_tolerance():
    """With eps = 0 (an exact Gram) the zero tolerance is the eigensolver's error alone."""
    grams = edge_case_grams(np.random.default_rng(7))[[5, 7, 8]]  # the exactly diagonal windows
    batch = analyze_slides(grams, 1e-3, eps=0.0)
    n = grams.shape[1] - 1
    assert batch.status.tolist() == ["tied", "ok", "ok"]
    np.testing.assert_allclose(batch.tol, zero_tolerance(n, batch.eigenvalues[:, 0], 0.0), rtol=1e-15)
    assert (batch.tol > 0).all() and (batch.tol < 1e-12 * batch.eigenvalues[:, 0]).all()
    assert_matches(batch, grams, lr=1e-3, eps=0.0)


def test_given_decompositions_give_the_same_result():
    rng = np.random.default_rng(3)
    n, P = 16, 300
    Y = rng.standard_normal((5, n + 2, P)) * np.geomspace(4.0, 0.5, P)
    Y[1, :6] = 0.0  # filling
    Y[2, 9] = np.nan  # fallback
    full = Y @ Y.transpose(0, 2, 1)
    first, second = full[:, :-1, :-1], full[:, 1:, 1:]  # consecutive slides
    earlier = analyze_slides(first, 1e-2)
    computed = analyze_slides(second, 1e-2)
    given = analyze_slides(second, 1e-2, eigen_batch(second[:, :n, :n]), eigen_batch(second[:, 1:, 1:]))
    chained = analyze_slides(second, 1e-2, previous=earlier.current)
    for other in (given, chained):
        assert_same_batch(computed, other)
    assert computed.fallback.tolist() == [False, False, True, False, False]
    assert computed.n_positive[1] < n and (computed.k_star > 0).all() and computed.status[2] == "nonfinite_rows"


def test_tracker_stream_matches_per_group():
    """analyze_slides with an EigenTracker over consecutive slides: the
    current windows come from the rank-two update and the overlaps from its
    rotation, the same values as the per-group functions on every slide,
    through a refresh, a filling window and a non-finite update."""
    rng = np.random.default_rng(11)
    n, P, slides = 16, 400, 12
    Y = rng.standard_normal((5, n + slides + 1, P)) * np.geomspace(3.0, 0.3, P)
    Y[1, :10] = 0.0  # filling
    Y[3, n + 4] = np.nan  # a non-finite update enters at slide 4 and stays in the window
    full = Y @ Y.transpose(0, 2, 1)
    tracker = EigenTracker(refresh_every=5)
    # a zero tolerance well above rounding: LAPACK and the update agree on which
    # eigenvalues of the filling window are zero
    options = dict(lr=1e-2, eps=1e-12)
    for t in range(slides):
        E = np.ascontiguousarray(full[:, t : t + n + 1, t : t + n + 1])
        batch = analyze_slides(E, tracker=tracker, **options)
        finite = ~batch.fallback  # the tracker's decompositions, tolerance applied
        np.testing.assert_array_equal(batch.current.values[finite], batch.eigenvalues[finite])
        assert_matches(batch, E, check_current=False, **options)
    assert tracker.updated > 3 * (slides - 1)  # most group-slides took the update
    assert tracker.solved > 2 * 5  # refreshes and the non-finite group


@pytest.mark.parametrize("eps", [ENGINE_EPS, 0.0])
def test_spectrum_batch_is_spectrum_per_group(eps):
    """The spectrum alone of a stack, from eigenvalues, equals ``spectrum``
    group by group (a group with a non-finite row through ``spectrum`` itself)."""
    grams = edge_case_grams(np.random.default_rng(3))[:, 1:, 1:]  # the current windows
    batch = spectrum_batch(grams, 0.9, eps=eps)
    assert batch.fallback.sum() == 2 and set(batch.status) >= {"ok", "tied", "undefined", "nonfinite_rows"}
    for g, G in enumerate(grams):
        s = spectrum(G, 0.9, eps=eps, vectors=False)
        record, want = batch.group(g), s.to_dict()
        lam1 = max(s.eigenvalues[0], 0.0) if s.n else 0.0
        for name, value in record.items():
            if name in ("n", "fallback"):
                continue
            if name in EXACT or name in ("status", "q"):
                assert value == want[name], (g, name)
                continue
            unit = math.sqrt(lam1) if name in SIGMA_UNITS else lam1 if name in EIGEN_UNITS else 1.0
            got = np.asarray(value, dtype=float)
            if got.ndim:  # NaN-padded to n
                assert np.isnan(got[s.n :]).all()
                got = got[: s.n]
            np.testing.assert_allclose(got, want[name], rtol=1e-9, atol=1e-12 * unit, err_msg=f"group {g} {name}")


def test_eigen_batch():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4, 9, 30))
    grams = X @ X.transpose(0, 2, 1)
    grams[3, 2, :] = grams[3, :, 2] = np.inf
    eig = eigen_batch(grams)
    assert isinstance(eig, Eigen) and eig.values.shape == (4, 9) and eig.vectors.shape == (4, 9, 9)
    for g in range(3):
        lam = np.linalg.eigvalsh(grams[g])[::-1]
        unit = 9 * np.finfo(float).eps * lam[0]  # a batched and a single solve may round differently
        np.testing.assert_allclose(eig.values[g], lam, rtol=0, atol=16 * unit)
        assert_decomposes(grams[g], eig.values[g], eig.vectors[g], eig.values[g])
    assert np.isnan(eig.values[3]).all() and np.isnan(eig.vectors[3]).all()


def test_group_is_plain_and_results_are_frozen():
    grams = edge_case_grams(np.random.default_rng(1))
    batch = analyze_slides(grams, 1e-3)
    for g in range(grams.shape[0]):
        record = batch.group(g)
        json.dumps(record)
        for key, value in record.items():
            assert value is None or type(value) in (float, int, str, bool, list), (key, type(value))
        if batch.k_star[g] == 0:
            assert record["k_star"] is None and record["weighted_k_star"] is None
        else:
            assert record["k_star"] == int(batch.k_star[g])
    record = batch.group(9)  # NaN row inside the window
    assert record["status"] == "nonfinite_rows" and record["fallback"] is True and record["n_modes"] == 0
    d = batch.to_dict()
    assert "current" not in d and len(d["status"]) == grams.shape[0]
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.alpha = None
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, np.ndarray):
            assert not value.flags.writeable, f.name
    assert not batch.current.vectors.flags.writeable


def test_given_arrays_are_not_modified():
    grams = planted_grams(np.random.default_rng(2), 3, 8, 50)
    grams[2, 1, :] = grams[2, :, 1] = np.nan  # the fallback writes its group of the result
    given = eigen_batch(grams[:, 1:, 1:])
    given.values[2], given.vectors[2] = 0.0, 0.0  # any values: fallback groups are not read
    before = [given.values.copy(), given.vectors.copy()]
    batch = analyze_slides(grams, previous=given, current=given)
    assert batch.fallback.tolist() == [False, False, True]
    assert given.values.flags.writeable and given.vectors.flags.writeable
    np.testing.assert_array_equal(given.values, before[0])
    np.testing.assert_array_equal(given.vectors, before[1])


def test_caller_errors():
    grams = planted_grams(np.random.default_rng(4), 2, 6, 30)
    n = 6
    bad_inputs = [
        grams[0],  # 2-D
        grams[:, :, :-1],  # not square
        np.ones((2, 1, 1)),  # n = 0
    ]
    for bad in bad_inputs:
        with pytest.raises(ValueError):
            analyze_slides(bad)
    asym = grams.copy()
    asym[1, 0, 3] += 1e-3 * np.abs(grams[1]).max()
    with pytest.raises(ValueError, match=r"not symmetric in groups \[1\]"):
        analyze_slides(asym)
    with pytest.raises(ValueError, match="not symmetric"):
        eigen_batch(asym)
    asym[1, 5, :] = asym[1, :, 5] = np.nan  # the finite entries of a fallback group are checked too
    with pytest.raises(ValueError, match=r"not symmetric in groups \[1\]"):
        analyze_slides(asym)
    rounding = grams.copy()
    rounding[:, 2, 4] *= 1 + 1e-7  # float32-style rounding is accepted, and averaged away as per group
    rounding[:, 0, n] *= 1 - 1e-7
    assert_matches(analyze_slides(rounding, 1e-3), rounding, lr=1e-3)
    good = eigen_batch(grams[:, :n, :n])
    for wrong in (
        Eigen(good.values[:1], good.vectors[:1]),
        Eigen(good.values[:, :-1], good.vectors),
        Eigen(good.values, good.vectors[:, :, :-1]),
    ):
        with pytest.raises(ValueError, match="previous"):
            analyze_slides(grams, previous=wrong)
        with pytest.raises(ValueError, match="current"):
            analyze_slides(grams, current=wrong)
    out_of_range = dict(q=0.0, eps=1.0, C=-1.0, lr=-1e-3, validity_factor=-1.0, cluster_gap=-1.0)
    for name, value in out_of_range.items():
        with pytest.raises(ValueError, match=name):
            analyze_slides(grams, **{name: value})
