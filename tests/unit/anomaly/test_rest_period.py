"""A rest period after a detection: one alert per event, exact in banks and in the selection."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.score_replay import Replay, ReplayBank
from trainguard.anomaly import (
    AnomalyError,
    DetectorSpec,
    Rested,
    RestedBank,
    make_bank,
    make_detector,
)
from trainguard.anomaly.detectors import rested
from trainguard.anomaly.nab import NabFile
from trainguard.anomaly.selection import score_file


def test_one_event_raises_one_alert_and_the_detector_keeps_learning():
    raw = [0.1, 0.9, 0.95, 0.8, 0.2, 0.1, 0.75, 0.3]
    inner = Replay(raw)
    det = Rested(inner, rest=3, at=0.7)
    out = [det.score(float(i), 0.0) for i in range(len(raw))]
    # the burst (0.9, 0.95, 0.8) alerts once; after 3 quiet samples a new event alerts again
    assert out == [0.1, 0.9, 0.0, 0.0, 0.0, 0.1, 0.75, 0.0]
    assert inner.seen == len(raw)  # every sample still reached the detector underneath
    assert det.state_size() == inner.state_size() + 1


def test_scores_below_the_rest_level_never_start_a_rest_period():
    raw = [0.69, 0.6, 0.69, 0.5]
    det = Rested(Replay(raw), rest=10, at=0.7)
    assert [det.score(float(i), 0.0) for i in range(4)] == raw


rest_scores = st.lists(st.sampled_from([0.0, 0.2, 0.69, 0.7, 0.71, 0.9, 1.0]), max_size=80)


@settings(max_examples=60, deadline=None)
@given(raw=rest_scores, rest=st.integers(0, 12), at=st.sampled_from([0.65, 0.7, 0.9]))
def test_the_selections_cached_rest_equals_the_streaming_one(raw, rest, at):
    det = Rested(Replay(raw), rest, at)
    assert rested(raw, rest, at) == [det.score(float(i), 0.0) for i in range(len(raw))]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 90), rest=st.integers(1, 20))
def test_rested_bank_equals_the_scalar_rest_series_by_series(data, m, n, rest):
    level = st.sampled_from([0.0, 0.5, 0.7, 0.95])
    x = np.array(data.draw(st.lists(st.lists(level, min_size=m, max_size=m), min_size=n,
                                    max_size=n)), dtype=np.float64)

    bank = RestedBank(ReplayBank(x), rest, 0.7)
    ours = np.array([bank.score(float(i), None) for i in range(n)])
    for j in range(m):
        det = Rested(Replay(list(x[:, j])), rest, 0.7)
        assert ours[:, j].tolist() == [det.score(float(i), 0.0) for i in range(n)]
    assert bank.state_size() == 2 * m


def _series(n: int = 1300, seed: int = 5) -> tuple[np.ndarray, list[float]]:
    rng = np.random.default_rng(seed)
    x = 20 + 5 * np.sin(np.arange(n) / 40.0) + rng.normal(0, 1, n)
    x[1000:1006] += 60 * 1.5 ** np.arange(6)  # a burst: six samples, each beyond the last
    x[1150] -= 800  # a second event (a drop far below the range), after the rest period
    return x, [1.4e9 + 300.0 * i for i in range(n)]


def test_a_rested_ensemble_bank_scores_as_the_scalar_one_and_alerts_once_per_event():
    spec = DetectorSpec("ensemble", 0.7, members=(DetectorSpec("stream", 0.72),
                                                  DetectorSpec("spatial", 0.7)),
                        combine="max", rest=100, rest_at=0.7)
    x, ts = _series()
    m = 3
    xs = np.column_stack([x, x + 1.0, 2.0 * x])
    bank = make_bank(spec, m, 750)
    ours = np.array([bank.score(t, row) for t, row in zip(ts, xs, strict=True)])
    for j in range(m):
        det = make_detector(spec, 750)
        theirs = [det.score(t, v) for t, v in zip(ts, xs[:, j], strict=True)]
        assert ours[:, j] == pytest.approx(theirs, abs=1e-9)
    alerts = ours[:, 0] >= 0.7
    assert alerts[1000] and not alerts[1001:1101].any()  # the burst: one alert
    assert alerts[1150]  # the next event, after 100 samples, alerts again
    plain = make_detector(replace(spec, rest=0), 750)
    plain_alerts = np.array([plain.score(t, v) for t, v in zip(ts, x, strict=True)]) >= 0.7
    assert plain_alerts[1000:1006].sum() > 1  # without the rest the burst alerted repeatedly


def test_the_selection_scores_a_rested_candidate_as_the_detector_does():
    spec = DetectorSpec("ensemble", 0.7, members=(DetectorSpec("stream", 0.72),
                                                  DetectorSpec("spatial", 0.7)),
                        combine="max", rest=50, rest_at=0.7)
    x, ts = _series()
    stamps = tuple(datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in ts)
    f = NabFile("cat/f.csv", stamps, tuple(float(v) for v in x), ())
    cache: dict = {}
    cached = score_file(spec, f, cache)
    det = make_detector(spec, 195)  # NAB's probation for 1,300 rows
    assert cached.tolist() == pytest.approx([det.score(t, v) for t, v in zip(ts, x, strict=True)],
                                            abs=1e-12)
    # the rest is applied on the cached raw scores: no second pass for another rest length
    assert len(cache) == 3  # the ensemble and its two members, without the rest


@pytest.mark.parametrize("rest,at", [(-1, 0.7), (10, 0.0), (10, 1.5), (2.5, 0.7)])
def test_bad_rest_settings_are_refused_with_the_reason(rest, at):
    with pytest.raises(AnomalyError) as err:
        make_detector(DetectorSpec("stream", 0.7, rest=rest, rest_at=at))
    assert "rest" in err.value.message
