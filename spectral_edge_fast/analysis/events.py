"""Events and time series of the gap diagnostics (docs/math.md#events).

Records
-------
``events`` and ``collapse_order`` read a sequence of records in time order,
each a mapping as ``Spectrum.to_dict()`` gives it plus ``"step"``:

* ``"step"``: int (missing: the record's position);
* ``"gap_ratio"``: float, None or NaN when undefined;
* ``"k_star"``: int or None when undefined;
* ``"k_margin"``: float, how decisive ``k_star`` is (``Spectrum.k_margin``;
  missing: decisive);
* ``"nonfinite_rows"``: list of row indices (optional, default empty).

Records whose value is undefined are skipped by the detector of that value
(they neither confirm nor break a run). ``EventStream`` finds the same
events one record at a time, in O(1) per record. ``three_phase`` and
``lead_lag`` take plain sequences of numbers, one per analysis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._common import Result, frozen_array


@dataclass(frozen=True)
class Event(Result):
    """One event.

    Attributes:
        kind: ``"gap_collapse"``, ``"gap_opening"``, ``"k_star_shift"`` or
            ``"nonfinite_rows"``.
        step, index: the record where it starts (``step`` from the record,
            ``index`` its position in the sequence).
        value: ``gap_ratio`` (collapse, opening), the new ``k_star``, or the
            list of non-finite rows.
        previous: the ``k_star`` before a shift; None otherwise.
    """

    kind: str
    step: int
    index: int
    value: Any
    previous: Optional[int] = None


def _ratio(record: Mapping) -> float:
    r = record.get("gap_ratio")
    return math.nan if r is None else float(r)


def _step(record: Mapping, index: int) -> int:
    return int(record.get("step", index))


_KEEP = object()  # a value that confirms the current state (the hysteresis band)
# Default rule: open at R >= 1.5 (collapsed below 1.25), and a k* decisive when
# its ratio beats the runner-up's by 10% (a flat spectrum's wandering k* stays
# within about 2% of its runner-up; docs/math.md#k-shift).
OPEN_ABOVE = 1.5
K_STAR_MARGIN = 1.1


def _persistent_changes(values: Iterable[Tuple[int, Any]], persist: int):
    """Yield ``(start_index, old, new)`` each time the value settles on a new
    level for ``persist`` consecutive entries. ``None`` entries are skipped;
    ``_KEEP`` entries count as the current level (they break a pending run).
    The first level to settle is the initial state (``old = None``)."""
    state = candidate = None
    run = start = 0
    for index, value in values:
        if value is None:
            continue
        if value is _KEEP or value == state:
            candidate, run = None, 0
            continue
        if value != candidate:
            candidate, run, start = value, 0, index
        run += 1
        if run >= persist:
            yield start, state, value
            state, candidate, run = value, None, 0


def _gap_rule(open_above: float, close_below: Optional[float], persist: int, k_star_margin: float) -> float:
    """The checked ``close_below`` (its default from ``open_above``)."""
    close_below = 1.0 + 0.5 * (open_above - 1.0) if close_below is None else close_below
    if persist < 1 or close_below > open_above:
        raise ValueError(f"need persist >= 1 and close_below <= open_above, got {persist}, {close_below}, {open_above}")
    if not k_star_margin >= 1.0:
        raise ValueError(f"k_star_margin must be >= 1, got {k_star_margin}")
    return close_below


def _k_level(record: Mapping, k_star_margin: float):
    """The record's ``k*`` for the shift detector: None when undefined,
    ``_KEEP`` when not decisive (its margin below ``k_star_margin``: the
    current position stands and a pending run is broken), else the int."""
    k, margin = record.get("k_star"), record.get("k_margin")
    if k is None:
        return None
    if margin is not None and not float(margin) >= k_star_margin:
        return _KEEP
    return int(k)


def _gap_level(r: float, open_above: float, close_below: float):
    if math.isnan(r):
        return None
    return "open" if r >= open_above else "closed" if r < close_below else _KEEP


def events(
    records: Sequence[Mapping],
    open_above: float = OPEN_ABOVE,
    close_below: Optional[float] = None,
    persist: int = 3,
    k_star_margin: float = K_STAR_MARGIN,
) -> List[Event]:
    """Gap collapses, gap openings, ``k*`` shifts and non-finite rows.

    ``records``: in time order, mappings as ``Spectrum.to_dict()`` plus
    ``"step"``; the keys read are ``step``, ``gap_ratio``, ``k_star``,
    ``k_margin`` and ``nonfinite_rows`` (see the module docstring).

    The gap is *open* while ``R >= open_above`` and *collapsed* while
    ``R < close_below`` (default ``1 + (open_above - 1) / 2``); values in
    between keep the current state (hysteresis). A state, or a new ``k*``,
    counts once it holds for ``persist`` consecutive records, so blips
    shorter than that are ignored; the event is dated at the first record of
    the run. The first state reached is the initial state, not an event.
    For thresholds tied to the null, see ``null.gap_thresholds``.

    A ``k*`` is *decisive* when its ``k_margin`` (the ratio at ``k*`` over
    the runner-up's) is at least ``k_star_margin``. A ``k_star_shift`` is a
    new decisive ``k*`` that holds for ``persist`` consecutive records; a
    record whose ``k*`` is not decisive keeps the current position and breaks
    a pending run, so the wandering ``k*`` of a flat spectrum makes no
    shifts. ``k_star_margin = 1`` counts every defined ``k*`` (records
    without ``k_margin`` count as decisive).

    A ``"nonfinite_rows"`` event marks the first record of each run of
    records that carry non-finite rows.

    Raises:
        ValueError: ``persist < 1``, ``close_below > open_above`` or
            ``k_star_margin < 1``.
    """
    close_below = _gap_rule(open_above, close_below, persist, k_star_margin)
    steps = [_step(r, i) for i, r in enumerate(records)]
    found: List[Event] = []
    ratios = [_ratio(r) for r in records]
    levels = ((i, _gap_level(r, open_above, close_below)) for i, r in enumerate(ratios))
    for start, old, new in _persistent_changes(levels, persist):
        if old is not None:
            kind = "gap_collapse" if new == "closed" else "gap_opening"
            found.append(Event(kind, steps[start], start, ratios[start]))

    ks = ((i, _k_level(r, k_star_margin)) for i, r in enumerate(records))
    for start, old, new in _persistent_changes(ks, persist):
        if old is not None:
            found.append(Event("k_star_shift", steps[start], start, new, old))

    bad_before = False
    for i, r in enumerate(records):
        bad = list(r.get("nonfinite_rows") or [])
        if bad and not bad_before:
            found.append(Event("nonfinite_rows", steps[i], i, bad))
        bad_before = bool(bad)
    found.sort(key=lambda e: e.index)
    return found


class EventStream:
    """``events`` one record at a time: :meth:`push` takes the next record of
    a series and returns the events that record confirms (those that
    ``events`` of the series up to it shows and ``events`` of the series
    before it does not). Over a series it reports the events of
    ``events(series)``, equal in every field, in the order they are
    confirmed, at a cost per record that does not grow with the series.
    ``events`` stays the reference the tests hold it to.

    Its state (:meth:`state_dict`) is a few numbers and strings: a stream
    restored from it continues as if never interrupted.

    Raises:
        ValueError: as ``events``.
    """

    def __init__(self, open_above: float = OPEN_ABOVE, close_below: Optional[float] = None, persist: int = 3,
                 k_star_margin: float = K_STAR_MARGIN):
        self.close_below = _gap_rule(open_above, close_below, persist, k_star_margin)
        self.open_above, self.persist, self.k_star_margin = open_above, persist, k_star_margin
        self.count = 0  # records pushed: the next record's index
        # Each run detector of _persistent_changes: its settled state, the
        # pending candidate, its run length and start [index, step, value].
        self._gap = {"state": None, "candidate": None, "run": 0, "start": None}
        self._k = dict(self._gap)
        self._bad = False  # the last record carried non-finite rows

    def _settle(self, tracker: dict, value, start: list):
        """One entry of ``_persistent_changes``: ``(start, old)`` when ``value``
        settles as a new level after ``start``'s run, else None."""
        if value is None:
            return None
        if value is _KEEP or value == tracker["state"]:
            tracker["candidate"], tracker["run"] = None, 0
            return None
        if value != tracker["candidate"]:
            tracker.update(candidate=value, run=0, start=start)
        tracker["run"] += 1
        if tracker["run"] < self.persist:
            return None
        old, tracker["state"] = tracker["state"], value
        tracker["candidate"], tracker["run"] = None, 0
        return tracker["start"], old

    def push(self, record: Mapping) -> List[Event]:
        """The events confirmed by ``record``, the next of the series (a
        mapping as for ``events``), ordered as ``events`` orders them."""
        index = self.count
        self.count += 1
        step, ratio = _step(record, index), _ratio(record)
        found: List[Event] = []
        level = _gap_level(ratio, self.open_above, self.close_below)
        settled = self._settle(self._gap, level, [index, step, ratio])
        if settled is not None and settled[1] is not None:
            (i, s, r), new = settled[0], self._gap["state"]
            found.append(Event("gap_collapse" if new == "closed" else "gap_opening", s, i, r))
        settled = self._settle(self._k, _k_level(record, self.k_star_margin), [index, step, None])
        if settled is not None and settled[1] is not None:
            (i, s, _), old = settled[0], settled[1]
            found.append(Event("k_star_shift", s, i, self._k["state"], old))
        bad = list(record.get("nonfinite_rows") or [])
        if bad and not self._bad:
            found.append(Event("nonfinite_rows", step, index, bad))
        self._bad = bool(bad)
        found.sort(key=lambda e: e.index)
        return found

    def state_dict(self) -> dict:
        """The stream's state: plain data, a few entries."""
        return {"count": self.count, "gap": dict(self._gap), "k_star": dict(self._k), "bad": self._bad,
                "rule": self._rule()}

    def _rule(self) -> list:
        return [self.open_above, self.close_below, self.persist, self.k_star_margin]

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of a stream with
        the same thresholds).

        Raises:
            ValueError: the state was saved under other thresholds.
        """
        rule = self._rule()
        if list(state["rule"]) != rule:
            raise ValueError(f"event stream state saved with open_above, close_below, persist, k_star_margin = "
                             f"{list(state['rule'])}, this stream has {rule}: make the stream with the saved thresholds")
        self.count, self._bad = int(state["count"]), bool(state["bad"])
        self._gap, self._k = dict(state["gap"]), dict(state["k_star"])


@dataclass(frozen=True, eq=False)
class ThreePhase(Result):
    """Rise / plateau / collapse segmentation of ``R(t)`` (Section 33).

    Attributes:
        labels: per sample, ``"rise"``, ``"plateau"`` or ``"collapse"``.
        segments: ``(label, start, stop)`` runs, ``stop`` exclusive.
        rise_start, plateau_start, collapse_start: sample indices of the first
            rise, the first plateau after it and the first collapse after that
            (None where absent).
        complete: all three found, in order.
        smooth, threshold: the smoothing window and slope threshold used.
        status, reason: ``"ok"`` or ``"undefined"`` (too few finite samples).
    """

    labels: Tuple[str, ...]
    segments: Tuple[Tuple[str, int, int], ...]
    rise_start: Optional[int]
    plateau_start: Optional[int]
    collapse_start: Optional[int]
    complete: bool
    smooth: int
    threshold: float
    status: str
    reason: str


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average, edges padded with the end values."""
    half = width // 2
    padded = np.concatenate((np.full(half, x[0]), x, np.full(width - 1 - half, x[-1])))
    return np.convolve(padded, np.full(width, 1.0 / width), mode="valid")


def _runs(labels: Sequence[str]) -> List[List]:
    runs: List[List] = []
    for i, lab in enumerate(labels):
        if runs and runs[-1][0] == lab:
            runs[-1][2] = i + 1
        else:
            runs.append([lab, i, i + 1])
    return runs


def three_phase(
    R_series: Sequence[float],
    smooth: Optional[int] = None,
    threshold: Optional[float] = None,
    min_length: Optional[int] = None,
) -> ThreePhase:
    """Segment ``R(t)`` into rise, plateau and collapse.

    ``R`` is smoothed by a centred moving average of ``smooth`` samples
    (default ``max(3, n // 10)``, NaNs filled by linear interpolation), and
    its slope ``s_t`` classified with hysteresis: a rise starts when
    ``s_t > threshold`` and lasts while ``s_t > threshold / 2``; a collapse
    likewise for ``-s_t``; anything else is plateau. The default threshold
    is the mean slope needed to cross the smoothed range once,
    ``(max - min) / n``. Runs shorter than ``min_length`` (default
    ``smooth``) are merged into the run before them.
    """
    x = np.asarray(R_series, dtype=np.float64)
    n = x.size
    finite = np.isfinite(x)
    width = max(3, n // 10) if smooth is None else int(smooth)
    if finite.sum() < max(4, width):
        return ThreePhase((), (), None, None, None, False, width, math.nan, "undefined",
                          f"{int(finite.sum())} finite samples, need at least {max(4, width)}")
    t = np.arange(n)
    x = np.interp(t, t[finite], x[finite])
    s = _moving_average(x, width)
    slope = np.gradient(s)
    threshold = (s.max() - s.min()) / n if threshold is None else float(threshold)
    labels = []
    state = "plateau"
    for d in slope:
        if state == "rise" and d <= threshold / 2 or state == "collapse" and -d <= threshold / 2:
            state = "plateau"
        if state == "plateau":
            state = "rise" if d > threshold else "collapse" if -d > threshold else "plateau"
        labels.append(state)
    min_length = width if min_length is None else int(min_length)
    runs = _runs(labels)
    for run in runs[1:]:
        if run[2] - run[1] < min_length:
            run[0] = None  # merged into the run before it
    merged = [run[0] for run in runs]
    for i in range(1, len(merged)):
        if merged[i] is None:
            merged[i] = merged[i - 1]
    labels = [lab for run, lab in zip(runs, merged) for _ in range(run[1], run[2])]
    segments = tuple((lab, a, b) for lab, a, b in _runs(labels))

    def first(label: str, after: Optional[int]):
        if after is None:
            return None
        return next((a for lab, a, _ in segments if lab == label and a >= after), None)

    rise = first("rise", 0)
    plateau = first("plateau", rise)
    collapse = first("collapse", plateau)
    return ThreePhase(tuple(labels), segments, rise, plateau, collapse, collapse is not None, width, float(threshold), "ok", "")


@dataclass(frozen=True, eq=False)
class LeadLag(Result):
    """Cross-correlation of detrended ``R(t)`` with the loss over lags.

    Attributes:
        lags: the lags tried; lag ``k`` correlates ``R_t`` with ``loss_{t+k}``,
            so ``k > 0`` means the gap leads the loss.
        correlations: Pearson correlation at each lag (NaN where fewer than
            three pairs or a constant series).
        best_lag, best_correlation: the lag of largest ``|correlation|``.
        zero_lag_correlation: the correlation at lag 0 (NaN if 0 not tried).
        status, reason: ``"ok"`` or ``"undefined"`` (no lag has a correlation).
    """

    lags: Tuple[int, ...]
    correlations: np.ndarray
    best_lag: Optional[int]
    best_correlation: float
    zero_lag_correlation: float
    detrend_degree: int
    status: str
    reason: str


def _detrend(y: np.ndarray, degree: int) -> np.ndarray:
    """Residual of a least-squares polynomial in time over the finite samples."""
    t = np.linspace(-1.0, 1.0, y.size)
    ok = np.isfinite(y)
    if degree < 0 or ok.sum() <= degree:
        return y
    coef = np.polynomial.polynomial.polyfit(t[ok], y[ok], degree)
    return y - np.polynomial.polynomial.polyval(t, coef)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / norm if norm > 0 else math.nan


def lead_lag(
    R_series: Sequence[float],
    loss_series: Sequence[float],
    lags: Iterable[int] = range(-5, 8),
    detrend_degree: int = 3,
) -> LeadLag:
    """Lagged correlation of ``R(t)`` and the (validation) loss, both
    detrended by a polynomial of ``detrend_degree`` in time (the author:
    cubic, lags -5..7). ``detrend_degree = -1`` turns detrending off.

    Raises:
        ValueError: series of different lengths.
    """
    r = np.asarray(R_series, dtype=np.float64)
    loss = np.asarray(loss_series, dtype=np.float64)
    if r.shape != loss.shape or r.ndim != 1:
        raise ValueError(f"R_series and loss_series must be 1-D of equal length, got {r.shape} and {loss.shape}")
    r, loss = _detrend(r, detrend_degree), _detrend(loss, detrend_degree)
    lags = tuple(int(k) for k in lags)
    n = r.size
    corr = np.array([_pearson(r[max(0, -k) : n - max(0, k)], loss[max(0, k) : n - max(0, -k)]) for k in lags])
    if not np.isfinite(corr).any():
        return LeadLag(lags, frozen_array(corr), None, math.nan, math.nan, detrend_degree, "undefined",
                       "no lag has three finite pairs with non-constant values")
    best = int(np.nanargmax(np.abs(corr)))
    zero = corr[lags.index(0)] if 0 in lags else math.nan
    return LeadLag(lags, frozen_array(corr), lags[best], float(corr[best]), float(zero), detrend_degree, "ok", "")


@dataclass(frozen=True, eq=False)
class CollapseOrder(Result):
    """Multi-scale view: per group, the last ``k*`` and ``R``, the events, and
    the order in which the groups' gaps collapse (Open Problem 3).

    Attributes:
        order: groups with a collapse, by the step of their first one
            (ties by name).
        first_collapse: group -> step of its first collapse, or None.
        k_star, gap_ratio: group -> the last defined value.
        events: group -> its events (as dictionaries).
    """

    order: Tuple[str, ...]
    first_collapse: Dict[str, Optional[int]]
    k_star: Dict[str, Optional[int]]
    gap_ratio: Dict[str, float]
    events: Dict[str, Tuple[Event, ...]]


def collapse_order(
    group_records: Mapping[str, Sequence[Mapping]],
    open_above: float = OPEN_ABOVE,
    close_below: Optional[float] = None,
    persist: int = 3,
    k_star_margin: float = K_STAR_MARGIN,
) -> CollapseOrder:
    """Order in which the groups' gaps collapse; ``group_records`` maps each
    group name to its records (see the module docstring), the thresholds are
    those of ``events``."""
    first, last_k, last_r, found = {}, {}, {}, {}
    for name, records in group_records.items():
        name = str(name)
        found[name] = tuple(events(records, open_above, close_below, persist, k_star_margin))
        first[name] = next((e.step for e in found[name] if e.kind == "gap_collapse"), None)
        last_k[name] = next((int(r["k_star"]) for r in reversed(records) if r.get("k_star") is not None), None)
        last_r[name] = next((x for x in map(_ratio, reversed(records)) if not math.isnan(x)), math.nan)
    order = tuple(sorted((g for g in first if first[g] is not None), key=lambda g: (first[g], g)))
    return CollapseOrder(order, first, last_k, last_r, found)
