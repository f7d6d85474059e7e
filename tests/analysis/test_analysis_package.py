"""The package contract: public names, no torch, plain to_dict, frozen results."""
import ast
import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

import spectral_edge_fast.analysis as analysis

PACKAGE = pathlib.Path(analysis.__file__).parent

PUBLIC_FUNCTIONS = (
    "spectrum bbp null_max_ratio ratio_p_value stability window_overlaps half_window_overlaps projections "
    "loss_decomposition first_order_split eigen_flow delta_c_fro adiabatic events three_phase lead_lag "
    "collapse_order weight_spectrum"
).split()


def test_public_names():
    assert set(PUBLIC_FUNCTIONS) <= set(analysis.__all__)
    for name in analysis.__all__:
        assert getattr(analysis, name).__doc__


def test_no_torch_import():
    for path in PACKAGE.glob("*.py"):
        if path.name == "curvature.py":  # runs the model: Hessian-vector products need autograd
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "torch" for n in names), path.name


def assert_plain(value, where):
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), where
            assert_plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            assert_plain(v, where)
    else:
        assert value is None or type(value) in (float, int, str, bool), (where, type(value))


def all_results():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((7, 50)) * np.array([8, 6, 3, 2, 1.5, 1, 0.5])[:, None]
    E = Y @ Y.T
    G = E[1:, 1:]
    s = analysis.spectrum(G)
    y = Y[1:] @ rng.standard_normal(50)
    recs = [{**s.to_dict(), "step": t} for t in range(5)]
    return [
        s,
        analysis.spectrum(np.zeros((3, 3))),
        analysis.bbp(s, 50, noise_std=0.1),
        analysis.null_max_ratio(6, 50, 500, 0),
        analysis.stability(s, analysis.delta_c_fro(E)),
        analysis.window_overlaps(E),
        analysis.half_window_overlaps(G),
        analysis.projections(G, y),
        analysis.loss_decomposition(G, y, y, np.ones(6), 0.1),
        analysis.first_order_split(G, y, G[-1]),
        analysis.eigen_flow(E),
        analysis.adiabatic(s, 0.1, 1e-3),
        analysis.three_phase(np.linspace(1, 3, 40)),
        analysis.lead_lag(np.arange(30.0) ** 0.5, np.sin(np.arange(30.0))),
        analysis.collapse_order({"g": recs}),
        analysis.weight_spectrum(Y),
        *analysis.events(recs + [{**analysis.spectrum(np.eye(6)).to_dict(), "step": 9, "nonfinite_rows": [2]}]),
    ]


@pytest.mark.parametrize("result", all_results(), ids=lambda r: type(r).__name__)
def test_to_dict_is_plain_json(result):
    d = result.to_dict()
    assert_plain(d, type(result).__name__)
    back = json.loads(json.dumps(d))
    assert back.keys() == d.keys()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, dataclasses.fields(result)[0].name, None)
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            assert not value.flags.writeable, f.name


def test_undefined_values_are_nan_or_none_with_a_reason():
    s = analysis.spectrum(np.zeros((3, 3))).to_dict()
    assert s["status"] == "undefined" and s["reason"]
    assert s["k_star"] is None and math.isnan(s["gap_ratio"])
