import os
import sys

import pytest
import torch

# Without a GPU, Triton runs on the CPU through its interpreter; this must
# precede any import of triton (torch does not import it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Backends named in SEF_REQUIRE_BACKENDS (set by `make test`) must be
    available: a missing build fails the run instead of skipping quietly."""
    required = [b for b in os.environ.get("SEF_REQUIRE_BACKENDS", "").split(",") if b]
    if required:
        from spectral_edge_fast.kernels import backend_status

        # with a GPU visible, cuda and triton are required there (triton's interpreter is off)
        device = {b: "cuda" if torch.cuda.is_available() and b in ("cuda", "triton") else "cpu" for b in required}
        missing = {b: backend_status(b, device[b])[1] for b in required if not backend_status(b, device[b])[0]}
        if missing:
            raise pytest.UsageError(f"required backends unavailable: {missing}")
