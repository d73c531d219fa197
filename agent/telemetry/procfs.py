"""Host readings from /proc: CPU times, memory, network counters, process owners.

Every function takes `proc_root` so tests parse fixture trees; nothing spawns a process.
Formats: proc(5) — /proc/stat "cpu" line (user nice system idle iowait irq softirq steal ...,
in clock ticks), /proc/meminfo ("MemTotal:  16384 kB"), /proc/net/dev (two header lines, then
"iface: rx_bytes rx_packets ... tx_bytes ..." with 8 receive and 8 transmit columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuTimes",
    "ProcessInfo",
    "read_cpu_times",
    "read_meminfo",
    "read_net_dev",
    "read_process",
]


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU ticks since boot: `busy` excludes idle and iowait."""

    busy: int
    total: int

    def pct_since(self, earlier: CpuTimes) -> float:
        """Busy share of all CPUs between `earlier` and this reading, 0..100."""
        dt = self.total - earlier.total
        if dt <= 0:
            return 0.0
        return max(0.0, min(100.0, 100.0 * (self.busy - earlier.busy) / dt))


def read_cpu_times(proc_root: Path) -> CpuTimes:
    with open(proc_root / "stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("cpu "):
                # guest/guest_nice (fields 9, 10) are already counted in user/nice
                ticks = [int(x) for x in line.split()[1:9]]
                ticks += [0] * (8 - len(ticks))
                idle = ticks[3] + ticks[4]
                total = sum(ticks)
                return CpuTimes(busy=total - idle, total=total)
    raise ValueError(f"{proc_root / 'stat'} has no aggregate cpu line")


def read_meminfo(proc_root: Path) -> tuple[int, int]:
    """(used_bytes, total_bytes); used = MemTotal - MemAvailable (what `free` calls used)."""
    values: dict[str, int] = {}
    with open(proc_root / "meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"):
                parts = rest.split()
                values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = values["MemTotal"]
    available = values.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = values.get("MemFree", 0) + values.get("Buffers", 0) + values.get("Cached", 0)
    return total - available, total


def read_net_dev(proc_root: Path) -> dict[str, tuple[int, int]]:
    """Per interface (rx_bytes, tx_bytes) since boot."""
    out: dict[str, tuple[int, int]] = {}
    with open(proc_root / "net" / "dev", encoding="ascii") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if not sep or "|" in line:
                continue
            cols = rest.split()
            if len(cols) < 16:
                continue
            out[name.strip()] = (int(cols[0]), int(cols[8]))
    return out


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    uid: int
    name: str


def read_process(proc_root: Path, pid: int) -> ProcessInfo | None:
    """Owner (real uid) and name of `pid`, or None if it is gone or hidden from us."""
    try:
        text = (proc_root / str(pid) / "status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    name, uid = "", -1
    for line in text.splitlines():
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Uid:"):
            uid = int(line.split()[1])
    return ProcessInfo(pid=pid, uid=uid, name=name)
