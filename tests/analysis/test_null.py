import math

import numpy as np
import pytest
from scipy import stats

from spectral_edge_fast.analysis import bbp, null_max_ratio, ratio_p_value, spectrum

KS_ALPHA = 0.01  # fixed seeds: deterministic, and far from the power checks' p-values


def brute_force_max_ratio(W, P, draws, seed):
    """``max_j sigma_j / sigma_{j+1}`` over the positive eigenvalues of
    ``X X^T`` for explicit Gaussian ``W x P`` matrices."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((draws, W, P))
    lam = np.linalg.eigvalsh(X @ X.transpose(0, 2, 1))[:, ::-1][:, : min(W, P)]
    return np.sqrt(lam[:, :-1] / lam[:, 1:]).max(axis=1)


@pytest.mark.parametrize("W, P", [(5, 12), (8, 40), (6, 4), (3, 3)])
def test_sampler_matches_brute_force(W, P):
    null = null_max_ratio(W, P, n_samples=4000, seed=1)
    brute = brute_force_max_ratio(W, P, 4000, seed=2)
    assert stats.ks_2samp(null.samples, brute).pvalue > KS_ALPHA


def test_ks_check_has_power():
    """The same check tells P from 1.5 P apart: a wrong degree of freedom fails."""
    brute = brute_force_max_ratio(6, 20, 4000, seed=3)
    assert stats.ks_2samp(null_max_ratio(6, 30, 4000, seed=4).samples, brute).pvalue < 1e-6


def test_p_values_uniform_under_the_null():
    W, P = 6, 30
    observed = brute_force_max_ratio(W, P, 2000, seed=5)
    p = np.array([ratio_p_value(r, W, P) for r in observed])
    assert stats.kstest(p, "uniform").pvalue > KS_ALPHA
    # and from spectrum() of explicit null windows, the whole path
    rng = np.random.default_rng(6)
    p_spec = [ratio_p_value(spectrum(x @ x.T).gap_ratio, W, P) for x in rng.standard_normal((300, W, P))]
    assert stats.kstest(p_spec, "uniform").pvalue > KS_ALPHA


def test_large_P_limit_is_resolved():
    """For P -> inf, (lambda - P) / sqrt(P) converges, so sqrt(P) log R has a
    P-free limit; the shifted eigen-solve must resolve it at P = 1e14."""
    scaled = {P: np.sqrt(P) * np.log(null_max_ratio(8, P, 3000, seed=P % 97).samples) for P in (10**8, 10**14)}
    assert np.all(np.isfinite(scaled[10**14])) and np.all(scaled[10**14] > 0)
    assert stats.ks_2samp(scaled[10**8], scaled[10**14]).pvalue > KS_ALPHA


def test_p_value_properties():
    null = null_max_ratio(5, 100, n_samples=1000, seed=0)
    assert null.p_value(0.5) == 1.0
    assert null.p_value(1e9) == pytest.approx(1 / 1001)
    rs = np.linspace(1.0, 2.0, 50)
    assert np.all(np.diff([null.p_value(r) for r in rs]) <= 0)
    assert math.isnan(null.p_value(math.nan))
    assert ratio_p_value(1.2, 5, 100, 1000, 0) == null.p_value(1.2)
    assert null_max_ratio(5, 100, 1000, 0).samples is null.samples  # cached
    assert null.quantile(0.95) == pytest.approx(null.quantiles["0.95"])
    assert 1.0 < null.quantiles["0.5"] < null.quantiles["0.99"]


@pytest.mark.parametrize("W, P", [(1, 100), (10, 1), (2.5, 10)])
def test_null_validation(W, P):
    with pytest.raises(ValueError):
        null_max_ratio(W, P)


def test_bbp_formulas():
    s = spectrum(np.diag([400.0, 100.0, 25.0, 9.0]))
    b = bbp(s, P=10_000, noise_std=0.1)
    assert b.sigma_noise == pytest.approx(0.1 * (100 + 2))
    assert b.d_crit == pytest.approx(0.1 * (10_000 * 3) ** 0.25)
    assert b.sigma_min == pytest.approx(3.0)
    assert b.sigma_min_over_d_crit == pytest.approx(3.0 / b.d_crit)
    assert (b.n_above_noise, b.n_above_d_crit) == (1, 4)
    assert bbp(s, 10_000, lr=1e-3, batch_size=64).noise_std == pytest.approx(1e-3 / 8)
    # a monitor record's sigmas give the same diagnostics as the spectrum
    assert bbp(list(s.sigmas), P=10_000, noise_std=0.1).to_dict() == b.to_dict()


def test_bbp_undefined_and_errors():
    assert bbp(spectrum(np.array([[4.0]])), 100, noise_std=1.0).status == "undefined"
    with pytest.raises(ValueError, match="noise_std"):
        bbp(spectrum(np.eye(3)), 100)
    with pytest.raises(ValueError):
        bbp(spectrum(np.eye(3)), 100, noise_std=-1.0)


def test_gap_thresholds_take_the_null_quantiles():
    from spectral_edge_fast.analysis.null import gap_thresholds

    null = null_max_ratio(8, 1000, 2000)
    assert gap_thresholds("null", "null", 8, 1000, 2000) == (null.quantile(0.99), null.quantile(0.5))
    assert gap_thresholds("null", None, 8, 1000, 2000) == (null.quantile(0.99), None)
    assert gap_thresholds(1.5, "null", 8, 1000, 2000) == (1.5, null.quantile(0.5))
    assert gap_thresholds(1.5, 1.2, 1, 1, 2000) == (1.5, 1.2)  # numbers pass through, no null drawn
