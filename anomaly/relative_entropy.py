"""Relative Entropy detector (Wang et al. 2011) as a causal stream detector.

Source: C. Wang, K. Viswanathan, L. Choudur, V. Talwar, W. Satterfield, K. Schwan, "Statistical
Techniques for Online Anomaly Detection in Data Centers", IFIP/IEEE IM 2011, Figure 1 (multiple
hypotheses); the NAB entrant ``nab/detectors/relative_entropy/relative_entropy_detector.py``
(numenta/NAB) fixed its settings: 5 bins, windows of 52 samples, threshold
``chi2.isf(0.01, 4)``, a hypothesis must have been seen more than once to count as normal.

How it scores: values are quantised into ``bins`` levels over the value range; the histogram
of the last ``window`` levels is tested against every stored hypothesis (a histogram seen
before) with the statistic ``2 * window * KL(current || hypothesis)``, which is chi-squared with
``bins - 1`` degrees of freedom under the hypothesis. If none is accepted, the window is
anomalous (score 1) and becomes a new hypothesis; if the closest accepted one has been seen
at most ``min_count`` times it is still anomalous. The score is 0 or 1.

Changes from the reference, each for a streaming agent: the value range is that of the
probation samples (NAB passes the whole file's min and max, a look into the future), which are
buffered and replayed so the hypotheses learned in probation are the reference's; values outside
it fall into the end bins; the histogram is updated incrementally (O(1) per sample, not
O(window)); at most ``max_hypotheses`` are stored (memory bound; past it a rejected window still
scores 1 but is not stored).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["RelativeEntropy", "RelativeEntropyConfig"]

# scipy.stats.chi2.isf(0.01, 4): computed once here, so the module needs no scipy
_CHI2_99_4DF = 13.276704135987625


@dataclass(frozen=True)
class RelativeEntropyConfig:
    """Settings of `RelativeEntropy` (the NAB entrant's values)."""

    bins: int = 5
    window: int = 52
    threshold: float = _CHI2_99_4DF  # only right for bins = 5 (chi2 with bins - 1 dof)
    min_count: int = 1  # a hypothesis seen this often or less is still anomalous
    max_hypotheses: int = 256  # memory bound


class RelativeEntropy:
    """Relative-entropy hypothesis test for one stream: ``score(t, x)`` in {0, 1}."""

    def __init__(
        self, config: RelativeEntropyConfig | None = None, *, probation: int = 750,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        self.cfg = c = config or RelativeEntropyConfig()
        self.probation = max(int(probation), 1)
        self._buffer: list[float] | None = []
        self._levels: deque[int] = deque(maxlen=c.window)
        self._counts = [0] * c.bins
        self._hyp: list[tuple[float, ...]] = []
        self._seen: list[int] = []
        self._lo, self._step = 0.0, 0.0
        if value_range is not None:
            self._set_range(*value_range)
            self._buffer = None

    def state_size(self) -> int:
        return (len(self._buffer or ()) + len(self._levels) + len(self._counts)
                + (self.cfg.bins + 1) * len(self._hyp))

    def score(self, t: float, x: float) -> float:
        if self._buffer is not None:
            self._buffer.append(x)
            if len(self._buffer) >= self.probation:
                values, self._buffer = self._buffer, None
                self._set_range(min(values), max(values))
                for v in values:
                    self._step_value(v)
            return 0.0
        return self._step_value(x)

    def _set_range(self, lo: float, hi: float) -> None:
        self._lo, self._step = lo, (hi - lo) / self.cfg.bins

    def _step_value(self, x: float) -> float:
        if self._step == 0.0:  # a flat probation: the reference declares every point normal
            return 0.0
        c = self.cfg
        top = c.bins - 1
        level = math.ceil((x - self._lo) / self._step)  # 0..bins, as the reference
        level = 0 if level < 0 else top if level > top else level  # `bins` shares the top bin
        levels, counts = self._levels, self._counts
        if len(levels) == c.window:
            counts[levels[0]] -= 1
        levels.append(level)
        counts[level] += 1
        if len(levels) < c.window:
            return 0.0
        p = [k / c.window for k in counts]
        if not self._hyp:
            self._hyp.append(tuple(p))
            self._seen.append(1)
            return 0.0
        best, index = math.inf, -1
        scale = 2.0 * c.window
        for i, q in enumerate(self._hyp):
            kl = 0.0
            for pk, qk in zip(p, q, strict=True):
                if pk > 0.0:
                    if qk == 0.0:
                        kl = math.inf
                        break
                    kl += pk * math.log(pk / qk)
            stat = scale * kl
            if stat < c.threshold and stat < best:
                best, index = stat, i
        if index >= 0:
            self._seen[index] += 1
            return 1.0 if self._seen[index] <= c.min_count else 0.0
        if len(self._hyp) < c.max_hypotheses:
            self._hyp.append(tuple(p))
            self._seen.append(1)
        return 1.0
