"""The agent's detectors: telemetry samples in, `Detection`s out (the daemon makes incidents).

`Scorer(config, clock=time.time).observe(sample)` runs every cycle:

* GPU misuse per device: a process not in ``anomaly.allowed_processes``, or the miner usage
  signature while no registered training job holds the device (`registered_pids`, injected;
  the trainer's preflight registers its workers).
* Exfiltration: host network TX rate and, where NVML reports it, PCIe TX per GPU, each against
  its own robust baseline.
* Optionally a learned IsolationForest (``anomaly.model_path``, written by
  `trainguard anomaly fit` on columns `LEARNED_COLUMNS`): loaded through skops' trusted-types
  check. scikit-learn and skops are imported only then, never otherwise.

Access events (denials, MFA failures, exports) come from the audit stream, not from telemetry:
`observe_access(event)`. One finding per (kind, subject) is repeated at most once per
``anomaly.incident_cooldown_s``; the incident engine deduplicates further.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
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

__all__ = ["LEARNED_COLUMNS", "Detection", "Scorer"]

log = logging.getLogger(__name__)

# Per-GPU feature row a learned model sees (one row per GPU per cycle).
LEARNED_COLUMNS: tuple[str, ...] = (
    "util_pct", "mem_frac", "power_w", "temp_c", "sm_clock_mhz", "pcie_tx_bytes_s",
    "host_cpu_pct", "host_net_tx_rate",
)


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
        registered_pids: Callable[[], Iterable[int]] = lambda: (),
    ) -> None:
        self.cfg = _anomaly_section(config)
        self._clock = clock
        self._registered = registered_pids
        self.gpu = GpuMisuseDetector(self.cfg)
        self.exfil = ExfiltrationDetector(self.cfg)
        self.access = AccessDetector(self.cfg)
        self._last: dict[tuple[str, str], float] = {}
        self._model: Any = None
        self._rows: dict[int, deque[list[float]]] = {}
        if self.cfg.model_path:
            self._load_model(Path(self.cfg.model_path))

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
        registered = set(self._registered())
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
        return self._gate(found)

    def observe_access(self, event: AccessEvent) -> list[Detection]:
        """Score one access decision (from the audit stream)."""
        return self._gate(self.access.observe(event))

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
            subject = str(f.evidence.get("gpu", f.evidence.get("channel", f.evidence.get("user"))))
            key = (f.kind, f"{subject}|{f.evidence.get('reason', '')}")
            last = self._last.get(key)
            if last is not None and now - last < self.cfg.incident_cooldown_s:
                continue
            self._last[key] = now
            out.append(Detection(IncidentKind(f.kind), Severity(f.severity), dict(f.evidence)))
        return out
