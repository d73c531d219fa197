"""The running agent's log under journald: incidents at a priority from their severity, and no
secret anywhere in it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.policy_env import secret_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_critical_incident_is_a_crit_journal_line_and_secrets_never_appear(
    cli, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    home = tmp_path / "h"
    init = cli("init", "--home", home, "--admin", "root", "--format", "json")
    assert init.code == 0, init.stderr
    totp_secret = secret_of(init.json()["admin"]["otpauth_uri"])
    log_path = tmp_path / "journal"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    with log_path.open("w") as err:
        st = os.fstat(err.fileno())
        agent = subprocess.Popen(
            [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
            env={**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        from trainguard.agent.api.client import AgentClient
        from trainguard.core.home import Home

        sock = home / "state" / "agent.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert agent.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        with AgentClient(Home(home)) as client:
            client.submit_incident("checkpoint-tampered", "critical", {"path": "/ck/step-9"})
            client.submit_incident("posture-failure", "low", {"check": "clock-sync"})
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    lines = log_path.read_text().splitlines()
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines[:5]
    crit = [ln for ln in lines if "checkpoint-tampered (critical)" in ln]
    low = [ln for ln in lines if "posture-failure (low)" in ln]
    assert crit and crit[0].startswith("<2>trainguard.evidence.response.engine: incident ")
    assert low and low[0].startswith("<6>")
    text = log_path.read_text()
    keys = [p.read_bytes() for p in (home / "keys").iterdir() if p.is_file()]
    assert totp_secret not in text
    assert not any(k.hex() in text or k.decode("latin-1") in text for k in keys if len(k) >= 16)
