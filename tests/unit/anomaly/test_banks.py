"""Detector banks (many series, one numpy step per time step) score exactly as the scalar ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.anomaly import (
    AnomalyError,
    DetectorBank,
    DetectorSpec,
    RelativeEntropy,
    RelativeEntropyBank,
    RelativeEntropyConfig,
    SpatialRange,
    SpatialRangeConfig,
    make_bank,
    make_detector,
)

PROBATION = 40
SMALL = RelativeEntropyConfig(window=12, max_hypotheses=6)  # small, so the bound is reached


def _scalar(cfg, probation, x):
    out = np.zeros(x.shape)
    for j in range(x.shape[1]):
        det = RelativeEntropy(cfg, probation=probation)
        out[:, j] = [det.score(60.0 * i, v) for i, v in enumerate(x[:, j])]
    return out


def _banked(bank, x):
    return np.array([bank.score(60.0 * i, row) for i, row in enumerate(x)])


values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(PROBATION, PROBATION + 150),
       coarse=st.booleans())
def test_relative_entropy_bank_equals_the_scalar_detector_series_by_series(data, m, n, coarse):
    # coarse: few distinct values, so histograms repeat and hypotheses are re-accepted
    elem = st.sampled_from([0.0, 1.0, 2.0, 5.0, 9.0]) if coarse else values
    x = np.array(data.draw(st.lists(st.lists(elem, min_size=m, max_size=m), min_size=n,
                                    max_size=n)), dtype=np.float64)
    bank = RelativeEntropyBank(m, SMALL, probation=PROBATION)
    assert np.array_equal(_banked(bank, x), _scalar(SMALL, PROBATION, x))


def test_relative_entropy_bank_on_realistic_series_flags_what_the_scalar_flags():
    rng = np.random.default_rng(7)
    n, m = 1200, 24
    t = np.arange(n)[:, None]
    x = 50 + 10 * np.sin(t / 30.0 + rng.uniform(0, 6, m)) + rng.normal(0, 2, (n, m))
    x[900:960, ::3] += 40  # an incident (longer than a window) on every third series
    x[:, 1] = 7.0  # a flat series: never scored (the reference's rule)
    cfg = RelativeEntropyConfig()
    bank = RelativeEntropyBank(m, cfg, probation=300)
    ours = _banked(bank, x)
    assert np.array_equal(ours, _scalar(cfg, 300, x))
    assert ours[:300].sum() == 0  # probation is quiet
    hit = ours[900:1020].max(axis=0) == 1.0
    assert hit[::3].sum() >= 7  # incident series alert (RE is a histogram test: not all)
    others = np.concatenate([hit[1::3], hit[2::3]])
    assert others.mean() < 0.3  # the others mostly stay quiet (RE does raise false alarms)
    assert ours[:, 1].sum() == 0
    assert isinstance(bank, DetectorBank)


def test_bank_state_stops_growing_at_its_bound():
    rng = np.random.default_rng(1)
    bank = RelativeEntropyBank(8, SMALL, probation=PROBATION)
    sizes = []
    for i in range(2000):
        bank.score(float(i), rng.normal(0, 1 + i % 50, 8))  # ever new histograms
        sizes.append(bank.state_size())
    assert max(sizes[PROBATION:]) == sizes[-1] == sizes[PROBATION]
    assert int(bank._nh.max()) == SMALL.max_hypotheses


def test_ensemble_bank_equals_the_scalar_ensemble():
    rng = np.random.default_rng(3)
    n, m = 700, 5
    x = np.cumsum(rng.normal(size=(n, m)), axis=0) + rng.standard_t(2, size=(n, m))
    spec = DetectorSpec("ensemble", 0.7, members=(
        DetectorSpec("stream", 0.72, (("warmup", 50),)),
        DetectorSpec("relative_entropy", 0.5), DetectorSpec("spatial", 0.7)), combine="max")
    bank = make_bank(spec, m, 200)
    ours = np.array([bank.score(1.4e9 + 300.0 * i, row) for i, row in enumerate(x)])
    for j in range(m):
        det = make_detector(spec, 200)
        theirs = [det.score(1.4e9 + 300.0 * i, v) for i, v in enumerate(x[:, j])]
        # the stream bank agrees with the scalar stream to rounding, RE exactly
        assert ours[:, j] == pytest.approx(theirs, abs=1e-9)
    assert ours.max() > 0.7


@pytest.mark.parametrize("spec", [
    DetectorSpec("cad_ose", 0.77), DetectorSpec("knncad", 0.99),
    DetectorSpec("stream", 0.72, calibrate=0.99),
    DetectorSpec("ensemble", 0.7, members=(DetectorSpec("stream", 0.7),
                                           DetectorSpec("cad_ose", 0.7))),
])
def test_detectors_without_a_bank_are_refused_with_a_tip(spec):
    with pytest.raises(AnomalyError) as err:
        make_bank(spec, 4)
    assert "no bank" in str(err.value)
    assert "make_detector" in (err.value.tip or "")


def test_spatial_range_scores_a_breakout_by_its_distance_beyond_the_range_seen():
    det = SpatialRange(SpatialRangeConfig(tolerance=0.1), probation=4)
    inside = [det.score(i, v) for i, v in enumerate([0.0, 10.0, 5.0, 2.0, 9.0, 1.0])]
    assert inside == [0.0] * 6  # never beyond [0, 10]
    assert det.score(6, 11.0) == pytest.approx(1 - math.exp(-1.0))  # 0.1 of the range above
    assert det.score(7, 11.0) == 0.0  # the range learned it
    assert det.score(8, -22.0) == pytest.approx(1 - math.exp(-20.0))  # 2 ranges below
    quiet = SpatialRange(probation=4)
    assert [quiet.score(i, v) for i, v in enumerate([5.0, 5.0, 5.0, 5.0, 5.0, 9.0])] == [0.0] * 6
    assert det.state_size() == quiet.state_size() == 3  # two numbers and a count, forever


def test_spatial_range_skips_nan_and_infinity_and_still_sees_the_next_breakout():
    seq = [float("nan"), 0.0, 10.0, float("inf"), 5.0, float("-inf"), float("nan"), 12.0]
    det = SpatialRange(SpatialRangeConfig(tolerance=0.1), probation=2)
    out = [det.score(float(i), v) for i, v in enumerate(seq)]
    # nothing scored on a non-finite value, and the range is still [0, 10]: 12 breaks out
    assert out[:7] == [0.0] * 7
    assert out[7] == pytest.approx(1 - math.exp(-2.0))
    bank = make_bank(DetectorSpec("spatial", 0.7, (("tolerance", 0.1),)), 2, 2)
    x = np.array([[v, v] for v in seq])
    x[0, 1] = 3.0  # the other series starts finite
    ours = _banked(bank, x)
    assert ours[:, 0] == pytest.approx(out, rel=1e-12, abs=1e-15)
    alone = SpatialRange(SpatialRangeConfig(tolerance=0.1), probation=2)
    assert ours[:, 1] == pytest.approx([alone.score(float(i), v) for i, v in enumerate(x[:, 1])],
                                       rel=1e-12, abs=1e-15)


def test_spatial_range_refuses_a_tolerance_that_is_not_positive():
    with pytest.raises(AnomalyError) as err:
        make_detector(DetectorSpec("spatial", 0.7, (("tolerance", 0.0),)))
    assert err.value.tip


@settings(max_examples=40, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 120),
       probation=st.integers(1, 40))
def test_spatial_bank_equals_the_scalar_detector_series_by_series(data, m, n, probation):
    x = np.array(data.draw(st.lists(st.lists(values, min_size=m, max_size=m), min_size=n,
                                    max_size=n)), dtype=np.float64)
    bank = make_bank(DetectorSpec("spatial", 0.7, (("tolerance", 0.2),)), m, probation)
    ours = _banked(bank, x)
    for j in range(m):
        det = SpatialRange(SpatialRangeConfig(tolerance=0.2), probation=probation)
        theirs = [det.score(60.0 * i, v) for i, v in enumerate(x[:, j])]
        assert ours[:, j] == pytest.approx(theirs, rel=1e-12, abs=1e-15)  # np.exp vs math.exp


def test_the_frozen_default_runs_as_a_bank_within_the_budget_and_scores_as_it_does_alone():
    from trainguard.anomaly.config import selected_detector

    spec = selected_detector()
    assert spec.within_latency_budget
    rng = np.random.default_rng(11)
    n, m = 1100, 6
    x = 20 + 5 * np.sin(np.arange(n)[:, None] / 40.0) + rng.normal(0, 1, (n, m))
    x[1000, :3] += 60  # a breakout on half of the series, after probation
    bank = make_bank(spec, m, 750)
    ours = np.array([bank.score(1.4e9 + 300.0 * i, row) for i, row in enumerate(x)])
    for j in range(m):
        det = make_detector(spec, 750)
        theirs = [det.score(1.4e9 + 300.0 * i, v) for i, v in enumerate(x[:, j])]
        assert ours[:, j] == pytest.approx(theirs, abs=1e-9)
    assert (ours[1000, :3] >= spec.threshold).all()
    assert (ours[1000, 3:] < spec.threshold).all()
