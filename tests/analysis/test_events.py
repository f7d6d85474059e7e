import json
import math

import numpy as np
import pytest

from spectral_edge_fast.analysis import collapse_order, events, lead_lag, spectrum, three_phase
from spectral_edge_fast.analysis.events import EventStream


def records(ratios, ks=None, step0=0, stride=10):
    ks = [2] * len(ratios) if ks is None else ks
    return [{"step": step0 + stride * i, "gap_ratio": r, "k_star": k} for i, (r, k) in enumerate(zip(ratios, ks))]


def kinds(found):
    return [(e.kind, e.step) for e in found]


def test_planted_collapse_and_opening_ignore_blips():
    R = [3.0] * 20 + [1.05] * 20 + [3.0] * 20
    R[7] = 1.0  # one-sample blip while open
    R[8] = 1.0  # two samples: still shorter than persist = 3
    R[30] = 2.5  # blip while collapsed
    assert kinds(events(records(R))) == [("gap_collapse", 200), ("gap_opening", 400)]
    assert ("gap_collapse", 70) in kinds(events(records(R), persist=2))  # the check can fail


def test_hysteresis_band_holds_the_state():
    # default band [1.25, 1.5): the 1.3s break every run of 1.2s, so the
    # collapse dates from the last 1.2 (record 29) followed by the 1.1s
    R = [3.0] * 10 + [1.3, 1.2] * 10 + [1.1] * 5
    assert kinds(events(records(R))) == [("gap_collapse", 290)]
    flapping = [1.6, 1.4] * 20  # crosses open_above, never close_below
    assert events(records(flapping)) == []


def test_k_star_shift():
    ks = [2] * 30 + [1] * 30
    ks[10] = 3  # blip
    ks[40] = None  # undefined record: skipped, does not break the run
    found = events(records([3.0] * 60, ks))
    assert [(e.kind, e.step, e.previous, e.value) for e in found] == [("k_star_shift", 300, 2, 1)]


def test_nonfinite_rows_and_undefined_records():
    recs = records([3.0] * 12)
    for i in (4, 5, 9):
        recs[i]["nonfinite_rows"] = [1]
        recs[i]["gap_ratio"] = None
    assert kinds(events(recs)) == [("nonfinite_rows", 40), ("nonfinite_rows", 90)]
    with pytest.raises(ValueError):
        events(recs, open_above=1.2, close_below=1.4)


def test_events_from_spectrum_records(make_window):
    """Records straight from Spectrum.to_dict(): the gap closes at step 50."""
    rng = np.random.default_rng(0)
    recs = []
    for t in range(12):
        sigmas = [9.0, 8.0, 2.0, 1.5] if t < 5 else [9.0, 8.0, 7.5, 7.0]
        X = make_window(rng, sigmas, 500)
        recs.append({**spectrum(X @ X.T).to_dict(), "step": 10 * t})
    found = events(recs)
    # The collapsed spectrum is flat (ratios 1.125, 1.067, 1.071): its k* = 1
    # beats the runner-up by 5%, no decisive position, no shift; every
    # defined k* counting, the flat spectrum's k* is a shift.
    assert recs[-1]["k_star"] == 1 and 1.0 < recs[-1]["k_margin"] < 1.1
    assert kinds(found) == [("gap_collapse", 50)]
    assert kinds(events(recs, k_star_margin=1.0)) == [("gap_collapse", 50), ("k_star_shift", 50)]


def rise_plateau_collapse(seed, n_rise=100, n_plateau=100, n_collapse=100, tail=50):
    rng = np.random.default_rng(seed)
    R = np.concatenate(
        [
            np.linspace(1.0, 5.0, n_rise),
            np.full(n_plateau, 5.0),
            np.linspace(5.0, 1.1, n_collapse),
            np.full(tail, 1.1),
        ]
    )
    return R + 0.05 * rng.standard_normal(R.size)


@pytest.mark.parametrize("seed", range(5))
def test_three_phase_segments_a_planted_series(seed):
    tp = three_phase(rise_plateau_collapse(seed))
    assert tp.complete and tp.status == "ok"
    assert tp.rise_start <= 10
    assert abs(tp.plateau_start - 100) <= 20
    assert abs(tp.collapse_start - 200) <= 20
    assert tp.labels[150] == "plateau" and tp.labels[250] == "collapse"


def test_three_phase_rise_only_and_undefined():
    rng = np.random.default_rng(9)
    rising = np.concatenate([np.full(50, 1.0), np.linspace(1, 6, 200)]) + 0.05 * rng.standard_normal(250)
    tp = three_phase(rising)
    assert tp.rise_start is not None and tp.collapse_start is None and not tp.complete
    assert three_phase([1.0, np.nan, 2.0]).status == "undefined"


def planted_lag(lag, seed, n=300):
    rng = np.random.default_rng(seed)
    smooth = np.convolve(rng.standard_normal(n + 40), np.ones(5) / 5, mode="same")
    t = np.linspace(-1, 1, n)
    R = smooth[20 : 20 + n] + 3 * t**3
    loss = -smooth[20 - lag : 20 - lag + n] + 2 * t - t**2 + 0.1 * rng.standard_normal(n)
    return R, loss


@pytest.mark.parametrize("lag", [3, -2, 0])
def test_lead_lag_recovers_a_planted_lag(lag):
    R, loss = planted_lag(lag, seed=lag + 10)  # loss_{t+lag} follows R_t
    out = lead_lag(R, loss)
    assert out.best_lag == lag and out.best_correlation < -0.8
    assert out.lags == tuple(range(-5, 8))


def test_lead_lag_undefined_and_errors():
    assert lead_lag(np.ones(20), np.arange(20.0), detrend_degree=-1).status == "undefined"
    with pytest.raises(ValueError):
        lead_lag(np.ones(5), np.ones(6))


def test_collapse_order():
    def group(collapse_at):
        R = [3.0] * 40 if collapse_at is None else [3.0] * collapse_at + [1.0] * (40 - collapse_at)
        return records(R)

    out = collapse_order({"a": group(30), "b": group(10), "c": group(20), "d": group(None)})
    assert out.order == ("b", "c", "a")
    assert out.first_collapse == {"a": 300, "b": 100, "c": 200, "d": None}
    assert out.k_star["a"] == 2 and out.gap_ratio["d"] == 3.0
    assert out.to_dict()["events"]["b"][0]["kind"] == "gap_collapse"


def _random_series(rng, n):
    """Records meant to stress the detectors: R a random walk around the
    thresholds (ties on them, NaN and None), k* noise, runs of non-finite rows,
    steps with repeats and gaps."""
    kind = rng.integers(4)
    if kind == 0:  # walk around both thresholds
        R = 1.375 + np.cumsum(rng.normal(0, 0.08, n))
    elif kind == 1:  # mostly in the hysteresis band, rare exits
        R = rng.choice([1.3, 1.4, 1.2, 1.6], size=n, p=[0.45, 0.45, 0.05, 0.05])
    elif kind == 2:  # exactly on the thresholds and their neighbours
        R = rng.choice([1.5, np.nextafter(1.5, 0), 1.25, np.nextafter(1.25, 0), 3.0, 1.0], size=n)
    else:
        R = rng.choice([3.0, 1.0], size=n, p=[0.6, 0.4])
    ratios = [None if u < 0.05 else math.nan if u < 0.1 else float(r) for r, u in zip(R, rng.random(n))]
    ks = rng.choice([1, 2, 3], size=n, p=[0.2, 0.6, 0.2]) if rng.random() < 0.5 else np.repeat(rng.integers(1, 4, n // 7 + 1), 7)[:n]
    ks = [None if u < 0.1 else int(k) for k, u in zip(ks, rng.random(n))]
    steps = np.cumsum(rng.integers(0, 3, n))
    bad = np.repeat(rng.random(n // 5 + 1) < 0.3, 5)[:n]
    # k* margins around the default 1.1 (on it, just below), absent or None (decisive)
    margins = rng.choice([0, 1, 2, 3, 4, 5], size=n)
    margin_values = [None, 1.0, 1.05, np.nextafter(1.1, 0), 1.1, 2.0]
    recs = []
    for i in range(n):
        rec = {"step": int(steps[i]), "gap_ratio": ratios[i], "k_star": ks[i]}
        if margins[i] or rng.random() < 0.5:
            rec["k_margin"] = margin_values[margins[i]]
        if bad[i]:
            rec["nonfinite_rows"] = [int(rng.integers(4))]
        elif rng.random() < 0.5:
            rec["nonfinite_rows"] = []
        recs.append(rec)
    return recs


def _streamed(stream, recs):
    out = []
    for r in recs:
        out += stream.push(r)
    return out


_KINDS = ("gap_collapse", "gap_opening", "k_star_shift", "nonfinite_rows")


def _in_batch_order(found):
    """events() lists by start, ties by kind; a stream by confirmation."""
    return sorted(found, key=lambda e: (e.index, _KINDS.index(e.kind)))


@pytest.mark.parametrize("persist", [1, 2, 3, 5])
def test_event_stream_reports_the_events_of_the_whole_series(persist):
    """Pushed one record at a time, the stream reports exactly events(series),
    each event in the push of the record that confirms it (the record where
    events() of the series up to it first shows it)."""
    rng = np.random.default_rng(persist)
    for trial in range(60):
        recs = _random_series(rng, int(rng.choice([0, 1, 2, 3, 7, 40, 200, 700])))
        kw = dict(persist=persist) if trial % 2 else dict(open_above=1.4, close_below=1.4, persist=persist,
                                                          k_star_margin=1.0 if trial % 4 else 1.05)
        stream = EventStream(**kw)
        got = _streamed(stream, recs)
        assert _in_batch_order(got) == events(recs, **kw)
        if len(recs) <= 40:  # the push that reports each event
            stream = EventStream(**kw)
            for i, r in enumerate(recs):
                before, after = events(recs[:i], **kw), events(recs[: i + 1], **kw)
                assert stream.push(r) == [e for e in after if e not in before]


def test_event_stream_sees_changes_longer_than_any_span():
    """A state confirmed long before the change (R in the hysteresis band or
    undefined, k* never settling for 600 records) still dates a change from
    it; a run of non-finite rows is one event however long."""
    R = [3.0] * 5 + [1.3, 1.4] * 300 + [math.nan] * 50 + [1.0] * 5
    ks = [2] * 5 + [3, 4] * 300 + [None] * 50 + [3] * 5
    recs = records(R, ks)
    for i in range(5, 660):
        recs[i]["nonfinite_rows"] = [0]
    found = _streamed(EventStream(), recs)
    assert _in_batch_order(found) == events(recs)
    assert [(e.kind, e.index) for e in found] == [("nonfinite_rows", 5), ("gap_collapse", 655), ("k_star_shift", 655)]


def test_event_stream_resumes_from_its_state():
    """A stream restored from its state (through JSON) mid-series continues as
    the uninterrupted stream, including mid-run and on pending candidates."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        recs = _random_series(rng, 300)
        whole = _streamed(EventStream(persist=4), recs)
        for cut in rng.integers(0, 300, 5):
            first = EventStream(persist=4)
            got = _streamed(first, recs[:cut])
            second = EventStream(persist=4)
            second.load_state_dict(json.loads(json.dumps(first.state_dict())))
            assert got + _streamed(second, recs[cut:]) == whole
    with pytest.raises(ValueError, match="open_above, close_below, persist, k_star_margin"):
        EventStream(persist=3).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="open_above, close_below, persist, k_star_margin"):
        EventStream(persist=4, k_star_margin=1.2).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="persist"):
        EventStream(persist=0)
    with pytest.raises(ValueError, match="k_star_margin must be >= 1"):
        EventStream(k_star_margin=0.9)


def test_a_shift_counts_between_decisive_positions_only():
    """A flat spectrum's k* wanders (margins near 1): no shift; the state
    holds through it, and a decisive new position that persists is a shift
    from the last decisive one. An indecisive record breaks a pending run."""
    ks = [1] * 5 + [9] * 3 + [13] * 3 + [7] * 3 + [12] * 3 + [15] * 4 + [1] * 4
    margins = [3.0] * 5 + [1.02, 1.01, 1.05, 1.003, 1.08, 1.04] * 2 + [1.6] * 4 + [2.0] * 4
    recs = [dict(r, k_margin=m) for r, m in zip(records([3.0] * len(ks), ks), margins)]
    shifts = [(e.step, e.previous, e.value) for e in events(recs) if e.kind == "k_star_shift"]
    assert shifts == [(170, 1, 15), (210, 15, 1)]
    every = [(e.step, e.previous, e.value) for e in events(recs, k_star_margin=1.0) if e.kind == "k_star_shift"]
    assert every == [(50, 1, 9), (80, 9, 13), (110, 13, 7), (140, 7, 12), (170, 12, 15), (210, 15, 1)]
    recs[19]["k_margin"] = 1.01  # 15, 15, (15 indecisive), 15: no run of three
    assert [e for e in events(recs) if e.kind == "k_star_shift"] == []
