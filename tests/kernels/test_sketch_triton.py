"""The Triton and CUDA sketch kernels (float64 atomics) against the explicit
float64 S of the reference: hand-made tables whose runs start mid-block, cross
the 32-bit coordinate boundary and wrap at m, several groups (m not a power of
two, one larger than a block), an identity group, mixed view dtypes; the table
checks; and a sketched window on the triton backend. On the CPU the Triton
kernel runs in its interpreter; the CUDA kernel runs where a GPU is visible."""
import numpy as np
import pytest
import torch
from helpers import OnDevice, backend_or_skip, split_id

from spectral_edge_fast import GramWindow
from spectral_edge_fast.kernels import sketch as sketch_module
from spectral_edge_fast.kernels import triton_ops
from spectral_edge_fast.kernels.reference import sketch_matrix
from spectral_edge_fast.kernels.sketch import SKETCH_WORK_COLS, block_length, sketch_work

BACKENDS = ["triton"] + (["triton@cuda", "cuda@cuda"] if torch.cuda.is_available() else [])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
U = 2.0**-53  # float64's unit roundoff

# Groups (out, m, identity, seg_begin, seg_end, numel, parts): m = 48 (blocks
# of 32), 3000 (blocks of 1024, more than a block: a run wraps at m), 5
# (blocks of 4) and an identity group of 40 buckets.
GROUPS = [[0, 48, 0, 0, 3, 0, 1], [48, 3000, 0, 3, 5, 0, 1], [3048, 5, 0, 5, 6, 0, 1], [3053, 40, 1, 6, 8, 0, 1]]
# Segments (view, start, length, key, coord, group): runs starting mid-block,
# one crossing coordinate 2^32 (the hash's high word), an empty one, and the
# identity group's coordinates out of order.
SEGS = [[0, 0, 1000, 17, 5, 0], [0, 1000, 0, 17, 7, 0], [1, 3, 2500, -(2**62) + 3, 2**32 - 700, 0],
        [1, 2503, 6000, 99, 1500, 1], [2, 0, 1800, 0x7FFFFFFFFFFFFFFF, 3000, 1],
        [0, 1000, 333, -1, 2**40 + 1, 2],
        [2, 1800, 25, 0, 15, 3], [0, 1333, 15, 0, 0, 3]]
SIZES = [1348, 8503, 1825]


def _tables():
    segs = torch.tensor(SEGS, dtype=torch.int64)
    groups = torch.tensor(GROUPS, dtype=torch.int64)
    for g, row in enumerate(groups):  # numel from the segments, as SketchPlan fills it
        row[5] = int(segs[(segs[:, 5] == g), 2].sum())
    return segs, groups


@pytest.fixture
def no_fallback(monkeypatch):
    """The torch implementation, which these backends ran before they had a
    kernel, fails the test if called."""
    def fallback(*args):
        raise AssertionError("the torch implementation ran instead of the backend's sketch kernel")

    monkeypatch.setattr(sketch_module, "sketch_torch", fallback)


def _backend(backend_id):
    """The backend; Triton's with programs of 700 elements, so that its rows
    start mid-block too."""
    be = backend_or_skip(backend_id)
    name, device = split_id(backend_id)
    if name == "triton":
        small = triton_ops.TritonBackend(chunk=700)
        return small if device == "cpu" else OnDevice(small, device)
    return be


def _sketch(be, views, segs, groups):
    out = torch.full((3093,), float("nan"), dtype=torch.float64)
    be.sketch(views, segs, groups, out, torch.full((1,), float("nan"), dtype=torch.float64))
    return out


def _check(out, views, segs, groups):
    """Against S theta in float64: a bucket summing n terms in any order is
    within (n - 1) u sum |terms| of the exact sum, and so is the reference."""
    S = sketch_matrix(segs, groups, [v.numel() for v in views], out.numel())
    theta = torch.cat([v.double() for v in views])
    want = S @ theta
    terms = S.abs().sum(dim=1)
    tol = 2 * terms * U * (S.abs() @ theta.abs())
    err = (out - want).abs()
    assert err.le(tol).all(), f"max error {err.max():.3e}, bucket {int(err.argmax())}"
    return want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_sketch_kernel_matches_the_explicit_matrix(backend, dtype, no_fallback):
    be = _backend(backend)
    gen = torch.Generator().manual_seed(3)
    views = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    segs, groups = _tables()
    assert [block_length(m) for m in (48, 3000, 5)] == [32, 1024, 4]
    out = _sketch(be, views, segs, groups)
    _check(out, views, segs, groups)
    # identity group: its coordinates in order, exactly
    assert torch.equal(out[3053:3093], torch.cat([views[0][1333:1348], views[2][1800:1825]]).double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_sketch_kernel_mixed_dtypes_and_fresh_values(backend, no_fallback):
    """Views of three dtypes in one call (one launch each for Triton), then
    new values, then new float32 tensors under the same tables: the cached
    work table is reused only where it still describes the views."""
    be = _backend(backend)
    gen = torch.Generator().manual_seed(4)
    segs, groups = _tables()
    views = [torch.randn(n, generator=gen).to(d) for n, d in zip(SIZES, (torch.bfloat16, torch.float64, torch.float16))]
    _check(_sketch(be, views, segs, groups), views, segs, groups)
    for v in views:
        v.mul_(-3)
    _check(_sketch(be, views, segs, groups), views, segs, groups)
    views = [torch.randn(n, generator=gen) for n in SIZES]  # new addresses, new dtypes
    _check(_sketch(be, views, segs, groups), views, segs, groups)
    # the same segments over one flat vector
    flat = torch.cat(views)
    offsets = np.cumsum([0] + SIZES)
    flat_segs = segs.clone()
    flat_segs[:, 1] += torch.from_numpy(offsets[flat_segs[:, 0].numpy()])
    flat_segs[:, 0] = 0
    want = _check(_sketch(be, views, segs, groups), views, segs, groups)
    got = _sketch(be, [flat], flat_segs, groups)
    assert (got - want).abs().le(1e-12 * want.abs().max()).all()


def test_sketch_work_rows_and_checks():
    segs, groups = _tables()
    rows = sketch_work(segs.numpy(), groups.numpy(), SIZES, 3093, 700)
    assert rows.shape[1] == SKETCH_WORK_COLS
    # every element once, in rows of at most 700, each at its own coordinate
    assert rows[:, 2].max() <= 700 and rows[:, 2].sum() == sum(s[2] for s in SEGS)
    assert sorted(set(rows[:, 7].tolist())) == [-1, 2, 5, 10]  # log2 L per group, -1: identity
    with pytest.raises(ValueError, match="group 3 does not fit"):
        sketch_work(segs.numpy(), groups.numpy(), SIZES, 3092, 700)
    bad = segs.clone()
    bad[3, 2] += 1  # reads one past view 1
    with pytest.raises(ValueError, match="segment 3 does not fit"):
        sketch_work(bad.numpy(), groups.numpy(), SIZES, 3093, 700)
    bad = segs.clone()
    bad[7, 4] = 30  # identity coordinates 30..44 past its 40 buckets
    with pytest.raises(ValueError, match="group 3 does not fit"):
        sketch_work(bad.numpy(), groups.numpy(), SIZES, 3093, 700)
    bad[7, 4] = 14  # 14..28 overlaps 15..39: two plain adds to one bucket
    with pytest.raises(ValueError, match="group 3 does not fit"):
        sketch_work(bad.numpy(), groups.numpy(), SIZES, 3093, 700)
    bad[7, 2] = 0  # an empty segment overlaps nothing
    sketch_work(bad.numpy(), groups.numpy(), SIZES, 3093, 700)


def test_triton_sketch_rejects_a_wrong_view():
    be = backend_or_skip("triton")
    segs, groups = _tables()
    views = [torch.zeros(n) for n in SIZES]
    with pytest.raises(ValueError, match=r"views\[1\] must be a contiguous"):
        _sketch(be, [views[0], torch.zeros(2 * SIZES[1])[::2], views[2]], segs, groups)
    with pytest.raises(ValueError, match=r"views\[0\] must be .* got a torch.int64"):
        _sketch(be, [torch.zeros(sum(SIZES), dtype=torch.int64)], segs[:1], groups)


def test_sketched_window_on_triton_matches_the_reference(no_fallback):
    backend_or_skip("triton")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(13, 31), torch.nn.Tanh(), torch.nn.Linear(31, 5))
    wins = [GramWindow(model, window=3, sketch=40, groups="auto", backend=b) for b in ("triton", "reference")]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-2)
        for w in wins:
            w.step()
    got, want = wins[0].gram(), wins[1].gram()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-12 * np.abs(want).max())
    y = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    assert np.allclose(wins[0].project(y), wins[1].project(y), rtol=1e-5, atol=1e-9)
