"""Numenta's anomaly likelihood on a detector's scores: its arithmetic, banks and the selection."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.score_replay import Replay, ReplayBank
from trainguard.anomaly import (
    AnomalyError,
    DetectorSpec,
    Likelihood,
    LikelihoodBank,
    make_bank,
    make_detector,
)
from trainguard.anomaly.likelihood import LikelihoodFilter, likelihood_scores
from trainguard.anomaly.nab import NabFile
from trainguard.anomaly.selection import candidates, score_file


def _reference(raw: list[float], window: int, short: int) -> list[float]:
    """The same definition, computed the slow way (whole windows, no running sums)."""
    out, avgs, active = [], [], False
    for i, s in enumerate(raw):
        active = active or s > 0.0
        if i + 1 < short:
            out.append(0.0)
            continue
        avg = sum(raw[i + 1 - short:i + 1]) / short
        hist = avgs[-window:]
        v = 0.0
        if hist and active:
            mean = max(sum(hist) / len(hist), 0.03)
            var = max(sum((a - sum(hist) / len(hist)) ** 2 for a in hist) / len(hist), 0.0003)
            tail = 0.5 * math.erfc((avg - mean) / math.sqrt(var) / math.sqrt(2.0))
            v = min(max(math.log(tail + 1e-10) / math.log(1e-10), 0.0), 1.0)
        out.append(v)
        avgs.append(avg)
    return out


scores_st = st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=120)


@settings(max_examples=80, deadline=None)
@given(raw=scores_st, window=st.integers(1, 30), short=st.integers(1, 12))
def test_running_sums_agree_with_the_definition_over_whole_windows(raw, window, short):
    ours = likelihood_scores(raw, window, short)
    assert ours == pytest.approx(_reference(raw, window, short), abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in ours)


def test_a_burst_after_a_quiet_history_scores_high_and_steady_noise_scores_low():
    rng = np.random.default_rng(3)
    raw = list(rng.uniform(0.0, 0.3, 600))
    quiet = likelihood_scores(raw, 500, 10)
    assert max(quiet[100:]) < 0.5  # noise like its own history is not news
    burst = likelihood_scores([*raw, *[0.95] * 10], 500, 10)
    assert burst[-1] > 0.9  # ten high scores in a row are (tail ~1e-10 or less)
    # before the inner detector ever scored above 0 (its warm-up), nothing is reported
    assert likelihood_scores([0.0] * 50 + [0.2], 20, 5)[:50] == [0.0] * 50


def test_the_wrapper_feeds_every_sample_to_the_detector_and_its_state_is_bounded():
    raw = list(np.random.default_rng(1).uniform(0, 1, 3000))
    inner = Replay(raw)
    det = Likelihood(inner, window=200, short=10)
    sizes = []
    out = []
    for i in range(len(raw)):
        out.append(det.score(float(i), 0.0))
        sizes.append(det.state_size())
    assert inner.seen == len(raw)
    assert out == likelihood_scores(raw, 200, 10)
    assert max(sizes) == sizes[0] == 1 + LikelihoodFilter(200, 10).state_size()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 90), window=st.integers(1, 25),
       short=st.integers(1, 8))
def test_likelihood_bank_equals_the_scalar_one_series_by_series(data, m, n, window, short):
    level = st.sampled_from([0.0, 0.01, 0.2, 0.5, 0.7, 0.95, 1.0])
    x = np.array(data.draw(st.lists(st.lists(level, min_size=m, max_size=m), min_size=n,
                                    max_size=n)), dtype=np.float64)

    bank = LikelihoodBank(ReplayBank(x), window, short)
    ours = np.array([bank.score(float(i), None) for i in range(n)])
    for j in range(m):
        assert ours[:, j].tolist() == likelihood_scores(list(x[:, j]), window, short)


def _series(n: int = 1300, seed: int = 5) -> tuple[np.ndarray, list[float]]:
    rng = np.random.default_rng(seed)
    x = 20 + 5 * np.sin(np.arange(n) / 40.0) + rng.normal(0, 1, n)
    x[1000:1006] += 60 * 1.5 ** np.arange(6)
    return x, [1.4e9 + 300.0 * i for i in range(n)]


SPEC = DetectorSpec("ensemble", 0.7, members=(
    DetectorSpec("stream", 0.72, (("range_floor", 0.01),), likelihood=500, likelihood_short=5),
    DetectorSpec("spatial", 0.7, (("tolerance", 0.05),))), combine="max")


def test_a_likelihood_ensemble_bank_scores_as_the_scalar_one_and_sees_the_burst():
    x, ts = _series()
    xs = np.column_stack([x, x + 1.0, 2.0 * x])
    bank = make_bank(SPEC, 3, 750)
    ours = np.array([bank.score(t, row) for t, row in zip(ts, xs, strict=True)])
    for j in range(3):
        det = make_detector(SPEC, 750)
        theirs = [det.score(t, v) for t, v in zip(ts, xs[:, j], strict=True)]
        assert ours[:, j] == pytest.approx(theirs, abs=1e-9)
    assert ours[1000:1010, 0].max() > 0.9


def test_the_selection_scores_a_likelihood_candidate_as_the_detector_does():
    x, ts = _series()
    stamps = tuple(datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in ts)
    f = NabFile("cat/f.csv", stamps, tuple(float(v) for v in x), ())
    cache: dict = {}
    cached = score_file(SPEC, f, cache)
    det = make_detector(SPEC, 195)  # NAB's probation for 1,300 rows
    assert cached.tolist() == pytest.approx([det.score(t, v) for t, v in zip(ts, x, strict=True)],
                                            abs=1e-12)
    # the stream's raw scores are cached without the likelihood: another window costs no pass
    assert ("stream(range_floor=0.01)", "cat/f.csv") in cache


def test_the_candidate_grid_holds_likelihood_candidates_within_the_latency_budget():
    lik = [c for c in candidates() if "likelihood" in c.label]
    assert len(lik) == 6
    assert all(c.within_latency_budget for c in lik)
    assert len({c.key for c in lik}) == 6  # each one a distinct cache identity


@pytest.mark.parametrize("window,short", [(-1, 10), (2.5, 10), (100, 0)])
def test_bad_likelihood_settings_are_refused_with_the_reason(window, short):
    with pytest.raises(AnomalyError) as err:
        make_detector(DetectorSpec("stream", 0.7, likelihood=window, likelihood_short=short))
    assert "likelihood" in err.value.message
