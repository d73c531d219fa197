"""Under systemd's notify protocol: the agent says READY, and its children cannot talk to
systemd in its name (no NOTIFY_SOCKET in a hook's environment)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ready_is_sent_and_hooks_run_without_the_notify_socket(cli) -> None:  # type: ignore[no-untyped-def]
    root = Path(tempfile.mkdtemp(prefix="tgn", dir="/tmp"))
    home = root / "h"
    assert cli("init", "--home", home, "--admin", "root").code == 0
    dump = root / "hook-env"
    hook = home / "hooks.d" / "10-dump"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\nenv > {dump}\n")
    hook.chmod(0o700)
    notify = root / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
        env={**env, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "60000000",
             "WATCHDOG_PID": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        from trainguard.agent.api.client import AgentClient
        from trainguard.core.home import Home

        with AgentClient(Home(home)) as client:
            client.submit_incident("posture-failure", "low", {"check": "demo"})
        deadline = time.monotonic() + 30
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        hook_env = dump.read_text()
        assert "TRAINGUARD_INCIDENT_KIND=posture-failure" in hook_env
        assert "NOTIFY_SOCKET" not in hook_env and "WATCHDOG_USEC" not in hook_env
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        listener.close()
