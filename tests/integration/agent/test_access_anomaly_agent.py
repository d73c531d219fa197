"""Failed logins through the real CLI while the real `trainguard agent run` process serves: the
CLI records them through the agent's API, the agent follows its own audit log into the
access-anomaly detector, and a burst for one user becomes an `access-anomaly` incident."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from trainguard.agent.api.client import AgentClient
from trainguard.core.home import Home

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
        env={**env, "TRAINGUARD_AGENT_CYCLE_SECONDS": "0.5"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if AgentClient(Home(home), timeout=2).ping():
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("agent did not come up")


def _access_incidents(home: Path) -> list[dict[str, Any]]:
    with AgentClient(Home(home)) as c:
        return [i for i in c.call("incidents", limit=100) if i["kind"] == "access-anomaly"]


def test_a_burst_of_failed_logins_becomes_an_access_anomaly(cli, cli_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:  # short: AF_UNIX path limit
        home = Path(d) / "h"
        assert cli("init", "--home", home, "--admin", "alice").code == 0
        agent = _start(home, cli_env)
        try:
            # five mistyped codes in an hour are within [anomaly] access_max_failures_per_hour
            for _ in range(5):
                r = cli("login", "--home", home, "--user", "alice", "--otp", "000000")
                assert r.code == 1 and "Tip:" in r.stderr
            time.sleep(1.5)  # three agent cycles
            assert _access_incidents(home) == []
            assert cli("login", "--home", home, "--user", "alice", "--otp", "000000").code == 1
            deadline = time.monotonic() + 30
            found: list[dict[str, Any]] = []
            while not found and time.monotonic() < deadline:
                time.sleep(0.25)
                found = _access_incidents(home)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0
        assert len(found) == 1
        evidence = found[0]["evidence"]
        assert evidence["user"] == "alice" and evidence["failures_this_hour"] == 6
        assert evidence["reason"] == "burst of denials / MFA failures"
        log = cli("audit", "log", "--home", home, "--kind", "incident", "--format", "json").json()
        assert [e["data"]["kind"] for e in log].count("access-anomaly") == 1
