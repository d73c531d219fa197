"""Prometheus metrics: DCGM exporter names for GPUs, trainguard_* for host and posture."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from trainguard.agent.checks import CheckResult, Severity, Status
from trainguard.agent.metrics import AgentMetrics
from trainguard.agent.telemetry.collector import TelemetryCollector
from trainguard.agent.telemetry.nvml import FakeNvml
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.incidents import IncidentKind

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


def _log(home: Home) -> AuditLog:
    return AuditLog.open(home.audit_db, "n", SigningKey.load(home.node_signing_key))


def test_check_status_series() -> None:
    m = AgentMetrics("n")
    r = CheckResult("home-modes", "t", Severity.HIGH, ("AC-3",), (), Status.FAIL, "s", {}, "", 1.0)
    m.update_checks([r])
    v = parse(m)
    assert v[("trainguard_check_status", (("check", "home-modes"), ("status", "fail")))] == 1.0
    assert v[("trainguard_check_status", (("check", "home-modes"), ("status", "pass")))] == 0.0


def test_incidents_total_counts_every_incident_in_the_log_whoever_sent_it(home: Home) -> None:
    """Regression: the counter saw only incidents the daemon detected itself, not those a
    trainer or the CLI sent. Every kind starts at zero so alerts work before the first one."""
    log = _log(home)
    m = AgentMetrics("n", audit=log, home=home)
    v = parse(m)
    kinds = {dict(k[1])["kind"] for k in v if k[0] == "trainguard_incidents_total"}
    assert kinds == {k.value for k in IncidentKind}
    assert v[("trainguard_incidents_total", (("kind", "gpu-misuse"), ("severity", "high")))] == 0
    for actor in ("trainguard-agent", "uid:1000", "spiffe://lab/node/n2"):
        log.append("incident", actor, {"kind": "gpu-misuse", "severity": "high"})
    log.append("incident", "cli", {"kind": "checkpoint-tampered", "severity": "critical"})
    v = parse(m)
    assert v[("trainguard_incidents_total", (("kind", "gpu-misuse"), ("severity", "high")))] == 3
    key = ("trainguard_incidents_total", (("kind", "checkpoint-tampered"), ("severity", "critical")))
    assert v[key] == 1
    assert parse(m)[key] == 1  # counted once, not on every scrape
    log.close()


def test_audit_chain_gauge_turns_zero_when_the_log_is_edited(home: Home) -> None:
    import sqlite3

    log = _log(home)
    log.append("x", "t", {"n": 1})
    log.checkpoint(force=True)
    clock = [1000.0]
    m = AgentMetrics("n", audit=log, home=home, verify_seconds=60, clock=lambda: clock[0])
    assert parse(m)[("trainguard_audit_chain_ok", ())] == 1.0
    db = sqlite3.connect(home.audit_db)
    db.execute("UPDATE entries SET data = '{\"n\": 2}' WHERE kind = 'x'")
    db.commit()
    db.close()
    assert parse(m)[("trainguard_audit_chain_ok", ())] == 1.0  # not re-verified yet
    clock[0] += 61
    assert parse(m)[("trainguard_audit_chain_ok", ())] == 0.0
    log.close()


def test_two_instances_do_not_share_a_registry(home: Home) -> None:
    log = _log(home)
    log.append("incident", "t", {"kind": "exfiltration", "severity": "high"})
    a, b = AgentMetrics("a", audit=log, home=home), AgentMetrics("b")
    assert "exfiltration" in a.render().decode()
    assert "exfiltration" not in b.render().decode()
    log.close()


def test_metrics_http_speaks_head_gzip_and_openmetrics(home: Home) -> None:
    import asyncio
    import gzip
    import urllib.request

    from trainguard.agent.metrics_http import serve_metrics

    m = AgentMetrics("n", audit=_log(home), home=home)

    async def run() -> None:
        server, port = await serve_metrics(m, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{port}/metrics"

            def fetch(method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
                req = urllib.request.Request(url, method=method, headers=headers)
                with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
                    return r.status, dict(r.headers), r.read()

            status, headers, body = await asyncio.to_thread(fetch)
            assert status == 200 and b"trainguard_incidents_total" in body
            status, headers, body = await asyncio.to_thread(fetch, "HEAD")
            assert status == 200 and body == b"" and headers["Content-Type"].startswith("text/plain")
            _, headers, body = await asyncio.to_thread(fetch, **{"Accept-Encoding": "gzip"})
            assert headers.get("Content-Encoding") == "gzip"
            assert b"trainguard_incidents_total" in gzip.decompress(body)
            _, headers, body = await asyncio.to_thread(
                fetch, Accept="application/openmetrics-text; version=1.0.0")
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")
            try:
                await asyncio.to_thread(urllib.request.urlopen, url.replace("/metrics", "/x"))
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
            else:
                raise AssertionError("other paths must be 404")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
