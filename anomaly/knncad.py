"""KNN-CAD: conformal k-nearest-neighbour anomaly detection, as a causal stream detector.

Source: E. Burnaev, V. Ishimtsev, "Conformalized density- and distance-based anomaly detection
in time-series data", arXiv:1608.04585 (2016), and its NAB entrant
``nab/detectors/knncad/knncad_detector.py`` (numenta/NAB), whose settings are kept: the last
``dim`` = 19 values form a vector; its non-conformity is the sum of the squared Mahalanobis
distances to its ``k`` = 27 nearest neighbours in a training set; the score is the share of
calibration non-conformities below it (a conformal p-value); after a score >= 0.9965 the next
``probation / 5`` samples score 0.5 (one alert per event).

The probation period fills the training set (its vectors, at most ``probation``); from then on
each new vector joins a calibration queue and, from ``2 * probation`` on, the oldest calibration
vector replaces the oldest training vector, so state is bounded by ``2 * probation * dim``
values. The inverse covariance ``(X^T X)^-1`` of the training set is refreshed every
``probation / 2`` samples as in the reference; distances use its Cholesky factor, which gives
the reference's numbers with one small matrix product per sample instead of a quadratic form
per training vector. Needs numpy. A NaN or infinite value is skipped: not scored, not learned
and not counted (it would enter ``dim`` windows and the training set and poison every distance
after it).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KnnCad", "KnnCadConfig"]


@dataclass(frozen=True)
class KnnCadConfig:
    """Settings of `KnnCad` (the NAB entrant's values)."""

    dim: int = 19
    k: int = 27
    alert_p: float = 0.9965  # a conformal score this high starts the quiet period
    quiet_fraction: float = 0.2  # quiet period = this x probation; scores 0.5 meanwhile


class KnnCad:
    """KNN-CAD for one stream: ``score(t, x)`` in [0, 1] (`UnivariateDetector`)."""

    def __init__(self, config: KnnCadConfig | None = None, *, probation: int = 750) -> None:
        self.cfg = c = config or KnnCadConfig()
        self.probation = max(int(probation), c.dim + c.k + 2)
        self._buf: deque[float] = deque(maxlen=c.dim)
        self._count = 0
        self._train: list[Any] = []  # vectors; becomes a ring of rows after probation
        self._x: Any = None  # training matrix (n x dim)
        self._y: Any = None  # training matrix in the Mahalanobis frame (x @ chol)
        self._chol: Any = np.eye(c.dim)
        self._head = 0  # ring index of the oldest training row
        self._calib: deque[Any] = deque()
        self._scores: Any = None  # ring of calibration non-conformities, oldest at _shead
        self._shead = 0
        self._quiet = -1

    def state_size(self) -> int:
        rows = 0 if self._x is None else 2 * self._x.shape[0]
        return (len(self._buf) + len(self._train) + rows * self.cfg.dim + len(self._calib)
                * self.cfg.dim + self.cfg.dim ** 2)

    def _ncm(self, y: Any, with_self: bool) -> float:
        d = ((self._y - y) ** 2).sum(axis=1)
        k = self.cfg.k + (1 if with_self else 0)
        return float(np.partition(d, k)[:k].sum())

    def _refresh(self) -> None:
        try:
            inv = np.linalg.inv(self._x.T @ self._x)
            self._chol = np.linalg.cholesky(inv)
        except np.linalg.LinAlgError:
            return  # the reference keeps the previous matrix when X^T X is singular
        self._y = self._x @ self._chol

    def score(self, t: float, x: float) -> float:
        c = self.cfg
        if not -math.inf < x < math.inf:  # NaN or infinite: skipped (it would enter 19
            return 0.0  # windows and the training set, and poison every distance after)
        self._buf.append(float(x))
        self._count += 1
        if len(self._buf) < c.dim:
            return 0.0
        item = np.fromiter(self._buf, dtype=np.float64, count=c.dim)
        if self._count < self.probation:
            self._train.append(item)
            return 0.0
        if self._x is None:
            self._x = np.array(self._train)
            self._train = []
            self._y = self._x.copy()
        phase = self._count % self.probation
        if phase in (0, self.probation // 2):
            self._refresh()
        if self._scores is None:
            self._scores = np.array([self._ncm(y, True) for y in self._y])
        new = self._ncm(item @ self._chol, False)
        result = int((self._scores < new).sum()) / len(self._scores)
        if self._count >= 2 * self.probation:
            old = self._calib.popleft()
            self._x[self._head] = old
            self._y[self._head] = old @ self._chol
            self._head = (self._head + 1) % self._x.shape[0]
        self._scores[self._shead] = new  # the oldest score leaves, the new one joins
        self._shead = (self._shead + 1) % len(self._scores)
        self._calib.append(item)
        if self._quiet > 0:
            self._quiet -= 1
            return 0.5
        if result >= c.alert_p:
            self._quiet = int(self.probation * c.quiet_fraction)
        return result
