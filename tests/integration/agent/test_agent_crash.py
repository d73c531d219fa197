"""kill -9 the real agent while clients write through it, restart it: every acknowledged entry is
in the log, the chain verifies, and SIGTERM then stops it cleanly (exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from trainguard.agent.api.client import AgentClient
from trainguard.core.errors import AgentError
from trainguard.core.home import Home

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if AgentClient(Home(home), timeout=2).ping():
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("agent did not come up")


def test_kill_9_mid_write_loses_no_acknowledged_entry(cli, cli_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        home = Path(d) / "h"
        assert cli("init", "--home", home, "--admin", "alice").code == 0
        agent = _start(home, cli_env)
        acked: list[tuple[int, int, int]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w: int) -> None:
            try:
                with AgentClient(Home(home), timeout=10) as c:
                    for i in range(100_000):
                        if stop.is_set():
                            return
                        seq = c.append("crash.test", f"w{w}", {"w": w, "i": i})
                        with lock:
                            acked.append((seq, w, i))
            except AgentError:
                return  # the agent died under us: expected

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        while len(acked) < 400:
            time.sleep(0.01)
        os.kill(agent.pid, signal.SIGKILL)  # mid-write: writers are still sending
        agent.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        assert agent.returncode == -signal.SIGKILL

        agent = _start(home, cli_env)  # the stale socket is replaced, the chain continues
        try:
            with AgentClient(Home(home)) as c:
                c.append("after.restart", "test", {})
                seg = c.export(1)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0
        stored = {e["seq"]: e for e in seg["entries"]}
        import json

        for seq, w, i in acked:
            entry = stored[seq]
            assert entry["kind"] == "crash.test" and json.loads(entry["data"])["i"] == i
            assert json.loads(entry["data"])["w"] == w
        verify = cli("audit", "verify", "--home", home, "--format", "json")
        assert verify.code == 0, verify.stderr
        assert verify.json()["entries"] > len(acked)
