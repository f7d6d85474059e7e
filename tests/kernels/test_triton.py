"""Triton-specific checks: availability reasons, the chunk and tile edges of
the streaming kernel (small chunks and tiles, so that heads, interiors and
tails all occur at small P), bfloat16 rounding, mixed parameter dtypes, the row
limit, and a compile of every kernel for a Hopper GPU (no GPU needed)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import random_bounds, small_integers

from spectral_edge_fast.kernels import backend_status, get_backend, triton_ops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def device():
    for dev in ("cuda", "cpu"):
        if backend_status("triton", dev)[0]:
            return torch.device(dev)
    pytest.skip(f"triton backend unavailable: {backend_status('triton', 'cpu')[1]}")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 256 elements (64 columns at W=4): chunks of 700 elements span
    several whole tiles between their partial ends."""
    monkeypatch.setattr(triton_ops, "_TILE", 256)
    return triton_ops.TritonBackend(chunk=700)


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


# availability -------------------------------------------------------------


@pytest.mark.skipif(triton_ops.triton is None, reason="triton is not installed")
def test_available_reasons(monkeypatch):
    be = triton_ops.TritonBackend()
    monkeypatch.setattr(triton_ops, "_INTERPRET", False)
    ok, reason = be.available(torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET=1" in reason
    monkeypatch.setattr(triton_ops, "_INTERPRET", True)
    assert be.available(torch.device("cpu")) == (True, "")
    ok, reason = be.available(torch.device("cuda"))
    assert not ok and "CPU only" in reason
    ok, reason = be.available(torch.device("meta"))
    assert not ok and "meta" in reason
    monkeypatch.setattr(triton_ops, "_MISSING", "triton is not installed (test)")
    assert be.available(torch.device("cpu")) == (False, "triton is not installed (test)")


def test_import_without_triton_gives_a_reason():
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # import triton now raises ImportError
        from spectral_edge_fast.kernels import backend_status
        ok, reason = backend_status("triton", "cuda")
        assert not ok and reason.startswith("triton is not installed"), reason
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unavailable_device_raises_with_the_reason(monkeypatch):
    monkeypatch.setattr(triton_ops, "_MISSING", "triton is not installed (test)")
    with pytest.raises(RuntimeError, match="not installed"):
        triton_ops.TritonBackend().project(torch.zeros(2, 3), torch.zeros(3), (0, 3))


# chunk and tile edges -------------------------------------------------------


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_slide_and_project_exact_across_chunk_and_tile_edges(device, small_tiles, storage):
    gen = torch.Generator().manual_seed(21)
    P, W = 5003, 4
    # Empty groups, a group inside one tile, groups across chunk boundaries.
    bounds = (0, 0, 5, 64, 700, 701, 1500, 1500, 4000, P)
    ring, row, vec = small_integers((W, P), gen, storage), small_integers((P,), gen), small_integers((P,), gen)
    ref = get_backend("reference")
    want = ref.slide(ring.clone(), row, 2, bounds)
    ring_dev, row_dev, vec_dev = _on(device, ring, row, vec)
    assert torch.equal(small_tiles.project(ring_dev, vec_dev, bounds).cpu(), ref.project(ring, vec, bounds))
    assert torch.equal(small_tiles.slide(ring_dev, row_dev, 2, bounds).cpu(), want)
    ring[2] = row.to(storage)
    assert torch.equal(ring_dev.cpu(), ring), "only the slot changes, to the new row"


def test_step_exact_with_mixed_parameter_dtypes(device, small_tiles):
    gen = torch.Generator().manual_seed(22)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.bfloat16]
    sizes = [130, 1, 900, 64, 2000]
    P = sum(sizes)
    bounds = random_bounds(P, 3, gen)
    ring, snapshot = small_integers((5, P), gen, torch.bfloat16), small_integers((P,), gen)
    params = [small_integers((n,), gen, dt) for n, dt in zip(sizes, dtypes)]
    params_dev = _on(device, *params)
    ref = get_backend("reference")
    state_ref = (snapshot.clone(), ring.clone())
    state = _on(device, snapshot, ring)
    for slot in (4, 0):  # updated in place, as an optimizer does: the snapshot and the table carry over
        for p, p_dev in zip(params, params_dev):
            p.add_(small_integers(p.shape, gen, p.dtype))
            p_dev.copy_(p)
        want = ref.step(params, *state_ref, slot, bounds)
        assert torch.equal(small_tiles.step(params_dev, *state, slot, bounds).cpu(), want)
        assert torch.equal(state[0].cpu(), state_ref[0]) and torch.equal(state[1].cpu(), state_ref[1])
    assert len(small_tiles._tables) == 1, "the chunk table is built once per parameter list"


def test_gather_exact_with_mixed_parameter_dtypes(device, small_tiles):
    gen = torch.Generator().manual_seed(23)
    dtypes = [torch.float16, torch.float32, torch.bfloat16]
    params = [small_integers((n,), gen, dt) for n, dt in zip([3, 1401, 77], dtypes)]
    snapshot = small_integers((1481,), gen, torch.float64)
    out_ref, snap_ref = torch.full((1481,), float("nan")), snapshot.clone()
    get_backend("reference").gather(params, snap_ref, out_ref)
    out, snap = _on(device, torch.full((1481,), float("nan")), snapshot)
    small_tiles.gather(_on(device, *params), snap, out)
    assert torch.equal(out.cpu(), out_ref) and torch.equal(snap.cpu(), snap_ref)


def test_gram_and_combine_across_chunks_and_row_blocks(device):
    gen = torch.Generator().manual_seed(24)
    x = small_integers((70, 3001), gen)  # two row blocks of 64, five chunks
    be = triton_ops.TritonBackend(chunk=700)
    assert torch.equal(be.gram(x.to(device)).cpu(), x.double() @ x.double().T)
    coeffs = small_integers((70,), gen)
    assert torch.equal(be.combine(x.to(device), coeffs.to(device)).cpu(), (coeffs @ x))


def test_ring_with_padded_row_stride(device):
    """A ring whose rows are padded to an aligned stride (for vectorised loads)."""
    gen = torch.Generator().manual_seed(25)
    P, bounds = 1001, (0, 500, 1001)
    ring, row = small_integers((3, P), gen), small_integers((P,), gen)
    ring_dev = torch.zeros(3, 1024, device=device)[:, :P].copy_(ring)
    want = get_backend("reference").slide(ring, row, 1, bounds)
    got = triton_ops.TritonBackend(chunk=300).slide(ring_dev, row.to(device), 1, bounds)
    assert torch.equal(got.cpu(), want) and torch.equal(ring_dev.cpu(), ring)


# rounding and non-finite values ----------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NumPy on infinities
def test_bf16_rounding_matches_torch_bit_for_bit(device):
    halfway = (torch.arange(1 << 12, dtype=torch.int32) * 0x10000 + 0x3F808000).view(torch.float32)  # exact ties
    row = torch.cat([
        torch.randn(20000, generator=torch.Generator().manual_seed(26)) * 100,
        halfway, -halfway, halfway + 2e-7,
        torch.tensor([3.3895e38, -3.3895e38, torch.finfo(torch.float32).max, 1e-40, -1e-40, 0.0, -0.0,
                      float("inf"), -float("inf")]),
    ])
    P = row.numel()
    ring = torch.zeros(2, P, dtype=torch.bfloat16, device=device)
    triton_ops.TritonBackend().slide(ring, row.to(device), 0, (0, P))
    assert torch.equal(ring[0].cpu().view(torch.int16), row.to(torch.bfloat16).view(torch.int16))


def test_nan_in_row_stays_nan_in_the_ring(device):
    # NaNs whose payload lies in the low 16 bits only: truncated, they would read as infinities.
    nans = torch.tensor([0x7F800001, 0xFF800001 - (1 << 32)], dtype=torch.int32).view(torch.float32)
    row = torch.cat([torch.tensor([1.0, 2.0]), nans, torch.tensor([3.0])]).to(device)
    ring = torch.zeros(2, 5, dtype=torch.bfloat16, device=device)
    out = triton_ops.TritonBackend().slide(ring, row, 1, (0, 2, 5))
    assert torch.isnan(ring[1, 2:4]).all() and ring[1].cpu()[[0, 1, 4]].tolist() == [1.0, 2.0, 3.0]
    assert out[0].tolist() == [0.0, 0.0, 5.0] and torch.isnan(out[1]).all(), "NaN stays in its group"


# input errors ----------------------------------------------------------------


def test_ring_wider_than_a_program_is_rejected(device):
    """The argument errors common to every backend are in test_ops.py; this
    limit is the triton backend's own."""
    with pytest.raises(ValueError, match="the triton backend handles rings of 1 to 128 rows, got W=200"):
        triton_ops.TritonBackend().project(torch.zeros(200, 8, device=device), torch.zeros(8, device=device), (0, 8))


# GPU compile -----------------------------------------------------------------

_COMPILE = textwrap.dedent("""
    import collections, re
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from spectral_edge_fast.kernels import triton_ops as T

    def compile(fn, types, consts, num_warps):
        sig = {n: types.get(n, "constexpr" if n in consts else "i32") for n in fn.arg_names}
        aligned = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
                   if t.startswith("*") or n in ("ring_stride", "P", "x_stride", "chunk")}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=aligned)
        options = {"num_warps": num_warps, **T._LAUNCH}
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

    for ring, ring_tl in (("bf16", tl.bfloat16), ("fp32", tl.float32)):
        for rows in (3, 16, 64):
            w_block, block = T._tiles(rows)
            for code, dots, write in ((-1, True, True), (-1, True, False), (0, True, True), (0, False, True)):
                types = {"tab_ptr": "*i64", "src_ptr": "*fp32", "snap_ptr": "*fp32", "part_ptr": "*fp32",
                         "out_ptr": "*" + ring, "ring_ptr": "*" + ring}
                ptx = compile(T._pass_kernel, types, dict(PARAM_CODE=code, PARAM_DTYPE=ring_tl, DOTS=dots,
                              WRITE=write, W_BLOCK=w_block, BLOCK=block), 8)
                assert not dots or "ld.global.v4" in ptx, ("ring loads not vectorised", ring, rows, code, write)
        compile(T._combine_kernel, {"ring_ptr": "*" + ring, "coef_ptr": "*fp32", "out_ptr": "*fp32"},
                dict(W_BLOCK=16, BLOCK=128), 8)
        compile(T._gram_kernel, {"x_ptr": "*" + ring, "part_ptr": "*fp64"}, dict(R_BLOCK=64, BLOCK=64), 4)
    compile(T._sum_chunks_kernel, {"part_ptr": "*fp32", "first_ptr": "*i64", "out_ptr": "*fp64"},
            dict(C_BLOCK=64, COL_BLOCK=32), 4)
    for view, view_tl in (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16), ("fp64", tl.float64)):
        for from_table in (False, True):
            ptx = compile(T._sketch_kernel, {"work_ptr": "*i64", "src_ptr": "*" + view, "addr_ptr": "*i64",
                                             "out_ptr": "*fp64"},
                          dict(VIEW_DTYPE=view_tl, FROM_TABLE=from_table, BLOCK=T._SKETCH_BLOCK), 4)
            assert re.search(r"(atom|red)[.a-z]*[.]add[.]f64", ptx), ("no float64 atomic add", view, from_table)
""")


@pytest.mark.skipif(triton_ops.triton is None, reason="triton is not installed")
def test_kernels_compile_for_hopper():
    """Compiles every kernel variant the backend launches for sm_90, without
    a GPU (the interpreter accepts code that the compiler may not), and
    checks that the ring's loads are 16-byte vectors."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this triton build has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
