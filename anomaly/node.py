"""Multivariate node telemetry: an IsolationForest over a rolling window, fed one sample at a time.

`NodeTelemetryDetector` watches a fixed set of numeric columns of a node (GPU utilisation,
power, memory, NIC bytes, CPU, ...), one ``observe(t, sample)`` call per telemetry sample:

* **Features**: per column, the value, the mean and standard deviation of the last ``window``
  samples and the value minus that mean (the same features as `trainguard.anomaly.learned`), so
  both a broken relation between columns and a sudden change in one are visible.
* **Model**: an IsolationForest (Liu, Ting and Zhou, ICDM 2008) fitted on the last ``history``
  feature rows, first after ``min_fit`` samples, then refitted every ``refit_every`` samples.
  Every row is learned, alerting ones too: a lasting change (a new job's load profile) raises
  alerts when it starts and becomes normal within a refit or two instead of alerting forever
  (keeping alerting rows out locks the detector into alerting after any regime change).
* **Beyond the training range**: a forest grown on normal rows puts a point far outside their
  range in the same leaf as the most extreme normal one (a known blind spot: a GPU drawing
  120 W at 99 % utilisation when 250 W is the least ever seen scores like that least one). So
  the score adds, to the forest's score in (0, 1), how far the row lies outside the training
  rows' range on its worst feature, in that feature's standard deviations, less
  ``range_tolerance`` (new normal rows fall just outside an old range all the time: with 16
  features and 4,096 rows, one sample in ~250 would). Training rows are inside the range, so
  the calibration below is the forest's alone.
* **Calibration to a false-alarm rate per day**: the target per sample is
  ``false_alarms_per_day * interval_s / 86400``, usually far below ``1 / history``, so the
  empirical quantile of the history cannot resolve it. The threshold comes from the tail of the
  training scores as in SPOT (Siffer et al., KDD 2017) with an exponential tail: with ``u`` the
  ``1 - tail`` quantile and ``beta`` the mean excess over it,
  ``threshold = u + beta * ln(tail / target)``.
* **Bounded memory**: the history ring (``history x 4 * columns`` floats), the window of raw
  samples and the forest (``n_estimators`` trees of at most ``max_samples`` leaves).

scikit-learn is imported when a detector is constructed, never when this module is imported,
so the agent can import it freely. Randomness is a fixed ``seed`` (same input, same output).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from trainguard.anomaly.interface import AnomalyError

__all__ = ["NodeScore", "NodeTelemetryConfig", "NodeTelemetryDetector"]


@dataclass(frozen=True)
class NodeTelemetryConfig:
    """Settings of `NodeTelemetryDetector`."""

    false_alarms_per_day: float = 1.0  # the calibration target
    interval_s: float = 10.0  # seconds between samples (the agent's telemetry period)
    window: int = 12  # samples in the rolling-window features
    history: int = 4096  # training rows kept (the memory bound)
    min_fit: int = 360  # samples before the first fit (an hour at 10 s)
    refit_every: int = 1024  # samples between refits
    n_estimators: int = 50
    max_samples: int = 256
    tail: float = 0.02  # share of training scores used to fit the exponential tail
    range_tolerance: float = 3.0  # std devs beyond the training range that still score 0 extra
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if self.false_alarms_per_day <= 0 or self.interval_s <= 0:
            problems.append("false_alarms_per_day and interval_s must be > 0")
        if self.window < 1 or self.min_fit < 32 or self.history < self.min_fit:
            problems.append("need window >= 1, min_fit >= 32 and history >= min_fit")
        if not 0.0 < self.tail < 0.5:
            problems.append("tail must be in (0, 0.5)")
        if self.refit_every < 1 or self.n_estimators < 1 or self.max_samples < 8:
            problems.append("need refit_every >= 1, n_estimators >= 1, max_samples >= 8")
        return problems

    @property
    def target_rate(self) -> float:
        """False alarms per sample that the threshold aims at."""
        return self.false_alarms_per_day * self.interval_s / 86400.0


class NodeScore(NamedTuple):
    """One decision: `score` (the forest's, in (0, 1), plus the distance outside the training
    range; higher is more anomalous), `alert`, and the `threshold` used.
    `ready` is False until the first fit (score 0, no alert)."""

    score: float
    alert: bool
    threshold: float
    ready: bool


class NodeTelemetryDetector:
    """IsolationForest over rolling-window features of several columns; one call per sample."""

    def __init__(self, columns: Sequence[str], config: NodeTelemetryConfig | None = None) -> None:
        """Raises:
            AnomalyError: no columns, duplicate columns or invalid settings.
        """
        import numpy as np
        from sklearn.ensemble import IsolationForest

        self.cfg = c = config or NodeTelemetryConfig()
        problems = c.validate()
        if not columns or len(set(columns)) != len(columns):
            problems.append("give at least one column, each once")
        if problems:
            raise AnomalyError("; ".join(problems), tip="see NodeTelemetryConfig")
        self.columns = tuple(columns)
        self._np, self._forest_cls = np, IsolationForest
        k = len(self.columns)
        self._raw: deque[Any] = deque(maxlen=c.window)
        self._rows = np.zeros((c.history, 4 * k))
        self._filled = 0  # rows in the ring
        self._head = 0  # next slot
        self._seen = 0
        self._since_fit = 0
        self._model: Any = None
        self._lo = self._hi = self._scale = None
        self.threshold = math.inf

    def state_size(self) -> int:
        """Floats held outside the forest: constant once the history ring exists."""
        return int(self._rows.size) + len(self._raw) * len(self.columns)

    def _features(self, x: Any) -> Any:
        np = self._np
        self._raw.append(x)
        win = np.array(self._raw)
        mean = win.mean(axis=0)
        return np.concatenate([x, mean, win.std(axis=0), x - mean])

    def observe(self, t: float, sample: Mapping[str, float] | Sequence[float]) -> NodeScore:
        """Score one sample (a mapping by column name, or values in column order), then learn.

        A sample with a missing or non-finite value is not scored and not learned.
        """
        np = self._np
        try:
            values = ([float(sample[name]) for name in self.columns]
                      if isinstance(sample, Mapping) else [float(v) for v in sample])
        except (KeyError, TypeError, ValueError):
            return NodeScore(0.0, False, self.threshold, self._model is not None)
        if len(values) != len(self.columns) or not all(math.isfinite(v) for v in values):
            return NodeScore(0.0, False, self.threshold, self._model is not None)
        feats = self._features(np.array(values))
        score, alert = 0.0, False
        if self._model is not None:
            score = float(-self._model.score_samples(feats[None, :])[0])
            outside = np.maximum(feats - self._hi, self._lo - feats) / self._scale
            score += max(float(outside.max()) - self.cfg.range_tolerance, 0.0)
            alert = score >= self.threshold
        self._rows[self._head] = feats
        self._head = (self._head + 1) % len(self._rows)
        self._filled = min(self._filled + 1, len(self._rows))
        self._seen += 1
        self._since_fit += 1
        c = self.cfg
        if (self._model is None and self._filled >= c.min_fit) or (
                self._model is not None and self._since_fit >= c.refit_every):
            self._fit()
        return NodeScore(score, alert, self.threshold, self._model is not None)

    def _fit(self) -> None:
        np, c = self._np, self.cfg
        rows = self._rows[: self._filled]
        model = self._forest_cls(
            n_estimators=c.n_estimators, max_samples=min(c.max_samples, len(rows)),
            random_state=c.seed, n_jobs=1,
        ).fit(rows)
        scores = -model.score_samples(rows)
        self._lo, self._hi = rows.min(axis=0), rows.max(axis=0)
        self._scale = np.maximum(rows.std(axis=0), 1e-9 + 1e-6 * np.abs(rows).mean(axis=0))
        self.threshold = tail_threshold(scores, c.tail, c.target_rate)
        self._model, self._since_fit = model, 0


def tail_threshold(scores: Any, tail: float, target: float) -> float:
    """Score exceeded with probability `target`, from an exponential fit to the top `tail`."""
    import numpy as np

    s = np.sort(np.asarray(scores, dtype=np.float64))
    if target >= tail:
        return float(np.quantile(s, 1.0 - target))
    u = float(np.quantile(s, 1.0 - tail))
    excess = s[s > u] - u
    beta = float(excess.mean()) if len(excess) else 0.0
    return u + max(beta, 1e-9) * math.log(tail / target)
