"""Numenta's anomaly likelihood as a post-processing step on any detector's raw scores.

Reference: S. Ahmad, A. Lavin, S. Purdy, Z. Agha, "Unsupervised real-time anomaly detection for
streaming data", Neurocomputing 262 (2017), section 4.3; the code is htm.core's
``src/htm/algorithms/anomaly_likelihood.py`` (formerly nupic's ``anomaly_likelihood.py``), which
NAB's ``numenta`` detector runs on HTM's raw anomaly scores.

What it does, per sample: the raw score ``s`` enters a short moving average (the last ``short``
raw scores, Numenta's ``averagingWindow``, 10); that average enters a bounded history of the last
``window`` averages (Numenta's ``historicWindowSize``), whose mean and standard deviation model
"normal" (with Numenta's lower bounds: mean >= 0.03, variance >= 0.0003). The likelihood is
``L = 1 - Q((avg - mean) / std)`` (``Q`` the Gaussian tail), and the reported score is Numenta's
log scale of it, ``log(1 + 1e-10 - L) / log(1e-10)`` clipped to [0, 1] (NAB's numenta detector
reports that value), so 0.5 is a tail probability of 1e-5 and 1.0 one of 1e-10.

Deviations from htm.core, each to keep the step O(1) with bounded state: the mean and variance
come from running sums over a ring buffer (updated every sample) instead of a full re-fit every
``reestimationPeriod`` samples; the tail is one-sided (an unusually *quiet* stretch of a
detector whose low scores mean "normal" is not an anomaly; htm.core mirrors values below the
mean); the current average is scored against the history *before* it joins it (causal); until
``short`` raw scores have been seen, or while the inner detector has only ever scored 0 (its own
warm-up), the score is 0.

`Likelihood` wraps a `UnivariateDetector`; `LikelihoodFilter` is the same arithmetic on a plain
sequence of scores (the selection's cached scores); `LikelihoodBank` wraps a `DetectorBank` with
the same arithmetic per series, in numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trainguard.anomaly.interface import DetectorBank, UnivariateDetector

__all__ = ["Likelihood", "LikelihoodBank", "LikelihoodFilter", "likelihood_scores"]

MIN_MEAN = 0.03  # htm.core's lower bounds of the fitted distribution (performLowerBoundCheck)
MIN_VARIANCE = 0.0003
_EPS = 1e-10  # htm.core's computeLogLikelihood: log(1.0000000001 - L) / log(1 - 0.9999999999)
_LOG_EPS = math.log(_EPS)
_SQRT2 = math.sqrt(2.0)


def log_score(avg: float, mean: float, var: float) -> float:
    """Numenta's log-scaled likelihood of ``avg`` under N(mean, var), one-sided, in [0, 1]."""
    mean = max(mean, MIN_MEAN)
    var = max(var, MIN_VARIANCE)
    z = (avg - mean) / math.sqrt(var)
    tail = 0.5 * math.erfc(z / _SQRT2)  # Q(z) = 1 - L
    v = math.log(tail + _EPS) / _LOG_EPS
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


class LikelihoodFilter:
    """The likelihood of each raw score in a stream: ``update(raw) -> score``; O(1) state."""

    __slots__ = ("_active", "_hist", "_hi", "_n", "_raw", "_ri", "_s1", "_s2", "_short_sum",
                 "short", "window")

    def __init__(self, window: int, short: int = 10) -> None:
        self.window, self.short = int(window), int(short)
        self._raw = [0.0] * self.short  # ring of the last `short` raw scores
        self._hist = [0.0] * self.window  # ring of the last `window` short averages
        self._ri = self._hi = self._n = 0
        self._short_sum = self._s1 = self._s2 = 0.0
        self._active = False  # the inner detector has scored above 0 at least once

    def update(self, raw: float) -> float:
        if raw > 0.0:
            self._active = True
        ri = self._ri
        self._short_sum += raw - self._raw[ri]
        self._raw[ri] = raw
        self._ri = ri + 1 if ri + 1 < self.short else 0
        self._n += 1
        if self._n < self.short:
            return 0.0
        avg = self._short_sum / self.short
        held = min(self._n - self.short, self.window)  # averages in the history
        out = 0.0
        if held and self._active:
            mean = self._s1 / held
            out = log_score(avg, mean, self._s2 / held - mean * mean)
        hi = self._hi
        old = self._hist[hi] if held == self.window else 0.0
        self._s1 += avg - old
        self._s2 += avg * avg - old * old
        self._hist[hi] = avg
        self._hi = hi + 1 if hi + 1 < self.window else 0
        return out

    def state_size(self) -> int:
        return self.window + self.short + 6


def likelihood_scores(scores: Sequence[float], window: int, short: int = 10) -> list[float]:
    """`LikelihoodFilter` applied to a whole score sequence (the selection's cached scores)."""
    f = LikelihoodFilter(window, short)
    return [f.update(float(s)) for s in scores]


class Likelihood:
    """A detector whose scores are Numenta's anomaly likelihood of another detector's scores."""

    __slots__ = ("_filter", "inner")

    def __init__(self, inner: UnivariateDetector, window: int, short: int = 10) -> None:
        self.inner = inner
        self._filter = LikelihoodFilter(window, short)

    def score(self, t: float, x: float) -> float:
        return self._filter.update(self.inner.score(t, x))

    def state_size(self) -> int:
        return self.inner.state_size() + self._filter.state_size()


class LikelihoodBank:
    """`Likelihood` over a bank: the same arithmetic for each of ``m`` series, in numpy."""

    def __init__(self, inner: DetectorBank, window: int, short: int = 10) -> None:
        import numpy as np

        self._np, self.inner, self.m = np, inner, inner.m
        self.window, self.short = int(window), int(short)
        self._raw = np.zeros((self.short, self.m))
        self._hist = np.zeros((self.window, self.m))
        self._ri = self._hi = self._n = 0
        self._short_sum = np.zeros(self.m)
        self._s1 = np.zeros(self.m)
        self._s2 = np.zeros(self.m)
        self._active = np.zeros(self.m, dtype=bool)

    def score(self, t: float, values: Any) -> Any:
        np = self._np
        raw = np.asarray(self.inner.score(t, values), dtype=np.float64)
        self._active |= raw > 0.0
        ri = self._ri
        self._short_sum += raw - self._raw[ri]
        self._raw[ri] = raw
        self._ri = ri + 1 if ri + 1 < self.short else 0
        self._n += 1
        out = np.zeros(self.m)
        if self._n < self.short:
            return out
        avg = self._short_sum / self.short
        held = min(self._n - self.short, self.window)
        if held:
            mean = self._s1 / held
            var = np.maximum(self._s2 / held - mean * mean, MIN_VARIANCE)
            z = (avg - np.maximum(mean, MIN_MEAN)) / np.sqrt(var)
            # math.erfc per series: numpy has no erfc, and this keeps the bank exact
            log, erfc = math.log, math.erfc  # per series: numpy has no erfc; exact vs scalar
            v = np.array([log(0.5 * erfc(q / _SQRT2) + _EPS) / _LOG_EPS for q in z.tolist()])
            out = np.where(self._active, np.clip(v, 0.0, 1.0), 0.0)
        hi = self._hi
        old = self._hist[hi] if held == self.window else np.zeros(self.m)
        self._s1 += avg - old
        self._s2 += avg * avg - old * old
        self._hist[hi] = avg
        self._hi = hi + 1 if hi + 1 < self.window else 0
        return out

    def state_size(self) -> int:
        return self.inner.state_size() + (self.window + self.short + 5) * self.m
