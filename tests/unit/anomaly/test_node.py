"""The multivariate node-telemetry detector: k-NN over a rolling window of clean samples,
calibrated to a false-alarm budget, debounced (k of m, one alert per episode)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from trainguard.anomaly import AnomalyError, NodeTelemetryConfig, NodeTelemetryDetector
from trainguard.anomaly.node import gumbel_threshold

# one sample a minute; a 2-hour warm-up of 120 samples keeps the tests fast
CFG = NodeTelemetryConfig(interval_s=60.0, warmup_s=7200.0, history_s=4 * 3600.0,
                          refit_s=3600.0, quarantine_s=0.0, cooldown_s=600.0,
                          relearn_after_s=4 * 3600.0, n_reference=256)


def _normal(rng: np.random.Generator, i: int) -> list[float]:
    util = 70 + 10 * math.sin(i / 30) + rng.normal(0, 2)
    return [util, 100 + 3 * util + rng.normal(0, 6), 40 + rng.normal(0, 1)]


def _feed(det: NodeTelemetryDetector, rng: np.random.Generator, start: int, n: int) -> list[bool]:
    return [det.observe(60.0 * i, _normal(rng, i)).alert for i in range(start, start + n)]


def _warm(seed: int = 0, cfg: NodeTelemetryConfig = CFG) -> tuple[NodeTelemetryDetector, int]:
    rng = np.random.default_rng(seed)
    det = NodeTelemetryDetector(["util", "power", "mem"], cfg)
    _feed(det, rng, 0, 120)
    assert det.ready
    return det, 120


def test_importing_the_detector_loads_neither_sklearn_nor_scipy():
    code = ("import sys; from trainguard.anomaly.node import NodeTelemetryDetector as D;"
            "D(['a', 'b']); print('sklearn' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_nothing_is_scored_during_the_warm_up():
    rng = np.random.default_rng(0)
    det = NodeTelemetryDetector(["util", "power", "mem"], CFG)
    results = [det.observe(60.0 * i, _normal(rng, i)) for i in range(119)]
    assert not any(r.ready or r.alert for r in results)
    assert math.isinf(det.threshold)


def test_one_outlying_sample_does_not_alert_but_three_of_five_do_once_per_episode():
    det, i = _warm()
    rng = np.random.default_rng(1)
    _feed(det, rng, i, 30)
    off = [70.0, 310.0, 90.0]  # memory far outside anything seen
    assert not det.observe(60.0 * 150, off).alert  # one sample: no alert
    assert not any(_feed(det, rng, 151, 10))
    hits = [det.observe(60.0 * (161 + j), off).alert for j in range(8)]
    assert hits == [False, False, True, False, False, False, False, False]
    # the same anomaly again before the cool-down has passed: still the same episode
    _feed(det, rng, 169, 3)
    assert not any(det.observe(60.0 * (172 + j), off).alert for j in range(5))
    # quiet for a cool-down (10 min), then it re-arms and a new episode alerts again
    _feed(det, rng, 177, 12)
    assert any(det.observe(60.0 * (189 + j), off).alert for j in range(5))


def test_alerting_samples_are_kept_out_of_refits():
    det, i = _warm()
    rng = np.random.default_rng(2)
    off = [70.0, 310.0, 60.0]
    assert any(det.observe(60.0 * (i + j), off).alert for j in range(30))
    _feed(det, rng, i + 30, 70)  # a refit (every hour) happens in here, after the cool-down
    fits = det.fits
    assert fits >= 2
    # the anomalous state was not learned: it alerts again after the refit
    assert any(det.observe(60.0 * (i + 100 + j), off).alert for j in range(5))


def test_a_lasting_change_is_learned_after_relearn_after():
    cfg = replace(CFG, relearn_after_s=1800.0)
    det, i = _warm(cfg=cfg)
    rng = np.random.default_rng(3)
    alerts = 0
    for j in range(6 * 60):  # a new workload: memory steps up for good
        row = _normal(rng, i + j)
        row[2] += 30
        alerts += det.observe(60.0 * (i + j), row).alert
    # it alerts at the change (and at refits while it is new), then becomes the normal
    assert 1 <= alerts <= 4
    assert not any(det.observe(60.0 * (i + 360 + j), [*_normal(rng, j)[:2], 70.0]).alert
                   for j in range(60))


def test_state_is_bounded_and_scoring_is_deterministic():
    def run() -> tuple[list[float], list[int]]:
        rng = np.random.default_rng(1)
        det = NodeTelemetryDetector(["util", "power", "mem"], CFG)
        out, sizes = [], []
        for i in range(600):
            out.append(det.observe(60.0 * i, _normal(rng, i)).score)
            sizes.append(det.state_size())
        return out, sizes

    first, sizes = run()
    assert run()[0] == first
    # the 4-hour ring (240 rows), at most 256 reference rows, the last m scores
    assert max(sizes) <= 3 * 240 + 3 * 256 + CFG.m


def test_bad_samples_are_skipped_and_bad_settings_refused():
    det = NodeTelemetryDetector(["a", "b"], CFG)
    assert det.observe(0.0, {"a": 1.0}).score == 0.0  # a missing column
    assert det.observe(0.0, [1.0, float("nan")]).alert is False
    assert det._seen == 0  # neither was learned
    det.observe(0.0, {"a": 1.0, "b": 2.0})
    assert det._seen == 1
    for bad in ([], ["a", "a"]):
        with pytest.raises(AnomalyError):
            NodeTelemetryDetector(bad, CFG)
    for cfg in (replace(CFG, false_alarms_per_day=0), replace(CFG, k=6),
                replace(CFG, warmup_s=600.0), replace(CFG, model="lof")):
        with pytest.raises(AnomalyError, match="NodeTelemetryConfig|must|need"):
            NodeTelemetryDetector(["a"], cfg)


def test_gumbel_threshold_recovers_a_tail_quantile_from_few_maxima():
    rng = np.random.default_rng(4)
    maxima = rng.gumbel(10.0, 2.0, 480)
    # P(max > x) = 1 - exp(-exp(-(x - mu) / beta)); at p = 1/48: x = mu + beta * 3.86
    exact = 10.0 - 2.0 * math.log(-math.log1p(-1 / 48))
    assert gumbel_threshold(maxima, 1 / 48) == pytest.approx(exact, rel=0.05)
    assert gumbel_threshold(maxima, 1 / 480) > gumbel_threshold(maxima, 1 / 48)
