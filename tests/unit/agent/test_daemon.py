"""The daemon with fake checks, telemetry and scorer: cycles, incidents, signals, sd_notify,
refusing loose modes."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import make_home
from trainguard.agent.api.client import AgentClient
from trainguard.agent.checks import CheckResult, Status
from trainguard.agent.daemon import Agent, AgentRefused, preflight, run_once
from trainguard.agent.systemd.sdnotify import Notifier
from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.evidence.incidents import IncidentKind, Severity


def _result(id: str, status: Status) -> CheckResult:
    """A posture result as the real checks return it (the daemon takes nothing looser)."""
    return CheckResult(
        id=id,
        title="a check",
        severity=Severity.HIGH,
        controls=("AC-3",),
        atlas=(),
        status=status,
        summary="it failed",
        evidence={},
        remediation="fix it",
        duration_ms=0.0,
    )


@dataclass
class FakeSample:
    time: float
    gpus: list[Any]


class FakeTelemetry:
    nvml_error = "no GPU in tests"

    def __init__(self) -> None:
        self.n = 0

    def sample(self) -> FakeSample:
        self.n += 1
        return FakeSample(float(self.n), [])


@dataclass
class FakeDetection:
    kind: IncidentKind
    severity: Severity
    evidence: dict[str, Any]


class FakeScorer:
    def __init__(self, fire_on: int) -> None:
        self.fire_on = fire_on
        self.seen = 0

    def observe(self, sample: FakeSample) -> list[FakeDetection]:
        self.seen += 1
        if self.seen == self.fire_on:
            return [FakeDetection(IncidentKind.GPU_MISUSE, Severity.HIGH, {"pid": 99, "gpu": 0})]
        return []


class FakeMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.samples = 0
        self.registry = CollectorRegistry()
        Gauge("fake_metric", "served by /metrics", registry=self.registry).set(1)

    def update(self, sample: Any) -> None:
        self.samples += 1

    def update_checks(self, results: Any) -> None:
        pass

    def render(self) -> bytes:
        return b"# fake\n"


@pytest.fixture
def short_home() -> Iterator[Home]:
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        yield make_home(Path(d) / "h")


def _agent(home: Home, **kw: Any) -> Agent:
    checks = kw.pop(
        "checks", lambda h, c: [_result("modes", Status.FAIL), _result("ok", Status.PASS)]
    )
    return Agent(
        home,
        load_config(home.config_path, {}),
        checks=checks,
        telemetry=FakeTelemetry(),
        metrics=kw.pop("metrics", FakeMetrics()),
        scorer=kw.pop("scorer", FakeScorer(fire_on=2)),
        **kw,
    )


def test_cycle_turns_failed_checks_and_detections_into_incidents(short_home: Home) -> None:
    metrics = FakeMetrics()
    agent = _agent(short_home, metrics=metrics)
    try:
        first = agent.cycle(force_checks=True)
        assert first.checks == {"fail": 1, "pass": 1} and first.failed_checks == ["modes"]
        assert len(first.incidents) == 1
        second = agent.cycle()  # checks not due again; the scorer fires
        assert second.checks == {} and second.detections == 1 and len(second.incidents) == 1
        third = agent.cycle(force_checks=True)  # the same failed check again: deduplicated
        assert third.failed_checks == ["modes"] and third.incidents == []
        incidents = [e.data for e in agent.audit.entries(kind="incident")]
        assert [i["kind"] for i in incidents] == ["posture-failure", "gpu-misuse"]
        assert incidents[0]["evidence"]["check"] == "modes"
        assert metrics.samples == 3  # incidents are counted from the audit log on scrape
    finally:
        agent.close()


def test_broken_collaborators_do_not_stop_the_cycle(short_home: Home) -> None:
    def boom(*a: Any) -> Any:
        raise RuntimeError("check module exploded")

    class BadTelemetry:
        def sample(self) -> Any:
            raise OSError("proc vanished")

    agent = Agent(
        short_home,
        load_config(short_home.config_path, {}),
        checks=boom,
        telemetry=BadTelemetry(),
        metrics=FakeMetrics(),
        scorer=None,
    )
    try:
        report = agent.cycle(force_checks=True)
        assert any("exploded" in e for e in report.errors)
        assert any("proc vanished" in e for e in report.errors)
    finally:
        agent.close()


def test_run_once_summary(short_home: Home) -> None:
    out = run_once(
        short_home,
        load_config(short_home.config_path, {}),
        checks=lambda h, c: [],
        telemetry=FakeTelemetry(),
        metrics=FakeMetrics(),
        scorer=None,
    )
    assert out["errors"] == [] and out["audit_last_seq"] >= 1


def test_preflight_refuses_loose_modes_naming_file_and_mode(short_home: Home) -> None:
    preflight(short_home)
    short_home.node_signing_key.chmod(0o644)
    with pytest.raises(AgentRefused) as err:
        preflight(short_home)
    assert str(short_home.node_signing_key) in err.value.message
    assert "chmod 600" in err.value.message and err.value.exit_code == 2


def test_serve_notify_reload_and_stop(short_home: Home) -> None:
    notify_path = str(short_home.root.parent / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(notify_path)
    sink.settimeout(10)
    notifier = Notifier(notify_path, watchdog_usec=200_000)
    reloads: list[int] = []

    def loader():  # type: ignore[no-untyped-def]
        reloads.append(1)
        return load_config(short_home.config_path, {})

    agent = _agent(short_home, notifier=notifier, config_loader=loader)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop=stop))
        msgs = []
        while "READY=1" not in "".join(msgs):
            msgs.append((await asyncio.to_thread(sink.recv, 4096)).decode())
        status = await asyncio.to_thread(lambda: AgentClient(short_home).status())
        assert status["node"] == "node-1" and status["listeners"]["unix"]
        while "WATCHDOG=1" not in msgs:
            msgs.append((await asyncio.to_thread(sink.recv, 4096)).decode())
        os.kill(os.getpid(), __import__("signal").SIGHUP)
        for _ in range(100):
            if reloads:
                break
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), __import__("signal").SIGTERM)
        assert await asyncio.wait_for(task, 20) == 0

    try:
        asyncio.run(scenario())
    finally:
        sink.close()
        agent.close()
    assert reloads
    from trainguard.evidence.embedded import open_embedded_log

    with open_embedded_log(short_home, load_config(short_home.config_path, {})) as log:
        kinds = [e.kind for e in log.entries() if e.kind != "audit.genesis"]
        assert kinds[0] == "agent.start" and "agent.reload" in kinds
        assert kinds[-2:] == ["agent.stop", "audit.checkpoint"]
    assert not short_home.agent_socket.exists()


def test_metrics_endpoint_serves_prometheus_text(short_home: Home) -> None:
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (short_home.config_path).open("a") as f:
        f.write(f'[agent]\nmetrics_listen = "127.0.0.1:{port}"\n')
    agent = _agent(short_home)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop=stop))
        for _ in range(200):
            if "metrics" in agent.listeners:
                break
            await asyncio.sleep(0.05)
        url = agent.listeners["metrics"]
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        assert b"fake_metric 1.0" in body
        with pytest.raises(urllib.error.HTTPError):
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(url.replace("/metrics", "/x"), timeout=10)
            )
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0

    try:
        asyncio.run(scenario())
    finally:
        agent.close()


def test_preflight_refuses_a_home_without_node_key(short_home: Home) -> None:
    short_home.node_signing_key.unlink()
    with pytest.raises(AgentRefused, match="no node signing key"):
        preflight(short_home)


def test_webhook_retries_run_on_their_own_schedule_not_once_per_cycle(short_home: Home) -> None:
    """Regression: failed webhook deliveries were retried only once per agent cycle (15 s by
    default, here an hour): the delivery task wakes at the queue's next due time instead."""
    import http.server
    import threading

    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(1)
            self.send_response(503 if len(seen) <= 2 else 200)  # down for two attempts
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    with short_home.config_path.open("a") as f:
        f.write(
            "[agent]\ncycle_seconds = 3600\n[hooks]\n"
            f'webhook_url = "http://127.0.0.1:{endpoint.server_address[1]}/hook"\n'
            "retry_base_seconds = 0.2\nretry_max_seconds = 1.0\n"
            '[hooks.actions]\n"*" = ["webhook"]\n'
        )
    agent = _agent(short_home, checks=lambda h, c: [], scorer=FakeScorer(fire_on=1))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop=stop))
        for _ in range(200):  # 10 s, while the next cycle is an hour away
            if agent.engine.queue.counts()["delivered"] == 1:
                break
            await asyncio.sleep(0.05)
        assert agent.cycles <= 1  # delivered without a second cycle (the first may still run)
        assert len(seen) == 3 and agent.engine.queue.counts() == {"pending": 0, "delivered": 1}
        assert len(list(agent.audit.entries(kind="webhook.delivered"))) == 1
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0

    try:
        asyncio.run(scenario())
    finally:
        endpoint.shutdown()
        agent.close()


def test_own_gpu_misuse_detection_kills_only_the_foreign_process_it_observed(
    short_home: Home,
) -> None:
    """End to end in the daemon: telemetry shows a foreign process on GPU 0; the detector's
    incident names it and another PID that is on no GPU; only the observed one is killed."""
    import signal
    import subprocess
    import sys

    from trainguard.agent.telemetry.nvml import GpuProcess, GpuSample

    miner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    class GpuTelemetry(FakeTelemetry):
        def sample(self) -> FakeSample:
            gpu = GpuSample(0, "GPU-0", 99.0, 1, 2, processes=[GpuProcess(miner.pid, 1, "xmrig")])
            return FakeSample(1.0, [gpu])

    class Names(FakeScorer):
        def observe(self, sample: FakeSample) -> list[FakeDetection]:
            procs = [{"pid": miner.pid, "name": "xmrig"}, {"pid": bystander.pid, "name": "x"}]
            return [FakeDetection(IncidentKind.GPU_MISUSE, Severity.HIGH, {"processes": procs})]

    with short_home.config_path.open("a") as f:
        f.write('[hooks.actions]\n"gpu-misuse" = ["kill"]\n')
    agent = Agent(
        short_home,
        load_config(short_home.config_path, {}),
        checks=lambda h, c: [],
        telemetry=GpuTelemetry(),
        metrics=FakeMetrics(),
        scorer=Names(fire_on=1),
    )
    try:
        agent.cycle()
        assert miner.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None
        kill = next(iter(agent.audit.entries(kind="action.kill"))).data
        assert kill["killed"] == [miner.pid]
        assert "not observed" in kill["refused"][str(bystander.pid)]
    finally:
        for p in (miner, bystander):
            p.kill()
            p.wait()
        agent.close()


def test_verifier_counts_only_fresh_observations_of_named_foreign_processes() -> None:
    """What `kill` may act on: a process in the latest sample (not a stalled one), pinned by
    its start time; an allowed or unnamed process is never judged foreign."""
    import os

    from trainguard.agent.telemetry.nvml import GpuProcess, GpuSample
    from trainguard.agent.verifier import AgentVerifier

    now = [100.0]
    v = AgentVerifier(
        allowed_processes=["python", "torchrun"],
        artifact_dirs=["/models", "relative"],
        max_age_seconds=35.0,
        clock=lambda: now[0],
    )
    me = os.getpid()
    procs = [
        GpuProcess(me, 1, "/usr/bin/xmrig"),
        GpuProcess(1, 1, "torchrun"),
        GpuProcess(2**22 + 7, 1, "ghost"),
    ]
    v.observe(FakeSample(1.0, [GpuSample(0, "GPU-0", 50.0, 1, 2, processes=procs)]))
    seen = v.gpu_process(me)
    assert seen is not None and seen.foreign and seen.gpu == 0 and seen.start_ticks > 0
    init = v.gpu_process(1)
    assert init is not None and not init.foreign
    assert v.gpu_process(2**22 + 7) is None  # no such process: nothing to pin
    # relative folders are ignored
    assert [str(d.configured) for d in v.artifact_dirs()] == ["/models"]
    now[0] += 36.0  # the telemetry loop stalled: nothing counts as observed any more
    assert v.gpu_process(me) is None
    v.observe(
        FakeSample(2.0, [GpuSample(0, "GPU-0", 50.0, 1, 2, processes=[GpuProcess(me, 1, "")])])
    )
    unnamed = v.gpu_process(me)
    assert unnamed is not None and not unnamed.foreign
