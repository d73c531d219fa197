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
* **Score**: ``z = max(|residual| / sigma, drift)`` where *drift* is the EW mean of z scaled to
  unit variance (catches slow changes that no single point shows), mapped to
  ``z^2 / (z^2 + score_scale^2)`` in [0, 1]. After an alert the score is damped for
  ``refractory`` samples so one event gives one alert.
* **Causality**: a sample's score is computed from the state *before* the sample updates it.

`StreamDetector` is the per-stream object (one call per sample). `StreamBank` runs the same
arithmetic for many streams at once with numpy (one call per time step) for agents that watch
hundreds of metrics; the two agree to floating-point rounding (a test checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainguard.anomaly.config import StreamConfig

__all__ = ["StreamBank", "StreamDetector", "StreamScore"]

_DAY = 86400.0
_WEEK = 7 * _DAY
_SIGMA_PER_MAD = 1.2533  # E|N(0,1)| = 0.798 -> sigma = 1.2533 * mean |x|


@dataclass(frozen=True)
class StreamScore:
    """One decision: `score` in [0, 1], `alert` when it crossed the threshold, `z` for evidence."""

    score: float
    alert: bool
    z: float
    expected: float


class StreamDetector:
    """Robust level/spread/seasonal detector for one stream. `update(t, x)` per sample."""

    __slots__ = (
        "cfg", "n", "level", "mad", "daily", "dseen", "weekly", "wseen", "drift",
        "run", "run_sum", "since_alert", "tail", "absx", "_dw", "_ww", "_drift_norm",
    )

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.cfg = config or StreamConfig()
        self.n = 0
        self.level = 0.0
        # per predictor (flat, daily, weekly): EW mean absolute error
        self.mad = [0.0, 0.0, 0.0]
        self.daily = [0.0] * self.cfg.daily_buckets
        self.dseen = [False] * self.cfg.daily_buckets
        self.weekly = [0.0] * self.cfg.weekly_buckets
        self.wseen = [False] * self.cfg.weekly_buckets
        self.drift = 0.0
        self.run = 0
        self.run_sum = 0.0
        self.since_alert = 1 << 30
        self.tail = self.cfg.tail_floor
        self.absx = 0.0
        self._dw = _DAY / self.cfg.daily_buckets
        self._ww = _WEEK / self.cfg.weekly_buckets if self.cfg.weekly_buckets else 0.0
        a = self.cfg.drift_alpha
        self._drift_norm = math.sqrt((2.0 - a) / a)

    def state_size(self) -> int:
        """Number of values held: constant for the life of the stream."""
        return 12 + 2 * (len(self.daily) + len(self.weekly))

    def update(self, t: float, x: float) -> StreamScore:
        """Score sample `x` at time `t` (seconds) from earlier samples, then learn from it."""
        c = self.cfg
        if self.n == 0:
            self.level, self.n, self.absx = x, 1, abs(x)
            return StreamScore(0.0, False, 0.0, x)
        bd = int(t % _DAY // self._dw)
        bw = int(t % _WEEK // self._ww) if self._ww else 0
        preds = (
            self.level,
            self.daily[bd] if self.dseen[bd] else self.level,
            self.weekly[bw] if self._ww and self.wseen[bw] else self.level,
        )
        # the predictor with the smallest recent error wins, if it beats flat by season_gain
        best = 0
        for k in (1, 2):
            if self.mad[k] < c.season_gain * self.mad[0] and self.mad[k] < self.mad[best]:
                best = k
        expected = preds[best]
        sigma = max(_SIGMA_PER_MAD * self.mad[best], c.min_spread * self.absx, 1e-12)
        r = x - expected
        z = r / sigma
        zc = max(-10.0, min(10.0, z))
        self.drift += c.drift_alpha * (zc - self.drift)
        za = max(abs(z), c.drift_weight * abs(self.drift) * self._drift_norm)
        score = 0.0
        if self.n >= c.warmup:
            zn = math.log1p(za) / math.log1p(self.tail) if c.log_z else za / self.tail
            score = zn * zn / (zn * zn + c.score_scale * c.score_scale)
            # the tail quantile of the stream's own |z|: heavy-tailed streams need bigger outliers
            if c.tail_decay:
                self.tail = max(self.tail * c.tail_decay, min(za, 1e6), c.tail_floor)
            else:
                self.tail *= math.exp(c.tail_rate * ((za > self.tail) - (1.0 - c.tail_quantile)))
                self.tail = max(self.tail, c.tail_floor)
        self.since_alert += 1
        alert = False
        if self.since_alert <= c.refractory:
            score *= c.refractory_damp
        elif score >= c.threshold:
            alert, self.since_alert = True, 0
        self._learn(x, preds, z, sigma, bd, bw)
        return StreamScore(score, alert, z, expected)

    def _learn(
        self, x: float, preds: tuple[float, float, float], z: float, sigma: float, bd: int, bw: int
    ) -> None:
        c = self.cfg
        lim = c.clip * sigma
        warm = 1.0 / (self.n + 1)  # bias-corrected start: plain means until alpha takes over
        sa = max(c.spread_alpha, warm)
        for k in range(3):
            e = abs(x - preds[k])
            self.mad[k] += sa * (min(e, lim) - self.mad[k])
        self.absx += sa * (abs(x) - self.absx)
        r = x - self.level
        self.level += max(c.level_alpha, warm) * max(-lim, min(lim, r))
        if self.dseen[bd]:
            self.daily[bd] += c.season_alpha * max(-lim, min(lim, x - self.daily[bd]))
        else:
            self.daily[bd], self.dseen[bd] = x, True
        if self._ww:
            if self.wseen[bw]:
                self.weekly[bw] += c.season_alpha * max(-lim, min(lim, x - self.weekly[bw]))
            else:
                self.weekly[bw], self.wseen[bw] = x, True
        self._level_shift(r, z)
        self.n += 1

    def _level_shift(self, r: float, z: float) -> None:
        c = self.cfg
        if abs(z) > c.shift_z and (self.run == 0 or (self.run > 0) == (z > 0)):
            self.run += 1 if z > 0 else -1
            self.run_sum += r
            if abs(self.run) >= c.shift_run:
                self.level += self.run_sum / abs(self.run)
                self.drift = 0.0
                self.run, self.run_sum = 0, 0.0
        elif abs(z) > c.shift_z:
            self.run, self.run_sum = (1 if z > 0 else -1), r
        else:
            self.run, self.run_sum = 0, 0.0


class StreamBank:
    """`StreamDetector` arithmetic for ``m`` streams at once: one numpy call per time step.

    Every stream gets one value per step (same timestamp). ``update(t, xs)`` returns
    ``(scores, alerts, z)`` as arrays of length ``m``. State is a fixed set of arrays of size
    ``m`` (``m x buckets`` for the profiles): O(1) per stream.
    """

    def __init__(self, m: int, config: StreamConfig | None = None) -> None:
        import numpy as np

        self._np = np
        self.cfg = c = config or StreamConfig()
        self.m, self.n = m, 0
        f = lambda: np.zeros(m)  # noqa: E731
        self.level, self.absx, self.drift, self.run_sum = f(), f(), f(), f()
        self.tail = np.full(m, c.tail_floor)
        self.mad = np.zeros((3, m))
        self.run = np.zeros(m, dtype=np.int64)
        self.since_alert = np.full(m, 1 << 30, dtype=np.int64)
        self.daily = np.zeros((m, c.daily_buckets))
        self.dseen = np.zeros((m, c.daily_buckets), dtype=bool)
        self.weekly = np.zeros((m, max(c.weekly_buckets, 1)))
        self.wseen = np.zeros((m, max(c.weekly_buckets, 1)), dtype=bool)
        self._dw = _DAY / c.daily_buckets
        self._ww = _WEEK / c.weekly_buckets if c.weekly_buckets else 0.0
        self._drift_norm = math.sqrt((2.0 - c.drift_alpha) / c.drift_alpha)

    def update(self, t: float, xs: Any) -> tuple[Any, Any, Any]:
        """Score one value per stream at time `t`, then learn from them."""
        np, c = self._np, self.cfg
        x = np.asarray(xs, dtype=np.float64)
        if self.n == 0:
            self.level, self.absx, self.n = x.copy(), np.abs(x), 1
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
        z = (x - expected) / sigma
        self.drift += c.drift_alpha * (np.clip(z, -10.0, 10.0) - self.drift)
        za = np.maximum(np.abs(z), c.drift_weight * np.abs(self.drift) * self._drift_norm)
        score = np.zeros(self.m)
        if self.n >= c.warmup:
            zn = np.log1p(za) / np.log1p(self.tail) if c.log_z else za / self.tail
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
