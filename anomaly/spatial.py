"""Spatial (range) anomaly: a value beyond every value the series has shown so far.

Source: the "spatial anomaly" rule of Numenta's NAB detectors (numenta/NAB,
``nab/detectors/numenta/numenta_detector.py`` and ``nab/detectors/threshold/
threshold_detector.py``, ``SPATIAL_TOLERANCE = 0.05``): once the running minimum and maximum
differ, a value more than ``tolerance`` of that range above the maximum or below the minimum
forces the HTM detector's score to 1. Numenta added it because people who label incidents
treat a value beyond anything seen before as an anomaly, whatever its temporal context; it is
why HTM detects level breakouts that a model normalised by its own recent extremes calls
ordinary.

Here the score is graded instead of 0/1: with ``e`` the distance beyond the range seen so far
in units of that range, ``score = 1 - exp(-e / tolerance)`` (0.63 at ``e = tolerance``, 0.95
at three times it), so the caller's threshold decides how far beyond counts. The range learns
from every sample, probation included (the probation rows score 0); state is two numbers per
series. A NaN or infinite value is neither scored nor learned (one infinity would otherwise
widen the range for good and silence the detector). It is meant to run beside a temporal
detector (``max`` ensemble with the stream detector): it sees breakouts, not changes inside
the range.

`SpatialRangeBank` is the same arithmetic for ``m`` series at once (`DetectorBank`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainguard.anomaly.interface import AnomalyError

__all__ = ["SpatialRange", "SpatialRangeBank", "SpatialRangeConfig"]


@dataclass(frozen=True)
class SpatialRangeConfig:
    """Settings of `SpatialRange`."""

    tolerance: float = 0.1  # distance beyond the range, as a share of it, that scores 0.63


_TIP = "tolerance is a share of the range seen so far, e.g. 0.1"


class SpatialRange:
    """Range breakout for one stream: ``score(t, x)`` in [0, 1) (`UnivariateDetector`)."""

    __slots__ = ("_inv_tol", "_lo", "_hi", "_n", "probation")

    def __init__(self, config: SpatialRangeConfig | None = None, *, probation: int = 750) -> None:
        c = config or SpatialRangeConfig()
        if not c.tolerance > 0.0:
            raise AnomalyError("spatial tolerance must be > 0", tip=_TIP)
        self._inv_tol = 1.0 / c.tolerance
        self.probation = max(int(probation), 1)
        self._lo, self._hi = math.inf, -math.inf  # nothing seen yet
        self._n = 0

    def state_size(self) -> int:
        return 3

    def score(self, t: float, x: float) -> float:
        n = self._n
        self._n = n + 1
        if not -math.inf < x < math.inf:  # NaN or infinite: not scored, not learned
            return 0.0
        lo, hi = self._lo, self._hi
        out = 0.0
        if n >= self.probation and hi > lo:
            e = (x - hi if x > hi else lo - x) / (hi - lo)
            if e > 0.0:
                out = 1.0 - math.exp(-e * self._inv_tol)
        if x < lo:
            self._lo = x
        if x > hi:
            self._hi = x
        return out


class SpatialRangeBank:
    """`SpatialRange` for ``m`` series at once: ``score(t, values) -> scores`` (shape ``[m]``)."""

    def __init__(
        self, m: int, config: SpatialRangeConfig | None = None, *, probation: int = 750,
    ) -> None:
        import numpy as np

        c = config or SpatialRangeConfig()
        if not c.tolerance > 0.0:
            raise AnomalyError("spatial tolerance must be > 0", tip=_TIP)
        self._np = np
        self.m = int(m)
        self._inv_tol = 1.0 / c.tolerance
        self.probation = max(int(probation), 1)
        self._lo = np.full(self.m, np.inf)  # nothing seen yet
        self._hi = np.full(self.m, -np.inf)
        self._n = 0

    def state_size(self) -> int:
        return 2 * self.m + 1

    def score(self, t: float, values: Any) -> Any:
        np = self._np
        x = np.asarray(values, dtype=np.float64).reshape(self.m)
        n = self._n
        self._n = n + 1
        ok = np.isfinite(x)  # NaN or infinite: not scored, not learned
        out = np.zeros(self.m)
        lo, hi = self._lo, self._hi
        if n >= self.probation:
            with np.errstate(invalid="ignore"):  # inf - inf where nothing or no x is finite
                span = hi - lo
                live = ok & (span > 0.0)
                e = np.where(x > hi, x - hi, lo - x) / np.where(live, span, 1.0)
                hit = live & (e > 0.0)
            out[hit] = 1.0 - np.exp(-e[hit] * self._inv_tol)
        np.minimum(lo, np.where(ok, x, np.inf), out=lo)
        np.maximum(hi, np.where(ok, x, -np.inf), out=hi)
        return out
