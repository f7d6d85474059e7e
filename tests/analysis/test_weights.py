import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import weight_spectrum
from spectral_edge_fast.analysis.weights import attention_spectrum, probe_plan, probe_results


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


def test_ratio_23_and_its_status():
    ws = weight_spectrum(np.diag([4.0, 2.0, 0.5]))
    assert ws.ratio_23 == pytest.approx(4.0, rel=1e-12) and ws.status == "ok"
    rank2 = weight_spectrum(np.diag([4.0, 2.0, 0.0]))
    assert rank2.status == "partial" and math.isnan(rank2.ratio_23) and rank2.ratio_12 == pytest.approx(2.0)


def _moduli(m):
    """Reference: |eigenvalues| of m with each conjugate pair once, descending."""
    lam = np.linalg.eig(m)[0]
    lam = lam[np.imag(lam) >= 0]
    return np.sort(np.abs(lam))[::-1], lam


@pytest.mark.parametrize("d_out, d", [(12, 12), (8, 12), (12, 6)])
def test_attention_spectrum_matches_numpy_eig(d_out, d):
    rng = np.random.default_rng(d_out + d)
    q, k = rng.standard_normal((d_out, d)), rng.standard_normal((d_out, d))
    heads = 4
    att = attention_spectrum(q, k, heads=heads, top=5)
    want, lam = _moduli(q.T @ k)  # the d x d operator itself
    want = want[want > 1e-10 * want[0]]  # W_K W_Q^T has only the nonzero eigenvalues when d_out < d
    np.testing.assert_allclose(att.lambda_abs, want[:5], rtol=1e-9)
    assert att.ratio_12 == pytest.approx(want[0] / want[1], rel=1e-9)
    assert att.ratio_23 == pytest.approx(want[1] / want[2], rel=1e-9)
    top = lam[np.argsort(-np.abs(lam), kind="stable")][:5]
    assert list(att.complex) == [bool(abs(z.imag) > 1e-9 * abs(z)) for z in top]
    dh = d_out // heads
    assert len(att.heads) == heads
    for h, got in enumerate(att.heads):
        rows = slice(h * dh, (h + 1) * dh)
        pairs = _moduli(q[rows].T @ k[rows])[0]  # d x d, rank <= dh: its zero eigenvalues left out
        pairs = np.concatenate((pairs[pairs > 1e-10 * pairs[0]], [0.0, 0.0]))
        for name, a, b in (("ratio_12", pairs[0], pairs[1]), ("ratio_23", pairs[1], pairs[2])):
            if b:
                assert got[name] == pytest.approx(a / b, rel=1e-8), (h, name)
            else:  # one conjugate pair is one mode: no second or third
                assert math.isnan(got[name]), (h, name)


def test_attention_conjugate_pairs_count_once():
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues +-i: one rotation
    m = np.zeros((3, 3))
    m[:2, :2] = 3.0 * rot
    m[2, 2] = 1.5
    att = attention_spectrum(np.eye(3), m)  # W_Q^T W_K = m
    np.testing.assert_allclose(att.lambda_abs, [3.0, 1.5], rtol=1e-12)
    assert att.complex == (True, False) and att.ratio_12 == pytest.approx(2.0) and math.isnan(att.ratio_23)
    assert att.heads == ()


def test_attention_spectrum_refuses_mismatched_weights():
    with pytest.raises(ValueError, match="one 2-D shape"):
        attention_spectrum(np.ones((4, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="heads = 3 does not divide the 4 rows"):
        attention_spectrum(np.ones((4, 3)), np.ones((4, 3)), heads=3)
    bad = np.ones((4, 3))
    bad[0, 0] = np.inf
    assert attention_spectrum(bad, np.ones((4, 3))).status == "undefined"


SHAPES = {"emb.weight": (10, 6), "layers.0.attn.in_proj_weight": (18, 6), "layers.0.attn.in_proj_bias": (18,),
          "layers.1.attn.q_proj.weight": (6, 6), "layers.1.attn.k_proj.weight": (6, 6), "head.weight": (3, 6)}


def test_probe_plan_finds_attention_and_patterns():
    plan = probe_plan(("attention", "*head.weight"), SHAPES, heads={"layers.0.attn": 2})
    assert plan.matrices == ("layers.0.attn.in_proj_weight:q", "layers.1.attn.q_proj.weight", "head.weight")
    assert plan.keys["layers.0.attn.in_proj_weight:q"] == ("layers.0.attn.in_proj_weight", 0, 6, False)
    assert plan.keys["layers.0.attn.in_proj_weight:k"] == ("layers.0.attn.in_proj_weight", 6, 12, False)
    assert plan.attention == {"layers.0.attn": ("layers.0.attn.in_proj_weight:q", "layers.0.attn.in_proj_weight:k", 2),
                              "layers.1.attn": ("layers.1.attn.q_proj.weight", "layers.1.attn.k_proj.weight", None)}
    assert probe_plan(None, SHAPES) is None
    assert probe_plan("*.weight", SHAPES).matrices == ("emb.weight", "layers.1.attn.q_proj.weight",
                                                       "layers.1.attn.k_proj.weight", "head.weight")


def test_probe_plan_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match=r"probes pattern 'blocks\.\*' matches no 2-D monitored parameter"):
        probe_plan(["blocks.*"], SHAPES)
    with pytest.raises(ValueError, match="found no attention weights"):
        probe_plan("attention", {"emb.weight": (10, 6)})
    with pytest.raises(ValueError, match="has no 'a.k_proj.weight'"):
        probe_plan("attention", {"a.q_proj.weight": (6, 6)})
    with pytest.raises(ValueError, match="differ in shape"):
        probe_plan("attention", {"a.q_proj.weight": (8, 6), "a.k_proj.weight": (4, 6)})
    with pytest.raises(ValueError, match=r"'h\.0\.attn\.c_attn\.weight' has shape \(6, 12\), not \[d, 3 d\]"):
        probe_plan("attention", {"h.0.attn.c_attn.weight": (6, 12)})


def test_gpt2_conv1d_c_attn_is_read_transposed():
    """GPT-2's ``c_attn`` is a Conv1D, y = x W with W [d, 3 d]: W_Q is the
    transpose of its first d columns, W_K of the next d."""
    rng = np.random.default_rng(6)
    shapes = {"h.0.attn.c_attn.weight": (6, 18), "h.0.attn.c_proj.weight": (6, 6)}
    w = rng.standard_normal(shapes["h.0.attn.c_attn.weight"])
    plan = probe_plan("attention", shapes, heads={"h.0.attn": 3})
    assert plan.attention == {"h.0.attn": ("h.0.attn.c_attn.weight:q", "h.0.attn.c_attn.weight:k", 3)}
    assert plan.params == ("h.0.attn.c_attn.weight",)
    probes, attention = probe_results(plan, {"h.0.attn.c_attn.weight": w}, top=4)
    w_q, w_k = w[:, :6].T, w[:, 6:12].T
    np.testing.assert_allclose(probes["h.0.attn.c_attn.weight:q"]["sigma"], np.linalg.svd(w_q, compute_uv=False)[:4],
                               rtol=1e-12)
    np.testing.assert_allclose(attention["h.0.attn"]["lambda_abs"], _moduli(w_q.T @ w_k)[0][:4], rtol=1e-9)
    assert len(attention["h.0.attn"]["heads"]) == 3


def test_probe_results_match_numpy_svd_and_eig():
    rng = np.random.default_rng(5)
    tensors = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    plan = probe_plan(("attention", "head.weight"), SHAPES, heads={"layers.0.attn": 2})
    probes, attention = probe_results(plan, tensors, top=4)
    fused = tensors["layers.0.attn.in_proj_weight"]
    for key, mat in (("layers.0.attn.in_proj_weight:q", fused[:6]), ("head.weight", tensors["head.weight"])):
        s = np.linalg.svd(mat, compute_uv=False)
        np.testing.assert_allclose(probes[key]["sigma"], s[:4], rtol=1e-12)
        assert probes[key]["sigma_12"] == pytest.approx(s[0] / s[1], rel=1e-12)
        assert probes[key]["sigma_23"] == pytest.approx(s[1] / s[2], rel=1e-12)
        assert probes[key]["g23"] == pytest.approx(s[1] ** 2 - s[2] ** 2, rel=1e-12)
    want = _moduli(fused[:6].T @ fused[6:12])[0]
    got = attention["layers.0.attn"]
    np.testing.assert_allclose(got["lambda_abs"], want[:4], rtol=1e-9)
    assert got["ratio_12"] == pytest.approx(want[0] / want[1], rel=1e-9) and len(got["heads"]) == 2
    assert attention["layers.1.attn"]["heads"] == []
    assert probes["head.weight"]["sigma_23"] is not None
    rank2 = probe_results(probe_plan("head.weight", SHAPES), {"head.weight": np.diag([2.0, 1.0, 0.0])[:, :3].repeat(2, 1)})
    assert rank2[0]["head.weight"]["sigma_23"] is None  # undefined: None, as the records give it
