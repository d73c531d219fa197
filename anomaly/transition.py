"""Temporal-context novelty: two causal, bounded-state sketches of what HTM's sequence memory
sees and our stream detector does not, a value the series has shown before in a context it
has not.

`JumpNovelty` (name ``jump``): a jump between value levels larger than any seen from that level
(a dip to a known low, followed by a rise no dip was ever followed by; a two-sample spike on a
level whose changes were all small). Values are quantised into bins of ``(probation range) /
bins`` (HTM's encoder resolution is a share of the value range; NAB gives it the whole file's
range, a look into the future: here the probation rows'). For each bin the detector remembers
the largest jump up and the largest jump down that ever left it. A jump of at least
``min_jump`` bins that exceeds that record by ``e`` bins scores
``1 - exp(-e / (tolerance * min_jump))``; the record then grows, so the same jump from the same
level is not news twice. Probation: the first ``probation`` samples are kept (bounded by the
probation length) and score 0; at its end (or at the first finite value after it, if it had
none) the bin width comes from their range, they are replayed to learn the records, and the
buffer is dropped. State afterwards is three integers per bin: ``(2 * span + 1) * bins + 1``
bins cover ``span`` probation ranges below and above the probation range (values further out
share the edge bins).

`DwellNovelty` (name ``dwell``): a stay at a *rare* level longer than any stay there before (a
burst whose height the series has shown in short bursts, lasting several times as long). The
range seen so far is cut into ``levels`` bands; for each band edge k the detector counts the
current run of samples at or above it, the longest such run before, and how many samples in
all were at or above it. It scores 1, once per run, when a run exceeds ``ratio`` times the
longest earlier run there (at least ``min_run`` samples) while the samples at or above that
edge before this run are fewer than ``rare`` of all samples seen (this run included); else 0. During probation it
only learns (the longest runs include one still running when probation ends). A level shift
scores once (all edges it crosses fire on the same sample); the rarity condition is what
keeps a level the series has come to hold often from being news however long it is held.
State: four numbers per band edge and the range.

`JumpNoveltyBank` is `JumpNovelty` for ``m`` series at once (`DetectorBank`, one numpy step per
time step; the same arithmetic, so the same scores up to ``np.exp`` against ``math.exp``).

In both, a NaN or infinite value is neither scored nor learned (it still counts towards the
probation length, as in the other detectors). Measured on the shared NAB subset as a channel
beside the selected default (README, "Anomaly detection", "Temporal-context novelty"); neither
was part of the default when they were written; the jump channel is now its fourth member
(`trainguard.anomaly.config.SELECTED_MEMBERS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainguard.anomaly.interface import AnomalyError

__all__ = ["DwellNovelty", "DwellNoveltyConfig", "JumpNovelty", "JumpNoveltyBank",
           "JumpNoveltyConfig"]


@dataclass(frozen=True)
class JumpNoveltyConfig:
    """Settings of `JumpNovelty`."""

    bins: int = 10  # bins across the probation range (the resolution)
    min_jump: int = 4  # jumps shorter than this many bins are never scored
    tolerance: float = 1.0  # an excess of tolerance * min_jump bins scores 0.63
    min_count: int = 1  # the bin left must have been left this many times before
    span: int = 3  # probation ranges covered below and above the probation range
    min_width: float = 1e-3  # relative floor of the range (a flat probation)
    hold: int = 0  # report a jump only once the next `hold` values stayed beyond its start
    quiet: int = 0  # samples after a jump scoring >= quiet_at in which no jump is scored
    quiet_at: float = 0.6

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
        if self.hold < 0 or int(self.hold) != self.hold:
            problems.append("jump hold must be a whole number of samples >= 0 (0: off)")
        if self.quiet < 0 or int(self.quiet) != self.quiet:
            problems.append("jump quiet must be a whole number of samples >= 0 (0: off)")
        if not 0.0 < self.quiet_at <= 1.0:
            problems.append("jump quiet_at must be a score in (0, 1]")
        return problems


class JumpNovelty:
    """Jump novelty for one stream: ``score(t, x)`` in [0, 1] (`UnivariateDetector`)."""

    __slots__ = ("_buf", "_cnt", "_dn", "_hold", "_inv_scale", "_left", "_lo", "_mc", "_min",
                 "_n", "_nb", "_off", "_pend", "_prev", "_qat", "_quiet", "_up", "_w", "_xprev",
                 "config", "probation")

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
        self._mc = int(c.min_count)
        self._inv_scale = 1.0 / (c.tolerance * c.min_jump)
        self._hold, self._quiet, self._qat = int(c.hold), int(c.quiet), float(c.quiet_at)
        self._buf: list[float] | None = []  # probation values until the bins are fixed
        self._lo = self._w = 0.0
        self._up: list[int] = []
        self._dn: list[int] = []
        self._cnt: list[int] = []
        self._prev = -1  # bin of the last finite value (-1: none yet)
        self._xprev = 0.0  # the last finite value (where a jump starts from)
        self._left = 0  # samples of quiet left
        # jumps waiting for their hold: [finite samples still to hold, value the jump left,
        # jumped up, score]; at most `hold` of them (one per sample, each lives `hold` samples)
        self._pend: list[list[Any]] = []
        self._n = 0

    def state_size(self) -> int:
        return 3 * len(self._up) + len(self._buf or ()) + 4 * len(self._pend) + 7

    def score(self, t: float, x: float) -> float:  # noqa: C901, PLR0912 - hot path, flat
        buf = self._buf
        if buf is not None:  # probation (the sample count matters only until the fit)
            n = self._n = self._n + 1
            if -math.inf < x < math.inf:  # NaN or infinite: not kept
                buf.append(x)
            if n >= self.probation and buf:  # nothing finite yet: wait for one
                self._fit()
            return 0.0
        left = self._left
        if left:  # the quiet period counts every sample, NaN included (as `Rested` does)
            self._left = left - 1
        if not -math.inf < x < math.inf:  # NaN or infinite: not scored, learned nor held
            return 0.0
        # `_bin` and `_learn` written out (this runs on every sample of the default stream)
        q = (x - self._lo) / self._w + self._off
        if not q >= 0.0:  # below the lowest bin (or NaN from an overflowing range)
            b = 0
        elif q >= self._nb:
            b = self._nb - 1
        else:
            b = int(q)  # q >= 0: int() is floor
        prev = self._prev
        self._prev = b
        xprev = self._xprev
        self._xprev = x
        if prev < 0:
            return 0.0
        out = 0.0
        j = b - prev
        if j >= self._min:  # a long jump up: news by how far it beats the record from prev
            up = self._up
            e = j - up[prev]
            if e > 0:
                if self._cnt[prev] >= self._mc:
                    out = 1.0 - math.exp(-e * self._inv_scale)
                up[prev] = j
        elif -j >= self._min:
            dn = self._dn
            e = -j - dn[prev]
            if e > 0:
                if self._cnt[prev] >= self._mc:
                    out = 1.0 - math.exp(-e * self._inv_scale)
                dn[prev] = -j
        elif j > self._up[prev]:  # a short jump: only learned
            self._up[prev] = j
        elif -j > self._dn[prev]:
            self._dn[prev] = -j
        self._cnt[prev] += 1
        if left:  # quiet: learned, not scored
            out = 0.0
        elif out >= self._qat and self._quiet:
            self._left = self._quiet
        if not self._hold:
            return out
        # the hold: a jump is reported `hold` finite samples late, and only if every one of
        # them stayed beyond the value it jumped from (a spike that falls back is not a new
        # level); the quiet period above started at the jump either way
        rep = 0.0
        pend = self._pend
        if pend:
            keep = []
            for p in pend:
                if (x > p[1]) if p[2] else (x < p[1]):
                    if p[0] == 1:
                        if p[3] > rep:
                            rep = p[3]
                    else:
                        p[0] -= 1
                        keep.append(p)
            self._pend = pend = keep
        if out > 0.0:
            pend.append([self._hold, xprev, j > 0, out])
        return rep

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
        if buf:
            self._xprev = buf[-1]


class JumpNoveltyBank:
    """`JumpNovelty` for ``m`` series at once: ``score(t, values) -> scores`` (shape ``[m]``).

    The probation values of all series are kept in one ``probation x m`` array (NaN where a
    value is not finite) and replayed together, one vector step per row; a series without one
    finite probation value fits at its first finite value after, as `JumpNovelty` does.
    """

    def __init__(
        self, m: int, config: JumpNoveltyConfig | None = None, *, probation: int = 750,
    ) -> None:
        import numpy as np

        c = config or JumpNoveltyConfig()
        problems = c.validate()
        if problems:
            raise AnomalyError("; ".join(problems),
                               tip="see trainguard.anomaly.transition.JumpNoveltyConfig")
        self._np, self.config, self.m = np, c, int(m)
        self.probation = max(int(probation), 1)
        self._nb = (2 * c.span + 1) * c.bins + 1
        self._off = float(c.span * c.bins)
        self._inv_scale = 1.0 / (c.tolerance * c.min_jump)
        self._buf: Any = np.full((self.probation, self.m), np.nan)  # None once fitted
        self._lo = np.zeros(self.m)
        self._w = np.ones(self.m)
        self._up = np.zeros((self.m, self._nb), dtype=np.int64)
        self._dn = np.zeros((self.m, self._nb), dtype=np.int64)
        self._cnt = np.zeros((self.m, self._nb), dtype=np.int64)
        self._prev = np.full(self.m, -1, dtype=np.int64)  # -1: no finite value yet
        self._fitted = np.zeros(self.m, dtype=bool)
        self._rows = np.arange(self.m)
        self._n = 0
        self._left = np.zeros(self.m, dtype=np.int64)  # samples of quiet left
        self._xprev = np.zeros(self.m)  # the last finite value (where a jump starts from)
        # the hold: a ring of `hold` pending jumps per series, slot = finite samples % hold
        # (a jump waits exactly `hold` finite samples, so its slot is free when reused)
        h = max(int(c.hold), 1)
        self._k = np.zeros(self.m, dtype=np.int64)  # finite samples scored, per series
        self._p_left = np.zeros((self.m, h), dtype=np.int64)  # 0: slot empty
        self._p_dep = np.zeros((self.m, h))  # the value the jump left
        self._p_up = np.zeros((self.m, h), dtype=bool)
        self._p_score = np.zeros((self.m, h))

    def state_size(self) -> int:
        buf = 0 if self._buf is None else self._buf.size
        return 3 * self._up.size + buf + 4 * self._p_left.size + 6 * self.m + 1

    def _bins(self, x: Any) -> Any:
        np = self._np
        with np.errstate(invalid="ignore", over="ignore"):
            q = (x - self._lo) / self._w + self._off
            top = self._nb - 1
            # below the lowest bin or NaN: 0; at or above the top: the top bin; else floor
            b = np.where(q >= 0.0, np.where(q >= self._nb, top, np.floor(q)), 0.0)
        return b.astype(np.int64)

    def _learn(self, live: Any, b: Any) -> None:
        """Each live series: the jump from its previous bin to ``b`` raises that bin's records."""
        np = self._np
        r, prev = self._rows[live], self._prev[live]
        j = b[live] - prev
        self._up[r, prev] = np.maximum(self._up[r, prev], j)
        self._dn[r, prev] = np.maximum(self._dn[r, prev], -j)
        self._cnt[r, prev] += 1

    def _fit(self, which: Any, buf: Any) -> None:
        """Fix the bins of the series in ``which`` from their rows of ``buf`` and replay them."""
        np = self._np
        vals = buf[:, which]
        lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
        width = np.maximum(hi - lo, self.config.min_width * np.maximum(np.abs(lo), np.abs(hi)))
        self._lo[which] = lo
        self._w[which] = np.where(width > 0.0, width, 1.0) / self.config.bins
        self._fitted[which] = True
        for row in buf:
            ok = which & np.isfinite(row)
            b = self._bins(row)
            live = ok & (self._prev >= 0)
            if live.any():
                self._learn(live, b)
            self._prev = np.where(ok, b, self._prev)
            self._xprev = np.where(ok, row, self._xprev)

    def score(self, t: float, values: Any) -> Any:
        np = self._np
        x = np.asarray(values, dtype=np.float64).reshape(self.m)
        n = self._n
        self._n = n + 1
        ok = np.isfinite(x)  # NaN or infinite: not scored, not learned
        out = np.zeros(self.m)
        if self._buf is not None:
            self._buf[n] = np.where(ok, x, np.nan)
            if n + 1 >= self.probation:
                buf, self._buf = self._buf, None
                which = np.isfinite(buf).any(axis=0)
                if which.any():
                    self._fit(which, buf)
            return out
        c = self.config
        left = self._left
        quiet = left > 0  # the quiet period counts every sample, NaN included
        if quiet.any():
            self._left = np.where(quiet, left - 1, 0)
        late = ok & ~self._fitted  # no finite probation value: fit at this one, score 0
        if late.any():
            self._fit(late, np.where(late, x, np.nan)[None, :])
            ok = ok & ~late
        if not ok.any():
            return out
        b = self._bins(x)
        r, prev = self._rows[ok], self._prev[ok]
        j = b[ok] - prev
        up, dn, cnt = self._up[r, prev], self._dn[r, prev], self._cnt[r, prev]
        lim = c.min_jump
        e = np.where(j >= lim, j - up, np.where(-j >= lim, -j - dn, 0))
        hit = (e > 0) & (cnt >= c.min_count) & ~quiet[r]  # quiet: learned, not scored
        out[r[hit]] = 1.0 - np.exp(-e[hit] * self._inv_scale)
        self._up[r, prev] = np.maximum(up, j)
        self._dn[r, prev] = np.maximum(dn, -j)
        self._cnt[r, prev] = cnt + 1
        self._prev[r] = b[ok]
        dep = self._xprev[r]
        self._xprev[r] = x[r]
        if c.quiet:
            start = hit.copy()
            start[hit] = out[r[hit]] >= c.quiet_at
            self._left[r[start]] = int(c.quiet)
        if not c.hold:
            return out
        # the hold (see `JumpNovelty.score`): pending jumps of these series meet this value
        xr = x[r]
        pl, pd = self._p_left[r], self._p_dep[r]
        active = pl > 0
        held = np.where(self._p_up[r], xr[:, None] > pd, xr[:, None] < pd)
        pl = np.where(active & held, pl - 1, 0)
        done = active & held & (pl == 0)
        rep = np.where(done, self._p_score[r], 0.0).max(axis=1)
        self._p_left[r] = pl
        new = out[r] > 0.0
        if new.any():
            rn = r[new]
            slot = self._k[rn] % int(c.hold)
            self._p_left[rn, slot] = int(c.hold)
            self._p_dep[rn, slot] = dep[new]
            self._p_up[rn, slot] = j[new] > 0
            self._p_score[rn, slot] = out[rn]
        self._k[r] += 1
        out[r] = rep
        return out


@dataclass(frozen=True)
class DwellNoveltyConfig:
    """Settings of `DwellNovelty`."""

    levels: int = 4  # bands of the range seen so far (levels - 1 band edges are watched)
    ratio: float = 2.0  # a run longer than ratio x the longest earlier run at an edge is news
    min_run: int = 6  # the longest earlier run counts as at least this many samples
    rare: float = 0.05  # ... only where earlier samples there are under this share of all

    def validate(self) -> list[str]:
        problems = []
        if self.levels < 2 or int(self.levels) != self.levels:
            problems.append("dwell levels must be a whole number >= 2")
        if not self.ratio >= 1.0:
            problems.append("dwell ratio must be >= 1")
        if self.min_run < 1 or int(self.min_run) != self.min_run:
            problems.append("dwell min_run must be a whole number of samples >= 1")
        if not 0.0 < self.rare <= 1.0:
            problems.append("dwell rare must be a share of time in (0, 1]")
        return problems


class DwellNovelty:
    """Dwell novelty for one stream: ``score(t, x)`` in {0, 1} (`UnivariateDetector`)."""

    __slots__ = ("_above", "_fired", "_hi", "_levels", "_lo", "_longest", "_n", "_run",
                 "_seen", "config", "probation")

    def __init__(self, config: DwellNoveltyConfig | None = None, *, probation: int = 750) -> None:
        c = config or DwellNoveltyConfig()
        problems = c.validate()
        if problems:
            raise AnomalyError("; ".join(problems),
                               tip="see trainguard.anomaly.transition.DwellNoveltyConfig")
        self.config = c
        self.probation = max(int(probation), 1)
        self._levels = int(c.levels)
        edges = self._levels  # index 0 unused: band edge k is lo + k / levels of the range
        self._run = [0] * edges  # current run at or above edge k
        self._longest = [0] * edges  # longest earlier run there
        self._above = [0] * edges  # samples at or above edge k, all told
        self._fired = [False] * edges  # this run has already scored
        self._lo, self._hi = math.inf, -math.inf
        self._seen = 0  # samples judged against the edges
        self._n = 0

    def state_size(self) -> int:
        return 4 * len(self._run) + 4

    def score(self, t: float, x: float) -> float:
        n = self._n
        self._n = n + 1
        if not -math.inf < x < math.inf:  # NaN or infinite: not scored, not learned
            return 0.0
        lo, hi = self._lo, self._hi
        hit = False
        if hi > lo:
            c = self.config
            q = (x - lo) / (hi - lo) * self._levels
            # NaN (an overflowing range) and below the range: under every edge
            band = int(q) if 0.0 <= q < self._levels else (self._levels if q >= 0.0 else 0)
            learning = n < self.probation
            run, longest, above, fired = self._run, self._longest, self._above, self._fired
            budget = c.rare * self._seen
            for k in range(1, self._levels):
                if band >= k:
                    r = run[k] = run[k] + 1
                    if learning:
                        if r > longest[k]:
                            longest[k] = r
                    elif (not fired[k] and r > c.ratio * max(longest[k], c.min_run)
                          and above[k] - r < budget):
                        fired[k] = hit = True
                    above[k] += 1
                else:
                    if run[k] > longest[k]:
                        longest[k] = run[k]
                    run[k] = 0
                    fired[k] = False
            self._seen += 1
        if x < lo:
            self._lo = x
        if x > hi:
            self._hi = x
        return 1.0 if hit else 0.0
