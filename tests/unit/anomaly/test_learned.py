"""IsolationForest on windowed features: calibration, skops round trip, untrusted refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from trainguard.anomaly.learned import (
    UntrustedModel,
    fit_detector,
    load_detector,
    save_detector,
    window_features,
)
from trainguard.core.errors import UsageError


def _baseline(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, size=(n, 3))


def test_window_features_use_only_the_current_and_earlier_rows():
    x = _baseline(50)
    full = window_features(x, 5)
    changed = x.copy()
    changed[30:] += 100
    assert np.array_equal(window_features(changed, 5)[:30], full[:30])
    # row 10: value, mean and std of rows 6..10
    np.testing.assert_allclose(full[10, 3:6], x[6:11].mean(axis=0))
    np.testing.assert_allclose(full[10, 6:9], x[6:11].std(axis=0), atol=1e-9)


def test_threshold_is_calibrated_to_the_target_fpr():
    det = fit_detector(_baseline(), ["a", "b", "c"], target_fpr=0.02)
    fresh = _baseline(seed=1)
    fpr = det.alerts(fresh).mean()
    assert 0.005 <= fpr <= 0.05
    outliers = fresh.copy()
    outliers[::100] += 8.0
    assert det.alerts(outliers)[::100].mean() > 0.9


def test_skops_round_trip_keeps_scores_and_threshold(tmp_path: Path):
    det = fit_detector(_baseline(), ["a", "b", "c"], window=6, target_fpr=0.01)
    path = tmp_path / "m.skops"
    save_detector(det, path)
    back = load_detector(path)
    assert back.columns == ("a", "b", "c") and back.window == 6
    assert back.threshold == det.threshold
    x = _baseline(200, seed=3)
    np.testing.assert_array_equal(back.scores(x), det.scores(x))
    assert path.read_bytes()[:2] == b"PK"  # a skops zip, not a pickle


def test_a_model_asking_for_an_untrusted_type_is_refused_before_loading(tmp_path: Path):
    path = tmp_path / "evil.skops"
    sio.dump({"format": "trainguard-iforest/1", "model": os.system, "columns": ["a"],
              "window": 1, "threshold": 0.0, "target_fpr": 0.01}, path)
    with pytest.raises(UntrustedModel, match="system"):
        load_detector(path)


def test_a_non_skops_file_is_a_usage_error(tmp_path: Path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(UsageError):
        load_detector(path)


def test_bad_target_fpr_is_refused():
    with pytest.raises(UsageError):
        fit_detector(_baseline(100), ["a", "b", "c"], target_fpr=0.7)
