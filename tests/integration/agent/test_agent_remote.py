"""The real agent with its mTLS listener, certificates from `trainguard pki issue`, and the
signed policy deciding what each remote identity may do."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.agent.api.client import AgentClient
from trainguard.core.errors import AccessDenied
from trainguard.core.home import Home

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent(cli, cli_env: dict[str, str]) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        home = Path(d) / "h"
        assert cli("init", "--home", home, "--admin", "alice", "--node", "n1").code == 0
        port = _free_port()
        with (home / "trainguard.toml").open("a") as f:
            f.write(f'\n[agent]\nlisten = "127.0.0.1:{port}"\nadmin_names = ["root-admin"]\n')
        for name, kind in (
            ("alice", "user"),
            ("bob", "user"),
            ("root-admin", "user"),
            ("n2", "node"),
        ):
            r = cli("pki", "issue", name, "--kind", kind, "--out", Path(d) / name, "--home", home)
            assert r.code == 0, r.stderr
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainguard.cli.main",
                "agent",
                "run",
                "--home",
                str(home),
            ],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(300):
                if AgentClient(Home(home), timeout=2).ping():
                    break
                time.sleep(0.1)
            yield home, f"tls://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def _client(home: Path, url: str, name: str) -> AgentClient:
    d = home.parent / name
    return AgentClient.remote(url, d / f"{name}.crt", d / f"{name}.key", home / "pki" / "ca.crt")


def test_remote_identities(agent: tuple[Path, str]) -> None:
    home, url = agent
    with _client(home, url, "root-admin") as admin:  # [agent] admin_names
        status = admin.status()
        assert status["node"] == "n1" and status["listeners"]["tls"].endswith(url.rsplit(":", 1)[1])
        seg = admin.export()
        assert seg["node"] == "n1" and seg["entries"]
    with _client(home, url, "alice") as alice:  # admin role in the signed policy
        assert alice.status()["verify_key"]
    with _client(home, url, "bob") as bob, pytest.raises(AccessDenied):  # no role at all
        bob.export()
    with AgentClient(Home(home)) as local:
        kinds = [e["kind"] for e in local.export()["entries"]]
    assert "api.denied" in kinds


def test_node_identity_submits_events_but_cannot_read(agent: tuple[Path, str]) -> None:
    home, url = agent
    with _client(home, url, "n2") as n2:
        n2.record("train.telemetry", "mallory", {"x": 1})
        assert n2.submit_incident("byzantine-worker", "high", {"rank": 3})["status"] == "new"
        with pytest.raises(AccessDenied):
            n2.export()
    with AgentClient(Home(home)) as local:
        entries = local.export()["entries"]
    peer = next(e for e in entries if e["kind"] == "train.telemetry")
    assert peer["actor"] == "spiffe://trainguard/node/n2"  # never the claimed "mallory"
    assert '"claimed_actor":"mallory"' in peer["data"]
