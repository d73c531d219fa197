"""The NAB scorer on hand-built windows with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
from trainguard.anomaly.nab import (
    load_nab,
    probationary_length,
    scaled_sigmoid,
    score_corpus,
    sweep_rows,
)

N = 100  # probation: floor(0.15 * 100) = 15 rows
WINDOW = (40, 59)  # 20 rows


def _scores(**alerts: float) -> list[float]:
    s = [0.0] * N
    for row, value in alerts.items():
        s[int(row[1:])] = value
    return s


def _score(scores, windows=(WINDOW,), threshold=None):
    swept = {"f.csv": sweep_rows(N, scores, list(windows), "f.csv")}
    return score_corpus(swept, threshold=threshold)


def test_scaled_sigmoid_matches_nab_reference_points():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_15_percent_capped_at_750_rows():
    assert probationary_length(100) == 15
    assert probationary_length(4032) == 604
    assert probationary_length(100_000) == 750


def test_detection_at_the_window_start_is_perfect():
    r = _score(_scores(r40=1.0))
    assert r.raw == pytest.approx(1.0)
    assert r.null == pytest.approx(-1.0)
    assert r.score == pytest.approx(100.0)


def test_late_detection_earns_less():
    r = _score(_scores(r59=1.0))
    tp = (2 / (1 + math.exp(5 * -1 / 20)) - 1) / scaled_sigmoid(-1.0)  # position -1/20
    assert r.raw == pytest.approx(tp)
    assert r.score == pytest.approx(100 * (tp + 1) / 2)


def test_only_the_first_detection_in_a_window_counts():
    assert _score(_scores(r40=1.0, r50=1.0, r59=1.0)).raw == pytest.approx(1.0)


def test_false_positive_after_a_window_costs_by_distance():
    # alert at 80 and in the window at 45: FP at |59 - 80| / 19 past the window
    r = _score(_scores(r45=1.0, r80=1.0))
    tp = scaled_sigmoid(-(59 - 45 + 1) / 20) / scaled_sigmoid(-1.0)
    fp = 0.11 * scaled_sigmoid(21 / 19)
    assert r.raw == pytest.approx(tp + fp)
    assert r.events.detected == 1 and r.events.fp_rows == 1
    assert r.events.f1 == pytest.approx(2 / 3)


def test_false_positive_before_any_window_costs_the_full_weight():
    r = _score(_scores(r45=1.0, r20=1.0))
    assert r.raw == pytest.approx(scaled_sigmoid(-15 / 20) / scaled_sigmoid(-1.0) - 0.11)


def test_threshold_optimisation_prefers_missing_to_false_alarms_only():
    # a lone false positive: the best threshold is "never alert", NAB score 0
    r = _score(_scores(r80=1.0))
    assert r.threshold == math.inf and r.raw == pytest.approx(-1.0) and r.score == 0.0


def test_threshold_optimisation_picks_the_level_with_the_best_sum():
    # TP at 0.6, FPs at 0.9 (cost 0.11 each): best threshold is 0.6 (TP worth more)
    r = _score(_scores(r85=0.9, r90=0.9, r45=0.6))
    assert r.threshold == 0.6
    assert r.events.fp_rows == 2


def test_probationary_rows_are_not_scored():
    r = _score(_scores(r10=1.0), windows=((5, 12), WINDOW))
    assert r.windows == 1  # the window inside the probation is not counted
    assert r.events.fp_rows == 0 and r.raw == pytest.approx(-1.0)


def test_fixed_threshold_scoring():
    r = _score(_scores(r45=0.4, r80=0.9), threshold=0.5)
    assert r.events.detected == 0 and r.events.fp_rows == 1


def test_loading_the_shared_subset(nab_dir):
    files = load_nab(nab_dir)
    assert len(files) == 28
    assert sum(len(f.windows) for f in files) == 36
    assert {f.category for f in files} == {
        "artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch"}
