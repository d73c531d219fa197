"""The agent's detectors: telemetry samples in, `Detection`s out (the daemon makes incidents).

`Scorer(config, clock=time.time).observe(sample)` runs every cycle:

* GPU misuse per device: a process not in ``anomaly.allowed_processes``, or the miner usage
  signature while no registered training job holds the device (`registered_pids`: the live
  PIDs of the jobs `trainguard train` launched, from `trainguard.agent.jobs.JobRegistry`).
* Exfiltration: host network TX rate and, where NVML reports it, PCIe TX per GPU, each against
  its own robust baseline.
* Optionally a learned IsolationForest (``anomaly.model_path``, written by
  `trainguard anomaly fit` on columns `LEARNED_COLUMNS`): loaded through skops' trusted-types
  check. scikit-learn and skops are imported only then, never otherwise.

* With ``anomaly.node_telemetry = true``: the multivariate node detector
  (`trainguard.anomaly.node.NodeTelemetryDetector`, k-nearest-neighbour distance to a rolling
  window of clean rows, numpy only) on `NODE_COLUMNS` (with the utilisation of GPUs no
  registered job holds: a miner couples GPU work with no job; and the bytes sent beyond those
  received: training receives or exchanges evenly), one row per cycle, calibrated to
  ``anomaly.node_false_alarms_per_day`` at the agent's cycle period after
  ``anomaly.node_warmup_hours`` of clean rows. An alert (one per episode) is reported as
  ``exfiltration`` when the column furthest from its running mean is network TX (or TX
  beyond RX), else as
  ``gpu-misuse`` (severity medium, the columns' values and that column in the evidence).
  numpy and the detector are imported only when it is built, never at import.

The daemon's `AuditFollower` (`trainguard.agent.followers`) feeds the audit stream:

* access decisions, failed logins and exports: `observe_access(event)`;
* the trainer's ``train.telemetry`` records: `observe_training(job, record, time)`. Loss and
  gradient-norm spikes (`trainguard.anomaly.training.SpikeDetector`, ``anomaly.loss_z`` /
  ``grad_z``) are ``byzantine-worker`` incidents of severity medium without a rank (the
  symptom a poisoned batch or a Byzantine update that passed the aggregation rule leaves);
  per-rank update statistics (``update_norm_ratio`` and ``update_cosine``: one value per
  rank) go to an `UpdateMonitor` and a rank that is an outlier ``anomaly.byzantine_patience``
  steps in a row is ``byzantine-worker`` of severity high, naming the rank. numpy and these
  detectors load on the first training record. At most `MAX_JOBS` jobs are tracked;
  ``train.finish`` (`forget_job`) frees one.

One finding per (kind, subject) is repeated at most once per ``anomaly.incident_cooldown_s``;
the incident engine deduplicates further.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.agent.telemetry.collector import Sample
from trainguard.anomaly.config import AnomalyConfig
from trainguard.anomaly.domain import (
    AccessDetector,
    AccessEvent,
    DomainFinding,
    ExfiltrationDetector,
    GpuMisuseDetector,
    GpuReading,
)
from trainguard.core.config import Config
from trainguard.evidence.incidents import IncidentKind, Severity

__all__ = ["LEARNED_COLUMNS", "NODE_COLUMNS", "Detection", "Scorer"]

log = logging.getLogger(__name__)

# Per-GPU feature row a learned model sees (one row per GPU per cycle).
LEARNED_COLUMNS: tuple[str, ...] = (
    "util_pct", "mem_frac", "power_w", "temp_c", "sm_clock_mhz", "pcie_tx_bytes_s",
    "host_cpu_pct", "host_net_tx_rate",
)

# The node row the multivariate detector sees once per cycle (GPU columns over all GPUs; the
# network rates as log1p(bytes/s), since they span orders of magnitude; `gpu_util_no_job`: the
# utilisation summed over GPUs that no registered training job's process holds (on a node whose
# jobs do not start through `trainguard train` it is all the utilisation, and learned as such);
# `net_tx_excess_log`: log1p of the bytes/s sent beyond those received, since training
# receives data or exchanges it evenly and only uploads, such as checkpoints, send more).
NODE_COLUMNS: tuple[str, ...] = (
    "gpu_util_pct", "gpu_mem_frac", "gpu_power_w", "host_cpu_pct", "host_mem_frac",
    "net_tx_log", "net_rx_log", "gpu_util_no_job", "net_tx_excess_log",
)
_NET_TX_COLUMNS = ("net_tx_log", "net_tx_excess_log")
MAX_JOBS = 64  # training jobs whose detectors are kept (least recently fed dropped first)
UPDATE_NORM_RATIO = "update_norm_ratio"  # per-rank update norm / median norm
UPDATE_COSINE = "update_cosine"  # per-rank cosine to the aggregate update


@dataclass(frozen=True)
class Detection:
    """Something a detector saw; the daemon turns it into an incident of `kind`."""

    kind: IncidentKind
    severity: Severity
    evidence: dict[str, Any] = field(default_factory=dict)


def _anomaly_section(config: AnomalyConfig | Config | None) -> AnomalyConfig:
    if config is None:
        return AnomalyConfig()
    if isinstance(config, AnomalyConfig):
        return config
    return config.section(AnomalyConfig)


class Scorer:
    """Feeds each telemetry sample to the detectors and returns what they found."""

    def __init__(
        self,
        config: AnomalyConfig | Config | None = None,
        clock: Callable[[], float] = time.time,
        *,
        registered_pids: Callable[[], Iterable[int]] | None = None,
        interval_s: float | None = None,
    ) -> None:
        """Args:
            config: the `[anomaly]` section, or the whole config (then the node detector's
                sample period is `[agent] cycle_seconds`).
            registered_pids: the PIDs of registered training jobs; the daemon sets its
                `JobRegistry.pids` here when left None.
            interval_s: seconds between samples, for the node detector's calibration.
        """
        self.cfg = _anomaly_section(config)
        self._clock = clock
        self.registered_pids = registered_pids
        self.gpu = GpuMisuseDetector(self.cfg)
        self.exfil = ExfiltrationDetector(self.cfg)
        self.access = AccessDetector(self.cfg)
        self._last: dict[tuple[str, str], float] = {}
        self._model: Any = None
        self._rows: dict[int, deque[list[float]]] = {}
        self._jobs: OrderedDict[str, _JobDetectors] = OrderedDict()
        self.node: Any = None  # NodeTelemetryDetector when anomaly.node_telemetry is on
        self._node_stats = {c: _Running() for c in NODE_COLUMNS}
        if self.cfg.model_path:
            self._load_model(Path(self.cfg.model_path))
        if self.cfg.node_telemetry:
            if interval_s is None:
                interval_s = _cycle_seconds(config)
            self._build_node_detector(interval_s)

    def _build_node_detector(self, interval_s: float) -> None:
        from trainguard.anomaly.node import NodeTelemetryConfig, NodeTelemetryDetector

        self.node = NodeTelemetryDetector(NODE_COLUMNS, NodeTelemetryConfig(
            false_alarms_per_day=self.cfg.node_false_alarms_per_day, interval_s=interval_s,
            warmup_s=3600.0 * self.cfg.node_warmup_hours,
            history_s=max(2 * 86400.0, 3600.0 * self.cfg.node_warmup_hours),
        ))

    def _load_model(self, path: Path) -> None:
        from trainguard.anomaly.learned import load_detector  # sklearn/skops stay lazy

        model = load_detector(path)
        if tuple(model.columns) != LEARNED_COLUMNS:
            log.warning("model %s has columns %s, expected %s: not used",
                        path, model.columns, LEARNED_COLUMNS)
            return
        self._model = model

    def observe(self, sample: Sample) -> list[Detection]:
        """Score one sample; returns the detections to report (after the cooldown)."""
        found: list[DomainFinding] = []
        registered = set(self.registered_pids()) if self.registered_pids is not None else set()
        for g in sample.gpus:
            reading = GpuReading(
                sample.time, g.index, float(g.util_pct), int(g.mem_used_bytes),
                int(g.mem_total_bytes), g.power_w,
                tuple((p.pid, p.name) for p in g.processes),
            )
            found += self.gpu.observe(reading, registered)
            if g.pcie_tx_bytes_s is not None:
                found += self.exfil.observe(f"pcie{g.index}", sample.time, g.pcie_tx_bytes_s)
            if self._model is not None:
                found += self._score_learned(sample, g)
        if sample.host.net_tx_rate is not None:
            found += self.exfil.observe("net", sample.time, sample.host.net_tx_rate)
        if self.node is not None:
            found += self._score_node(sample, registered)
        return self._gate(found)

    def observe_access(self, event: AccessEvent) -> list[Detection]:
        """Score one access decision (from the audit stream)."""
        return self._gate(self.access.observe(event))

    def observe_training(
        self, job: str, record: Mapping[str, Any], time: float
    ) -> list[Detection]:
        """Score one ``train.telemetry`` record of `job` (``step``, ``loss``, ``grad_norm``,
        optionally ``update_norm_ratio`` / ``update_cosine`` per rank). Values that are missing
        or not numbers are skipped, never guessed."""
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return []
        det = self._jobs.get(job)
        if det is None:
            det = self._jobs[job] = _JobDetectors(self.cfg)
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job)
        found: list[DomainFinding] = []
        for name, spikes in det.spikes.items():
            value = _number(record.get(name))
            if value is None:
                continue
            for spike in spikes.observe(step, **{name: value}):
                found.append(DomainFinding("byzantine-worker", "medium", {
                    "job": job, "rank": None, "step": spike.step, "signal": name,
                    "reason": f"{name} spike in the training run",
                    "value": _finite_or_text(spike.value),
                    "expected": _finite_or_text(spike.expected), "z": _finite_or_text(spike.z),
                }))
        found += det.ranks(job, step, record.get(UPDATE_NORM_RATIO), record.get(UPDATE_COSINE))
        return self._gate(found)

    def forget_job(self, job: str) -> None:
        """Drop a finished job's training detectors."""
        self._jobs.pop(job, None)

    def node_row(self, sample: Sample, registered: Iterable[int] = ()) -> dict[str, float]:
        """The `NODE_COLUMNS` row of one sample (NaN where the sample has no value yet);
        `registered`: the PIDs of registered training jobs."""
        jobs = set(registered)
        gpus = sample.gpus
        n = len(gpus)
        host = sample.host
        return {
            "gpu_util_pct": sum(float(g.util_pct) for g in gpus) / n if n else 0.0,
            "gpu_mem_frac": sum(g.mem_used_bytes / g.mem_total_bytes
                                for g in gpus if g.mem_total_bytes) / n if n else 0.0,
            "gpu_power_w": sum(float(g.power_w or 0.0) for g in gpus),
            "host_cpu_pct": float(host.cpu_pct),
            "host_mem_frac": host.mem_used_bytes / host.mem_total_bytes
            if host.mem_total_bytes else 0.0,
            "net_tx_log": math.log1p(host.net_tx_rate)
            if host.net_tx_rate is not None else math.nan,
            "net_rx_log": math.log1p(host.net_rx_rate)
            if host.net_rx_rate is not None else math.nan,
            "gpu_util_no_job": sum(float(g.util_pct) for g in gpus
                                   if not any(p.pid in jobs for p in g.processes)),
            "net_tx_excess_log": math.log1p(max(0.0, host.net_tx_rate - host.net_rx_rate))
            if host.net_tx_rate is not None and host.net_rx_rate is not None else math.nan,
        }

    def _score_node(self, sample: Sample, registered: Iterable[int]) -> list[DomainFinding]:
        row = self.node_row(sample, registered)
        result = self.node.observe(sample.time, row)
        if not all(math.isfinite(v) for v in row.values()):
            return []
        # which column moved furthest from its running mean, in its own standard deviations
        z = {c: self._node_stats[c].z(row[c]) for c in NODE_COLUMNS}
        for c in NODE_COLUMNS:
            self._node_stats[c].add(row[c])
        if not result.alert:
            return []
        top = max(z, key=lambda c: z[c])
        kind = "exfiltration" if top in _NET_TX_COLUMNS else "gpu-misuse"
        return [DomainFinding(kind, "medium", {
            "channel": "node", "reason": "node telemetry: unusual combination of usage",
            "most_unusual": top, "score": round(result.statistic, 4),  # what met the threshold
            "threshold": round(result.threshold, 4),
            "false_alarms_per_day": self.cfg.node_false_alarms_per_day,
            "row": {c: round(v, 3) for c, v in row.items()},
        })]

    def _score_learned(self, sample: Sample, g: Any) -> list[DomainFinding]:
        row = [
            float(g.util_pct), g.mem_used_bytes / g.mem_total_bytes if g.mem_total_bytes else 0.0,
            float(g.power_w or 0.0), float(g.temp_c or 0.0), float(g.sm_clock_mhz or 0.0),
            float(g.pcie_tx_bytes_s or 0.0), float(sample.host.cpu_pct),
            float(sample.host.net_tx_rate or 0.0),
        ]
        rows = self._rows.setdefault(g.index, deque(maxlen=self._model.window))
        rows.append(row)
        if len(rows) < self._model.window:
            return []
        import numpy as np

        score = float(self._model.scores(np.asarray(rows))[-1])
        if score <= self._model.threshold:
            return []
        return [DomainFinding("gpu-misuse", "medium", {
            "gpu": g.index, "reason": "learned model: unusual GPU usage",
            "score": round(score, 4), "threshold": round(self._model.threshold, 4),
        })]

    def _gate(self, found: list[DomainFinding]) -> list[Detection]:
        now = self._clock()
        out = []
        for f in found:
            subject = str(f.evidence.get("gpu", f.evidence.get("channel", f.evidence.get(
                "user", f.evidence.get("job")))))
            if f.evidence.get("signal") is not None or f.evidence.get("rank") is not None:
                subject += f"|{f.evidence.get('signal')}|{f.evidence.get('rank')}"
            key = (f.kind, f"{subject}|{f.evidence.get('reason', '')}")
            last = self._last.get(key)
            if last is not None and now - last < self.cfg.incident_cooldown_s:
                continue
            self._last[key] = now
            out.append(Detection(IncidentKind(f.kind), Severity(f.severity), dict(f.evidence)))
        return out


def _cycle_seconds(config: AnomalyConfig | Config | None) -> float:
    from trainguard.agent.config import AgentConfig

    agent = config.section(AgentConfig) if isinstance(config, Config) else AgentConfig()
    return float(agent.cycle_seconds)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _finite_or_text(value: float) -> float | str:
    """JSON for the audit log: a finite number rounded, else "nan" / "inf" / "-inf"."""
    return round(value, 6) if math.isfinite(value) else str(value)


class _Running:
    """Running mean and variance (Welford) of one node column: three floats."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def z(self, x: float) -> float:
        if self.n < 2:
            return 0.0
        sd = math.sqrt(self.m2 / (self.n - 1))
        return abs(x - self.mean) / (sd + 1e-9 + 1e-6 * abs(self.mean))


class _JobDetectors:
    """The training-run detectors of one job (anomaly.training, loaded on first use)."""

    def __init__(self, cfg: AnomalyConfig) -> None:
        from trainguard.anomaly.training import SpikeDetector  # numpy: only once training runs

        self.cfg = cfg
        self.spikes = {"loss": SpikeDetector(z=cfg.loss_z), "grad_norm": SpikeDetector(z=cfg.grad_z)}
        self.monitor: Any = None

    def ranks(self, job: str, step: int, ratios: object, cosines: object) -> list[DomainFinding]:
        if not isinstance(ratios, list) or not isinstance(cosines, list):
            return []
        r = [_number(v) for v in ratios]
        c = [_number(v) for v in cosines]
        if not r or len(r) != len(c) or any(v is None for v in r + c) or len(r) > 4096:
            return []
        from trainguard.anomaly.training import UpdateMonitor

        if self.monitor is None or self.monitor.n_ranks != len(r):  # a new world size: restart
            self.monitor = UpdateMonitor(
                len(r), self.cfg.byzantine_patience, ratio=self.cfg.byzantine_ratio,
                min_cosine=self.cfg.byzantine_cosine,
            )
        return [DomainFinding("byzantine-worker", "high", {
            "job": job, "rank": f.rank, "step": f.step, "signal": "update",
            "reason": f"update statistics: {f.reason} outlier {f.streak} steps in a row",
            "norm_ratio": round(f.norm_ratio, 4), "cosine": round(f.cosine, 4),
        }) for f in self.monitor.observe(step, norm_ratio=r, cosine=c)]
