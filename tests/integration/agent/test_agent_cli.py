"""The agent, audit and hooks commands through the real CLI against a home made by `init`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def home(cli) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:  # short: AF_UNIX path limit
        h = Path(d) / "h"
        r = cli("init", "--home", h, "--admin", "alice", "--node", "n1")
        assert r.code == 0, r.stderr
        yield h


def test_run_once_never_loads_torch(home: Path, cli_env: dict[str, str]) -> None:
    code = (
        "import sys, json\n"
        "from trainguard.cli.main import main\n"
        f"rc = main(['agent', 'run', '--once', '--home', {str(home)!r}, '--format', 'json'])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == {"rc": 0, "torch": False}
    summary = json.loads("\n".join(proc.stdout.strip().splitlines()[:-1]))
    assert sum(summary["checks"].values()) >= 5


def test_audit_verify_names_first_tampered_entry(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("agent", "run", "--once", "--home", home).code == 0
    ok = cli(
        "audit",
        "verify",
        "--home",
        home,
        "--format",
        "json",
        "--save-checkpoint",
        home.parent / "cp.json",
    )
    assert ok.code == 0, ok.stderr
    report = ok.json()
    assert report["checkpoints"] >= 1 and report["entries"] >= 5
    db = sqlite3.connect(home / "state" / "audit.db")
    db.execute("UPDATE entries SET actor='mallory' WHERE seq=3")
    db.commit()
    bad = cli("audit", "verify", "--home", home)
    assert bad.code == 1
    assert "entry 3" in bad.stderr and "Tip:" in bad.stderr
    db.execute("DELETE FROM entries WHERE seq >= 2")
    db.commit()
    rolled = cli("audit", "verify", "--home", home, "--checkpoint", home.parent / "cp.json")
    assert rolled.code == 1 and "rolled back" in rolled.stderr


def test_audit_log_filters(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cli("agent", "run", "--once", "--home", home)
    all_entries = cli("audit", "log", "--home", home, "--format", "json").json()
    checks = cli("audit", "log", "--home", home, "--kind", "posture.*", "--format", "json").json()
    assert checks and all(e["kind"].startswith("posture.") for e in checks)
    assert len(checks) < len(all_entries)
    assert cli("audit", "log", "--home", home, "--since", "1h", "--format", "json").json()
    assert cli("audit", "log", "--home", home, "--since", "yesterday-ish").code == 2


def test_hooks_list_and_test(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    repo = Path(__file__).resolve().parents[3]
    hook = home / "hooks.d" / "10-sample"
    hook.write_bytes((repo / "evidence" / "response" / "sample_hook.sh").read_bytes())
    hook.chmod(0o700)
    (home / "hooks.d" / "20-broken").write_text("#!/bin/sh\nexit 4\n")
    (home / "hooks.d" / "20-broken").chmod(0o700)
    listed = cli("hooks", "list", "--home", home, "--format", "json").json()
    assert listed["hooks"] == ["10-sample", "20-broken"]
    fired = cli(
        "hooks", "test", "exfiltration", "--severity", "high", "--home", home, "--format", "json"
    )
    assert fired.code == 1  # the broken hook is reported
    out = fired.json()
    sample = next(o for o in out["outcomes"] if o["hook"] == "10-sample")
    assert sample["exit_code"] == 0 and "paging on-call for exfiltration" in sample["stdout"]
    runs = cli("audit", "log", "--home", home, "--kind", "hook.run", "--format", "json").json()
    assert {r["data"]["hook"] for r in runs} == {"10-sample", "20-broken"}


def test_agent_refuses_loose_modes_and_status_when_down(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    down = cli("agent", "status", "--home", home, "--format", "json")
    assert down.code == 1 and down.json()["running"] is False
    (home / "keys").chmod(0o755)
    r = cli("agent", "run", "--once", "--home", home)
    assert r.code == 2
    assert f"{home / 'keys'}" in r.stderr and "chmod 700" in r.stderr
