"""Temporal-context novelty: a jump between value levels larger than any seen from that level.

A causal, bounded-state sketch of what HTM's sequence memory sees and our stream detector does
not: a value the series has shown before, reached from a level it has never left that way (a dip
to a known low, followed by a rise no dip was ever followed by; a two-sample spike on a level
whose changes were all small). Values are quantised into bins of ``(probation range) / bins``
(HTM's encoder resolution is a share of the value range; NAB gives it the whole file's range, a
look into the future: here the probation rows'). For each bin the detector remembers the largest
jump up and the largest jump down that ever left it. A jump of at least ``min_jump`` bins that
exceeds that record by ``e`` bins scores ``1 - exp(-e / (tolerance * min_jump))``; the record
then grows, so the same jump from the same level is not news twice.

Probation: the first ``probation`` samples are kept (bounded by the probation length) and score
0; at its end (or at the first finite value after it, if it had none) the bin width comes from
their range, they are replayed to learn the records, and the buffer is dropped. State afterwards
is three integers per bin: ``(2 * span + 1) * bins + 1`` bins cover ``span`` probation ranges
below and above the probation range (values further out share the edge bins). A NaN or infinite value is neither scored nor learned (it still counts
towards the probation length, as in the other detectors).

Measured on the shared NAB subset as a fourth channel beside the selected default (README,
"Anomaly detection", the round on temporal-context novelty); not part of the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainguard.anomaly.interface import AnomalyError

__all__ = ["JumpNovelty", "JumpNoveltyConfig"]


@dataclass(frozen=True)
class JumpNoveltyConfig:
    """Settings of `JumpNovelty`."""

    bins: int = 10  # bins across the probation range (the resolution)
    min_jump: int = 4  # jumps shorter than this many bins are never scored
    tolerance: float = 1.0  # an excess of tolerance * min_jump bins scores 0.63
    min_count: int = 1  # the bin left must have been left this many times before
    span: int = 3  # probation ranges covered below and above the probation range
    min_width: float = 1e-3  # relative floor of the range (a flat probation)

    def validate(self) -> list[str]:
        problems = []
        if self.bins < 1 or int(self.bins) != self.bins:
            problems.append("jump bins must be a whole number >= 1")
        if self.min_jump < 1 or int(self.min_jump) != self.min_jump:
            problems.append("jump min_jump must be a whole number of bins >= 1")
        if not self.tolerance > 0.0:
            problems.append("jump tolerance must be > 0")
        if self.min_count < 0 or int(self.min_count) != self.min_count:
            problems.append("jump min_count must be a whole number >= 0")
        if self.span < 0 or int(self.span) != self.span:
            problems.append("jump span must be a whole number >= 0")
        if not self.min_width > 0.0:
            problems.append("jump min_width must be > 0")
        return problems


class JumpNovelty:
    """Jump novelty for one stream: ``score(t, x)`` in [0, 1] (`UnivariateDetector`)."""

    __slots__ = ("_buf", "_cnt", "_dn", "_inv_scale", "_lo", "_min", "_n", "_nb", "_off",
                 "_prev", "_up", "_w", "config", "probation")

    def __init__(self, config: JumpNoveltyConfig | None = None, *, probation: int = 750) -> None:
        c = config or JumpNoveltyConfig()
        problems = c.validate()
        if problems:
            raise AnomalyError("; ".join(problems),
                               tip="see trainguard.anomaly.transition.JumpNoveltyConfig")
        self.config = c
        self.probation = max(int(probation), 1)
        self._nb = (2 * c.span + 1) * c.bins + 1
        self._off = c.span * c.bins  # bin index of the probation minimum
        self._min = int(c.min_jump)
        self._inv_scale = 1.0 / (c.tolerance * c.min_jump)
        self._buf: list[float] | None = []  # probation values until the bins are fixed
        self._lo = self._w = 0.0
        self._up: list[int] = []
        self._dn: list[int] = []
        self._cnt: list[int] = []
        self._prev = -1  # bin of the last finite value (-1: none yet)
        self._n = 0

    def state_size(self) -> int:
        return 3 * len(self._up) + len(self._buf or ()) + 4

    def score(self, t: float, x: float) -> float:
        n = self._n
        self._n = n + 1
        finite = -math.inf < x < math.inf  # NaN or infinite: not scored, not learned
        if self._buf is not None:
            if finite:
                self._buf.append(x)
            if n + 1 >= self.probation and self._buf:  # nothing finite yet: wait for one
                self._fit()
            return 0.0
        if not finite:
            return 0.0
        b = self._bin(x)
        prev = self._prev
        self._prev = b
        if prev < 0:
            return 0.0
        out = 0.0
        j = b - prev
        if j >= self._min:
            e = j - self._up[prev]
        elif -j >= self._min:
            e = -j - self._dn[prev]
        else:
            e = 0
        if e > 0 and self._cnt[prev] >= self.config.min_count:
            out = 1.0 - math.exp(-e * self._inv_scale)
        self._learn(prev, j)
        return out

    def _bin(self, x: float) -> int:
        q = (x - self._lo) / self._w + self._off
        if not q >= 0.0:  # below the lowest bin (or NaN from an overflowing range)
            return 0
        return self._nb - 1 if q >= self._nb else int(q)  # q >= 0: int() is floor

    def _learn(self, prev: int, j: int) -> None:
        if j > self._up[prev]:
            self._up[prev] = j
        elif -j > self._dn[prev]:
            self._dn[prev] = -j
        self._cnt[prev] += 1

    def _fit(self) -> None:
        """Fix the bins from the probation values, learn their jumps, drop the buffer."""
        buf, self._buf = self._buf or [], None
        lo, hi = min(buf), max(buf)
        self._up = [0] * self._nb
        self._dn = [0] * self._nb
        self._cnt = [0] * self._nb
        width = max(hi - lo, self.config.min_width * max(abs(lo), abs(hi)))
        self._lo = lo
        self._w = (width if width > 0.0 else 1.0) / self.config.bins  # 1.0: all zeros
        for x in buf:
            b = self._bin(x)
            if self._prev >= 0:
                self._learn(self._prev, b - self._prev)
            self._prev = b
