import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import weight_spectrum


def test_matches_planted_singular_values(make_window):
    rng = np.random.default_rng(0)
    M = make_window(rng, [5.0, 2.0, 1.0, 0.5], 64)  # a 4 x 64 weight matrix
    for mat in (M, M.T):
        ws = weight_spectrum(mat, top=3)
        assert ws.status == "ok" and ws.shape == mat.shape
        assert ws.ratio_12 == pytest.approx(2.5, rel=1e-12)
        assert ws.g23 == pytest.approx(4.0 - 1.0, rel=1e-12)
        np.testing.assert_allclose(ws.singular_values, [5.0, 2.0, 1.0], rtol=1e-12)


def test_small_and_degenerate_matrices():
    two = weight_spectrum(np.diag([3.0, 1.0]))
    assert two.g23 == pytest.approx(1.0) and two.ratio_12 == pytest.approx(3.0)
    rank1 = weight_spectrum(np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5]))
    assert rank1.status == "undefined" and math.isnan(rank1.ratio_12)
    bad = np.eye(3)
    bad[0, 0] = np.nan
    assert weight_spectrum(bad).status == "undefined"
    assert weight_spectrum(np.ones((1, 5))).status == "undefined"
    with pytest.raises(ValueError, match="2-D"):
        weight_spectrum(np.ones(4))
