"""Causal univariate detectors for metric streams, O(1) memory per stream.

Model of a stream: ``x(t) = level + daily[bucket(t)] + weekly[bucket(t)] + noise``.

* **Level**: an exponentially weighted (EW) mean of residuals that are clipped at ``clip``
  spreads first, so an outlier moves it little (a Huber-type robust EW location).
* **Spread**: EW mean absolute deviation of the clipped residuals (x 1.25 ~ a Gaussian sigma),
  with a relative floor so flat lines do not divide by zero.
* **Seasonality**: fixed-size profiles keyed by wall-clock time (``daily_buckets`` buckets per
  day, ``weekly_buckets`` per week on top of it). Each bucket is an EW mean, so memory does not
  grow with the stream. The seasonal prediction is used only while its EW squared error is below
  ``season_gain`` times that of the flat one, so non-seasonal streams are not hurt.
* **Level shifts**: ``shift_run`` samples in a row beyond ``shift_z`` on one side re-baseline
  the level to their mean: a shift raises one alert, not one per sample afterwards.
* **Score**: two channels, each divided by a decaying maximum of its own recent values (so a
  stream whose normal life is spiky needs a bigger spike, ``tail_decay`` per sample): the point
  ``|residual| / sigma``, and *drift*, the EW mean of z (slow changes no single point shows).
  The point ratio is scaled by ``min(1, |z| / z_gate)`` (a noise floor: on Gaussian noise
  |z| rarely passes 4.5, so however quiet the recent past, noise cannot look like an outlier).
  The larger ratio ``q`` maps to ``q^2 / (q^2 + score_scale^2)`` in [0, 1]. After an alert the
  score is damped for ``refractory`` samples so one event gives one alert.
* **Resolution** (``range_floor``, off by default): the spread that divides z is at least
  ``range_floor`` times the range of the values seen so far (two numbers of state). A step
  smaller than that share of what the series has already shown is not news, however flat the
  recent past was: the quantisation Numenta's HTM encoder and CAD-OSE apply to a value (a
  share of the series' range), without their look at the whole file's range.
* **Warm-up**: the score stays 0 for ``warmup`` samples, but the normalisers (the decaying
  maxima of z and drift) learn from sample ``tail_start`` on, so the first scored samples are
  judged against the stream's own extremes, not against ``tail_floor`` (NAB's probation: learn,
  do not alert).
* **Causality**: a sample's score is computed from the state *before* the sample updates it.

`StreamDetector` is the per-stream object (one call per sample). `StreamBank` runs the same
arithmetic for many streams at once with numpy (one call per time step) for agents that watch
hundreds of metrics; the two agree to floating-point rounding (a test checks it).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.interface import AnomalyError

__all__ = ["StreamBank", "StreamDetector", "StreamScore"]

_DAY = 86400.0
_WEEK = 7 * _DAY
_SIGMA_PER_MAD = 1.2533  # E|N(0,1)| = 0.798 -> sigma = 1.2533 * mean |x|


class StreamScore(NamedTuple):
    """One decision: `score` in [0, 1], `alert` when it crossed the threshold, `z` for evidence."""

    score: float
    alert: bool
    z: float
    expected: float


_NAN = float("nan")
_new_tuple = tuple.__new__  # a NamedTuple from a built tuple, without its Python __new__


def _tail_start(c: StreamConfig) -> int:
    """First sample at which the score normalisers learn: never later than the warmup."""
    return int(min(c.warmup, c.tail_start) if c.tail_start >= 0 else c.warmup)


class StreamDetector:
    """Robust level/spread/seasonal detector for one stream. `update(t, x)` per sample.

    The update is one flat function with the settings copied into slots: this is the hot path
    of every metric stream (about 2x faster than the same arithmetic split into helpers).
    """

    __slots__ = (
        "cfg", "n", "level", "mad0", "mad1", "mad2", "daily", "weekly", "drift",
        "run", "run_sum", "since_alert", "tail", "tail2", "absx", "lo", "hi", "_dw", "_ww", "_k",
    )

    def __init__(self, config: StreamConfig | None = None) -> None:
        c = self.cfg = config or StreamConfig()
        self.n = 0
        self.level = 0.0
        # EW mean absolute error of each predictor: flat level, daily and weekly profile
        self.mad0 = self.mad1 = self.mad2 = 0.0
        self.daily = [_NAN] * c.daily_buckets  # NaN: bucket not seen yet
        self.weekly = [_NAN] * c.weekly_buckets
        self.drift = 0.0
        self.run = 0
        self.run_sum = 0.0
        self.since_alert = 1 << 30
        self.tail = c.tail_floor
        self.tail2 = c.tail_floor
        self.absx = 0.0
        self.lo = self.hi = 0.0  # range of the values seen so far (for range_floor)
        self._dw = _DAY / c.daily_buckets
        self._ww = _WEEK / c.weekly_buckets if c.weekly_buckets else 0.0
        self._k = (
            c.season_gain, c.min_spread, c.drift_alpha, c.drift_weight,
            c.warmup, c.log_z, c.score_scale * c.score_scale, c.tail_decay, c.tail_rate,
            1.0 - c.tail_quantile, c.tail_floor, c.refractory, c.refractory_damp, c.threshold,
            c.clip, c.spread_alpha, c.level_alpha, c.season_alpha, c.shift_z, c.shift_run,
            _tail_start(c), c.z_gate, c.range_floor,
        )

    def state_size(self) -> int:
        """Number of values held: constant for the life of the stream."""
        return 17 + len(self.daily) + len(self.weekly)

    def score(self, t: float, x: float) -> float:
        """`UnivariateDetector` interface: the score of `update` alone."""
        return self._step(t, x)[0]

    def update(self, t: float, x: float) -> StreamScore:
        """Score sample `x` at time `t` (seconds) from earlier samples, then learn from it."""
        return _new_tuple(StreamScore, self._step(t, x))

    def _step(self, t: float, x: float) -> tuple[float, bool, float, float]:  # noqa: C901
        """`update` as a plain tuple: the hot path, flat (a NamedTuple costs ~0.4 us to build,
        a tenth of the whole step; `score` and `FusedStreamMax` need only the score)."""
        (gain, min_spread, drift_alpha, drift_w, warmup, log_z, scale2, tail_decay, tail_rate,
         tail_p, tail_floor, refractory, damp, threshold, clip, spread_alpha, level_alpha,
         season_alpha, shift_z, shift_run, tail_start, z_gate, range_floor) = self._k
        n = self.n
        level = self.level
        if not -math.inf < x < math.inf:  # NaN or infinite: not scored, not learned
            return 0.0, False, 0.0, level
        if n == 0:
            self.level, self.n, self.absx, self.lo, self.hi = x, 1, abs(x), x, x
            return 0.0, False, 0.0, x
        daily, weekly = self.daily, self.weekly
        bd = int(t % _DAY // self._dw)
        p1 = daily[bd]
        if p1 != p1:
            p1 = level
        if self._ww:
            bw = int(t % _WEEK // self._ww)
            p2 = weekly[bw]
            if p2 != p2:
                p2 = level
        else:
            bw, p2 = -1, level
        # the predictor with the smallest recent error wins, if it beats flat by season_gain
        m0, m1, m2 = self.mad0, self.mad1, self.mad2
        expected, mbest = level, m0
        if m1 < gain * m0 and m1 < mbest:
            expected, mbest = p1, m1
        if m2 < gain * m0 and m2 < mbest:
            expected, mbest = p2, m2
        sigma = _SIGMA_PER_MAD * mbest
        floor = min_spread * self.absx
        if floor > sigma:
            sigma = floor
        if sigma < 1e-12:
            sigma = 1e-12
        if range_floor:  # resolution: a step this small against the range seen is not news
            rf = range_floor * (self.hi - self.lo)
            z = (x - expected) / (rf if rf > sigma else sigma)
        else:
            z = (x - expected) / sigma
        zc = 10.0 if z > 10.0 else -10.0 if z < -10.0 else z
        drift = self.drift + drift_alpha * (zc - self.drift)
        za = abs(z)
        score = 0.0
        if n >= tail_start:
            tail = self.tail
            zn = math.log1p(za) / math.log1p(tail) if log_z else za / tail
            if za < z_gate:  # noise floor: a point this small is not a full outlier
                zn *= za / z_gate
            if drift_w:
                # a second channel: the short-term mean of z against its own recent extremes
                dz = abs(drift)
                t2 = self.tail2
                zd = drift_w * dz / t2
                if zd > zn:
                    zn = zd
                t2 *= tail_decay or 0.998
                if dz > t2:
                    t2 = dz
                self.tail2 = t2 if t2 > 0.5 else 0.5
            if n >= warmup:
                score = zn * zn / (zn * zn + scale2)
            # normalise by the stream's own recent extremes: heavy tails need bigger outliers
            if tail_decay:
                tail *= tail_decay
                if za > tail:
                    tail = za if za < 1e6 else 1e6
            else:
                tail *= math.exp(tail_rate * ((za > tail) - tail_p))
            self.tail = tail if tail > tail_floor else tail_floor
        since = self.since_alert + 1
        alert = False
        if since <= refractory:
            score *= damp
        elif score >= threshold:
            alert, since = True, 0
        self.since_alert = since
        # learn: clipped residuals update every predictor's error, the level and the profiles
        lim = clip * sigma
        sa = 1.0 / (n + 1)  # bias-corrected start: plain means until alpha takes over
        la = level_alpha if level_alpha > sa else sa
        if spread_alpha > sa:
            sa = spread_alpha
        e = abs(x - level)
        self.mad0 = m0 + sa * ((e if e < lim else lim) - m0)
        e = abs(x - p1)
        self.mad1 = m1 + sa * ((e if e < lim else lim) - m1)
        e = abs(x - p2)
        self.mad2 = m2 + sa * ((e if e < lim else lim) - m2)
        self.absx += sa * (abs(x) - self.absx)
        r = x - level
        level += la * (lim if r > lim else -lim if r < -lim else r)
        d = daily[bd]
        if d != d:
            daily[bd] = x
        else:
            e = x - d
            daily[bd] = d + season_alpha * (lim if e > lim else -lim if e < -lim else e)
        if bw >= 0:
            w = weekly[bw]
            if w != w:
                weekly[bw] = x
            else:
                e = x - w
                weekly[bw] = w + season_alpha * (lim if e > lim else -lim if e < -lim else e)
        # level shift: shift_run samples in a row beyond shift_z on one side re-baseline
        run = self.run
        if z > shift_z or z < -shift_z:
            up = z > 0
            if run == 0 or (run > 0) == up:
                run += 1 if up else -1
                run_sum = self.run_sum + r
                if abs(run) >= shift_run:
                    level += run_sum / abs(run)
                    drift = 0.0
                    run, run_sum = 0, 0.0
            else:
                run, run_sum = (1 if up else -1), r
        else:
            run, run_sum = 0, 0.0
        self.run, self.run_sum = run, run_sum
        self.level, self.drift, self.n = level, drift, n + 1
        if x < self.lo:
            self.lo = x
        elif x > self.hi:
            self.hi = x
        return score, alert, z, expected


class StreamBank:
    """`StreamDetector` arithmetic for ``m`` streams at once: one numpy call per time step.

    Every stream gets one finite value per step (same timestamp); unlike `StreamDetector`,
    which skips NaN, the bank expects the caller to fill or drop missing values, and refuses a
    step with a NaN or infinity (one would poison that stream's state for good).
    ``update(t, xs)`` returns ``(scores, alerts, z)`` as arrays of length ``m``. State is a fixed set of arrays of size
    ``m`` (``m x buckets`` for the profiles): O(1) per stream.
    """

    def __init__(self, m: int, config: StreamConfig | None = None) -> None:
        import numpy as np

        self._np = np
        self.cfg = c = config or StreamConfig()
        self.m, self.n = m, 0
        self.level, self.absx, self.drift, self.run_sum, self.lo, self.hi = (
            np.zeros(m) for _ in range(6))
        self.tail = np.full(m, c.tail_floor)
        self.tail2 = np.full(m, c.tail_floor)
        self.mad = np.zeros((3, m))
        self.run = np.zeros(m, dtype=np.int64)
        self.since_alert = np.full(m, 1 << 30, dtype=np.int64)
        self.daily = np.zeros((m, c.daily_buckets))
        self.dseen = np.zeros((m, c.daily_buckets), dtype=bool)
        self.weekly = np.zeros((m, max(c.weekly_buckets, 1)))
        self.wseen = np.zeros((m, max(c.weekly_buckets, 1)), dtype=bool)
        self._dw = _DAY / c.daily_buckets
        self._ww = _WEEK / c.weekly_buckets if c.weekly_buckets else 0.0
        self._tail_start = _tail_start(c)

    def score(self, t: float, values: Any) -> Any:
        """`DetectorBank` interface: the scores of `update` alone."""
        return self.update(t, values)[0]

    def state_size(self) -> int:
        """Number of values held for all streams: constant for the life of the bank."""
        return 13 * self.m + 2 * (self.daily.size + self.weekly.size)

    def update(self, t: float, xs: Any) -> tuple[Any, Any, Any]:
        """Score one value per stream at time `t`, then learn from them."""
        np, c = self._np, self.cfg
        x = np.asarray(xs, dtype=np.float64)
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x))
            raise AnomalyError(
                f"stream bank: {len(bad)} of {self.m} values at t={t} are NaN or infinite "
                f"(first: series {int(bad[0])}); nothing was scored or learned at this step",
                tip="fill or drop missing values before the bank, or score that series with "
                    "make_detector (the scalar detector skips them)")
        if self.n == 0:
            self.level, self.absx, self.n = x.copy(), np.abs(x), 1
            self.lo, self.hi = x.copy(), x.copy()
            return np.zeros(self.m), np.zeros(self.m, dtype=bool), np.zeros(self.m)
        bd = int(t % _DAY // self._dw)
        bw = int(t % _WEEK // self._ww) if self._ww else 0
        preds = np.stack([
            self.level,
            np.where(self.dseen[:, bd], self.daily[:, bd], self.level),
            np.where(self.wseen[:, bw], self.weekly[:, bw], self.level) if self._ww else self.level,
        ])
        best = np.zeros(self.m, dtype=np.int64)
        cols = np.arange(self.m)
        for k in (1, 2):
            better = (self.mad[k] < c.season_gain * self.mad[0]) & (self.mad[k] < self.mad[best, cols])
            best = np.where(better, k, best)
        expected = preds[best, cols]
        sigma = np.maximum(np.maximum(_SIGMA_PER_MAD * self.mad[best, cols],
                                      c.min_spread * self.absx), 1e-12)
        if c.range_floor:
            z = (x - expected) / np.maximum(sigma, c.range_floor * (self.hi - self.lo))
        else:
            z = (x - expected) / sigma
        self.drift += c.drift_alpha * (np.clip(z, -10.0, 10.0) - self.drift)
        za = np.abs(z)
        score = np.zeros(self.m)
        if self.n >= self._tail_start:
            zn = np.log1p(za) / np.log1p(self.tail) if c.log_z else za / self.tail
            if c.z_gate > 0:
                zn = np.where(za < c.z_gate, zn * (za / c.z_gate), zn)
            if c.drift_weight:
                dz = np.abs(self.drift)
                zn = np.maximum(zn, c.drift_weight * dz / self.tail2)
                self.tail2 = np.maximum(np.maximum(self.tail2 * (c.tail_decay or 0.998), dz), 0.5)
            if self.n >= c.warmup:
                score = zn * zn / (zn * zn + c.score_scale * c.score_scale)
            if c.tail_decay:
                self.tail = np.maximum(np.maximum(self.tail * c.tail_decay, np.minimum(za, 1e6)),
                                       c.tail_floor)
            else:
                step = (za > self.tail) - (1.0 - c.tail_quantile)
                self.tail = np.maximum(self.tail * np.exp(c.tail_rate * step), c.tail_floor)
        self.since_alert += 1
        damped = self.since_alert <= c.refractory
        score = np.where(damped, score * c.refractory_damp, score)
        alert = ~damped & (score >= c.threshold)
        self.since_alert[alert] = 0
        self._learn(x, preds, z, sigma, bd, bw)
        np.minimum(self.lo, x, out=self.lo)
        np.maximum(self.hi, x, out=self.hi)
        return score, alert, z

    def _learn(self, x: Any, preds: Any, z: Any, sigma: Any, bd: int, bw: int) -> None:
        np, c = self._np, self.cfg
        lim = c.clip * sigma
        warm = 1.0 / (self.n + 1)
        sa = max(c.spread_alpha, warm)
        self.mad += sa * (np.minimum(np.abs(x - preds), lim) - self.mad)
        self.absx += sa * (np.abs(x) - self.absx)
        r = x - self.level
        self.level += max(c.level_alpha, warm) * np.clip(r, -lim, lim)
        seen = self.dseen[:, bd]
        d = self.daily[:, bd]
        self.daily[:, bd] = np.where(seen, d + c.season_alpha * np.clip(x - d, -lim, lim), x)
        self.dseen[:, bd] = True
        if self._ww:
            seen, w = self.wseen[:, bw], self.weekly[:, bw]
            self.weekly[:, bw] = np.where(seen, w + c.season_alpha * np.clip(x - w, -lim, lim), x)
            self.wseen[:, bw] = True
        big = np.abs(z) > c.shift_z
        sign = np.where(z > 0, 1, -1)
        cont = big & ((self.run == 0) | ((self.run > 0) == (z > 0)))
        run = np.where(cont, self.run + sign, np.where(big, sign, 0))
        run_sum = np.where(cont, self.run_sum + r, np.where(big, r, 0.0))
        shifted = cont & (np.abs(run) >= c.shift_run)
        self.level += np.where(shifted, run_sum / np.maximum(np.abs(run), 1), 0.0)
        self.drift = np.where(shifted, 0.0, self.drift)
        self.run = np.where(shifted, 0, run)
        self.run_sum = np.where(shifted, 0.0, run_sum)
        self.n += 1
