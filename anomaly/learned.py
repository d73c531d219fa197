"""Learned multivariate detectors: IsolationForest on windowed features, persisted with skops.

* Features (`window_features`): for each input column and each row, over the trailing window of
  ``window`` rows ending at that row (earlier rows only, so scoring is causal): the value, the
  window mean, the window standard deviation and the value minus the mean.
* Fit (`fit_detector`): an IsolationForest on a baseline period, then the alert threshold is the
  ``1 - target_fpr`` quantile of the baseline's anomaly scores, so about ``target_fpr`` of normal
  rows alert.
* Persistence: `save_detector` writes a skops file (never pickle or joblib). `load_detector`
  first lists the file's untrusted types with ``skops.io.get_untrusted_types`` and refuses any
  type outside `TRUSTED_TYPES` (raising `UntrustedModel`) before loading with exactly that
  list; a file crafted to instantiate anything else never runs.

scikit-learn and skops are imported inside the functions that need them, so importing this
module (and the agent, which imports it lazily) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from trainguard.core.errors import IntegrityError, UsageError

__all__ = [
    "TRUSTED_TYPES",
    "LearnedDetector",
    "UntrustedModel",
    "fit_detector",
    "load_detector",
    "save_detector",
    "window_features",
]

FORMAT = "trainguard-iforest/1"

# Every type an IsolationForest bundle contains, by the name skops reports.
TRUSTED_TYPES: frozenset[str] = frozenset({
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.list",
    "builtins.dict",
    "builtins.tuple",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
})


class UntrustedModel(IntegrityError):
    """A model file asks for types outside the allow-list; it was not loaded."""

    default_tip = "only load models written by `trainguard anomaly fit`; refit from your data"


@dataclass(frozen=True)
class LearnedDetector:
    """A fitted model, its columns, feature window and calibrated threshold."""

    model: Any
    columns: tuple[str, ...]
    window: int
    threshold: float
    target_fpr: float

    def scores(self, data: np.ndarray) -> np.ndarray:
        """Anomaly score per row (higher is more anomalous; > threshold alerts)."""
        scores: np.ndarray = -self.model.score_samples(window_features(data, self.window))
        return scores

    def alerts(self, data: np.ndarray) -> np.ndarray:
        return self.scores(data) > self.threshold


def window_features(data: np.ndarray, window: int) -> np.ndarray:
    """Trailing-window features per row: value, mean, std, value - mean for each column."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2:
        raise UsageError("expected a 2-D table of numbers (rows x columns)")
    n, k = x.shape
    c1 = np.cumsum(np.vstack([np.zeros((1, k)), x]), axis=0)
    c2 = np.cumsum(np.vstack([np.zeros((1, k)), x * x]), axis=0)
    hi = np.arange(1, n + 1)
    lo = np.maximum(hi - window, 0)
    count = (hi - lo)[:, None].astype(np.float64)
    mean = (c1[hi] - c1[lo]) / count
    var = np.maximum((c2[hi] - c2[lo]) / count - mean * mean, 0.0)
    return np.hstack([x, mean, np.sqrt(var), x - mean])


def fit_detector(
    data: np.ndarray,
    columns: Sequence[str],
    *,
    window: int = 12,
    target_fpr: float = 0.01,
    n_estimators: int = 100,
    max_samples: int = 256,
    seed: int = 0,
) -> LearnedDetector:
    """Fit an IsolationForest on baseline rows and calibrate its threshold to `target_fpr`."""
    from sklearn.ensemble import IsolationForest

    if not 0.0 < target_fpr < 0.5:
        raise UsageError("target FPR must be in (0, 0.5)", tip="e.g. --target-fpr 0.01")
    feats = window_features(data, window)
    if len(feats) < 10:
        raise UsageError("need at least 10 baseline rows to fit a model")
    model = IsolationForest(
        n_estimators=n_estimators, max_samples=min(max_samples, len(feats)),
        random_state=seed, n_jobs=1,
    ).fit(feats)
    baseline = -model.score_samples(feats)
    threshold = float(np.quantile(baseline, 1.0 - target_fpr))
    return LearnedDetector(model, tuple(columns), window, threshold, target_fpr)


def save_detector(det: LearnedDetector, path: Path) -> None:
    """Write `det` as a skops file (atomically: temp file then rename)."""
    import skops.io as sio

    bundle = {
        "format": FORMAT, "model": det.model, "columns": list(det.columns),
        "window": det.window, "threshold": det.threshold, "target_fpr": det.target_fpr,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        sio.dump(bundle, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_detector(path: Path) -> LearnedDetector:
    """Load a skops model file after checking its types against `TRUSTED_TYPES`.

    Raises:
        UntrustedModel: the file needs a type outside the allow-list (nothing was loaded).
        UsageError: the file is missing or not a trainguard model.
    """
    import skops.io as sio

    if not path.is_file():
        raise UsageError(f"no model file at {path}", tip="create one with `trainguard anomaly fit`")
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # noqa: BLE001 - skops raises many types for a corrupt zip
        raise UsageError(f"{path} is not a skops model file: {type(exc).__name__}") from exc
    unexpected = sorted(untrusted - TRUSTED_TYPES)
    if unexpected:
        raise UntrustedModel(f"{path} asks for types outside the allow-list: {', '.join(unexpected)}")
    bundle = sio.load(path, trusted=sorted(untrusted))
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise UsageError(f"{path} is not a trainguard anomaly model ({FORMAT})")
    return LearnedDetector(
        bundle["model"], tuple(bundle["columns"]), int(bundle["window"]),
        float(bundle["threshold"]), float(bundle["target_fpr"]),
    )
