"""Prometheus metrics: DCGM exporter names for GPUs, trainguard_* for host and posture."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from trainguard.agent.checks import CheckResult, Severity, Status
from trainguard.agent.metrics import AgentMetrics
from trainguard.agent.telemetry.collector import TelemetryCollector
from trainguard.agent.telemetry.nvml import FakeNvml

MIB = 1024 * 1024


def parse(m: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def gpu_labels(index: int, hostname: str = "node-7") -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"gpu": str(index), "UUID": f"GPU-fake-{index:04d}-0000-0000-000000000000",
                         "Hostname": hostname}.items()))


def test_gpu_series_use_dcgm_names_and_units() -> None:
    fake = FakeNvml(2)
    fake.set(1, util_pct=88.0, mem_used_bytes=10 * 1024 * MIB, power_w=250.5, temp_c=71.0,
             sm_clock_mhz=1980.0, ecc_errors=2, ecc_corrected=5,
             processes=[(31337, 8 << 30, "xmrig")])
    fake.xid(1, 79)
    m = AgentMetrics("node-7")
    m.update(TelemetryCollector(nvml=fake).sample())
    v = parse(m)
    lbl = gpu_labels(1)
    assert v[("DCGM_FI_DEV_GPU_UTIL", lbl)] == 88.0
    assert v[("DCGM_FI_DEV_FB_USED", lbl)] == 10 * 1024  # MiB, as dcgm-exporter
    assert v[("DCGM_FI_DEV_POWER_USAGE", lbl)] == 250.5
    assert v[("DCGM_FI_DEV_GPU_TEMP", lbl)] == 71.0
    assert v[("DCGM_FI_DEV_SM_CLOCK", lbl)] == 1980.0
    assert v[("DCGM_FI_DEV_XID_ERRORS", lbl)] == 79
    assert v[("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", lbl)] == 2
    assert v[("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", lbl)] == 5
    assert v[("DCGM_FI_DEV_GPU_UTIL", gpu_labels(0))] == 0.0
    assert v[("trainguard_gpu_process_memory_bytes", (("gpu", "1"), ("name", "xmrig"), ("pid", "31337")))] == 8 << 30
    assert v[("trainguard_nvml_available", ())] == 1.0


def test_host_and_process_series(tmp_path: Path) -> None:
    m = AgentMetrics("n")
    m.update(TelemetryCollector(nvml=FakeNvml(0)).sample(), nvml_available=False)
    v = parse(m)
    assert v[("trainguard_host_memory_total_bytes", ())] > 0
    assert ("trainguard_host_network_receive_bytes_total", (("interface", "lo"),)) in v
    assert v[("trainguard_nvml_available", ())] == 0.0
    assert v[("process_resident_memory_bytes", ())] > 0
    assert not any(name.startswith("DCGM_") for name, _ in v)


def test_a_process_that_left_leaves_no_stale_series() -> None:
    fake = FakeNvml(1)
    fake.set(0, processes=[(99, 1 << 30, "job")])
    c, m = TelemetryCollector(nvml=fake), AgentMetrics("n")
    m.update(c.sample())
    assert "pid=\"99\"" in m.render().decode()
    fake.set(0, processes=[])
    m.update(c.sample())
    assert "pid=\"99\"" not in m.render().decode()


def test_check_status_and_incident_counters() -> None:
    m = AgentMetrics("n")
    r = CheckResult("home-modes", "t", Severity.HIGH, ("AC-3",), (), Status.FAIL, "s", {}, "", 1.0)
    m.update_checks([r])
    m.incident("gpu-misuse", "high")
    m.incident("gpu-misuse", "high")
    v = parse(m)
    assert v[("trainguard_check_status", (("check", "home-modes"), ("status", "fail")))] == 1.0
    assert v[("trainguard_check_status", (("check", "home-modes"), ("status", "pass")))] == 0.0
    assert v[("trainguard_incidents_total", (("kind", "gpu-misuse"), ("severity", "high")))] == 2.0


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = AgentMetrics("a"), AgentMetrics("b")
    a.incident("exfiltration", "high")
    assert "exfiltration" not in b.render().decode()
