"""GPU readings through NVML: the backend protocol, the real nvidia-ml-py backend, and a fake.

The agent talks to GPUs only through an `NvmlBackend`, so tests drive a `FakeNvml` and the real
library (`PynvmlBackend`, import name `pynvml`) is the default. Every reading is one call per
field, no subprocess (nvidia-smi is never spawned), so a sample stays cheap.

Units: memory in bytes, power in watts, temperature in degrees C, clocks in MHz, PCIe throughput
in bytes/s. Fields a device does not support are None (power, temperature, clock, PCIe).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from trainguard.core.errors import AgentError

__all__ = [
    "FakeNvml",
    "GpuProcess",
    "GpuSample",
    "NvmlBackend",
    "NvmlUnavailable",
    "PynvmlBackend",
]

log = logging.getLogger(__name__)


class NvmlUnavailable(AgentError):
    """NVML cannot be used: no driver, no GPU, or the library is missing."""


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU: its pid, the GPU memory it holds and its name."""

    pid: int
    used_bytes: int
    name: str = ""


@dataclass(frozen=True)
class GpuSample:
    """One device at one instant. `ecc_errors` counts uncorrected (double-bit) volatile errors,
    `ecc_corrected` corrected ones; `xid_errors` counts XID events seen since the agent started
    and `last_xid` is the most recent XID code (0: none)."""

    index: int
    uuid: str
    util_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    power_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    ecc_errors: int = 0
    xid_errors: int = 0
    processes: list[GpuProcess] = field(default_factory=list)
    ecc_corrected: int = 0
    last_xid: int = 0
    mem_util_pct: float | None = None
    pcie_tx_bytes_s: float | None = None
    pcie_rx_bytes_s: float | None = None


class NvmlBackend(Protocol):
    """What the collector and the GPU checks need from NVML."""

    def init(self) -> None:
        """Load and initialise the library; raises `NvmlUnavailable`."""

    def driver_version(self) -> str: ...

    def device_count(self) -> int: ...

    def read(self, index: int) -> GpuSample:
        """All readings of device `index`; raises `NvmlUnavailable` if the device is gone."""


class PynvmlBackend:
    """The real NVML through nvidia-ml-py.

    Args:
        pcie: also read PCIe TX/RX throughput (NVML samples it over ~20 ms per counter, so it
            costs ~40 ms of wall time per GPU and sample, but no CPU).
    """

    def __init__(self, *, pcie: bool = True) -> None:
        self._pcie = pcie
        self._nv: Any = None
        self._handles: list[Any] = []
        self._events: Any = None
        self._xid_count: dict[int, int] = {}
        self._last_xid: dict[int, int] = {}

    def init(self) -> None:
        if self._nv is not None:
            return
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("nvidia-ml-py (pynvml) is not installed") from exc
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(
                f"NVML unavailable: {exc}",
                tip="install the NVIDIA driver, or ignore this on a node without GPUs",
            ) from exc
        self._nv = pynvml
        self._handles = handles
        self._events = self._register_xid_events(pynvml, handles)

    @staticmethod
    def _register_xid_events(nv: Any, handles: Sequence[Any]) -> Any:
        try:
            events = nv.nvmlEventSetCreate()
        except nv.NVMLError:
            return None
        for h in handles:
            try:
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, events)
            except nv.NVMLError as exc:  # not supported on some boards / in containers
                log.info("XID events not available on a device: %s", exc)
        return events

    def driver_version(self) -> str:
        self.init()
        v = self._nv.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)

    def device_count(self) -> int:
        self.init()
        return len(self._handles)

    def _opt(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError:
            return None

    def _drain_xid(self) -> None:
        """Take every pending XID event without waiting (timeout 0)."""
        if self._events is None:
            return
        nv = self._nv
        index_of = {id(h): i for i, h in enumerate(self._handles)}
        for _ in range(256):  # bounded: a storm of events cannot stall the sample
            try:
                data = nv.nvmlEventSetWait(self._events, 0)
            except nv.NVMLError:
                return  # NVML_ERROR_TIMEOUT: nothing pending
            i = self._device_index(data.device, index_of)
            self._xid_count[i] = self._xid_count.get(i, 0) + 1
            self._last_xid[i] = int(data.eventData)

    def _device_index(self, handle: Any, index_of: Mapping[int, int]) -> int:
        if id(handle) in index_of:
            return index_of[id(handle)]
        uuid = self._opt(self._nv.nvmlDeviceGetUUID, handle)
        for i, h in enumerate(self._handles):
            if uuid is not None and self._opt(self._nv.nvmlDeviceGetUUID, h) == uuid:
                return i
        return -1

    def read(self, index: int) -> GpuSample:
        self.init()
        nv = self._nv
        h = self._handles[index]
        try:
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            uuid = nv.nvmlDeviceGetUUID(h)
        except nv.NVMLError as exc:
            raise NvmlUnavailable(f"GPU {index} cannot be read: {exc}") from exc
        self._drain_xid()
        power = self._opt(nv.nvmlDeviceGetPowerUsage, h)
        ecc_u = self._opt(
            nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
        )
        ecc_c = self._opt(
            nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC
        )
        tx = rx = None
        if self._pcie:
            tx = self._opt(nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_TX_BYTES)
            rx = self._opt(nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_RX_BYTES)
        return GpuSample(
            index=index,
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            util_pct=float(util.gpu),
            mem_util_pct=float(util.memory),
            mem_used_bytes=int(mem.used),
            mem_total_bytes=int(mem.total),
            power_w=None if power is None else power / 1000.0,
            temp_c=_float(self._opt(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)),
            sm_clock_mhz=_float(self._opt(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)),
            ecc_errors=int(ecc_u or 0),
            ecc_corrected=int(ecc_c or 0),
            xid_errors=self._xid_count.get(index, 0),
            last_xid=self._last_xid.get(index, 0),
            processes=self._processes(h),
            pcie_tx_bytes_s=None if tx is None else tx * 1024.0,  # NVML reports KB/s
            pcie_rx_bytes_s=None if rx is None else rx * 1024.0,
        )

    def _processes(self, handle: Any) -> list[GpuProcess]:
        procs = self._opt(self._nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
        out = []
        for p in procs:
            name = self._opt(self._nv.nvmlSystemGetProcessName, p.pid) or ""
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            out.append(GpuProcess(int(p.pid), int(p.usedGpuMemory or 0), str(name)))
        return out

    def close(self) -> None:
        if self._nv is None:
            return
        if self._events is not None:
            self._opt(self._nv.nvmlEventSetFree, self._events)
        self._opt(self._nv.nvmlShutdown)
        self._nv = None


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


_FAKE_DEFAULTS: dict[str, Any] = {
    "util_pct": 0.0,
    "mem_util_pct": 0.0,
    "mem_used_bytes": 0,
    "mem_total_bytes": 80 * 1024**3,
    "power_w": 60.0,
    "temp_c": 35.0,
    "sm_clock_mhz": 210.0,
    "ecc_errors": 0,
    "ecc_corrected": 0,
    "pcie_tx_bytes_s": 0.0,
    "pcie_rx_bytes_s": 0.0,
    "processes": [],
}


class FakeNvml:
    """A scriptable NVML for tests (and for the anomaly detectors' tests).

    Usage::

        fake = FakeNvml(devices=2)                      # idle 80 GiB devices
        fake.set(0, util_pct=99, power_w=300,           # change device 0 from now on
                 processes=[(4242, 20 << 30, "xmrig")]) # (pid, bytes, name) or GpuProcess
        fake.script(1, [{"pcie_tx_bytes_s": 8e9},       # device 1: one step per read();
                        {"pcie_tx_bytes_s": 1e5}])      # each step updates the state, which
                                                        # then stays (after the script ends too)
        fake.xid(0, 79)                                 # one XID event (code 79) on device 0
        FakeNvml(init_error="NVML Shared Library Not Found")   # behaves like a node without GPUs

    `reads` counts read() calls per device; `init_calls` counts init() calls.
    """

    def __init__(
        self,
        devices: int = 1,
        *,
        driver: str = "550.54.15",
        init_error: str | None = None,
    ) -> None:
        self._driver = driver
        self._init_error = init_error
        self._state: list[dict[str, Any]] = [copy.deepcopy(_FAKE_DEFAULTS) for _ in range(devices)]
        self._scripts: list[list[Mapping[str, Any]]] = [[] for _ in range(devices)]
        self._xids: list[list[int]] = [[] for _ in range(devices)]
        self.reads: list[int] = [0] * devices
        self.init_calls = 0
        self.failing: set[int] = set()

    def set(self, index: int, **fields: Any) -> None:
        """Update device `index` from now on (keys: any GpuSample field but index/uuid)."""
        self._state[index].update(_check_fields(fields))

    def script(self, index: int, steps: Iterable[Mapping[str, Any]]) -> None:
        """Queue per-read updates for device `index`: read N applies step N, then reads."""
        self._scripts[index].extend(_check_fields(s) for s in steps)

    def xid(self, index: int, code: int) -> None:
        self._xids[index].append(code)

    def init(self) -> None:
        self.init_calls += 1
        if self._init_error is not None:
            raise NvmlUnavailable(f"NVML unavailable: {self._init_error}")

    def driver_version(self) -> str:
        self.init()
        return self._driver

    def device_count(self) -> int:
        self.init()
        return len(self._state)

    def read(self, index: int) -> GpuSample:
        if self._init_error is not None:
            raise NvmlUnavailable(f"NVML unavailable: {self._init_error}")
        if index in self.failing:
            raise NvmlUnavailable(f"GPU {index} cannot be read: GPU is lost")
        self.reads[index] += 1
        if self._scripts[index]:
            self._state[index].update(self._scripts[index].pop(0))
        state = self._state[index]
        procs = [p if isinstance(p, GpuProcess) else GpuProcess(*p) for p in state["processes"]]
        fields = {k: v for k, v in state.items() if k != "processes"}
        sample = GpuSample(
            index=index,
            uuid=f"GPU-fake-{index:04d}-0000-0000-000000000000",
            processes=procs,
            xid_errors=len(self._xids[index]),
            last_xid=self._xids[index][-1] if self._xids[index] else 0,
            **fields,
        )
        return replace(sample)


_SETTABLE = frozenset(_FAKE_DEFAULTS)


def _check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise TypeError(f"FakeNvml: unknown field(s) {sorted(unknown)}; settable: {sorted(_SETTABLE)}")
    return dict(fields)
