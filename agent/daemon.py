"""The node agent: one asyncio process that runs posture checks, samples and scores telemetry,
turns failures and detections into incidents, serves the API and /metrics, and speaks sd_notify.

Collaborators (checks, telemetry, metrics, scorer) are constructor parameters with the real
implementations as defaults, so tests drive the daemon with small fakes. The blocking parts of a
cycle (NVML, /proc, checks, hooks) run in a worker thread; the event loop only serves requests.

Signals: SIGTERM/SIGINT flush pending audit writes, write a final checkpoint and exit 0; SIGHUP
reloads trainguard.toml (a bad file is reported and the old config is kept) and the CRL.

Local response actions act only on what this agent verified itself (`AgentVerifier`: the GPU
processes of its own latest telemetry sample, its own scan of artifact folders). Webhook
deliveries have their own task, woken when one is queued and otherwise sleeping until the
queue's next due time, so a retry never waits for the next cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.agent.api.auth import ApiAuthorizer, policy_check_for_home
from trainguard.agent.api.server import AgentServer
from trainguard.agent.api.tls import ServerTls
from trainguard.agent.checks import CheckResult
from trainguard.agent.config import AgentConfig, server_socket
from trainguard.agent.systemd.sdnotify import Notifier
from trainguard.agent.verifier import AgentVerifier
from trainguard.core.config import Config, load_config
from trainguard.core.errors import TrainguardError, UsageError
from trainguard.core.home import Home
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.embedded import open_embedded_log
from trainguard.evidence.incidents import AGENT_ACTOR, IncidentStatus
from trainguard.evidence.response.engine import IncidentEngine

__all__ = ["Agent", "AgentRefused", "CycleReport"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"

_DELIVERY_IDLE_SECONDS = 60.0  # the delivery task re-reads the queue at least this often


class AgentRefused(UsageError):
    """The agent will not start on this home as it is (exit 2)."""


@dataclass
class CycleReport:
    time: float
    checks: dict[str, int] = field(default_factory=dict)  # status -> count
    failed_checks: list[str] = field(default_factory=list)
    gpus: int = 0
    detections: int = 0
    incidents: list[str] = field(default_factory=list)
    webhooks_delivered: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
            "gpus": self.gpus,
            "detections": self.detections,
            "incidents": self.incidents,
            "webhooks_delivered": self.webhooks_delivered,
            "errors": self.errors,
        }


def preflight(home: Home) -> None:
    """Refuse a missing home or loose modes, naming each file and the mode to set."""
    home.require()
    if not home.node_signing_key.exists():
        raise AgentRefused(
            f"refusing to start: no node signing key at {home.node_signing_key}; audit "
            "checkpoints could not be signed",
            tip="run `trainguard init` (or restore the key from backup)",
        )
    problems = home.check_modes()
    if problems:
        raise AgentRefused(
            "refusing to start: unsafe permissions\n  " + "\n  ".join(str(p) for p in problems),
            tip="fix the modes listed above, then start the agent again",
        )


def _default_scorer(config: Config, clock: Callable[[], float]) -> Any:
    try:
        from trainguard.agent.detection import Scorer
    except ImportError:
        log.warning("anomaly scoring is not built in this install; detections are off")
        return None
    return Scorer(config, clock=clock)


class Agent:
    def __init__(
        self,
        home: Home,
        config: Config,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        checks: Callable[[Home, Config], list[CheckResult]] | None = None,
        telemetry: Any = None,
        metrics: Any = None,
        scorer: Any = "default",
        engine: IncidentEngine | None = None,
        config_loader: Callable[[], Config] | None = None,
        environ: Mapping[str, str] | None = None,
        verifier: AgentVerifier | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.clock = clock
        self.socket_path = server_socket(
            home.root, config.section(AgentConfig),
            {} if environ is None else environ,
        )
        self.notifier = notifier or Notifier()
        self.audit = audit or open_embedded_log(home, config)
        self.verifier = verifier or _verifier(config)
        self._wake_deliveries: Callable[[], None] | None = None  # set while `run` serves
        self.engine = engine or IncidentEngine.from_config(
            home, config, self.audit, clock=clock, verifier=self.verifier
        )
        self.tls: ServerTls | None = None
        if checks is None:
            from trainguard.agent.checks import run_checks

            checks = run_checks
        self._checks = checks
        if telemetry is None:
            from trainguard.agent.telemetry.collector import TelemetryCollector

            telemetry = TelemetryCollector(clock=clock)
        self.telemetry = telemetry
        if metrics is None:
            from trainguard.agent.metrics import AgentMetrics

            metrics = AgentMetrics(config.node.name, audit=self.audit, home=home, clock=clock)
        self.metrics = metrics
        self.scorer = _default_scorer(config, clock) if scorer == "default" else scorer
        from trainguard.agent.followers import AgentFeeds  # audit follower, jobs, cert renewal

        self.feeds = AgentFeeds.start(
            home, config.node.name, self.audit, self.scorer, clock=clock,
            on_renewed=lambda: self.tls.reload(force=True) if self.tls is not None else None,
        )
        from trainguard.evidence.export import ExportConfig, ExportForwarder

        # [export]: the audit log forwarded by seq to a file / syslog (None when not configured)
        self.exports = ExportForwarder.from_config(
            home, config.section(ExportConfig), self.audit, clock=clock
        )
        self._load_config = config_loader or (lambda: load_config(home.config_path, {}))
        self.started = clock()
        self.cycles = 0
        self.progress_at = time.monotonic()
        self.last_cycle: CycleReport | None = None
        self._last_checks = float("-inf")
        self.server: AgentServer | None = None
        self.listeners: dict[str, str] = {}
        self.last_checks: list[dict[str, Any]] = []
        self.verify_key_hex = _verify_key_hex(home)

    @property
    def agent_config(self) -> AgentConfig:
        return self.config.section(AgentConfig)

    # ---- one cycle -----------------------------------------------------------------------

    def cycle(self, *, force_checks: bool = False) -> CycleReport:
        """Checks (when due), one telemetry sample, metrics, scoring, incidents, retries."""
        now = self.clock()
        report = CycleReport(time=now)
        if force_checks or now - self._last_checks >= self.agent_config.checks_seconds:
            self._last_checks = now
            self._run_checks(report)
        try:
            sample = self.telemetry.sample()
            self.verifier.observe(sample)  # what kill may act on: this agent's own observation
            report.gpus = len(sample.gpus)
            self.metrics.update(sample)
            detections = list(self.scorer.observe(sample)) if self.scorer is not None else []
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the agent
            log.exception("telemetry cycle failed")
            report.errors.append(f"telemetry: {type(exc).__name__}: {exc}")
            detections = []
        detections += self.feeds.cycle(report.errors)  # access, training jobs, cert renewal
        if self.exports is not None:
            self.exports.cycle(report.errors)  # failures are queued and retried, never raised
        report.detections = len(detections)
        for d in detections:
            kind = getattr(d.kind, "value", d.kind)
            severity = getattr(d.severity, "value", d.severity)
            self._incident(report, kind, severity, dict(d.evidence))
        try:
            if self._wake_deliveries is None:  # serving: the delivery task sends them
                report.webhooks_delivered = self.engine.deliver_webhooks()
            self.audit.checkpoint()
            from trainguard.agent.api.witness import push_quietly

            if witness_error := push_quietly(self.home, self.config, self.audit):
                report.errors.append(witness_error)
        except (TrainguardError, OSError) as exc:
            report.errors.append(f"{type(exc).__name__}: {exc}")
        self.cycles += 1
        self.progress_at = time.monotonic()  # what the watchdog vouches for
        self.last_cycle = report
        return report

    def _run_checks(self, report: CycleReport) -> None:
        try:
            results = self._checks(self.home, self.config)
        except Exception as exc:  # noqa: BLE001 - a broken check module must not stop the agent
            log.exception("posture checks failed")
            report.errors.append(f"checks: {type(exc).__name__}: {exc}")
            return
        self.last_checks = [r.to_dict() for r in results]
        for r in results:
            report.checks[r.status.value] = report.checks.get(r.status.value, 0) + 1
        self.metrics.update_checks(results)
        failed = [r for r in results if r.failed]
        report.failed_checks = [r.id for r in failed]
        self.audit.append(
            "posture.checks", AGENT_ACTOR, {"counts": report.checks, "failed": report.failed_checks}
        )
        for r in failed:
            evidence = {
                "check": r.id,
                "title": r.title,
                "summary": r.summary,
                "controls": list(r.controls),
                "evidence": dict(r.evidence),
                "remediation": r.remediation,
                "dedup_key": f"check:{r.id}",
            }
            self._incident(
                report, "posture-failure", r.severity.value, evidence
            )

    def _incident(
        self, report: CycleReport, kind: str, severity: str, evidence: dict[str, Any]
    ) -> None:
        try:
            incident = self.engine.report(kind, severity, evidence)
        except TrainguardError as exc:
            report.errors.append(exc.message)
            return
        if incident.status == IncidentStatus.NEW:
            report.incidents.append(incident.id)  # /metrics counts it from the audit log

    # ---- status and reload ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cp = self.audit.latest_checkpoint()
        return {
            "node": self.config.node.name,
            "cluster": self.config.node.cluster,
            "version": VERSION,
            "pid": os.getpid(),
            "uptime_seconds": round(self.clock() - self.started, 1),
            "cycles": self.cycles,
            "last_cycle": self.last_cycle.to_dict() if self.last_cycle else None,
            "audit": {"last_seq": self.audit.last_seq(), "last_checkpoint": cp.seq if cp else None},
            "webhook_queue": self.engine.queue.counts(),
            "listeners": dict(self.listeners),
            "scoring": self.scorer is not None,
            "nvml_error": getattr(self.telemetry, "nvml_error", None),
            "verify_key": self.verify_key_hex,  # raw Ed25519 public key (hex): pin it
            "checks": self.last_checks,
        }

    def reload(self) -> bool:
        """Re-read the config (SIGHUP). Interval and hook settings apply from the next cycle;
        listener addresses need a restart."""
        try:
            new = self._load_config()
        except TrainguardError as exc:
            log.error("config reload failed, keeping the old config: %s", exc.message)
            self.audit.append("agent.reload-failed", AGENT_ACTOR, {"error": exc.message})
            return False
        self.config = new
        old_queue = self.engine.queue
        self.verifier = _verifier(new)
        self.engine = IncidentEngine.from_config(
            self.home,
            new,
            self.audit,
            clock=self.clock,
            queue=old_queue,
            verifier=self.verifier,
            on_enqueue=self._wake_deliveries,
        )
        if self.tls is not None:
            self.tls.reload(force=True)
        if self.server is not None:
            self.server.engine = self.engine
            self.server.config = self.agent_config
        self.audit.append("agent.reload", AGENT_ACTOR, {"config": self.config.source})
        return True

    # ---- the loop ------------------------------------------------------------------------

    async def run(self, *, stop: asyncio.Event | None = None) -> int:
        """Serve until SIGTERM/SIGINT (or `stop` is set); returns the exit code (0)."""
        stop = stop or asyncio.Event()
        reload_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
        wake = asyncio.Event()

        def wake_deliveries() -> None:  # called from the worker threads that queue webhooks
            loop.call_soon_threadsafe(wake.set)

        self._wake_deliveries = wake_deliveries
        self.engine.on_enqueue = wake_deliveries
        await self._start_listeners()
        self.audit.append(
            "agent.start",
            AGENT_ACTOR,
            {"pid": os.getpid(), "version": VERSION, "listeners": self.listeners},
        )
        self.notifier.ready(f"serving {self.socket_path}")
        watchdog = asyncio.create_task(self._watchdog(stop))
        deliveries = asyncio.create_task(self._deliveries(stop, wake), name="webhook-deliveries")
        try:
            while not stop.is_set():
                if reload_requested.is_set():
                    reload_requested.clear()
                    self.notifier.reloading()
                    self.reload()
                    self.notifier.ready("reloaded")
                await asyncio.to_thread(self.cycle)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(stop, reload_requested), self.agent_config.cycle_seconds
                    )
        finally:
            self.notifier.stopping()
            watchdog.cancel()
            stop.set()  # the delivery task finishes the sends in flight, then ends
            grace = 2 * self.engine.hooks.webhook_timeout_seconds + 1.0
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(deliveries, grace)
            self._wake_deliveries = None
            await self._shutdown()
        return 0

    def stall_deadline(self) -> float:
        """How long a cycle (checks, telemetry, scoring) may take before the agent counts as
        stalled: two cycle intervals plus the longest a posture check may run."""
        return 2 * self.agent_config.cycle_seconds + 120.0

    async def _watchdog(self, stop: asyncio.Event) -> None:
        """Ping systemd's watchdog only while cycles complete: a hung check or telemetry read
        stops the pings, and systemd restarts the agent (a timer alone would prove nothing)."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        stalled = False
        while not stop.is_set():
            behind = time.monotonic() - self.progress_at
            if behind <= self.stall_deadline():
                self.notifier.watchdog()
                stalled = False
            elif not stalled:
                stalled = True
                log.error("agent cycle stalled for %.0f s: watchdog pings stopped", behind)
                self.notifier.notify(STATUS=f"stalled: no completed cycle for {behind:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _deliveries(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Send due webhook deliveries on the queue's own schedule: sleep until the next due
        time (or until a new delivery is queued), send, repeat."""
        while not stop.is_set():
            wake.clear()
            try:
                delivered = await asyncio.to_thread(self.engine.deliver_webhooks)
                due = self.engine.queue.next_due()
            except (TrainguardError, OSError) as exc:
                log.error("webhook delivery failed: %s", exc)
                delivered, due = 0, None
            if delivered:
                log.info("delivered %d webhook(s)", delivered)
            wait = _DELIVERY_IDLE_SECONDS if due is None else due - self.clock()
            wait = min(max(wait, 0.0), _DELIVERY_IDLE_SECONDS)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop, wake), wait)

    async def _start_listeners(self) -> None:
        cfg = self.agent_config
        if cfg.listen:
            pki = self.home.pki_dir
            self.tls = ServerTls(
                pki / "node.crt",
                pki / "node.key",
                pki / "ca.crt",
                pki / "crl.pem",
                on_change=lambda kind, data: self.audit.append(kind, AGENT_ACTOR, data),
            )
        authorizer = ApiAuthorizer(
            node=self.config.node.name,
            cluster=self.config.node.cluster,
            allowed_uids=list(cfg.allowed_uids),
            admin_names=list(cfg.admin_names),
            policy_check=policy_check_for_home(self.home, self.config, self.audit),
            self_pid=os.getpid(),
            revoked=self.tls.revoked if self.tls is not None else None,
        )
        from trainguard.agent.api.keys import KeyOps
        from trainguard.agent.api.sessions import SessionOps
        from trainguard.agent.api.witness import WitnessOps

        extensions = [
            SessionOps(self.home, self.config, self.audit, clock=self.clock,
                       engine=lambda: self.engine),
            WitnessOps(self.audit, self.engine),
            KeyOps(self.home),
        ]
        self.server = AgentServer(
            self.audit, self.engine, cfg, authorizer, status=self.status, extensions=extensions
        )
        await self.server.start_unix(self.socket_path, shared=not _inside(self.socket_path,
                                                                          self.home.root))
        self.listeners["unix"] = str(self.socket_path)
        if cfg.listen:
            assert self.tls is not None
            host, _, port = cfg.listen.rpartition(":")
            bound = await self.server.start_tcp(host.strip("[]"), int(port), self.tls.context)
            self.listeners["tls"] = f"{host}:{bound}"
        if cfg.metrics_listen:
            from trainguard.agent.metrics_http import serve_metrics

            host, _, port = cfg.metrics_listen.rpartition(":")
            self._metrics_server, bound = await serve_metrics(self.metrics, host, int(port))
            self.listeners["metrics"] = f"http://{host}:{bound}/metrics"

    async def _shutdown(self) -> None:
        if self.server is not None:
            await self.server.close()
        metrics_server = getattr(self, "_metrics_server", None)
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()
        self.audit.append("agent.stop", AGENT_ACTOR, {"pid": os.getpid(), "cycles": self.cycles})
        self.audit.checkpoint(force=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self.exports is not None:  # forward what is left (agent.stop too); the rest waits queued
            self.exports.cycle()
            self.exports.close()
        self.engine.close()

    def close(self) -> None:
        if self.exports is not None:
            self.exports.close()
        self.engine.close()
        self.audit.close()


def _verify_key_hex(home: Home) -> str | None:
    from trainguard.crypto.signing import VerifyKey

    try:
        return VerifyKey.load(home.node_verify_key).to_bytes().hex()
    except TrainguardError:
        return None


def _verifier(config: Config) -> AgentVerifier:
    from trainguard.agent.checks.config import ChecksConfig
    from trainguard.anomaly.config import AnomalyConfig

    checks = config.section(ChecksConfig)
    cycle = config.section(AgentConfig).cycle_seconds
    return AgentVerifier(
        allowed_processes=config.section(AnomalyConfig).allowed_processes,
        artifact_dirs=[*checks.model_dirs, *checks.checkpoint_dirs],
        max_age_seconds=2 * cycle + 5.0,  # one missed sample is tolerated, a stalled loop not
    )


async def _first(*events: asyncio.Event) -> None:
    tasks = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def run_once(home: Home, config: Config, **kwargs: Any) -> Mapping[str, Any]:
    """`agent run --once`: one full cycle with checks, then a summary."""
    agent = Agent(home, config, **kwargs)
    try:
        report = agent.cycle(force_checks=True)
        agent.audit.checkpoint(force=True)
        return {**report.to_dict(), "audit_last_seq": agent.audit.last_seq()}
    finally:
        agent.close()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
