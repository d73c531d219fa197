"""Incidents, hooks and built-in actions: what an operator sees in hooks.d, the audit log and
the webhook endpoint."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from trainguard.agent.api.client import report_incident
from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.config import IncidentsConfig
from trainguard.evidence.incidents import IncidentKind, IncidentStatus, Severity
from trainguard.evidence.response.actions import ActionContext, run_action
from trainguard.evidence.response.config import HooksConfig
from trainguard.evidence.response.engine import IncidentEngine
from trainguard.evidence.response.hooks import discover_hooks, hook_env, incident_payload, run_hook
from trainguard.evidence.response.queue import DeliveryQueue


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _hook(home: Home, name: str, body: str, mode: int = 0o700) -> Path:
    path = home.hooks_dir / name
    path.write_text(body)
    path.chmod(mode)
    return path


def _engine(home: Home, signer: SigningKey, clock: Clock, **kw):  # type: ignore[no-untyped-def]
    log = AuditLog.open(home.audit_db, "node-1", signer, clock=clock)
    hooks = kw.pop("hooks", HooksConfig(timeout_seconds=5))
    limits = kw.pop("limits", IncidentsConfig())
    return IncidentEngine(
        home, log, node="node-1", limits=limits, hooks=hooks, clock=clock, **kw
    ), log


INCIDENT = {
    "id": "inc-1",
    "kind": "gpu-misuse",
    "severity": "high",
    "node": "node-1",
    "time": 1.5,
    "evidence": {"pid": 4242, "gpu": 0},
}


def test_hook_gets_one_json_object_on_stdin_and_env(home: Home) -> None:
    out = home.root / "seen.json"
    hook = _hook(
        home, "10-record", f"#!/bin/sh\ncat > {out}\nenv | grep ^TRAINGUARD_ | sort >> {out}.env\n"
    )
    env = hook_env(INCIDENT, home.root, 5)
    res = run_hook(hook, incident_payload(INCIDENT), env, cwd=home.root, timeout=5, max_output=1000)
    assert res.ok
    doc = json.loads(out.read_text())
    assert doc == {"v": 1, "provenance": "agent", **INCIDENT}
    env_lines = (home.root / "seen.json.env").read_text()
    assert "TRAINGUARD_INCIDENT_KIND=gpu-misuse" in env_lines
    assert "TRAINGUARD_INCIDENT_ID=inc-1" in env_lines
    assert "TRAINGUARD_INCIDENT_PROVENANCE=agent" in env_lines


def _gone(pid: int) -> bool:
    """Dead within a few seconds (SIGKILL is delivered asynchronously): no such process, or a
    zombie waiting for its new parent to reap it."""
    for _ in range(100):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rfind(")") + 2] in "ZX":
            return True
        time.sleep(0.05)
    return False


def test_hanging_hook_is_killed_with_its_children(home: Home) -> None:
    pids = home.root / "pids"
    hook = _hook(
        home,
        "hang",
        f"#!/bin/sh\n(trap '' TERM; sh -c 'echo $$ >> {pids}; exec sleep 30') &"
        f"\necho $$ >> {pids}\nsleep 30\n",
    )
    res = run_hook(
        hook, b"{}\n", {"PATH": "/usr/bin:/bin"}, cwd=home.root, timeout=0.5, max_output=100
    )
    assert res.timed_out and res.exit_code is None and not res.ok
    started = [int(x) for x in pids.read_text().split()]
    assert len(started) == 2
    assert all(_gone(pid) for pid in started), started


def test_hook_timeout_ends_a_forked_child_that_left_the_pipes(home: Home) -> None:
    """The hook exits at once; its forked child closed stdout/stderr and sleeps on in the
    hook's process group: it must not outlive the hook."""
    pidfile = home.root / "child.pid"
    hook = _hook(
        home,
        "fork",
        f"#!/bin/sh\nsh -c 'echo $$ > {pidfile}; exec sleep 30' >/dev/null 2>&1 </dev/null &\n"
        "sleep 0.2\nexit 0\n",
    )
    res = run_hook(
        hook, b"{}\n", {"PATH": "/usr/bin:/bin"}, cwd=home.root, timeout=5, max_output=100
    )
    assert res.exit_code == 0 and not res.timed_out
    assert _gone(int(pidfile.read_text()))


def test_flooding_hook_output_is_bounded(home: Home) -> None:
    hook = _hook(
        home, "flood", "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\0' x\necho done >&2\n"
    )
    res = run_hook(
        hook, b"{}\n", {"PATH": "/usr/bin:/bin"}, cwd=home.root, timeout=20, max_output=1000
    )
    assert res.exit_code == 0 and res.truncated
    assert len(res.stdout) == 1000 and res.stderr == "done\n"


def test_crashing_and_unsafe_hooks(home: Home) -> None:
    _hook(home, "crash", "#!/bin/sh\necho boom >&2\nexit 7\n")
    _hook(home, "loose", "#!/bin/sh\nexit 0\n", mode=0o777)
    _hook(home, "notexec", "#!/bin/sh\nexit 0\n", mode=0o600)
    _hook(home, "x.sample", "#!/bin/sh\nexit 0\n")
    run, skipped = discover_hooks(home.hooks_dir)
    assert [p.name for p in run] == ["crash"]
    assert {p.name for p, _ in skipped} == {"loose", "notexec"}
    res = run_hook(run[0], b"{}", {}, cwd=home.root, timeout=5, max_output=100)
    assert res.exit_code == 7 and res.stderr == "boom\n"


def test_engine_audits_incident_hooks_and_actions(home: Home, signer: SigningKey) -> None:
    _hook(home, "10-ok", "#!/bin/sh\ncat >/dev/null\necho handled\n")
    _hook(home, "20-crash", "#!/bin/sh\nexit 3\n")
    clock = Clock()
    hooks = HooksConfig(timeout_seconds=5, actions={"posture-failure": ["stop-training"]})
    engine, log = _engine(home, signer, clock, hooks=hooks)
    inc = engine.report(
        IncidentKind.POSTURE_FAILURE, Severity.HIGH, {"check": "modes", "job": "j1"}
    )
    assert inc.status == IncidentStatus.NEW
    kinds = [e.kind for e in log.entries() if not e.kind.startswith("audit.")]
    assert kinds == ["incident", "hook.run", "hook.run", "action.stop-training"]
    runs = [e.data for e in log.entries(kind="hook.run")]
    assert runs[0]["stdout"] == "handled\n" and runs[1]["exit_code"] == 3
    stop = json.loads((home.state_dir / "stop-training.json").read_text())
    assert stop["incident"] == inc.id and stop["job"] == "j1"
    assert engine.recent()[0]["id"] == inc.id
    log.verify(signer.public_key())


def test_dedup_and_rate_limit(home: Home, signer: SigningKey) -> None:
    clock = Clock()
    limits = IncidentsConfig(dedup_seconds=60, rate_limit=3, rate_window_seconds=100)
    engine, log = _engine(home, signer, clock, limits=limits)
    ev = {"pid": 10, "dedup_key": "pid-10"}
    assert engine.report("gpu-misuse", "high", ev).status == "new"
    assert engine.report("gpu-misuse", "high", {**ev, "util": 99}).status == "duplicate"
    clock.t += 61
    assert engine.report("gpu-misuse", "high", ev).status == "new"
    assert engine.report("exfiltration", "high", {"bytes": 1}).status == "new"
    assert engine.report("exfiltration", "high", {"bytes": 2}).status == "rate-limited"
    assert engine.report("exfiltration", "high", {"bytes": 3}).status == "rate-limited"
    assert len(list(log.entries(kind="incident"))) == 3
    assert len(list(log.entries(kind="incident.rate-limited"))) == 1


def test_revoke_without_pki_reports_failure(home: Home) -> None:
    res = run_action("revoke", ActionContext(home=home), {**INCIDENT, "evidence": {"user": "eve"}})
    assert not res.ok and res.data["name"] == "eve"


def test_report_incident_embedded_when_no_agent(home: Home, signer: SigningKey) -> None:
    config = load_config(home.config_path, {})
    inc = report_incident(home, config, "checkpoint-tampered", "critical", {"path": "/x"})
    assert inc.node == "node-1" and inc.kind is IncidentKind.CHECKPOINT_TAMPERED
    log = AuditLog.open(home.audit_db, "node-1", signer)
    assert [e.data["id"] for e in log.entries(kind="incident")] == [inc.id]
    with pytest.raises(Exception, match="unknown incident kind"):
        report_incident(home, config, "nope", "high", {})


def test_queue_is_durable_and_idempotent(home: Home) -> None:
    q = DeliveryQueue(home.queue_db)
    assert q.enqueue("k1", "http://127.0.0.1:9/x", b"{}")
    assert not q.enqueue("k1", "http://127.0.0.1:9/x", b"{}")
    q.close()
    assert DeliveryQueue(home.queue_db).counts()["pending"] == 1
    assert os.stat(home.queue_db).st_mode & 0o077 == 0
