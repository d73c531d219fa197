"""trainguard.agent.telemetry: one `Sample` per cycle, from NVML and /proc."""

from __future__ import annotations

from trainguard.agent.telemetry.collector import (
    Sample,
    TelemetryCollector,
)
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
    "NvmlBackend",
    "NvmlUnavailable",
    "PynvmlBackend",
    "Sample",
    "TelemetryCollector",
]
