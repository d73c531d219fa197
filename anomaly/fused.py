"""The max of two stream channels and a range breakout, fused into one update per sample.

The selected default (`trainguard.anomaly.config.SELECTED_MEMBERS`) is
``max(stream with range floor, spatial, stream without it rested after a score)``. Run as an
`Ensemble` of three detectors it costs two full `StreamDetector` updates per sample (about
7 us in CPython, over the 5 us streaming budget). Most of that work does not depend on the
range floor: the floor only changes the divisor of z, and what z feeds (the drift, the two
decaying maxima that normalise the score, the refractory counter and the level-shift run) is
per channel, while the level, the three predictors' errors, the seasonal profiles, the spread
floor and the range seen so far are the same in both channels *as long as their levels are*.
The levels part only when a level shift re-baselines one channel and not the other (or both
with different runs): from that sample on each channel has its own level, errors and profiles
(`_part` hands each its state in a `StreamDetector`) and `_parted` runs the two
`StreamDetector` steps on them, written out side by side; what the channels still share (the
sample count, the range, the mean |x|, the time buckets) it computes once. Nothing is
approximated. On the shared NAB subset the channels stay fused on 90 % of the samples.

`make_detector` returns it for any max ensemble of exactly two ``stream`` members whose
settings differ at most in ``range_floor``, one ``spatial`` member and at most one ``jump``
member (`trainguard.anomaly.transition.JumpNovelty`, called inline: no `Ensemble` or `Rested`
wrapper around it; each member may be ``rest``ed; none calibrated or likelihood-scaled). Its
scores equal the `Ensemble`'s bit for bit (a differential Hypothesis test and every file of
the NAB subset check it).
"""

from __future__ import annotations

import math
from dataclasses import replace

from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.interface import AnomalyError
from trainguard.anomaly.spatial import SpatialRangeConfig
from trainguard.anomaly.streaming import _DAY, _SIGMA_PER_MAD, _WEEK, StreamDetector
from trainguard.anomaly.transition import JumpNovelty, JumpNoveltyConfig

__all__ = ["FusedStreamMax"]

_INF = math.inf
# per-channel state of a StreamDetector: everything z feeds (the rest is shared while fused)
_CHANNEL = ("drift", "tail", "tail2", "since_alert", "run", "run_sum")
_SHARED = ("n", "level", "mad0", "mad1", "mad2", "absx", "lo", "hi")


class FusedStreamMax:
    """``max(stream a, stream b, spatial[, jump])`` for one series, each optionally rested.

    ``a`` and ``b`` are (config, rest, rest_at) and must differ at most in ``range_floor``;
    ``spatial`` is (config, rest, rest_at). `score(t, x)` equals what the `Ensemble` of
    `StreamDetector` a, `StreamDetector` b and `SpatialRange`, each in `Rested` when its rest
    is > 0, returns for the same samples. ``jump`` (config, rest, rest_at), if given, adds a
    `JumpNovelty` channel the same way.
    """

    __slots__ = (
        "_a", "_b", "_k", "_dw", "_ww", "daily", "weekly", "_rfa", "_rfb", "_sp_inv", "_sp_prob",
        "_rest", "_left_a", "_left_b", "_left_s", "_sn", "_split", "_jump", "_jrest", "_left_j",
        *_SHARED, *(f"{s}_a" for s in _CHANNEL), *(f"{s}_b" for s in _CHANNEL),
    )

    def __init__(
        self, a: tuple[StreamConfig, int, float], b: tuple[StreamConfig, int, float],
        spatial: tuple[SpatialRangeConfig, int, float], *, probation: int = 750,
        jump: tuple[JumpNoveltyConfig, int, float] | None = None,
    ) -> None:
        (ca, ra, ata), (cb, rb, atb), (cs, rs, ats) = a, b, spatial
        if replace(ca, range_floor=0.0) != replace(cb, range_floor=0.0):
            raise AnomalyError("fused stream channels must differ at most in range_floor",
                               tip="use Ensemble for other combinations (make_detector does)")
        if not cs.tolerance > 0.0:
            raise AnomalyError("spatial tolerance must be > 0",
                               tip="tolerance is a share of the range seen so far, e.g. 0.1")
        # the two detectors this one becomes when the channels' levels part
        self._a, self._b = StreamDetector(ca), StreamDetector(cb)
        proto = self._a
        self._k, self._dw, self._ww = proto._k, proto._dw, proto._ww
        self._rfa, self._rfb = ca.range_floor, cb.range_floor
        self._sp_inv, self._sp_prob = 1.0 / cs.tolerance, max(int(probation), 1)
        self._rest = (int(ra), float(ata), int(rb), float(atb), int(rs), float(ats))
        self._left_a = self._left_b = self._left_s = self._left_j = 0
        self._jump = None if jump is None else JumpNovelty(jump[0], probation=probation)
        self._jrest = (0, 1.0) if jump is None else (int(jump[1]), float(jump[2]))
        self._sn = 0  # samples the spatial channel has seen (NaN included, as SpatialRange)
        self._split = False
        self.daily, self.weekly = proto.daily, proto.weekly  # a's profiles, shared while fused
        for name in _SHARED:
            setattr(self, name, getattr(proto, name))
        for name in _CHANNEL:
            setattr(self, f"{name}_a", getattr(proto, name))
            setattr(self, f"{name}_b", getattr(proto, name))

    @property
    def fused(self) -> bool:
        """Whether the two stream channels still share one update (their levels never parted)."""
        return not self._split

    def state_size(self) -> int:
        # both channels' detectors exist from the start (a's profiles are the shared ones), plus
        # the fused state, the spatial sample count and the rest counters (+ the jump channel)
        jump = 0 if self._jump is None else self._jump.state_size() + 1
        return (self._a.state_size() + self._b.state_size() + len(_SHARED) + 2 * len(_CHANNEL)
                + 4 + jump)

    def _part(self, level_a: float, level_b: float) -> None:
        """The levels parted: from now on each channel keeps its own state in its
        `StreamDetector` (`_parted` updates it); n, absx, lo and hi stay equal, and here."""
        for det, level, ch, copy in ((self._a, level_a, "_a", False), (self._b, level_b, "_b", True)):
            for name in ("mad0", "mad1", "mad2"):
                setattr(det, name, getattr(self, name))
            for name in _CHANNEL:
                setattr(det, name, getattr(self, name + ch))
            det.level = level
            det.daily = list(self.daily) if copy else self.daily
            det.weekly = list(self.weekly) if copy else self.weekly
        self._split = True

    def score(self, t: float, x: float) -> float:  # noqa: C901, PLR0912, PLR0915 - hot path, flat
        """Score sample `x` at time `t` from earlier samples, then learn from it."""
        sn = self._sn
        self._sn = sn + 1
        if not -_INF < x < _INF:  # NaN or infinite: no channel scores or learns it
            sa = sb = ss = 0.0
        else:
            lo, hi = self.lo, self.hi  # the range seen so far: the same for every channel
            ss = 0.0  # SpatialRange: beyond that range, in units of it (inside it: 0, no division)
            if (x > hi or x < lo) and sn >= self._sp_prob and hi > lo:
                e = (x - hi if x > hi else lo - x) / (hi - lo)
                if e > 0.0:
                    ss = 1.0 - math.exp(-e * self._sp_inv)
            if not self._split:
                sa, sb = self._fused(t, x, lo, hi)
            else:
                sa, sb = self._parted(t, x, lo, hi)
        # the rest periods (`Rested`) and the max (`Ensemble`), in their order of comparison
        ra, ata, rb, atb, rs, ats = self._rest
        if self._left_a:
            self._left_a -= 1
            sa = 0.0
        elif sa >= ata:
            self._left_a = ra
        if self._left_b:
            self._left_b -= 1
            sb = 0.0
        elif sb >= atb:
            self._left_b = rb
        if self._left_s:
            self._left_s -= 1
            ss = 0.0
        elif ss >= ats:
            self._left_s = rs
        best = 0.0
        if sa > best:
            best = sa
        if ss > best:
            best = ss
        if sb > best:
            best = sb
        jump = self._jump
        if jump is not None:  # sees every sample, as an Ensemble member (it skips NaN itself)
            sj = jump.score(t, x)
            if self._left_j:
                self._left_j -= 1
            else:
                if sj >= self._jrest[1]:
                    self._left_j = self._jrest[0]
                if sj > best:
                    best = sj
        return best

    def _fused(self, t: float, x: float, lo: float, hi: float) -> tuple[float, float]:  # noqa: C901, PLR0912, PLR0915
        """`StreamDetector.update` for both channels at once (same operations, same order).

        The arithmetic is `StreamDetector._step`'s, written out again and once per channel on
        purpose: a helper call per channel costs ~0.2 us, a twentieth of the budget. If you
        change one, change the others (`_parted` too); tests/unit/anomaly/test_fused.py fails
        on any difference.
        """
        (gain, min_spread, drift_alpha, drift_w, warmup, log_z, scale2, tail_decay, tail_rate,
         tail_p, tail_floor, refractory, damp, threshold, clip, spread_alpha, level_alpha,
         season_alpha, shift_z, shift_run, tail_start, z_gate, _rf) = self._k
        n = self.n
        level = self.level
        if n == 0:
            self.level, self.n, self.absx, self.lo, self.hi = x, 1, abs(x), x, x
            return 0.0, 0.0
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
        dev = x - expected
        run_tail = n >= tail_start
        scored = n >= warmup
        # --- the two channels: z and everything it feeds, in StreamDetector.update's order
        if self._rfa:
            rf = self._rfa * (hi - lo)
            z_a = dev / (rf if rf > sigma else sigma)
        else:
            z_a = dev / sigma
        zc = 10.0 if z_a > 10.0 else -10.0 if z_a < -10.0 else z_a
        drift_a = self.drift_a + drift_alpha * (zc - self.drift_a)
        za = abs(z_a)
        s_a = 0.0
        if run_tail:
            tail = self.tail_a
            zn = math.log1p(za) / math.log1p(tail) if log_z else za / tail
            if za < z_gate:
                zn *= za / z_gate
            if drift_w:
                dz = abs(drift_a)
                t2 = self.tail2_a
                zd = drift_w * dz / t2
                if zd > zn:
                    zn = zd
                t2 *= tail_decay or 0.998
                if dz > t2:
                    t2 = dz
                self.tail2_a = t2 if t2 > 0.5 else 0.5
            if scored:
                s_a = zn * zn / (zn * zn + scale2)
            if tail_decay:
                tail *= tail_decay
                if za > tail:
                    tail = za if za < 1e6 else 1e6
            else:
                tail *= math.exp(tail_rate * ((za > tail) - tail_p))
            self.tail_a = tail if tail > tail_floor else tail_floor
        since = self.since_alert_a + 1
        if since <= refractory:
            s_a *= damp
        elif s_a >= threshold:
            since = 0
        self.since_alert_a = since
        if self._rfb:
            rf = self._rfb * (hi - lo)
            z_b = dev / (rf if rf > sigma else sigma)
        else:
            z_b = dev / sigma
        zc = 10.0 if z_b > 10.0 else -10.0 if z_b < -10.0 else z_b
        drift_b = self.drift_b + drift_alpha * (zc - self.drift_b)
        za = abs(z_b)
        s_b = 0.0
        if run_tail:
            tail = self.tail_b
            zn = math.log1p(za) / math.log1p(tail) if log_z else za / tail
            if za < z_gate:
                zn *= za / z_gate
            if drift_w:
                dz = abs(drift_b)
                t2 = self.tail2_b
                zd = drift_w * dz / t2
                if zd > zn:
                    zn = zd
                t2 *= tail_decay or 0.998
                if dz > t2:
                    t2 = dz
                self.tail2_b = t2 if t2 > 0.5 else 0.5
            if scored:
                s_b = zn * zn / (zn * zn + scale2)
            if tail_decay:
                tail *= tail_decay
                if za > tail:
                    tail = za if za < 1e6 else 1e6
            else:
                tail *= math.exp(tail_rate * ((za > tail) - tail_p))
            self.tail_b = tail if tail > tail_floor else tail_floor
        since = self.since_alert_b + 1
        if since <= refractory:
            s_b *= damp
        elif s_b >= threshold:
            since = 0
        self.since_alert_b = since
        # --- shared learning (z-free): the predictors' errors, the level, the profiles
        lim = clip * sigma
        sa = 1.0 / (n + 1)
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
        # --- each channel's level-shift run; a shift in one only (or unlike runs) parts them
        run = self.run_a
        lv_a = level
        if z_a > shift_z or z_a < -shift_z:
            up = z_a > 0
            if run == 0 or (run > 0) == up:
                run += 1 if up else -1
                run_sum = self.run_sum_a + r
                if abs(run) >= shift_run:
                    lv_a = level + run_sum / abs(run)
                    drift_a = 0.0
                    run, run_sum = 0, 0.0
            else:
                run, run_sum = (1 if up else -1), r
        else:
            run, run_sum = 0, 0.0
        self.run_a, self.run_sum_a, self.drift_a = run, run_sum, drift_a
        run = self.run_b
        lv_b = level
        if z_b > shift_z or z_b < -shift_z:
            up = z_b > 0
            if run == 0 or (run > 0) == up:
                run += 1 if up else -1
                run_sum = self.run_sum_b + r
                if abs(run) >= shift_run:
                    lv_b = level + run_sum / abs(run)
                    drift_b = 0.0
                    run, run_sum = 0, 0.0
            else:
                run, run_sum = (1 if up else -1), r
        else:
            run, run_sum = 0, 0.0
        self.run_b, self.run_sum_b, self.drift_b = run, run_sum, drift_b
        self.n = n + 1
        if x < lo:
            self.lo = x
        elif x > hi:
            self.hi = x
        if lv_a == lv_b and math.copysign(1.0, lv_a) == math.copysign(1.0, lv_b):
            self.level = lv_a
        else:
            self._part(lv_a, lv_b)
        return s_a, s_b

    def _parted(self, t: float, x: float, lo: float, hi: float) -> tuple[float, float]:  # noqa: C901, PLR0912, PLR0915
        """`StreamDetector._step` of each parted channel: the same arithmetic, bit for bit.

        Written out side by side for the reason `_fused` is. Two `_step` calls (what this
        replaced) also unpacked the 23 settings twice, built and indexed two result tuples and
        computed twice what the channels still share after parting (the learning rates from n,
        the time buckets, the range, the mean |x| and the spread floor from it): the parted
        default cost 1.4x the fused one, 1.2x now (`--only=budget`, numbers in the commit). A
        few operands are taken once where `_step` takes them twice (``gain * m0``, ``zn * zn``,
        ``-lim``, ``-shift_z``, a profile bucket's value): the same values, so the same bits.
        Each channel's state lives in ``self._a`` or ``self._b`` (`_part` handed it over); n,
        absx, lo and hi, equal in both, stay here. Keeping the channel state as tuples in slots
        instead measured 1 % faster: not worth a third layout. Only called after the parting
        sample, so never on the first (n == 0) one.
        """
        (gain, min_spread, drift_alpha, drift_w, warmup, log_z, scale2, tail_decay, tail_rate,
         tail_p, tail_floor, refractory, damp, threshold, clip, spread_alpha, level_alpha,
         season_alpha, shift_z, shift_run, tail_start, z_gate, _rf) = self._k
        n = self.n
        bd = int(t % _DAY // self._dw)
        bw = int(t % _WEEK // self._ww) if self._ww else -1
        floor = min_spread * self.absx
        span = hi - lo
        nshift = -shift_z
        t2_decay = tail_decay or 0.998
        run_tail = n >= tail_start
        scored = n >= warmup
        sa = 1.0 / (n + 1)
        la = level_alpha if level_alpha > sa else sa
        if spread_alpha > sa:
            sa = spread_alpha
        a, b = self._a, self._b
        rfa, rfb = self._rfa, self._rfb
        # --- channel a: `_step` from the prediction on, with its own level, errors and profiles
        level = a.level
        daily = a.daily
        d = p1 = daily[bd]  # d: as stored (NaN: bucket unseen), for the update below
        if p1 != p1:
            p1 = level
        if bw >= 0:
            weekly = a.weekly
            w = p2 = weekly[bw]  # likewise
            if p2 != p2:
                p2 = level
        else:
            p2 = level
        m0, m1, m2 = a.mad0, a.mad1, a.mad2
        expected, mbest = level, m0
        g0 = gain * m0
        if m1 < g0 and m1 < mbest:
            expected, mbest = p1, m1
        if m2 < g0 and m2 < mbest:
            expected, mbest = p2, m2
        sigma = _SIGMA_PER_MAD * mbest
        if floor > sigma:
            sigma = floor
        if sigma < 1e-12:
            sigma = 1e-12
        if rfa:
            rf = rfa * span
            z = (x - expected) / (rf if rf > sigma else sigma)
        else:
            z = (x - expected) / sigma
        zc = 10.0 if z > 10.0 else -10.0 if z < -10.0 else z
        drift = a.drift
        drift += drift_alpha * (zc - drift)
        za = abs(z)
        s_a = 0.0
        if run_tail:
            tail = a.tail
            zn = math.log1p(za) / math.log1p(tail) if log_z else za / tail
            if za < z_gate:
                zn *= za / z_gate
            if drift_w:
                dz = abs(drift)
                t2 = a.tail2
                zd = drift_w * dz / t2
                if zd > zn:
                    zn = zd
                t2 *= t2_decay
                if dz > t2:
                    t2 = dz
                a.tail2 = t2 if t2 > 0.5 else 0.5
            if scored:
                zn *= zn
                s_a = zn / (zn + scale2)
            if tail_decay:
                tail *= tail_decay
                if za > tail:
                    tail = za if za < 1e6 else 1e6
            else:
                tail *= math.exp(tail_rate * ((za > tail) - tail_p))
            a.tail = tail if tail > tail_floor else tail_floor
        since = a.since_alert + 1
        if since <= refractory:
            s_a *= damp
        elif s_a >= threshold:
            since = 0
        a.since_alert = since
        lim = clip * sigma
        nlim = -lim
        e = abs(x - level)
        a.mad0 = m0 + sa * ((e if e < lim else lim) - m0)
        e = abs(x - p1)
        a.mad1 = m1 + sa * ((e if e < lim else lim) - m1)
        e = abs(x - p2)
        a.mad2 = m2 + sa * ((e if e < lim else lim) - m2)
        r = x - level
        level += la * (lim if r > lim else nlim if r < nlim else r)
        if d != d:
            daily[bd] = x
        else:
            e = x - d
            daily[bd] = d + season_alpha * (lim if e > lim else nlim if e < nlim else e)
        if bw >= 0:
            if w != w:
                weekly[bw] = x
            else:
                e = x - w
                weekly[bw] = w + season_alpha * (lim if e > lim else nlim if e < nlim else e)
        run = a.run
        if z > shift_z or z < nshift:
            up = z > 0
            if run == 0 or (run > 0) == up:
                run += 1 if up else -1
                run_sum = a.run_sum + r
                if abs(run) >= shift_run:
                    level += run_sum / abs(run)
                    drift = 0.0
                    run, run_sum = 0, 0.0
            else:
                run, run_sum = (1 if up else -1), r
        else:
            run, run_sum = 0, 0.0
        a.run = run
        a.run_sum = run_sum
        a.level = level
        a.drift = drift
        # --- channel b: `_step` from the prediction on, with its own level, errors and profiles
        level = b.level
        daily = b.daily
        d = p1 = daily[bd]  # d: as stored (NaN: bucket unseen), for the update below
        if p1 != p1:
            p1 = level
        if bw >= 0:
            weekly = b.weekly
            w = p2 = weekly[bw]  # likewise
            if p2 != p2:
                p2 = level
        else:
            p2 = level
        m0, m1, m2 = b.mad0, b.mad1, b.mad2
        expected, mbest = level, m0
        g0 = gain * m0
        if m1 < g0 and m1 < mbest:
            expected, mbest = p1, m1
        if m2 < g0 and m2 < mbest:
            expected, mbest = p2, m2
        sigma = _SIGMA_PER_MAD * mbest
        if floor > sigma:
            sigma = floor
        if sigma < 1e-12:
            sigma = 1e-12
        if rfb:
            rf = rfb * span
            z = (x - expected) / (rf if rf > sigma else sigma)
        else:
            z = (x - expected) / sigma
        zc = 10.0 if z > 10.0 else -10.0 if z < -10.0 else z
        drift = b.drift
        drift += drift_alpha * (zc - drift)
        za = abs(z)
        s_b = 0.0
        if run_tail:
            tail = b.tail
            zn = math.log1p(za) / math.log1p(tail) if log_z else za / tail
            if za < z_gate:
                zn *= za / z_gate
            if drift_w:
                dz = abs(drift)
                t2 = b.tail2
                zd = drift_w * dz / t2
                if zd > zn:
                    zn = zd
                t2 *= t2_decay
                if dz > t2:
                    t2 = dz
                b.tail2 = t2 if t2 > 0.5 else 0.5
            if scored:
                zn *= zn
                s_b = zn / (zn + scale2)
            if tail_decay:
                tail *= tail_decay
                if za > tail:
                    tail = za if za < 1e6 else 1e6
            else:
                tail *= math.exp(tail_rate * ((za > tail) - tail_p))
            b.tail = tail if tail > tail_floor else tail_floor
        since = b.since_alert + 1
        if since <= refractory:
            s_b *= damp
        elif s_b >= threshold:
            since = 0
        b.since_alert = since
        lim = clip * sigma
        nlim = -lim
        e = abs(x - level)
        b.mad0 = m0 + sa * ((e if e < lim else lim) - m0)
        e = abs(x - p1)
        b.mad1 = m1 + sa * ((e if e < lim else lim) - m1)
        e = abs(x - p2)
        b.mad2 = m2 + sa * ((e if e < lim else lim) - m2)
        r = x - level
        level += la * (lim if r > lim else nlim if r < nlim else r)
        if d != d:
            daily[bd] = x
        else:
            e = x - d
            daily[bd] = d + season_alpha * (lim if e > lim else nlim if e < nlim else e)
        if bw >= 0:
            if w != w:
                weekly[bw] = x
            else:
                e = x - w
                weekly[bw] = w + season_alpha * (lim if e > lim else nlim if e < nlim else e)
        run = b.run
        if z > shift_z or z < nshift:
            up = z > 0
            if run == 0 or (run > 0) == up:
                run += 1 if up else -1
                run_sum = b.run_sum + r
                if abs(run) >= shift_run:
                    level += run_sum / abs(run)
                    drift = 0.0
                    run, run_sum = 0, 0.0
            else:
                run, run_sum = (1 if up else -1), r
        else:
            run, run_sum = 0, 0.0
        b.run = run
        b.run_sum = run_sum
        b.level = level
        b.drift = drift
        # --- what stays shared: learned once, after both channels read it
        self.absx += sa * (abs(x) - self.absx)
        self.n = n + 1
        if x < lo:
            self.lo = x
        elif x > hi:
            self.hi = x
        return s_a, s_b
