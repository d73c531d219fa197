"""Streaming detectors: causality, constant state, seasonality, level shifts, the numpy bank."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.anomaly import AnomalyError
from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.streaming import StreamBank, StreamDetector

T0 = 1_400_000_000.0  # a Monday-ish epoch; only differences matter
STEP = 300.0

FAST = StreamConfig(warmup=10, daily_buckets=4, weekly_buckets=0, refractory=3)


def _run(values, cfg=FAST, step=STEP):
    det = StreamDetector(cfg)
    return [det.update(T0 + i * step, v) for i, v in enumerate(values)]


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.lists(finite, min_size=1, max_size=60),
    tail_a=st.lists(finite, min_size=1, max_size=20),
    tail_b=st.lists(finite, min_size=1, max_size=20),
)
def test_output_for_a_row_ignores_every_later_row(prefix, tail_a, tail_b):
    a = _run(prefix + tail_a)
    b = _run(prefix + tail_b)
    # the rows before the first differing row are decided identically
    assert a[: len(prefix)] == b[: len(prefix)]


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=1, max_size=200))
def test_scores_are_in_unit_interval(values):
    for r in _run(values):
        assert 0.0 <= r.score <= 1.0
        assert not math.isnan(r.score)


def test_state_size_does_not_grow_with_the_stream():
    det = StreamDetector()
    rng = np.random.default_rng(1)
    det.update(T0, 1.0)
    size = det.state_size()
    lengths = (len(det.daily), len(det.weekly))
    for i in range(20_000):
        det.update(T0 + i * 60.0, float(rng.normal()))
    assert det.state_size() == size
    assert (len(det.daily), len(det.weekly)) == lengths


def _daily_series(days, rng, amplitude=50.0, noise=1.0):
    n = int(days * 288)
    t = np.arange(n)
    return list(100 + amplitude * np.sin(2 * np.pi * t / 288) + rng.normal(0, noise, n))


def test_daily_seasonality_is_learned_so_the_cycle_itself_does_not_alert():
    rng = np.random.default_rng(2)
    values = _daily_series(10, rng)
    res = _run(values, StreamConfig())
    late = res[5 * 288:]
    assert not any(r.alert for r in late)
    # the seasonal prediction tracks the cycle: residuals are small against the amplitude
    assert np.median([abs(r.z) for r in late]) < 3


def test_a_break_in_the_daily_pattern_alerts():
    rng = np.random.default_rng(3)
    values = _daily_series(10, rng)
    anomaly_at = 8 * 288 + 72  # the morning peak of day 8 ...
    for i in range(anomaly_at, anomaly_at + 12):
        values[i] = 100 - 50  # ... replaced by the night-time trough
    res = _run(values, StreamConfig())
    alerts = [i for i, r in enumerate(res) if r.alert]
    assert any(anomaly_at <= i < anomaly_at + 12 for i in alerts)
    assert not any(5 * 288 <= i < anomaly_at for i in alerts)


def test_a_level_shift_alerts_once_then_becomes_the_new_normal():
    rng = np.random.default_rng(4)
    values = list(rng.normal(10, 1, 3000))
    values[1500:] = list(rng.normal(40, 1, 1500))
    res = _run(values, StreamConfig(weekly_buckets=0))
    alerts = [i for i, r in enumerate(res) if r.alert and i >= 300]
    assert alerts and 1500 <= alerts[0] < 1510
    assert all(i < 1500 + 400 for i in alerts)  # adapted: no alerts long after the shift
    assert abs(res[-1].expected - 40) < 2


def test_isolated_spike_in_noise_alerts_and_quiet_noise_does_not():
    rng = np.random.default_rng(5)
    values = list(rng.normal(0, 1, 2000))
    quiet = _run(values, StreamConfig(weekly_buckets=0))
    assert not any(r.alert for r in quiet[300:])
    values[1500] = 25.0
    spiky = _run(values, StreamConfig(weekly_buckets=0))
    assert spiky[1500].alert


def test_flat_line_then_change_alerts():
    values = [5.0] * 800 + [6.0] * 10
    res = _run(values, StreamConfig(weekly_buckets=0))
    assert not any(r.alert for r in res[:800])
    assert res[800].alert


def _assert_bank_matches_the_scalar_detector(cfg, x):
    m = x.shape[1]
    dets = [StreamDetector(cfg) for _ in range(m)]
    bank = StreamBank(m, cfg)
    for i in range(len(x)):
        scores, alerts, _ = bank.update(T0 + i * STEP, x[i])
        for j in range(m):
            r = dets[j].update(T0 + i * STEP, float(x[i, j]))
            assert math.isclose(r.score, scores[j], rel_tol=1e-9, abs_tol=1e-12)
            assert r.alert == bool(alerts[j])


def test_bank_matches_the_per_stream_detector():
    rng = np.random.default_rng(6)
    m, n = 4, 1500
    x = rng.standard_t(3, size=(n, m)) * 5 + 50
    x[700:, 1] += 30
    x[900, 2] += 80
    cfg = StreamConfig(warmup=50)
    _assert_bank_matches_the_scalar_detector(cfg, x)


def test_missing_values_are_skipped_without_poisoning_the_state():
    rng = np.random.default_rng(7)
    values = list(rng.normal(0, 1, 600))
    gappy = values[:300] + [float("nan"), float("inf")] + values[300:]
    a = _run(values, StreamConfig(weekly_buckets=0))
    b = _run(gappy, StreamConfig(weekly_buckets=0))
    assert b[300].score == 0.0 and b[301].score == 0.0
    assert [r.score for r in b[302:]] == [r.score for r in a[300:]]


def test_the_bank_refuses_a_step_with_a_missing_value_and_keeps_its_state():
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (400, 3))
    bank, clean = StreamBank(3, FAST), StreamBank(3, FAST)
    for i in range(200):
        bank.update(T0 + i * STEP, x[i])
        clean.update(T0 + i * STEP, x[i])
    for bad in (float("nan"), float("inf")):
        row = x[200].copy()
        row[1] = bad
        with pytest.raises(AnomalyError) as err:
            bank.update(T0 + 200 * STEP, row)
        assert "series 1" in str(err.value) and "make_detector" in (err.value.tip or "")
    # the refused steps left no trace: the bank goes on exactly as one that never saw them
    for i in range(200, 400):
        a, b = bank.update(T0 + i * STEP, x[i])[0], clean.update(T0 + i * STEP, x[i])[0]
        assert np.array_equal(a, b) and np.isfinite(a).all()


def _spiky(n, rng, every=50, size=6.0):
    values = list(rng.normal(0, 1, n))
    for i in range(every // 2, n, every):
        values[i] += size
    return values


def test_spikes_seen_during_the_warmup_are_normal_after_it():
    # the normalisers learn during the warm-up (NAB's probation): a stream that spikes by the
    # same amount all along does not alert on its first scored spikes
    values = _spiky(900, np.random.default_rng(8))
    cfg = StreamConfig(weekly_buckets=0)
    res = _run(values, cfg)
    assert not any(r.alert for r in res)
    assert all(r.score == 0.0 for r in res[:cfg.warmup])
    # without that learning (tail_start=-1: normalisers start at the warm-up) they would
    late = _run(values, StreamConfig(weekly_buckets=0, tail_start=-1))
    assert any(r.alert for r in late[cfg.warmup:cfg.warmup + 100])


def test_a_spike_far_beyond_the_usual_ones_still_alerts_after_the_warmup():
    values = _spiky(900, np.random.default_rng(9))
    values[700] = 40.0
    res = _run(values, StreamConfig(weekly_buckets=0))
    assert res[700].alert


def test_bank_matches_the_per_stream_detector_when_normalisers_learn_in_the_warmup():
    rng = np.random.default_rng(10)
    m, n = 3, 700
    x = rng.standard_t(3, size=(n, m)) * 3 + 20
    x[450, 0] += 60
    cfg = StreamConfig(warmup=300, tail_start=30, weekly_buckets=0)
    _assert_bank_matches_the_scalar_detector(cfg, x)


def _noise_alerts(cfg, seeds=range(8), n=3000):
    total = 0
    for seed in seeds:
        values = np.random.default_rng(seed).normal(10, 1, n)
        total += sum(r.alert for r in _run(list(values), cfg))
    return total


def test_the_noise_floor_keeps_pure_gaussian_noise_silent():
    # a slowly decaying normaliser lets quiet stretches of noise look extreme: without the
    # noise floor (z_gate=0) the same settings alert on pure noise, with it they do not
    cfg = StreamConfig(weekly_buckets=0)
    assert cfg.z_gate > 0
    assert _noise_alerts(cfg) == 0
    assert _noise_alerts(replace(cfg, z_gate=0.0)) > 0


def test_the_noise_floor_still_lets_a_moderate_spike_alert():
    values = list(np.random.default_rng(11).normal(0, 1, 2000))
    values[1500] = 8.0
    res = _run(values, StreamConfig(weekly_buckets=0))
    assert res[1500].alert
    assert not any(r.alert for r in res[300:1500])


def test_bank_matches_the_per_stream_detector_around_the_noise_floor():
    rng = np.random.default_rng(12)
    m, n = 3, 1200
    x = rng.normal(0, 1, size=(n, m))
    x[800, 0] += 4.5  # below z_gate: scaled down
    x[900, 1] += 9.0  # above it: unchanged
    cfg = StreamConfig(weekly_buckets=0, z_gate=5.0)
    _assert_bank_matches_the_scalar_detector(cfg, x)


def test_a_negative_noise_floor_is_a_config_error():
    assert any("z_gate" in p for p in StreamConfig(z_gate=-1.0).validate())
    assert StreamConfig().validate() == []


def _bumps_on_a_wide_range(n=1600):
    # a series that came down from 60 in its warm-up, then sits flat and quiet at 2 with bumps
    rng = np.random.default_rng(13)
    x = 2.0 + rng.normal(0, 0.01, n)
    x[:300] = np.linspace(60, 2, 300) + rng.normal(0, 0.01, 300)  # the range seen: [2, 60]
    for i in (900, 1100, 1300):
        x[i] += 1.0  # a step of 1: 100 sigmas of the recent noise, 1.7 % of the range
    x[1500] = 45.0  # a real move: most of the range
    return list(x)


def test_the_range_floor_silences_steps_below_the_resolution_of_the_series_range():
    values = _bumps_on_a_wide_range()
    plain = _run(values, StreamConfig(weekly_buckets=0))
    floored = _run(values, StreamConfig(weekly_buckets=0, range_floor=0.02))
    bumps = [900, 1100, 1300]
    assert any(plain[i].alert for i in bumps)  # without it, noise-sized steps alert
    assert not any(r.alert for r in floored[300:1500])  # with it, they do not
    assert floored[1500].alert  # and a move across the range still does


def test_bank_matches_the_per_stream_detector_with_a_range_floor():
    x = np.column_stack([_bumps_on_a_wide_range(), np.array(_bumps_on_a_wide_range()) * 3 - 1,
                         np.random.default_rng(14).standard_t(3, 1600)])
    cfg = StreamConfig(weekly_buckets=0, range_floor=0.02)
    _assert_bank_matches_the_scalar_detector(cfg, x)


def test_a_range_floor_outside_zero_to_one_is_a_config_error():
    assert any("range_floor" in p for p in StreamConfig(range_floor=-0.1).validate())
    assert any("range_floor" in p for p in StreamConfig(range_floor=1.0).validate())
