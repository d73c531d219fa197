"""UpdateMonitor (Byzantine ranks) and training spikes."""

from __future__ import annotations

import numpy as np
import pytest
from trainguard.anomaly.training import SpikeDetector, UpdateMonitor, update_statistics


def _honest(rng, n_ranks, dim=200):
    base = rng.normal(0, 1, dim)
    return [base + rng.normal(0, 0.3, dim) for _ in range(n_ranks)]


def test_a_sign_flipping_rank_is_flagged_after_patience_steps():
    rng = np.random.default_rng(0)
    mon = UpdateMonitor(5, patience=3)
    flags = []
    for step in range(6):
        ups = _honest(rng, 5)
        ups[2] = -ups[2]
        flags.append(mon.observe(step, ups))
    assert flags[0] == [] and flags[1] == []
    assert [f.rank for f in flags[2]] == [2] and flags[2][0].reason == "direction"
    assert flags[3:] == [[], [], []]  # once per streak


def test_a_scaled_rank_is_a_norm_outlier():
    rng = np.random.default_rng(1)
    mon = UpdateMonitor(4, patience=2)
    out = []
    for step in range(2):
        ups = _honest(rng, 4)
        ups[0] = ups[0] * 20
        out += mon.observe(step, ups)
    assert [(f.rank, f.reason) for f in out] == [(0, "norm")]
    assert out[0].norm_ratio > 10


def test_honest_ranks_are_never_flagged():
    rng = np.random.default_rng(2)
    mon = UpdateMonitor(8, patience=2)
    for step in range(50):
        assert mon.observe(step, _honest(rng, 8)) == []


def test_an_outlier_streak_is_reset_by_a_normal_step():
    mon = UpdateMonitor(3, patience=2)
    good = ([1.0, 1.0, 1.0], [0.9, 0.9, 0.9])
    bad = ([1.0, 1.0, 9.0], [0.9, 0.9, 0.9])
    assert mon.observe(0, bad) == []
    assert mon.observe(1, good) == []
    assert mon.observe(2, bad) == []
    assert [f.rank for f in mon.observe(3, bad)] == [2]


def test_precomputed_statistics_are_accepted_and_checked():
    mon = UpdateMonitor(3, patience=1)
    assert [f.rank for f in mon.observe(0, ([1.0, 1.1, 1.0], [0.9, -0.5, 0.95]))] == [1]
    with pytest.raises(ValueError):
        mon.observe(1, ([1.0, 1.0], [0.9, 0.9]))


def test_trainer_style_call_with_ratios_reports_this_steps_outliers():
    # trainguard.trainer.monitor calls observe(norm_ratio=..., cosine=...) and reads .flagged
    mon = UpdateMonitor(4, patience=3)
    out = mon.observe(norm_ratio=[1.0, 1.1, 0.9, 12.0], cosine=[0.9, -0.4, 0.95, 0.9])
    assert out.flagged == [1, 3] and list(out) == []


def test_update_statistics_cosine_to_the_median():
    ups = [np.array([1.0, 0.0]), np.array([1.0, 0.1]), np.array([-1.0, 0.0])]
    norms, cos = update_statistics(ups)
    assert norms[0] == pytest.approx(1.0)
    assert cos[0] > 0.99 and cos[2] < -0.99


def test_loss_spike_and_nan_are_reported():
    rng = np.random.default_rng(3)
    det = SpikeDetector()
    for step in range(100):
        assert det.observe(step, loss=2.0 - step * 0.005 + rng.normal(0, 0.02)) == []
    spikes = det.observe(100, loss=9.0, grad_norm=float("nan"))
    assert sorted(s.metric for s in spikes) == ["grad_norm", "loss"]
