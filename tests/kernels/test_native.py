"""Tests specific to the compiled extension (backends ``cpp`` and ``cuda``):
loading and unavailability reasons, the chunk plan, the extension's own
argument checks (a direct call must not read out of bounds), and bits that do
not depend on the thread count. The ops themselves are checked against the
reference by the shared per-op tests, their argument errors in test_ops.py."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_dots_close

from spectral_edge_fast.kernels import backend_status, get_backend, native

CPP_OK, CPP_REASON = backend_status("cpp", "cpu")
CUDA_OK, CUDA_REASON = backend_status("cuda", "cuda")
needs_cpp = pytest.mark.skipif(not CPP_OK, reason=f"cpp backend unavailable: {CPP_REASON}")
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unavailable: {CUDA_REASON}")
CHUNK = 8192  # kChunk in csrc/kernels/common.h


def _ext():
    return native._C


def _layout(sizes, dtypes=(torch.float32,), seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).to(dtypes[i % len(dtypes)]) for i, n in enumerate(sizes)]
    snapshot = torch.cat([p.float() for p in params]) + 0.01 * torch.randn(sum(sizes), generator=g)
    return params, snapshot


# --- loading --------------------------------------------------------------------------------


def test_missing_extension_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    module, reason = native._load_library()
    assert module is None and "spectral_edge_fast._C is missing" in reason and "build_ext" in reason


def test_wrong_device_is_a_reason():
    ok, reason = native.make_backend("cpp").available(torch.device("cuda"))
    assert not ok and "cpu" in reason
    ok, reason = native.make_backend("cuda").available(torch.device("cpu"))
    assert not ok and "cuda" in reason


def test_unknown_native_name():
    with pytest.raises(ValueError, match="native backends"):
        native.make_backend("tpu")


@needs_cpp
def test_cuda_reason_when_not_built_or_no_device():
    if CUDA_OK:
        pytest.skip("CUDA backend available here")
    assert CUDA_REASON and ("without CUDA" in CUDA_REASON or "no CUDA device" in CUDA_REASON)
    assert _ext().built_with_cuda() == ("without CUDA" not in CUDA_REASON)


# --- the plan -------------------------------------------------------------------------------


@needs_cpp
def test_plan_cuts_at_tensors_groups_and_chunk_multiples():
    sizes, bounds = [5, 0, 20000, 3], (0, 7, 7, 9000, 20008)
    plan = _ext().plan(sizes, list(bounds)).tolist()
    starts = [0, 5, 5, 20005, 20008]
    flat = 0
    for tensor, offset, start, length, group in plan:
        assert start == flat and length > 0
        assert starts[tensor] + offset == start and offset + length <= sizes[tensor]
        assert bounds[group] <= start and start + length <= bounds[group + 1]
        assert start // CHUNK == (start + length - 1) // CHUNK
        flat += length
    assert flat == sum(sizes)
    cuts = {0, 5, 20005, 20008, 7, 9000} | set(range(0, 20008, CHUNK))
    assert {row[2] for row in plan} == cuts - {20008}


@needs_cpp
@pytest.mark.parametrize(
    "sizes, bounds, match",
    [
        ([4, 4], [0, 9], "bounds end at 9 but the tensors hold 8"),
        ([4, 4], [1, 8], "bounds must start at 0"),
        ([4, 4], [0, 6, 3, 8], "non-decreasing"),
        ([4, 4], [8], "at least two entries"),
        ([4, -1], [0, 3], "sizes\\[1\\] is negative"),
    ],
)
def test_plan_rejects_bad_bounds(sizes, bounds, match):
    with pytest.raises(RuntimeError, match=match):
        _ext().plan(sizes, bounds)


# --- argument errors ------------------------------------------------------------------------


@needs_cpp
def test_plan_from_other_sizes_is_rejected():
    params, snapshot = _layout([10, 20])
    plan = _ext().plan([20, 10], [0, 30])
    with pytest.raises(RuntimeError, match="build the plan from the same sizes and bounds"):
        _ext().cpu.step(params, snapshot, torch.zeros(3, 30), 0, plan, 1)
    with pytest.raises(RuntimeError, match="plan must be the contiguous int64"):
        _ext().cpu.step(params, snapshot, torch.zeros(3, 30), 0, plan.int(), 1)


@needs_cpp
def test_direct_calls_check_their_arguments():
    cpu = _ext().cpu
    ring, plan = torch.zeros(3, 16), _ext().plan([16], [0, 16])
    with pytest.raises(RuntimeError, match="slide: row has 15 elements, expected P = 16"):
        cpu.slide(ring, torch.zeros(15), 0, plan, 1)
    with pytest.raises(RuntimeError, match="slide: slot 3 is outside the ring's 3 rows"):
        cpu.slide(ring, torch.zeros(16), 3, plan, 1)
    with pytest.raises(RuntimeError, match="project: vec must be float32, float64, bfloat16 or float16"):
        cpu.project(ring, torch.zeros(16, dtype=torch.int64), plan, 1)
    with pytest.raises(RuntimeError, match="project: plan row 0 does not fit"):
        cpu.project(torch.zeros(3, 8), torch.zeros(8), plan, 1)
    with pytest.raises(RuntimeError, match="combine: coeffs has 2 elements but the ring has 3 rows"):
        cpu.combine(ring, torch.zeros(2))
    with pytest.raises(RuntimeError, match="combine: coeffs is on meta, expected cpu"):
        cpu.combine(ring, torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="gram: x must be 2-D"):
        cpu.gram(torch.zeros(16))
    with pytest.raises(RuntimeError, match="gather: out must be float32 or bfloat16"):
        cpu.gather([torch.zeros(16)], torch.zeros(16), torch.zeros(16, dtype=torch.float64), plan)
    with pytest.raises(RuntimeError, match="step: params hold 15 elements, expected P = 16"):
        cpu.step([torch.zeros(15)], torch.zeros(16), ring, 0, plan, 1)


# --- bits -----------------------------------------------------------------------------------


def _all_ops(threads):
    """Every op on one fixed input, at the given thread count."""
    torch.set_num_threads(threads)
    cpp = get_backend("cpp")
    sizes = [3, 50_000, 1, 17_000, 40_001]
    P, W = sum(sizes), 6
    bounds = (0, 3, 30_000, 30_000, P)
    params, snapshot = _layout(sizes, (torch.float32, torch.bfloat16, torch.float16), seed=1)
    ring = torch.randn(W, P, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    out = [cpp.step(params, snapshot, ring, 2, bounds), snapshot, ring.clone()]
    out.append(cpp.slide(ring, torch.randn(P, generator=torch.Generator().manual_seed(3)), 4, bounds))
    out.append(cpp.project(ring, torch.randn(P, generator=torch.Generator().manual_seed(4)), bounds))
    out.append(cpp.combine(ring, torch.linspace(-1, 1, W, dtype=torch.float64)))
    out.append(cpp.gram(ring))
    return out


@needs_cpp
def test_bits_do_not_depend_on_threads_or_runs():
    before = torch.get_num_threads()
    try:
        one, two, again = _all_ops(1), _all_ops(2), _all_ops(2)
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


@needs_cpp
def test_bf16_ring_rounds_like_torch_and_keeps_nan():
    g = torch.Generator().manual_seed(5)
    bits = torch.randint(-(2**31), 2**31 - 1, (1 << 18,), generator=g, dtype=torch.int64).to(torch.int32)
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F800001, 0xFFC00001, 1], dtype=torch.int64).to(torch.int32)
    row = torch.cat([bits, ties]).view(torch.float32)
    ring = torch.zeros(2, row.numel(), dtype=torch.bfloat16)
    get_backend("cpp").slide(ring, row, 1, (0, row.numel()))
    expected = row.to(torch.bfloat16)
    nan = expected.isnan()
    assert torch.equal(ring[1].isnan(), nan)
    assert torch.equal(ring[1][~nan].view(torch.int16), expected[~nan].view(torch.int16))


@needs_cpp
def test_half_parameters_convert_exactly():
    half = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    half = half[~half.isnan()]
    snapshot, out = torch.zeros(half.numel()), torch.empty(half.numel())
    get_backend("cpp").gather([half], snapshot, out)
    assert torch.equal(out.view(torch.int32), half.float().view(torch.int32))
    assert torch.equal(snapshot, half.float())


@needs_cpp
def test_float64_parameters_keep_a_float64_snapshot():
    params = [torch.randn(1000, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    snapshot = torch.cat(params) - 1e-9
    ring = torch.zeros(3, 1005)
    out = get_backend("cpp").step(params, snapshot, ring, 0, (0, 1005))
    assert torch.equal(snapshot, torch.cat(params))
    assert torch.allclose(ring[0], torch.full((1005,), 1e-9), rtol=1e-6, atol=0)
    assert out[0, 3].item() == pytest.approx(1005 * 1e-18, rel=1e-6)


# --- CUDA -----------------------------------------------------------------------------------


@needs_cuda
def test_cuda_matches_cpp_bits_of_state():
    cpp, cuda = get_backend("cpp"), get_backend("cuda", "cuda")
    sizes = [3, 50_000, 1, 300, 17_001]
    P, W, bounds = sum(sizes), 8, (0, 3, 30_000, sum(sizes))
    params, snapshot = _layout(sizes, (torch.float32, torch.bfloat16, torch.float16))
    ring = torch.randn(W, P).to(torch.bfloat16)
    ring_cpu = ring.clone()
    ref = cpp.step(params, snapshot.clone(), ring_cpu, 5, bounds)
    snap_gpu, ring_gpu = snapshot.cuda(), ring.cuda()
    got = cuda.step([p.cuda() for p in params], snap_gpu, ring_gpu, 5, bounds)
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ring_gpu.cpu(), ring_cpu)


@needs_cuda
def test_cuda_step_is_graph_capturable_and_deterministic():
    cuda = get_backend("cuda", "cuda")
    sizes = [1000] * 300  # more tensors than one launch takes
    P, W, bounds = sum(sizes), 4, (0, 150_000, sum(sizes))
    params = [torch.randn(n, device="cuda") for n in sizes]
    snapshot, ring = torch.zeros(P, device="cuda"), torch.zeros(W, P, device="cuda")
    cuda.step(params, snapshot, ring, 0, bounds)  # warm-up: uploads the plan
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = cuda.step(params, snapshot, ring, 1, bounds)
    state = (snapshot.clone(), ring.clone())
    for p in params:
        p.add_(0.5)
    graph.replay()
    first = captured.clone()
    snapshot.copy_(state[0])
    ring.copy_(state[1])
    graph.replay()
    assert torch.equal(captured, first)
    eager = cuda.step(params, state[0].clone(), state[1].clone(), 1, bounds)
    assert torch.equal(eager, first)


# --- every CPU path -------------------------------------------------------------------------

# Run in a fresh process per SEF_CPU_ISA level (the level is read once): the
# Gram kernel and step/slide against the float64 reference, small integers
# exactly, the same bits at one and two threads; the results are saved for
# comparing the paths with each other.
_PATH_SCRIPT = r"""
import sys
import torch
from helpers import assert_dots_close, dot_tolerance, random_bounds, random_params, small_integers
import spectral_edge_fast as sef
from spectral_edge_fast import _C
from spectral_edge_fast.kernels import get_backend

cpp, ref = get_backend("cpp"), get_backend("reference")
out = {"isa": _C.cpu_isa()}
for dtype in (torch.float32, torch.bfloat16):
    for W in (1, 2, 3, 5, 17, 33, 65):
        for P in (0, 1, 7, 1000, 16391):
            gen = torch.Generator().manual_seed(1000 * W + P)
            x = torch.randn(W, P, generator=gen).to(dtype)
            tol = torch.stack([dot_tolerance(x, x[i], (0, P))[0] for i in range(W)])
            torch.set_num_threads(1)
            got = sef.gram(x, backend="cpp")
            torch.set_num_threads(2)
            assert torch.equal(got, sef.gram(x, backend="cpp")), f"gram {dtype} W={W} P={P}: bits depend on threads"
            assert_dots_close(got, x.double() @ x.double().T, tol, f"gram {dtype} W={W} P={P}")
            ints = small_integers((W, P), gen, dtype)
            assert torch.equal(sef.gram(ints, backend="cpp"), ints.double() @ ints.double().T), f"gram {dtype} W={W} P={P} ints"
            out[f"gram {dtype} {W} {P}"] = (got, tol)
    x = torch.randn(130, 4 * 8192 + 3, generator=torch.Generator().manual_seed(3)).to(dtype)  # enough products for two threads
    torch.set_num_threads(1)
    got = sef.gram(x, backend="cpp")
    torch.set_num_threads(2)
    assert torch.equal(got, sef.gram(x, backend="cpp")), f"gram {dtype} W=130: bits depend on threads"
for storage in (torch.float32, torch.bfloat16):
    sizes = [1, 7, 999, 40_001]
    P, W = sum(sizes), 5
    gen = torch.Generator().manual_seed(7)
    bounds = random_bounds(P, 3, gen)
    params = random_params(sizes, gen)
    snapshot, ring = torch.randn(P, generator=gen), torch.randn(W, P, generator=gen).to(storage)
    want = ref.step(params, snapshot.clone(), ring.clone(), 2, bounds)
    a = (torch.cat(params) - snapshot).to(storage).float()
    ring_after = ring.clone()
    ring_after[2] = a.to(storage)
    tol = torch.cat([dot_tolerance(ring, a, bounds), dot_tolerance(a[None], a, bounds)], dim=1)
    row = torch.randn(P, generator=gen) * 3.0
    slid = ring_after.clone()
    want_slide = ref.slide(slid, row.clone(), 4, bounds)
    r = row.to(storage).float()
    tol_slide = torch.cat([dot_tolerance(ring_after, r, bounds), dot_tolerance(r[None], r, bounds)], dim=1)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        s, g = snapshot.clone(), ring.clone()
        got = cpp.step(params, s, g, 2, bounds)
        assert torch.equal(s, torch.cat(params)) and torch.equal(g, ring_after), f"step {storage}: state"
        got_slide = cpp.slide(g, row.clone(), 4, bounds)
        assert torch.equal(g, slid), f"slide {storage}: ring"
        runs.append((got, got_slide))
    assert all(torch.equal(u, v) for u, v in zip(*runs)), f"step/slide {storage}: bits depend on threads"
    assert_dots_close(runs[0][0], want, tol, f"step {storage}")
    assert_dots_close(runs[0][1], want_slide, tol_slide, f"slide {storage}")
    ints = small_integers((W, P), gen, storage)
    row = small_integers((P,), gen)
    assert torch.equal(cpp.slide(ints.clone(), row, 1, bounds), ref.slide(ints.clone(), row, 1, bounds)), f"slide {storage} ints"
    out[f"step {storage}"] = runs[0]
torch.save(out, sys.argv[1])
"""


def _run_path(level, tmp_path):
    dest = tmp_path / f"{level}.pt"
    env = {**os.environ, "SEF_CPU_ISA": level, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PATH_SCRIPT, str(dest)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"SEF_CPU_ISA={level}: {done.stderr[-3000:]}"
    return torch.load(dest)


@needs_cpp
def test_every_cpu_path_matches_float64(tmp_path):
    from spectral_edge_fast import _C

    order = ("scalar", "avx2", "avx512")
    best = order.index(_C.cpu_isa().split("+")[0])
    runs = {lv: _run_path(lv, tmp_path) for lv in order}
    for i, lv in enumerate(order):  # a cap never enables what the CPU lacks
        assert runs[lv]["isa"].split("+")[0] == order[min(i, best)], f"SEF_CPU_ISA={lv} took the {runs[lv]['isa']} path"
    base = runs["scalar"]
    for lv in order[1:]:
        for key, value in runs[lv].items():
            if key.startswith("gram"):
                (got, tol), (want, _) = value, base[key]
                assert_dots_close(got, want, tol, f"{lv} vs scalar {key}")
            elif key.startswith("step"):
                # The same lanes and unfused sums on every path (csrc/kernels/dots.h).
                assert all(torch.equal(u, v) for u, v in zip(value, base[key])), f"{lv} vs scalar {key}"


@needs_cpp
def test_unknown_cpu_isa_is_ignored_with_a_warning():
    from spectral_edge_fast import _C

    env = {**os.environ, "SEF_CPU_ISA": "avx3"}
    code = "from spectral_edge_fast import _C; print(_C.cpu_isa())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _C.cpu_isa()
    assert "ignoring SEF_CPU_ISA=avx3" in done.stderr
