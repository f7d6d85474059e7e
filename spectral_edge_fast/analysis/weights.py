"""Weight-matrix probes (docs/math.md#weight-spectra, Section 27): the gap of a
2-D weight matrix itself, e.g. an attention ``W_Q``, and the spectrum of an
attention layer's score operator, tracked over training.

``weight_spectrum`` and ``attention_spectrum`` take matrices;
``probe_plan`` turns a monitor's ``probes`` option and the names and shapes of
the monitored parameters into the matrices to read, and ``probe_results`` the
matrices into the record entries."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._common import Result, frozen_array, zero_tolerance

# Name endings of an attention module's query and key weights: a fused
# [W_Q; W_K; W_V] (torch's nn.MultiheadAttention), or two matrices
# (nn.MultiheadAttention with kdim != embed_dim; HF's q_proj / k_proj).
FUSED_QKV = "in_proj_weight"
QK_PAIRS = (("q_proj_weight", "k_proj_weight"), ("q_proj.weight", "k_proj.weight"))
# GPT-2's Conv1D ``c_attn``: y = x W, so W is [d, 3 d] and W_Q is the transpose of its first d columns.
FUSED_QKV_T = "c_attn.weight"


def _ratio(a: float, b: float, tol: float) -> float:
    return float(a / b) if b > tol else math.nan


@dataclass(frozen=True, eq=False)
class WeightSpectrum(Result):
    """Top of the singular spectrum of a weight matrix.

    Attributes:
        shape: the matrix shape.
        singular_values: the ``top`` largest singular values, descending.
        ratio_12: ``sigma_1 / sigma_2``.
        ratio_23: ``sigma_2 / sigma_3`` (NaN when ``sigma_3 = 0``).
        g23: ``sigma_2^2 - sigma_3^2`` (``sigma_3 = 0`` when ``min(shape) = 2``).
        status, reason: ``"ok"``; ``"partial"`` (``ratio_23`` undefined);
            ``"undefined"`` (non-finite entries, fewer than two rows or
            columns, or ``sigma_2 = 0`` for the ratio).
    """

    shape: Tuple[int, int]
    singular_values: np.ndarray
    ratio_12: float
    ratio_23: float
    g23: float
    status: str
    reason: str


def weight_spectrum(matrix, top: int = 8) -> WeightSpectrum:
    """``sigma_1 / sigma_2``, ``sigma_2 / sigma_3`` and ``sigma_2^2 - sigma_3^2``
    of a 2-D matrix (anything ``numpy.asarray`` takes, e.g. a CPU tensor).

    Raises:
        ValueError: ``matrix`` is not 2-D.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"weight_spectrum needs a 2-D matrix, got shape {a.shape}")
    shape = (int(a.shape[0]), int(a.shape[1]))
    if min(shape) < 2 or not np.isfinite(a).all():
        why = f"shape {shape}: need at least 2 x 2" if min(shape) < 2 else "the matrix has non-finite entries"
        return WeightSpectrum(shape, frozen_array(np.zeros(0)), math.nan, math.nan, math.nan, "undefined", why)
    s = np.linalg.svd(a, compute_uv=False)
    s3 = s[2] if s.size > 2 else 0.0
    # A singular value within the SVD's own error of zero is zero (the matrix
    # itself is exact: eps = 0): a ratio over it is undefined.
    tol = zero_tolerance(max(shape), s[0], eps=0.0)
    ratio_12, ratio_23 = _ratio(s[0], s[1], tol), _ratio(s[1], s3, tol)
    status = "undefined" if math.isnan(ratio_12) else "partial" if math.isnan(ratio_23) else "ok"
    reason = {"undefined": "sigma_2 = 0 (rank <= 1): sigma_1 / sigma_2 undefined",
              "partial": "sigma_3 = 0 (rank <= 2): sigma_2 / sigma_3 undefined", "ok": ""}[status]
    return WeightSpectrum(
        shape=shape,
        singular_values=frozen_array(s[:top]),
        ratio_12=ratio_12,
        ratio_23=ratio_23,
        g23=float(s[1] ** 2 - s3**2),
        status=status,
        reason=reason,
    )


def _modes(m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Moduli of the eigenvalues of a real square ``m``, descending, with each
    complex-conjugate pair once (LAPACK returns a pair exactly conjugate),
    and which of them stand for a pair."""
    lam = np.linalg.eigvals(m)
    lam = lam[np.imag(lam) >= 0]
    order = np.argsort(-np.abs(lam), kind="stable")
    return np.abs(lam)[order], (np.imag(lam) > 0)[order]


def _mode_ratios(moduli: np.ndarray, size: int) -> Tuple[float, float]:
    padded = np.concatenate((moduli, np.zeros(3)))
    tol = zero_tolerance(size, padded[0], eps=0.0)
    return _ratio(padded[0], padded[1], tol), _ratio(padded[1], padded[2], tol)


@dataclass(frozen=True, eq=False)
class AttentionSpectrum(Result):
    """Top of the eigen-spectrum of an attention layer's score operator
    ``M = W_Q^T W_K`` (the bilinear form of ``q . k``), whole and per head.

    Eigenvalues of the real, non-symmetric ``M`` are real or come in
    complex-conjugate pairs; a pair (one rotation-scaling in a plane) counts
    as one mode, of its common modulus.

    Attributes:
        lambda_abs: the ``top`` largest moduli ``|lambda|``, descending, each
            conjugate pair once.
        complex: per entry of ``lambda_abs``, whether it is a conjugate pair.
        ratio_12, ratio_23: ``|lambda_1| / |lambda_2|``, ``|lambda_2| / |lambda_3|``
            over those modes (NaN when the lower one is zero within the
            eigensolver's error).
        heads: per head ``h`` (rows ``h d_h ... (h+1) d_h - 1`` of ``W_Q``
            and ``W_K``), ``{"ratio_12", "ratio_23"}`` of ``W_Q^hT W_K^h``;
            empty when the number of heads is not given.
        status, reason: ``"ok"`` or ``"undefined"`` (non-finite entries).
    """

    lambda_abs: np.ndarray
    complex: Tuple[bool, ...]
    ratio_12: float
    ratio_23: float
    heads: Tuple[dict, ...]
    status: str
    reason: str


def attention_spectrum(w_q, w_k, heads: Optional[int] = None, top: int = 8) -> AttentionSpectrum:
    """The spectrum of ``M = W_Q^T W_K`` for query and key weights of shape
    ``(d_out, d)`` (``nn.Linear`` layout), and of each head's ``W_Q^hT W_K^h``
    when ``heads`` is given. Biases and the ``1/sqrt(d_h)`` scale are left
    out (the ratios do not depend on a scale). The nonzero eigenvalues of
    ``W_Q^T W_K`` (``d x d``) are those of ``W_K W_Q^T`` (``d_out x d_out``):
    the smaller one is solved.

    Raises:
        ValueError: shapes that differ or are not 2-D, or ``heads`` that
            does not divide ``d_out``.
    """
    q, k = (np.asarray(m, dtype=np.float64) for m in (w_q, w_k))
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"attention_spectrum needs W_Q and W_K of one 2-D shape, got {q.shape} and {k.shape}")
    d_out, d = q.shape
    if heads is not None and (heads < 1 or d_out % heads):
        raise ValueError(f"heads = {heads} does not divide the {d_out} rows of W_Q")
    if not (np.isfinite(q).all() and np.isfinite(k).all()):
        return AttentionSpectrum(frozen_array(np.zeros(0)), (), math.nan, math.nan, (), "undefined",
                                 "W_Q or W_K has non-finite entries")
    moduli, pairs = _modes(q.T @ k if d <= d_out else k @ q.T)
    ratio_12, ratio_23 = _mode_ratios(moduli, min(d, d_out))
    per_head = []
    if heads is not None:
        dh = d_out // heads
        for h in range(heads):
            rows = slice(h * dh, (h + 1) * dh)
            hm = q[rows].T @ k[rows] if d <= dh else k[rows] @ q[rows].T
            r12, r23 = _mode_ratios(_modes(hm)[0], min(d, dh))
            per_head.append({"ratio_12": r12, "ratio_23": r23})
    return AttentionSpectrum(
        lambda_abs=frozen_array(moduli[:top]),
        complex=tuple(bool(c) for c in pairs[:top]),
        ratio_12=ratio_12,
        ratio_23=ratio_23,
        heads=tuple(per_head),
        status="ok",
        reason="",
    )


@dataclass(frozen=True)
class ProbePlan:
    """What a monitor's probes read, by parameter name.

    Attributes:
        matrices: the keys of the 2-D weights whose singular values are
            logged (``"<param>:q"`` is the ``W_Q`` rows of a fused
            ``in_proj_weight``, or the transposed ``W_Q`` columns of GPT-2's
            ``c_attn.weight``).
        attention: module -> ``(W_Q key, W_K key, heads or None)``, keys into
            ``keys``.
        keys: every key either reads (``matrices`` and the ``W_K`` slices) ->
            ``(parameter, first row, end row, transposed)``: rows of the
            parameter, or of its transpose.
    """

    matrices: Tuple[str, ...]
    attention: Dict[str, Tuple[str, str, Optional[int]]]
    keys: Dict[str, Tuple[str, int, int, bool]]

    @property
    def params(self) -> Tuple[str, ...]:
        """The parameters read, in first-use order."""
        return tuple(dict.fromkeys(k[0] for k in self.keys.values()))


def _module_of(name: str, end: str) -> Optional[str]:
    """The module that holds parameter ``name`` when its name ends with
    ``end`` (``""``: the root), else None."""
    if name == end:
        return ""
    return name[: -len(end) - 1] if name.endswith("." + end) else None


def _attention_pairs(shapes: Mapping[str, Tuple[int, ...]]):
    """``module -> ((q key, slice), (k key, slice))`` of every attention
    module the names show."""
    found = {}
    for name, shape in shapes.items():
        if len(shape) != 2:
            continue
        module = _module_of(name, FUSED_QKV)
        if module is not None:
            if shape[0] % 3:
                raise ValueError(f"probes: {name!r} has shape {shape}, not [3 d, d] as a fused [W_Q; W_K; W_V]")
            d = shape[0] // 3
            found[module] = ((f"{name}:q", (name, 0, d, False)), (f"{name}:k", (name, d, 2 * d, False)))
        module = _module_of(name, FUSED_QKV_T)
        if module is not None:
            if shape[1] != 3 * shape[0]:
                raise ValueError(f"probes: {name!r} has shape {shape}, not [d, 3 d] as GPT-2's fused Conv1D "
                                 "[W_Q W_K W_V]^T; name the weights to probe as patterns instead")
            d = shape[0]
            found[module] = ((f"{name}:q", (name, 0, d, True)), (f"{name}:k", (name, d, 2 * d, True)))
        for q_end, k_end in QK_PAIRS:
            module = _module_of(name, q_end)
            if module is None:
                continue
            k_name = f"{module}.{k_end}" if module else k_end
            if k_name not in shapes:
                raise ValueError(f"probes='attention': {name!r} has no {k_name!r} among the monitored 2-D "
                                 "parameters (frozen, excluded, or named otherwise); name the weights to probe as "
                                 "patterns instead")
            if tuple(shapes[k_name]) != tuple(shape):
                raise ValueError(f"probes='attention': {name!r} {tuple(shape)} and {k_name!r} "
                                 f"{tuple(shapes[k_name])} differ in shape (grouped-query attention?): W_Q^T W_K "
                                 "is not defined; name the weights to probe as patterns instead")
            found[module] = ((name, (name, 0, shape[0], False)), (k_name, (k_name, 0, shape[0], False)))
    return found


def probe_plan(probes, shapes: Mapping[str, Tuple[int, ...]],
               heads: Optional[Mapping[str, int]] = None) -> Optional[ProbePlan]:
    """The matrices that ``probes`` asks for among parameters of ``shapes``
    (name -> shape, in order).

    ``probes``: None (no probes); ``"attention"`` (every attention module
    the names show: a fused ``<module>.in_proj_weight`` or GPT-2's
    ``<module>.c_attn.weight``, or
    ``<module>.q_proj_weight`` and ``.k_proj_weight``, or ``<module>.q_proj.weight``
    and ``.k_proj.weight``: its ``W_Q`` is probed and its score operator
    analysed); or fnmatch patterns of 2-D parameter names (a string or a
    list, which may hold ``"attention"`` too). ``heads``: module -> number of
    heads, for the per-head operators.

    Raises:
        ValueError: a pattern that matches no 2-D parameter, ``"attention"``
            that finds no attention module, or a module whose ``W_Q`` and
            ``W_K`` cannot be paired.
    """
    if probes is None:
        return None
    patterns = [probes] if isinstance(probes, str) else list(probes)
    two_d = [n for n, s in shapes.items() if len(s) == 2]
    keys: Dict[str, Tuple[str, int, int]] = {}
    matrices, attention = [], {}
    for pattern in patterns:
        if pattern == "attention":
            pairs = _attention_pairs(shapes)
            if not pairs:
                raise ValueError("probes='attention' found no attention weights among the monitored parameters (a "
                                 f"fused '*.{FUSED_QKV}' or '*.{FUSED_QKV_T}', or '*.q_proj_weight'/'*.k_proj_weight', or "
                                 "'*.q_proj.weight'/'*.k_proj.weight'); name the weights to probe as patterns")
            for module, ((qk, qs), (kk, ks)) in pairs.items():
                keys.update({qk: qs, kk: ks})
                matrices.append(qk)
                attention[module] = (qk, kk, None if heads is None else heads.get(module))
            continue
        hits = [n for n in two_d if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"probes pattern {pattern!r} matches no 2-D monitored parameter; they are e.g. "
                             f"{two_d[:5]}")
        for name in hits:
            keys[name] = (name, 0, shapes[name][0], False)
            matrices.append(name)
    return ProbePlan(tuple(dict.fromkeys(matrices)), attention, keys)


def _entry(values: dict) -> dict:
    """NaN as None, as the records give an undefined value."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def probe_results(plan: ProbePlan, tensors: Mapping[str, np.ndarray], top: int = 8) -> Tuple[dict, dict]:
    """The ``probes`` and ``attention`` entries of an analysis record from the
    parameters' values (``tensors``: parameter name -> 2-D array)."""
    def matrix(key):
        param, start, stop, transposed = plan.keys[key]
        w = np.asarray(tensors[param], dtype=np.float64)
        return (w.T if transposed else w)[start:stop]

    probes = {}
    for key in plan.matrices:
        ws = weight_spectrum(matrix(key), top)
        probes[key] = _entry({"sigma": ws.singular_values.tolist(), "sigma_12": ws.ratio_12,
                              "sigma_23": ws.ratio_23, "g23": ws.g23})
    attention = {}
    for module, (qk, kk, heads) in plan.attention.items():
        att = attention_spectrum(matrix(qk), matrix(kk), heads, top)
        attention[module] = _entry({"lambda_abs": att.lambda_abs.tolist(), "complex": list(att.complex),
                                    "ratio_12": att.ratio_12, "ratio_23": att.ratio_23,
                                    "heads": [_entry(h) for h in att.heads]})
    return probes, attention
