"""Prometheus metrics of one node: GPUs under the DCGM exporter's names, the rest `trainguard_*`.

`AgentMetrics` owns its own `CollectorRegistry` (never the global one), so several agents in one
test process do not collide. GPU and host series come from the last `Sample` through a custom
collector, so a process that leaves a GPU or an interface that disappears leaves no stale series.

DCGM names and units follow dcgm-exporter's counters: FB memory in MiB, power in W, clocks in MHz,
`DCGM_FI_DEV_XID_ERRORS` is the value of the last XID, PCIe in bytes/s. Labels: `gpu`, `UUID`,
`Hostname`, as dcgm-exporter writes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from trainguard.agent.telemetry.collector import GpuSample, Sample

__all__ = ["CONTENT_TYPE", "DCGM_METRICS", "AgentMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MIB = 1024 * 1024

# name -> (help, GpuSample -> value or None)
DCGM_METRICS: dict[str, tuple[str, Any]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("GPU utilization (in %).", lambda g: g.util_pct),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("Memory utilization (in %).", lambda g: g.mem_util_pct),
    "DCGM_FI_DEV_FB_USED": ("Framebuffer memory used (in MiB).", lambda g: g.mem_used_bytes / _MIB),
    "DCGM_FI_DEV_FB_FREE": (
        "Framebuffer memory free (in MiB).",
        lambda g: (g.mem_total_bytes - g.mem_used_bytes) / _MIB,
    ),
    "DCGM_FI_DEV_FB_TOTAL": ("Framebuffer memory total (in MiB).", lambda g: g.mem_total_bytes / _MIB),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", lambda g: g.power_w),
    "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", lambda g: g.temp_c),
    "DCGM_FI_DEV_SM_CLOCK": ("SM clock frequency (in MHz).", lambda g: g.sm_clock_mhz),
    "DCGM_FI_DEV_XID_ERRORS": ("Value of the last XID error encountered.", lambda g: g.last_xid),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("PCIe bytes transmitted per second.", lambda g: g.pcie_tx_bytes_s),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("PCIe bytes received per second.", lambda g: g.pcie_rx_bytes_s),
}
_DCGM_COUNTERS: dict[str, tuple[str, Any]] = {
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("Total single-bit volatile ECC errors.", lambda g: g.ecc_corrected),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("Total double-bit volatile ECC errors.", lambda g: g.ecc_errors),
}


class _SampleCollector(Collector):
    """Yields GPU and host families from the last sample on every scrape."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.sample: Sample | None = None
        self.nvml_ok = False

    def _gpu_labels(self, g: GpuSample) -> list[str]:
        return [str(g.index), g.uuid, self.hostname]

    def collect(self) -> Iterator[Metric]:
        s = self.sample
        gpus = s.gpus if s else []
        labels = ["gpu", "UUID", "Hostname"]
        for name, (doc, get) in DCGM_METRICS.items():
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for g in gpus:
                value = get(g)
                if value is not None:
                    fam.add_metric(self._gpu_labels(g), float(value))
            yield fam
        for name, (doc, get) in _DCGM_COUNTERS.items():
            # DCGM exports these as counters without the _total suffix; keep the name verbatim.
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for g in gpus:
                fam.add_metric(self._gpu_labels(g), float(get(g)))
            yield fam
        yield from self._trainguard_gpu(gpus)
        if s is not None:
            yield from self._host(s)
        yield GaugeMetricFamily(
            "trainguard_nvml_available", "1 when NVML answers, 0 without a GPU or driver.",
            value=1.0 if self.nvml_ok else 0.0,
        )

    def _trainguard_gpu(self, gpus: Sequence[GpuSample]) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "trainguard_gpu_compute_processes", "Compute processes on the GPU.",
            labels=["gpu", "UUID"],
        )
        mem = GaugeMetricFamily(
            "trainguard_gpu_process_memory_bytes", "GPU memory held by one process.",
            labels=["gpu", "pid", "name"],
        )
        xid = CounterMetricFamily(
            "trainguard_gpu_xid_events", "XID events seen since the agent started.",
            labels=["gpu", "UUID"],
        )
        for g in gpus:
            count.add_metric([str(g.index), g.uuid], float(len(g.processes)))
            xid.add_metric([str(g.index), g.uuid], float(g.xid_errors))
            for p in g.processes:
                mem.add_metric([str(g.index), str(p.pid), p.name], float(p.used_bytes))
        yield from (count, mem, xid)

    def _host(self, s: Sample) -> Iterator[Metric]:
        h = s.host
        yield GaugeMetricFamily(
            "trainguard_host_cpu_percent", "Host CPU busy, percent of all cores.", value=h.cpu_pct
        )
        yield GaugeMetricFamily(
            "trainguard_host_memory_used_bytes", "Host memory in use (total - available).",
            value=float(h.mem_used_bytes),
        )
        yield GaugeMetricFamily(
            "trainguard_host_memory_total_bytes", "Host memory.", value=float(h.mem_total_bytes)
        )
        rx = CounterMetricFamily(
            "trainguard_host_network_receive_bytes", "Bytes received.", labels=["interface"]
        )
        tx = CounterMetricFamily(
            "trainguard_host_network_transmit_bytes", "Bytes sent.", labels=["interface"]
        )
        for name, (r, t) in sorted(h.interfaces.items()):
            rx.add_metric([name], float(r))
            tx.add_metric([name], float(t))
        yield from (rx, tx)
        yield GaugeMetricFamily(
            "trainguard_telemetry_sample_timestamp_seconds", "When the last sample was taken.",
            value=s.time,
        )


class _EvidenceCollector(Collector):
    """Series read from the node's evidence on each scrape, cheaply and incrementally:

    * ``trainguard_incidents_total{kind,severity}``: every incident recorded in the audit log,
      whatever sent it (the agent's detectors, a trainer or the CLI through the API, or the
      embedded log while the agent was down), counted from new ``incident`` entries since the
      last scrape; every kind and severity exists from the start at 0, so rate() and alerts
      work before the first incident.
    * ``trainguard_audit_chain_ok``: 1 when the last verification of the whole chain and its
      signed checkpoints passed (re-run at most every `verify_seconds`), 0 when it failed.
    * ``trainguard_node_cert_expiry_timestamp_seconds``: when the node certificate expires.
    """

    def __init__(self, audit: Any, home: Any, *, verify_seconds: float, clock: Any) -> None:
        from trainguard.evidence.incidents import IncidentKind, Severity

        self._audit = audit
        self._home = home
        self._verify_seconds = verify_seconds
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = {
            (k.value, s.value): 0 for k in IncidentKind for s in Severity
        }
        self._seen = 0
        self._chain_ok: float | None = None
        self._verified_at = -float("inf")
        self._cert: tuple[int, float] | None = None
        self._lock = threading.Lock()

    def _count_new_incidents(self) -> None:
        for entry in self._audit.entries(kind="incident", after_seq=self._seen):
            key = (str(entry.data.get("kind")), str(entry.data.get("severity")))
            self._counts[key] = self._counts.get(key, 0) + 1
            self._seen = entry.seq

    def _verify_chain(self) -> None:
        now = self._clock()
        if now - self._verified_at < self._verify_seconds:
            return
        from trainguard.core.errors import TrainguardError
        from trainguard.crypto.signing import VerifyKey

        self._verified_at = now
        try:
            key = VerifyKey.load(self._home.node_verify_key)
            self._audit.verify(key)
            self._chain_ok = 1.0
        except TrainguardError:
            self._chain_ok = 0.0

    def _cert_expiry(self) -> float | None:
        path = self._home.pki_dir / "node.crt"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        if self._cert is None or self._cert[0] != mtime:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(path.read_bytes())
            self._cert = (mtime, cert.not_valid_after_utc.timestamp())
        return self._cert[1]

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # scrapes may run in parallel threads
            self._count_new_incidents()
            self._verify_chain()
            expiry = self._cert_expiry()
            counts = dict(self._counts)
        incidents = CounterMetricFamily(
            "trainguard_incidents",
            "Incidents recorded in this node's audit log, from any source, by kind and severity.",
            labels=["kind", "severity"],
        )
        for (kind, severity), n in sorted(counts.items()):
            incidents.add_metric([kind, severity], n)
        yield incidents
        if self._chain_ok is not None:
            yield GaugeMetricFamily(
                "trainguard_audit_chain_ok",
                "1 if the audit chain and its signed checkpoints verified at the last check.",
                value=self._chain_ok,
            )
        if expiry is not None:
            yield GaugeMetricFamily(
                "trainguard_node_cert_expiry_timestamp_seconds",
                "Expiry of the node's cluster certificate (Unix time).",
                value=expiry,
            )


class AgentMetrics:
    """The node's metrics. `update(sample)` each cycle; `render()` for `/metrics`.

    Args:
        hostname: the `Hostname` label (the node name from config).
        process_metrics: add `process_*` series (RSS, CPU seconds) of this process, read from
            /proc/self on scrape.
        audit, home: the node's audit log and home: incident counts, audit-chain state and
            certificate expiry are read from them on scrape (`_EvidenceCollector`).
    """

    def __init__(
        self,
        hostname: str = "",
        *,
        process_metrics: bool = True,
        audit: Any = None,
        home: Any = None,
        verify_seconds: float = 300.0,
        clock: Any = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._samples = _SampleCollector(hostname)
        self.registry.register(self._samples)
        if audit is not None and home is not None:
            self.registry.register(
                _EvidenceCollector(audit, home, verify_seconds=verify_seconds, clock=clock)
            )
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self._checks = Gauge(
            "trainguard_check_status", "1 for the current status of each posture check.",
            ["check", "status"], registry=self.registry,
        )
        self._cycles = Counter(
            "trainguard_agent_cycles", "Agent cycles completed.", registry=self.registry
        )

    def update(self, sample: Sample, *, nvml_available: bool | None = None) -> None:
        """Take `sample` as the current state (GPU, host and timestamp series)."""
        self._samples.sample = sample
        self._samples.nvml_ok = bool(sample.gpus) if nvml_available is None else nvml_available
        self._cycles.inc()

    def update_checks(self, results: Iterable[Any]) -> None:
        """Record posture results (`CheckResult`s): one series per check, value 1 on its status."""
        from trainguard.agent.checks import Status

        for r in results:
            for st in Status:
                self._checks.labels(r.id, st.value).set(1.0 if r.status is st else 0.0)

    def render(self) -> bytes:
        """Prometheus text exposition format (content type `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
