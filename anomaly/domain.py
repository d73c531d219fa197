"""Domain detectors: GPU misuse, exfiltration and unusual access. All causal, O(1) per key.

* `GpuMisuseDetector` (per GPU): (a) a process whose name is not in the allow-list is misuse at
  once; (b) the cryptominer usage signature: sustained high utilisation, util and power that
  barely move between pauses (successive differences), almost no memory churn, a small working
  set, little pause-free time as a weak extra, and no registered training job on the device. Each component is an EW statistic over ~``window`` samples;
  `signature_score` combines them into [0, 1] and the threshold is calibrated on normal
  training traces (`trainguard.anomaly.gpu_eval`).
* `ExfiltrationDetector` (per channel: host network TX, PCIe TX per GPU): a robust streaming
  detector on log(1 + bytes/s) with an absolute floor, so only a large burst far above the
  channel's own baseline alerts.
* `AccessDetector` (per user): denials and MFA failures in the current hour against a fixed
  ceiling and the user's own EW hourly baseline; exports outside working hours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone

from trainguard.anomaly.config import AnomalyConfig, StreamConfig
from trainguard.anomaly.streaming import StreamDetector

__all__ = [
    "AccessDetector",
    "AccessEvent",
    "DomainFinding",
    "ExfiltrationDetector",
    "GpuMisuseDetector",
    "GpuReading",
]


@dataclass(frozen=True)
class DomainFinding:
    """What a domain detector found: kind (an IncidentKind value), severity value, evidence."""

    kind: str
    severity: str
    evidence: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuReading:
    """The GPU fields the misuse detector needs (the agent maps its telemetry onto this)."""

    time: float
    index: int
    util_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    power_w: float | None
    processes: tuple[tuple[int, str], ...] = ()  # (pid, name)


class _Ew:
    """EW mean and variance with a bias-corrected start; three floats of state."""

    __slots__ = ("alpha", "mean", "var", "n")

    def __init__(self, alpha: float) -> None:
        self.alpha, self.mean, self.var, self.n = alpha, 0.0, 0.0, 0

    def add(self, x: float) -> None:
        self.n += 1
        a = max(self.alpha, 1.0 / self.n)
        d = x - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)


class _GpuState:
    __slots__ = ("util", "power", "churn", "dutil", "dpower", "prev", "prev_mem", "total", "n",
                 "flagged", "since_dip")

    def __init__(self, alpha: float) -> None:
        self.util, self.power, self.churn = _Ew(alpha), _Ew(alpha), _Ew(alpha)
        # successive differences: steadiness that a level change (a job starting) spoils once
        self.dutil, self.dpower = _Ew(alpha), _Ew(alpha)
        self.prev: tuple[float, float | None] | None = None
        self.prev_mem: int | None = None
        self.total = 0
        self.n = 0
        self.since_dip = 0
        self.flagged = False


class GpuMisuseDetector:
    """Foreign processes and the miner usage signature, one small state per GPU."""

    def __init__(self, config: AnomalyConfig | None = None, threshold: float | None = None) -> None:
        self.cfg = config or AnomalyConfig()
        self.threshold = self.cfg.miner_threshold if threshold is None else threshold
        self._alpha = 2.0 / (self.cfg.miner_window + 1)
        self._gpus: dict[int, _GpuState] = {}
        self._allowed = {p.lower() for p in self.cfg.allowed_processes}

    def signature_score(self, index: int) -> float:
        """How much GPU `index` looks like a miner right now, in [0, 1] (0 while warming up)."""
        st = self._gpus.get(index)
        if st is None or st.n < self.cfg.miner_window:
            return 0.0
        c = self.cfg
        busy = min(1.0, max(0.0, (st.util.mean - c.miner_util_pct / 2) / (c.miner_util_pct / 3)))
        util_steady = math.exp(-st.dutil.mean / 3.0)
        cv = st.dpower.mean / st.power.mean if st.power.mean > 0 else 1.0
        power_steady = math.exp(-cv / c.miner_power_cv) if st.dpower.n else 0.5
        mem_steady = math.exp(-st.churn.mean / c.miner_mem_churn)
        # miners hold a small fixed working set; training fills the caching allocator
        frac = st.prev_mem / st.total if st.prev_mem is not None and st.total else 0.0
        small = math.exp(-max(0.0, frac - c.miner_mem_frac) / c.miner_mem_frac)
        # training pauses (input pipeline, eval, checkpoints); a miner rarely does. A weak term:
        # a miner can idle on purpose, so steadiness *between* pauses carries the signature
        w = c.miner_pause_weight
        no_pause = 1.0 - w + w * min(1.0, st.since_dip / c.miner_pause_window)
        steady = (util_steady * power_steady * mem_steady * no_pause * small) ** 0.2
        return float(busy * steady)

    def observe(self, gpu: GpuReading, registered_pids: Iterable[int] = ()) -> list[DomainFinding]:
        """Update GPU `gpu.index`; returns findings (a foreign process, or the miner signature)."""
        st = self._gpus.setdefault(gpu.index, _GpuState(self._alpha))
        st.n += 1
        paused = st.util.n > 0 and gpu.util_pct < 0.6 * st.util.mean
        st.since_dip = 0 if paused else st.since_dip + 1
        st.util.add(gpu.util_pct)
        if gpu.power_w is not None:
            st.power.add(gpu.power_w)
        # steadiness between pauses: the edges of a pause are not jitter
        if st.prev is not None and not paused and st.since_dip > 1:
            st.dutil.add(abs(gpu.util_pct - st.prev[0]))
            if gpu.power_w is not None and st.prev[1] is not None:
                st.dpower.add(abs(gpu.power_w - st.prev[1]))
        st.prev = (gpu.util_pct, gpu.power_w)
        if st.prev_mem is not None and gpu.mem_total_bytes:
            st.churn.add(abs(gpu.mem_used_bytes - st.prev_mem) / gpu.mem_total_bytes)
        st.prev_mem, st.total = gpu.mem_used_bytes, gpu.mem_total_bytes
        out: list[DomainFinding] = []
        foreign = [(pid, name) for pid, name in gpu.processes if not self._allowed_name(name)]
        if foreign:
            out.append(DomainFinding("gpu-misuse", "high", {
                "gpu": gpu.index, "reason": "process not allowed by policy",
                "processes": [{"pid": p, "name": n} for p, n in foreign],
            }))
        registered = set(registered_pids)
        unregistered = not any(pid in registered for pid, _ in gpu.processes)
        score = self.signature_score(gpu.index)
        if score >= self.threshold and unregistered and not st.flagged:
            st.flagged = True
            out.append(DomainFinding("gpu-misuse", "high", {
                "gpu": gpu.index, "reason": "miner usage signature, no registered training job",
                "score": round(score, 3), "util_mean": round(st.util.mean, 1),
                "power_step_cv": round(st.dpower.mean / st.power.mean, 4)
                if st.power.mean else None,
                "pids": [p for p, _ in gpu.processes],
            }))
        elif score < self.threshold * 0.8:
            st.flagged = False  # re-arm once the signature has gone
        return out

    def _allowed_name(self, name: str) -> bool:
        base = name.rsplit("/", 1)[-1].lower()
        return not base or base in self._allowed


class ExfiltrationDetector:
    """Bursts of outgoing bytes per channel ("net", "pcie0", ...), far above each baseline."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.cfg = config or AnomalyConfig()
        self._stream_cfg = StreamConfig(
            warmup=30, daily_buckets=24, weekly_buckets=0, refractory=60, tail_rate=0.0,
        )
        self._channels: dict[str, StreamDetector] = {}

    def observe(self, channel: str, t: float, bytes_per_s: float) -> list[DomainFinding]:
        det = self._channels.setdefault(channel, StreamDetector(self._stream_cfg))
        warmed = det.n >= self._stream_cfg.warmup
        res = det.update(t, math.log1p(max(0.0, bytes_per_s)))
        if not warmed or bytes_per_s < self.cfg.exfil_min_bytes_per_s or res.z < self.cfg.exfil_z:
            return []
        if det.since_alert != 0 and res.z < 2 * self.cfg.exfil_z:
            return []  # inside the refractory period of an earlier burst
        return [DomainFinding("exfiltration", "high", {
            "channel": channel, "bytes_per_s": round(bytes_per_s),
            "baseline_bytes_per_s": round(math.expm1(res.expected)), "z": round(res.z, 1),
        })]


@dataclass(frozen=True)
class AccessEvent:
    """One access decision: `kind` is "denied", "mfa-failure", "export" or "allowed"."""

    time: float
    user: str
    kind: str


class _UserState:
    __slots__ = ("hour", "failures", "baseline", "hours_seen", "alerted_hour")

    def __init__(self) -> None:
        self.hour = -1
        self.failures = 0
        self.baseline = _Ew(0.05)
        self.hours_seen = 0
        self.alerted_hour = -1


class AccessDetector:
    """Failure bursts per user and hour, and exports outside working hours."""

    def __init__(self, config: AnomalyConfig | None = None, *, tz: timezone = UTC) -> None:
        self.cfg = config or AnomalyConfig()
        self._tz = tz
        self._users: dict[str, _UserState] = {}

    def observe(self, event: AccessEvent) -> list[DomainFinding]:
        st = self._users.setdefault(event.user, _UserState())
        hour = int(event.time // 3600)
        if hour != st.hour:
            if st.hour >= 0:  # close the finished hour(s); quiet hours count as zero
                st.baseline.add(float(st.failures))
                for _ in range(min(hour - st.hour - 1, 48)):
                    st.baseline.add(0.0)
                st.hours_seen += 1
            st.hour, st.failures = hour, 0
        out: list[DomainFinding] = []
        if event.kind in ("denied", "mfa-failure"):
            st.failures += 1
            limit = self.cfg.access_max_failures_per_hour
            sd = math.sqrt(st.baseline.var) + 1.0
            z = (st.failures - st.baseline.mean) / sd
            if st.failures > limit and z >= self.cfg.access_z and st.alerted_hour != hour:
                st.alerted_hour = hour
                out.append(DomainFinding("access-anomaly", "medium", {
                    "user": event.user, "reason": "burst of denials / MFA failures",
                    "failures_this_hour": st.failures,
                    "baseline_per_hour": round(st.baseline.mean, 2),
                }))
        elif event.kind == "export":
            local = datetime.fromtimestamp(event.time, self._tz)
            start, end = self.cfg.work_hours
            if not start <= local.hour < end or local.weekday() >= 5:
                out.append(DomainFinding("access-anomaly", "medium", {
                    "user": event.user, "reason": "export outside working hours",
                    "local_time": local.isoformat(timespec="minutes"),
                }))
        return out
