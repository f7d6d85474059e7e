import pytest

import spectral_edge_fast as sef
from spectral_edge_fast import kernels


def test_every_backend_is_listed_with_a_reason_when_unavailable():
    status = sef.backends()
    assert set(status) == {"reference", "torch", "cpp", "cuda", "triton"}
    assert status["reference"] == (True, "") and status["torch"] == (True, "")
    for name, (ok, reason) in status.items():
        assert ok or reason, f"{name} is unavailable without a reason"


def test_auto_falls_back_to_torch_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setitem(kernels._cache, "cpp", ImportError("spectral_edge_fast._C is missing"))
    assert sef.backends()["cpp"] == (False, "ImportError: spectral_edge_fast._C is missing")
    assert kernels.get_backend("auto", "cpu").name == "torch"
    with pytest.raises(RuntimeError, match="backend 'cpp' is not available on cpu: ImportError"):
        kernels.get_backend("cpp", "cpu")
    with pytest.raises(RuntimeError, match="not available"):
        sef.GramWindow([__import__("torch").zeros(3)], window=2, backend="cpp")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        kernels.get_backend("fast")
