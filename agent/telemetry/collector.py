"""Telemetry: one `Sample` per cycle with every GPU (through NVML) and the host (from /proc).

The collector is cheap: file reads and in-process NVML calls, never a subprocess. Without a GPU
or driver the NVML error is logged once, kept in `nvml_error`, and samples carry no GPUs.
Host counters (`net_rx_bytes`, ...) are cumulative since boot; `*_rate` fields are per second
between this sample and the previous one (None on the first sample).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.agent.telemetry import procfs
from trainguard.agent.telemetry.nvml import (
    FakeNvml,
    GpuProcess,
    GpuSample,
    NvmlBackend,
    NvmlUnavailable,
    PynvmlBackend,
)

__all__ = [
    "FakeNvml",
    "GpuProcess",
    "GpuSample",
    "HostSample",
    "NvmlBackend",
    "Sample",
    "TelemetryCollector",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSample:
    """Host CPU (percent of all cores), memory, and network totals over non-loopback
    interfaces; `interfaces` has (rx_bytes, tx_bytes) per interface, loopback included."""

    cpu_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    interfaces: dict[str, tuple[int, int]] = field(default_factory=dict)
    net_rx_rate: float | None = None
    net_tx_rate: float | None = None


@dataclass(frozen=True)
class Sample:
    time: float
    gpus: list[GpuSample]
    host: HostSample


class TelemetryCollector:
    """Takes samples. Args are injectable: `nvml` (None: the real library), `proc_root`,
    `clock`."""

    def __init__(
        self,
        nvml: NvmlBackend | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nvml: NvmlBackend = nvml if nvml is not None else PynvmlBackend()
        self._proc = proc_root
        self._clock = clock
        self._ready = False
        self.nvml_error: str | None = None
        self._lost: set[int] = set()
        self._count = 0
        self._prev_cpu: procfs.CpuTimes | None = None
        self._prev_net: tuple[float, int, int] | None = None

    def _gpu_count(self) -> int:
        if self.nvml_error is not None:
            return 0
        if not self._ready:
            try:
                self._nvml.init()
                self._count = self._nvml.device_count()
            except NvmlUnavailable as exc:
                self.nvml_error = exc.message
                log.warning("GPU telemetry off: %s", exc.message)
                return 0
            self._ready = True
        return self._count

    def _gpus(self) -> list[GpuSample]:
        out = []
        for i in range(self._gpu_count()):
            try:
                out.append(self._nvml.read(i))
                self._lost.discard(i)
            except NvmlUnavailable as exc:
                if i not in self._lost:  # report a lost GPU once, not every cycle
                    log.warning("%s", exc.message)
                    self._lost.add(i)
        return out

    def _host(self, now: float) -> HostSample:
        cpu = procfs.read_cpu_times(self._proc)
        # The first sample reports the average since boot; later ones the delta.
        cpu_pct = cpu.pct_since(self._prev_cpu or procfs.CpuTimes(0, 0))
        self._prev_cpu = cpu
        used, total = procfs.read_meminfo(self._proc)
        ifaces = procfs.read_net_dev(self._proc)
        rx = sum(v[0] for k, v in ifaces.items() if k != "lo")
        tx = sum(v[1] for k, v in ifaces.items() if k != "lo")
        rx_rate = tx_rate = None
        if self._prev_net is not None and now > self._prev_net[0]:
            dt = now - self._prev_net[0]
            rx_rate = max(0.0, (rx - self._prev_net[1]) / dt)
            tx_rate = max(0.0, (tx - self._prev_net[2]) / dt)
        self._prev_net = (now, rx, tx)
        return HostSample(cpu_pct, used, total, rx, tx, ifaces, rx_rate, tx_rate)

    def sample(self) -> Sample:
        now = self._clock()
        return Sample(time=now, gpus=self._gpus(), host=self._host(now))
