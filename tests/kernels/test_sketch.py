"""The signed bucket sketch S theta: every backend against the explicit
float64 matrix S of the reference, the hash against its C++ definition, and
the estimator <Sa, Sb> against its derived mean and variance."""
import numpy as np
import pytest
import torch
from helpers import BACKENDS, backend_or_skip, random_params

from spectral_edge_fast.kernels.reference import sketch_matrix
from spectral_edge_fast.kernels.sketch import buckets_and_signs, sketch_hash
from spectral_edge_fast.layout import ParamLayout
from spectral_edge_fast.sketch import SketchPlan, group_numels

# tensor sizes and their groups: a hashed group split into parts (20000 >= 16 * 16 * m),
# one of fewer numbers than m (kept exactly), and one of a single tiny tensor
SIZES = {"a.0": 7, "a.1": 20000, "b.0": 9, "b.1": 3, "c.0": 1500}
GROUPS = {"a": "a", "b": "b", "c": "c"}
M = 64


def _plan(m=M, seed=0, dtype=torch.float32, gen=None):
    gen = gen or torch.Generator().manual_seed(1)
    named = [(n, t) for n, t in zip(SIZES, random_params(list(SIZES.values()), gen, dtype))]
    layout = ParamLayout(named, lambda name: name.split(".")[0])
    return layout, SketchPlan(layout, lambda name: name.split(".")[0], m, seed)


def test_plan_splits_large_groups_and_keeps_small_ones_exact():
    layout, plan = _plan()
    assert group_numels(layout, lambda n: n.split(".")[0]) == [20007, 12, 1500]
    assert plan.identity == [False, True, False] and plan.group_m == [M, 12, M]
    parts = plan.groups[:, 6].tolist()
    assert parts[0] > 1 and parts[1] == 1, parts
    assert plan.bounds == (0, M, M + 12, 2 * M + 12)


@pytest.mark.parametrize("backend", ["cpp", "torch"] + [b for b in BACKENDS if "@cuda" in b])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("m", [M, 48], ids=["m64", "m48"])  # the C++ kernel shifts for a power of two, multiplies otherwise
def test_sketch_matches_the_explicit_matrix(backend, dtype, m):
    be = backend_or_skip(backend)
    layout, plan = _plan(m=m, dtype=dtype)
    views = layout.views()
    S = sketch_matrix(plan.segs, plan.groups, [v.numel() for v in views], plan.size)
    theta = torch.cat([v.double() for v in views])
    want = S @ theta
    out = torch.full((plan.size,), float("nan"), dtype=torch.float64)
    scratch = torch.full((plan.scratch,), float("nan"), dtype=torch.float64)
    be.sketch(views, plan.segs, plan.groups, out, scratch)
    # float64 sums of at most P terms: a few units of 2^-52 of the sum of |terms| per bucket
    tol = (S.abs() @ theta.abs()) * 1e-16 * len(theta) ** 0.5 * 4
    assert (out - want).abs().le(tol).all(), f"max error {(out - want).abs().max():.3e}"
    # the identity group: its numbers in coordinate order, exactly
    b = slice(plan.bounds[1], plan.bounds[2])
    assert torch.equal(out[b], torch.cat([views[2].double(), views[3].double()]))
    # the flat table over one vector gives the same sketch
    flat = torch.full_like(out, float("nan"))
    be.sketch([torch.cat(views)], plan.flat_segs, plan.groups, flat, scratch)
    assert (flat - want).abs().le(tol).all()


def test_reference_matrix_has_one_signed_entry_per_column():
    layout, plan = _plan()
    S = sketch_matrix(plan.segs, plan.groups, [v.numel() for v in layout.views()], plan.size)
    assert torch.equal(S.abs().sum(dim=0), torch.ones(S.shape[1]))
    hashed = S[: M].sum(dim=0)[S[:M].abs().sum(dim=0) > 0]
    assert 0.45 < (hashed > 0).double().mean() < 0.55, "signs are balanced"


def test_cpp_sketch_same_bits_for_any_thread_count():
    be = backend_or_skip("cpp")
    layout, plan = _plan()
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.zeros(plan.size, dtype=torch.float64)
            be.sketch(layout.views(), plan.segs, plan.groups, out, torch.zeros(plan.scratch, dtype=torch.float64))
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_hash_torch_and_numpy_agree_with_known_values():
    coords = np.array([0, 1, 2, 2**32 - 1, 2**32, 2**40 + 17], dtype=np.uint64)
    for key in (0, 1, -1, 0x123456789ABCDEF, -(2**63)):
        h_np = sketch_hash(key, coords)
        h_t = sketch_hash(key, torch.tensor(coords.astype(np.int64)))
        assert h_np.tolist() == h_t.tolist()
        assert all(0 <= h < 2**32 for h in h_np.tolist())
    # sef::sketch_hash(0, 0): fmix32(0) = 0; (1, 0): fmix32(1)
    assert sketch_hash(0, np.array([0], dtype=np.uint64)).tolist() == [0]
    assert sketch_hash(1, np.array([0], dtype=np.uint64)).tolist() == [0x514E28B7]


def test_sketch_checks_its_tables():
    layout, plan = _plan()
    be = backend_or_skip("cpp")
    out = torch.zeros(plan.size - 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="group 2 does not fit"):
        be.sketch(layout.views(), plan.segs, plan.groups, out, torch.zeros(plan.scratch, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"segment \d+ does not fit"):
        be.sketch(layout.views()[1:], plan.segs, plan.groups, torch.zeros(plan.size, dtype=torch.float64),
                  torch.zeros(plan.scratch, dtype=torch.float64))


def test_inner_product_estimate_is_unbiased_with_the_derived_variance():
    """Over many seeds of S: mean <Sa, Sb> = <a, b>, and its variance is
    (|a|^2 |b|^2 + <a, b>^2 - 2 sum_i a_i^2 b_i^2) / m (docs/numerics.md)."""
    n, m, seeds = 3000, 32, 600
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = 0.6 * a + torch.randn(n, generator=gen, dtype=torch.float64)
    b[:10] *= 30  # a few large coordinates: the sum_i a_i^2 b_i^2 term matters
    ests = []
    for seed in range(seeds):
        layout = ParamLayout([("w", a.float())], None)
        plan = SketchPlan(layout, None, m, seed)
        S = sketch_matrix(plan.segs, plan.groups, [n], plan.size)
        ests.append(float((S @ a) @ (S @ b)))
    ests = np.asarray(ests)
    dot = float(a @ b)
    var = (float(a @ a) * float(b @ b) + dot**2 - 2 * float((a**2 * b**2).sum())) / m
    assert abs(ests.mean() - dot) < 4.5 * (var / seeds) ** 0.5, (ests.mean(), dot)
    # the sample variance of `seeds` draws: relative spread about sqrt(2 / seeds) (4 %) for near-Gaussian draws
    assert abs(ests.var(ddof=1) / var - 1) < 0.25, (ests.var(ddof=1), var)


def test_buckets_cover_every_bucket_evenly():
    bucket, sign = buckets_and_signs(12345, np.arange(1 << 16, dtype=np.uint64), 64)
    counts = np.bincount(bucket.astype(np.int64), minlength=64)
    assert counts.min() > 0.8 * 1024 and counts.max() < 1.2 * 1024
    assert set(sign.tolist()) == {-1, 1}
