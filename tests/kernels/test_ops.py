"""The custom ops ``torch.ops.spectral_edge_fast.*``: one set of argument
checks for every backend, and fake implementations that
``torch.library.opcheck`` accepts (tests/test_compile.py compiles them)."""
import pytest
import torch
from helpers import BACKENDS, backend_or_skip, random_params

from spectral_edge_fast.kernels import get_backend, ops

ALL = ("reference",) + BACKENDS
P, W = 30, 4


def _args(op):
    """Valid arguments of ``op``, as keyword arguments of the backend method."""
    gen = torch.Generator().manual_seed(0)
    params = random_params([10, 20], gen)
    ring = torch.randn(W, P, generator=gen)
    return {
        "gather": dict(params=params, snapshot=torch.zeros(P), out=torch.zeros(P)),
        "slide": dict(ring=ring, row=torch.randn(P, generator=gen), slot=1, bounds=(0, 12, P)),
        "step": dict(params=params, snapshot=torch.zeros(P), ring=ring, slot=1, bounds=(0, 12, P)),
        "project": dict(ring=ring, vec=torch.randn(P, generator=gen), bounds=(0, 12, P)),
        "combine": dict(ring=ring, coeffs=torch.ones(W, dtype=torch.float64)),
        "gram": dict(x=ring),
    }[op]


BAD = [
    ("step", dict(bounds=(0, 12, 29)), ValueError, r"step: bounds must rise from 0 to P = 30 without decreasing; got \(0, 12, 29\)"),
    ("step", dict(bounds=(0, 20, 12, P)), ValueError, "step: bounds must rise from 0 to P = 30"),
    ("step", dict(bounds=(1, P)), ValueError, "step: bounds must rise from 0"),
    ("step", dict(bounds=(P,)), ValueError, "step: bounds must rise from 0"),
    ("slide", dict(bounds=(0, 31)), ValueError, "slide: bounds must rise from 0 to P = 30"),
    ("slide", dict(bounds=(0, 20, 12, P)), ValueError, "slide: bounds must rise"),
    ("project", dict(bounds=(0, 29)), ValueError, "project: bounds must rise from 0 to P = 30"),
    ("project", dict(bounds=(0, 20, 12, P)), ValueError, "project: bounds must rise"),
    ("step", dict(slot=W), ValueError, "step: slot 4 is outside the ring's 4 rows"),
    ("step", dict(slot=-1), ValueError, "step: slot -1 is outside the ring's 4 rows"),
    ("slide", dict(slot=W), ValueError, "slide: slot 4 is outside the ring's 4 rows"),
    ("step", dict(ring=torch.zeros(W, P, dtype=torch.float16)), TypeError, "step: ring must be float32 or bfloat16, got torch.float16"),
    ("step", dict(ring=torch.zeros(P, W).T), ValueError, r"step: ring rows must be contiguous"),
    ("step", dict(snapshot=torch.zeros(P, dtype=torch.bfloat16)), TypeError, "step: snapshot must be float32 or float64"),
    ("step", dict(snapshot=torch.zeros(P - 1)), ValueError, r"step: snapshot must be 1-D with P = 30 elements, got shape \(29,\)"),
    ("step", dict(params=[torch.zeros(10), torch.zeros(20, dtype=torch.int32)]), TypeError, r"step: params\[1\] must be float32"),
    # dense but transposed, so that a copy to the GPU keeps it non-contiguous
    ("step", dict(params=[torch.zeros(10), torch.zeros(4, 5).T]), ValueError, r"step: params\[1\] must be contiguous"),
    ("step", dict(params=[torch.zeros(10), torch.zeros(19)]), ValueError, "step: params hold 29 elements, expected P = 30"),
    ("gather", dict(params=[torch.zeros(10), torch.zeros(21)]), ValueError, "gather: params hold 31 elements, expected P = 30"),
    ("gather", dict(out=torch.zeros(P, dtype=torch.float64)), TypeError, "gather: out must be float32 or bfloat16"),
    ("gather", dict(snapshot=torch.zeros(P + 1)), ValueError, "gather: snapshot must be 1-D with P = 30 elements"),
    ("slide", dict(row=torch.zeros(P - 1)), ValueError, r"slide: row must be 1-D with P = 30 elements, got shape \(29,\)"),
    ("slide", dict(row=torch.zeros(2, P // 2)), ValueError, r"slide: row must be 1-D with P = 30 elements, got shape \(2, 15\)"),
    ("slide", dict(row=torch.zeros(P, dtype=torch.int64)), TypeError, "slide: row must be float32, bfloat16 or float16"),
    ("slide", dict(row=torch.zeros(P, dtype=torch.float64)), TypeError, "slide: row must be float32, bfloat16 or float16, got torch.float64"),
    ("project", dict(vec=torch.zeros(P + 1)), ValueError, "project: vec must be 1-D with P = 30 elements"),
    ("project", dict(vec=torch.zeros(P, dtype=torch.int64)), TypeError, "project: vec must be float32"),
    ("combine", dict(coeffs=torch.zeros(W - 1)), ValueError, r"combine: coeffs must be 1-D with one entry per ring row \(4\)"),
    ("gram", dict(x=torch.zeros(P)), ValueError, r"gram: x must be 2-D \[W, P\]"),
    ("gram", dict(x=torch.zeros(W, P, dtype=torch.float64)), TypeError, "gram: x must be float32 or bfloat16"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op, change, error, match", BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD)])
def test_every_backend_rejects_bad_arguments_alike(backend, op, change, error, match):
    be = backend_or_skip(backend)
    args = {**_args(op), **change}
    state = {k: v.clone() for k, v in args.items() if k in ("snapshot", "ring", "out")}
    with pytest.raises(error, match=match):
        getattr(be, op)(**args)
    for k, v in state.items():
        assert torch.equal(args[k], v), f"{k} changed by a rejected call"


def test_arguments_on_another_device_are_named():
    ring = torch.zeros(W, P)
    with pytest.raises(ValueError, match="project: vec is on meta, expected cpu"):
        get_backend("torch").project(ring, torch.zeros(P, device="meta"), (0, P))


def test_backend_unavailable_on_the_device_is_named():
    with pytest.raises(RuntimeError, match="backend 'cpp' is not available on meta: backend 'cpp' runs on cpu tensors"):
        get_backend("cpp").gram(torch.zeros(W, P, device="meta"))


@pytest.mark.parametrize("backend", ALL)
def test_results_carry_no_autograd_history(backend):
    be = backend_or_skip(backend)
    params = [torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(5))]
    ring = torch.zeros(3, 15)
    out = be.step(params, torch.zeros(15), ring, 0, (0, 15))
    assert not out.requires_grad and out.grad_fn is None
    assert not be.project(ring, torch.randn(15, requires_grad=True), (0, 15)).requires_grad


@pytest.mark.parametrize("backend", ("reference", "torch", "cpp"))
def test_opcheck(backend):
    """Schema (mutated arguments declared), fake implementation and
    functionalised tracing agree with the eager op."""
    be = backend_or_skip(backend)
    lib = torch.ops.spectral_edge_fast
    for op in ops.SCHEMAS:
        args = _args(op)
        if "bounds" in args:
            args["bounds"] = list(args["bounds"])
        if "params" in args:
            args["params"] = list(args["params"])
        torch.library.opcheck(getattr(lib, op), (be.key, *args.values()))


@pytest.mark.parametrize("op", ["step", "gram"])
def test_torch_backend_converts_bf16_chunks_on_one_thread(op):
    """The torch fallback converts each chunk of a bf16 ring (of gram's x) to
    float32 on the calling thread alone, and gives the thread count back: a
    parallel copy per chunk woke the other threads once per chunk, and on a
    busy 2-core machine its bf16 step took 5 to 10 times its float32 step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from spectral_edge_fast.kernels import torch_ops

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's native parallel backend ignores set_num_threads after its first call")

    class ConversionThreads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.threads = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.copy_.default and args[1].dtype == torch.bfloat16 and args[1].dim() == 2:
                self.threads.append(torch.get_num_threads())
            return func(*args, **(kwargs or {}))

    rows, P = 3, 2 * torch_ops.CHUNK + 5  # two whole chunks and a part
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(rows, P, generator=gen).to(torch.bfloat16)
    be = torch_ops.TorchBackend()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ConversionThreads() as mode:
            if op == "step":
                params, snapshot = random_params([P], gen), torch.randn(P, generator=gen)
                be.step_checked_once(params, snapshot, x, 1, (0, P))
            else:
                be._gram(x)  # its values: test_gram.py
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert mode.threads == [1, 1, 1], f"threads at each chunk's conversion: {mode.threads}"
    assert after == 2, "the thread count is given back"
