"""A real agent with its mTLS listener: another node's certificate may not act on this node
(issue 21 §4). Revocation applies while the agent runs; reserved kinds are refused; a remote
incident naming a file and a PID is recorded but neither is touched."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.agent.api.client import AgentClient, AgentUnavailable
from trainguard.core.errors import AccessDenied
from trainguard.core.home import Home

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNSAFE = b"cos\nsystem\n(S'echo pwned'\ntR."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, home: Path, url: str, models: Path, proc: subprocess.Popen[bytes]) -> None:
        self.home, self.url, self.models, self.proc = home, url, models, proc

    def client(self, name: str) -> AgentClient:
        d = self.home.parent / name
        return AgentClient.remote(
            self.url, d / f"{name}.crt", d / f"{name}.key", self.home / "pki" / "ca.crt",
            timeout=10,
        )

    def entries(self) -> list[dict]:  # type: ignore[type-arg]
        with AgentClient(Home(self.home)) as local:
            return list(local.export()["entries"])


@pytest.fixture
def agent(cli, cli_env: dict[str, str]) -> Iterator[Running]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        home = Path(d) / "h"
        models = Path(d) / "models"
        models.mkdir()
        assert cli("init", "--home", home, "--admin", "alice", "--node", "n1").code == 0
        port = _free_port()
        with (home / "trainguard.toml").open("a") as f:
            f.write(
                f'\n[agent]\nlisten = "127.0.0.1:{port}"\n'
                f'[checks]\nmodel_dirs = ["{models}"]\n'
                '[hooks.actions]\n"checkpoint-tampered" = ["kill", "quarantine", "stop-training"]\n'
            )
        for name in ("n2", "n3"):
            r = cli("pki", "issue", name, "--kind", "node", "--out", Path(d) / name, "--home", home)
            assert r.code == 0, r.stderr
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(300):
                if AgentClient(Home(home), timeout=2).ping():
                    break
                time.sleep(0.1)
            yield Running(home, f"tls://127.0.0.1:{port}", models, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_certificate_revoked_while_the_agent_runs_is_refused_at_the_next_connection(
    agent: Running, cli  # type: ignore[no-untyped-def]
) -> None:
    """Regression: `pki revoke` had no effect until the agent restarted."""
    with agent.client("n2") as n2:
        n2.record("train.telemetry", "n2", {"step": 1})
    r = cli("pki", "revoke", "n2", "--kind", "node", "--home", agent.home)
    assert r.code == 0, r.stderr
    with pytest.raises((AgentUnavailable, AccessDenied)), agent.client("n2") as n2:
        n2.record("train.telemetry", "n2", {"step": 2})
    with agent.client("n3") as n3:  # an unrevoked node is unaffected
        n3.record("train.telemetry", "n3", {"step": 1})
    agent.proc.send_signal(signal.SIGHUP)  # a reload keeps it refused
    time.sleep(0.5)
    with pytest.raises((AgentUnavailable, AccessDenied)), agent.client("n2") as n2:
        n2.status()
    kinds = [e["kind"] for e in agent.entries()]
    assert "api.crl-loaded" in kinds and "api.tls-rejected" in kinds
    assert agent.proc.poll() is None


def test_reserved_kinds_from_a_node_are_refused_and_verify_and_status_still_work(
    agent: Running, cli  # type: ignore[no-untyped-def]
) -> None:
    """Regression: forged ``audit.checkpoint`` / ``login`` entries broke `audit verify` and
    `agent status` on the target for good."""
    with agent.client("n2") as n2:
        for kind in ("audit.checkpoint", "login", "policy-signed", "incident", "agent.stop"):
            with pytest.raises(AccessDenied):
                n2.record(kind, "alice", {"seq": 1, "sig": "00"})
    denied = [e for e in agent.entries() if e["kind"] == "api.denied"]
    assert len(denied) >= 5 and all(e["actor"] == "spiffe://trainguard/node/n2" for e in denied)
    assert cli("audit", "verify", "--home", agent.home).code == 0
    status = cli("agent", "status", "--home", agent.home, "--format", "json")
    assert status.code == 0, status.stderr


def test_remote_incident_naming_a_file_and_a_pid_is_recorded_but_not_acted_on(
    agent: Running,
) -> None:
    """Regression: incidents submitted over the API named any file or PID on the target, which
    its root agent quarantined or killed."""
    bad = agent.models / "model.pkl"
    bad.write_bytes(UNSAFE)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with agent.client("n2") as n2:
            inc = n2.submit_incident(
                "checkpoint-tampered", "critical", {"pid": victim.pid, "path": str(bad)}
            )
        assert inc["status"] == "new"
        time.sleep(0.5)
        assert victim.poll() is None and bad.read_bytes() == UNSAFE
        assert not (agent.home / "state" / "stop-training.json").exists()
        entries = agent.entries()
        actions = {
            e["kind"]: json.loads(e["data"]) if isinstance(e["data"], str) else e["data"]
            for e in entries
            if e["kind"].startswith("action.")
        }
        assert set(actions) == {"action.kill", "action.quarantine", "action.stop-training"}
        assert all(a["detail"].startswith("refused: unverified") for a in actions.values())
    finally:
        victim.kill()
        victim.wait()


def test_the_nodes_own_check_still_quarantines_a_verified_unsafe_artifact(
    agent: Running, cli  # type: ignore[no-untyped-def]
) -> None:
    """The other side of the rule: the model-artifacts check (the agent's own cycle, or the CLI
    on this node, whichever runs first) finds an unsafe pickle in a model folder and reports it
    over the socket; the agent's own scan confirms it before moving it."""
    with (agent.home / "trainguard.toml").open("a") as f:
        f.write('"unsafe-artifact" = ["quarantine"]\n')  # under [hooks.actions]
    agent.proc.send_signal(signal.SIGHUP)  # the reload rebuilds the engine and its verifier
    for _ in range(600):  # applied between cycles: the first one may still be running checks
        if any(e["kind"] == "agent.reload" for e in agent.entries()):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the agent did not reload its configuration within 60 s")
    bad = agent.models / "pretrained.pt"
    bad.write_bytes(UNSAFE)
    r = cli("check", "--id", "model-artifacts", "--home", agent.home, "--format", "json")
    assert r.code in (0, 1), r.stderr  # 0: the agent's cycle had already moved it
    assert not bad.exists()
    moved = list((agent.home / "quarantine").iterdir())
    assert len(moved) == 1 and moved[0].stat().st_mode & 0o777 == 0
    action = next(e for e in agent.entries() if e["kind"] == "action.quarantine")
    data = json.loads(action["data"]) if isinstance(action["data"], str) else action["data"]
    assert data["ok"] is True and data["provenance"] in ("agent", "local")
