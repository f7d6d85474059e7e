"""The signed bucket sketch S theta: every backend against the explicit
float64 matrix S of the reference (runs that start mid-block included), the
hash and the block-shifted buckets against their definition, and the
estimator <Sa, Sb> against its derived mean and exact variance."""
import numpy as np
import pytest
import torch
from helpers import BACKENDS, backend_or_skip, random_params

from spectral_edge_fast.kernels.reference import sketch_matrix
from spectral_edge_fast.kernels.sketch import block_length, block_offsets, buckets_and_signs, sketch_hash
from spectral_edge_fast.layout import ParamLayout
from spectral_edge_fast.sketch import SketchPlan, gram_std_error, group_numels

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


def test_inner_product_estimate_is_unbiased_with_the_exact_variance():
    """Over many seeds of S: mean <Sa, Sb> = <a, b>, and its variance is
    sum over pairs i < j in different blocks of (a_i b_j + a_j b_i)^2 / m
    (docs/numerics.md#sketch-mode): two blocks of L = m coordinates, so
    half the pairs never collide and the variance is about half the formula
    without blocks, which gram_std_error's estimate stays above."""
    n, m, seeds = 2048, 1024, 600
    L = block_length(m)
    assert L == m and n == 2 * L
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = 0.6 * a + torch.randn(n, generator=gen, dtype=torch.float64)
    b[:10] *= 30  # a few large coordinates: the i = j terms left out matter
    ests, se2 = [], []
    layout = ParamLayout([("w", a.float())], None)
    for seed in range(seeds):
        plan = SketchPlan(layout, None, m, seed)
        bucket, sign = (t.numpy() for t in buckets_and_signs(int(plan.segs[0, 3]), 0, n, m))
        sa, sb = (np.bincount(bucket, weights=sign * v.numpy(), minlength=m) for v in (a, b))
        ests.append(float(sa @ sb))
        sketched = np.stack([sa, sb])
        se2.append(gram_std_error((sketched @ sketched.T)[None], plan.scaled())[0, 1] ** 2)
    ests = np.asarray(ests)
    dot = float(a @ b)
    A, B = a.numpy(), b.numpy()
    pair = np.triu((A[:, None] * B[None, :] + B[:, None] * A[None, :]) ** 2, 1)  # (a_i b_j + a_j b_i)^2, i < j
    block = np.arange(n) // L
    var = float(pair[block[:, None] != block[None, :]].sum()) / m
    unblocked = (float(a @ a) * float(b @ b) + dot**2 - 2 * float((a**2 * b**2).sum())) / m
    assert np.isclose(unblocked, float(pair.sum()) / m)
    assert var < 0.6 * unblocked
    assert abs(ests.mean() - dot) < 4.5 * (var / seeds) ** 0.5, (ests.mean(), dot)
    # the sample variance of `seeds` draws: relative spread about sqrt(2 / seeds) (6 %) for near-Gaussian draws
    assert abs(ests.var(ddof=1) / var - 1) < 0.25, (ests.var(ddof=1), var)
    # the record's estimate of the variance, from the sketched Gram, is an upper bound (here about twice it)
    assert np.mean(se2) > var, (np.mean(se2), var)


def _spec_bucket_and_sign(key: int, c: int, m: int):
    """docs/numerics.md#sketch-mode's definition in plain integers."""
    def fmix(k, c):
        k &= (1 << 64) - 1
        x = (((c & 0xFFFFFFFF) ^ (k & 0xFFFFFFFF)) + (c >> 32) * 0x9E3779B9 + (k >> 32)) & 0xFFFFFFFF
        for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, 1)):
            x = ((x ^ (x >> shift)) * mul) & 0xFFFFFFFF
        return x

    L = 1
    while 2 * L <= min(m, 1024):
        L *= 2
    offset = (fmix(key + 0x9E3779B97F4A7C15, c // L) * m) >> 32
    return (offset + c % L) % m, -1 if fmix(key, c) & 1 else 1


@pytest.mark.parametrize("m", [1, 5, 48, 64, 1030, 1 << 16])
def test_a_block_lands_in_contiguous_buckets_from_its_offset(m):
    L = block_length(m)
    assert L == min(1024, 1 << (m.bit_length() - 1))
    for key in (0, -1, 0x123456789ABCDEF):
        # whole blocks, blocks across the wrap of the high word, and runs that start mid-block past 2^32
        runs = [(0, 5 * L), (2**32 - L, 2 * L), (2**40 + 17, L), (2**40 + 17 + L, 3)]
        coords = np.concatenate([np.arange(a, a + n) for a, n in runs])
        bucket, sign = (torch.cat(t).tolist() for t in zip(*(buckets_and_signs(key, a, n, m) for a, n in runs)))
        want = [_spec_bucket_and_sign(key, int(c), m) for c in coords]
        assert bucket == [w[0] for w in want] and sign == [w[1] for w in want]
        # within a block the buckets follow the coordinates, wrapping at m: no two collide
        first = {}
        for c, j in zip(coords.tolist(), bucket):
            b0, r = first.setdefault(c // L, (j, c % L))
            assert j == (b0 + c % L - r) % m
    if m >= 48:  # the blocks' offsets differ
        assert len(set(block_offsets(7, np.arange(64, dtype=np.uint64), m).tolist())) > 16


@pytest.mark.parametrize("backend", ["cpp", "torch"] + [b for b in BACKENDS if "@cuda" in b])
@pytest.mark.parametrize("parts", [1, 3])
def test_runs_that_start_mid_block_match_the_explicit_matrix(backend, parts):
    """One tensor of 5000 numbers (blocks of L = 1024 for m = 1030) in views
    cut mid-block, listed out of order, as a sharded tensor's runs are:
    the same sketch as the whole tensor's."""
    be = backend_or_skip(backend)
    n, m, key = 5000, 1030, 0x5EED
    theta = torch.randn(n, generator=torch.Generator().manual_seed(2))
    cuts = [0, 700, 1500, 2048, 2600, 4999, 5000]
    pieces = list(zip(cuts[:-1], cuts[1:]))[::-1]
    views = [theta[lo:hi].clone() for lo, hi in pieces]
    segs = torch.tensor([[v, 0, hi - lo, key, lo, 0] for v, (lo, hi) in enumerate(pieces)], dtype=torch.int64)
    groups = torch.tensor([[0, m, 0, 0, len(pieces), n, parts]], dtype=torch.int64)
    whole = torch.tensor([[0, 0, n, key, 0, 0]], dtype=torch.int64)
    S = sketch_matrix(whole, groups, [n], m)
    want = S @ theta.double()
    out = torch.full((m,), float("nan"), dtype=torch.float64)
    be.sketch(views, segs, groups, out, torch.full((parts * m,), float("nan"), dtype=torch.float64))
    tol = (S.abs() @ theta.double().abs()) * 1e-16 * n**0.5 * 4
    assert (out - want).abs().le(tol).all(), f"max error {(out - want).abs().max():.3e}"
    # the reference's columns of the cut views are the whole tensor's
    cols = torch.cat([torch.arange(lo, hi) for lo, hi in pieces])
    assert torch.equal(sketch_matrix(segs, groups, [v.numel() for v in views], m), S[:, cols])


def test_block_offsets_cover_every_bucket_evenly():
    m = 48
    offsets = block_offsets(12345, np.arange(1 << 16, dtype=np.uint64), m)
    counts = np.bincount(offsets.astype(np.int64), minlength=m)
    assert counts.min() > 0.9 * (1 << 16) / m and counts.max() < 1.1 * (1 << 16) / m
    _, sign = buckets_and_signs(12345, 0, 1 << 16, m)
    assert abs(sign.double().mean()) < 0.02
