"""Telemetry: /proc parsing (fixtures and this machine), FakeNvml-driven GPU samples."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trainguard.agent.telemetry import procfs
from trainguard.agent.telemetry.collector import Sample, TelemetryCollector
from trainguard.agent.telemetry.nvml import FakeNvml

STAT = "cpu  {user} 0 {system} {idle} 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\nintr 1\n"
MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    4096000 kB\n"
NETDEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
    "    lo:    5000      10    0    0    0     0          0         0     5000      10    0    0    0     0       0          0\n"
    "  eth0: {rx}    1940    0    0    0     0          0         0   {tx}    1027    0    0    0     0       0          0\n"
)


def write_proc(root: Path, *, user: int = 100, system: int = 50, idle: int = 850, rx: int = 1000, tx: int = 2000) -> Path:
    (root / "net").mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(STAT.format(user=user, system=system, idle=idle))
    (root / "meminfo").write_text(MEMINFO)
    (root / "net/dev").write_text(NETDEV.format(rx=rx, tx=tx))
    return root


def test_fixture_proc_parsing(tmp_path: Path) -> None:
    proc = write_proc(tmp_path)
    assert procfs.read_cpu_times(proc) == procfs.CpuTimes(busy=150, total=1000)
    assert procfs.read_meminfo(proc) == ((16384000 - 4096000) * 1024, 16384000 * 1024)
    assert procfs.read_net_dev(proc) == {"lo": (5000, 5000), "eth0": (1000, 2000)}


def test_cpu_percent_and_network_rates_from_deltas(tmp_path: Path) -> None:
    proc = write_proc(tmp_path)
    now = [1000.0]
    c = TelemetryCollector(nvml=FakeNvml(0), proc_root=proc, clock=lambda: now[0])
    first = c.sample()
    assert first.host.cpu_pct == pytest.approx(15.0)  # since boot
    assert first.host.net_rx_rate is None
    assert first.host.net_rx_bytes == 1000  # loopback excluded from totals
    write_proc(proc, user=400, system=100, idle=1500, rx=11000, tx=2000)  # +350 busy of +1000
    now[0] = 1010.0
    second = c.sample()
    assert second.host.cpu_pct == pytest.approx(35.0)
    assert second.host.net_rx_rate == pytest.approx(1000.0)
    assert second.host.net_tx_rate == 0.0
    assert second.time == 1010.0


def test_real_proc_of_this_machine() -> None:
    c = TelemetryCollector(nvml=FakeNvml(0))
    s1, s2 = c.sample(), c.sample()
    for s in (s1, s2):
        assert 0.0 <= s.host.cpu_pct <= 100.0
        assert 0 < s.host.mem_used_bytes < s.host.mem_total_bytes
        assert "lo" in s.host.interfaces
    assert s2.host.net_rx_bytes >= s1.host.net_rx_bytes


def test_gpu_samples_follow_the_fake(tmp_path: Path) -> None:
    fake = FakeNvml(2)
    fake.set(1, util_pct=100.0, power_w=310.0, processes=[(4242, 12 << 30, "miner")])
    fake.script(0, [{"pcie_tx_bytes_s": 9e9}])
    c = TelemetryCollector(nvml=fake, proc_root=write_proc(tmp_path))
    s = c.sample()
    assert isinstance(s, Sample) and [g.index for g in s.gpus] == [0, 1]
    assert s.gpus[0].pcie_tx_bytes_s == 9e9
    assert s.gpus[1].power_w == 310.0 and s.gpus[1].processes[0].pid == 4242


def test_no_gpu_is_reported_once_and_sampling_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(init_error="NVML Shared Library Not Found")
    c = TelemetryCollector(nvml=fake, proc_root=write_proc(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainguard.agent.telemetry.collector"):
        samples = [c.sample() for _ in range(3)]
    assert all(s.gpus == [] for s in samples)
    assert fake.init_calls == 1
    assert c.nvml_error and "Shared Library" in c.nvml_error
    assert len([r for r in caplog.records if "GPU telemetry off" in r.message]) == 1


def test_real_nvml_default_without_gpu_gives_no_gpus(tmp_path: Path) -> None:
    c = TelemetryCollector(proc_root=write_proc(tmp_path))  # nvml=None: the real library
    s = c.sample()
    if c.nvml_error is None:
        pytest.skip("this machine has a working NVML")
    assert s.gpus == [] and c.sample().gpus == []


def test_lost_gpu_is_logged_once_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(2)
    c = TelemetryCollector(nvml=fake, proc_root=write_proc(tmp_path))
    fake.failing.add(1)
    with caplog.at_level(logging.WARNING, logger="trainguard.agent.telemetry.collector"):
        assert [g.index for g in c.sample().gpus] == [0]
        assert [g.index for g in c.sample().gpus] == [0]
    assert len([r for r in caplog.records if "GPU 1" in r.message]) == 1
    fake.failing.clear()
    assert [g.index for g in c.sample().gpus] == [0, 1]


def test_sampling_spawns_no_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("telemetry spawned a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    c = TelemetryCollector(proc_root=write_proc(tmp_path))
    c.sample()
    c.sample()


names = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
counters = st.integers(min_value=0, max_value=2**63)


@given(st.dictionaries(names, st.tuples(counters, counters), min_size=1, max_size=8))
def test_net_dev_parser_round_trips(ifaces: dict[str, tuple[int, int]]) -> None:
    import tempfile

    lines = NETDEV.splitlines(keepends=True)[:2]
    for name, (rx, tx) in ifaces.items():
        lines.append(f"{name:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "net").mkdir()
        (Path(d) / "net/dev").write_text("".join(lines))
        assert procfs.read_net_dev(Path(d)) == ifaces
