"""`trainguard audit report` end to end: real homes, real SQLite logs, a real remote agent over
mTLS; a tampered log and a rolled-back log are reported as such, never merged silently."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.agent.api.client import AgentClient
from trainguard.core.home import Home

pytestmark = pytest.mark.integration

FORMATS = {"html": "trainguard-report.html", "md": "trainguard-report.md",
           "json": "trainguard-report.json", "oscal": "trainguard-report.oscal.json"}


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert cli("init", "--home", h, "--cluster", "c1", "--node", "n1", "--admin", "alice").code == 0
    return h


def _report(cli, home: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("audit", "report", "--home", home, "--out", out, "--format", "json", *extra)


def test_report_writes_four_formats_with_verified_local_log(cli, home: Path, tmp_path: Path) -> None:
    res = _report(cli, home, tmp_path / "r")
    assert res.code in (0, 1), res.stderr
    data = res.json()
    assert set(data["report"]) == set(FORMATS)
    for fmt, name in FORMATS.items():
        assert Path(data["report"][fmt]) == tmp_path / "r" / name and (tmp_path / "r" / name).stat().st_size > 500
    assert data["nodes"] == [{"name": "n1", "log_verified": True, "rolled_back": False}]
    full = json.loads((tmp_path / "r" / FORMATS["json"]).read_text())
    statuses = {c["id"]: c["status"] for c in full["controls"]}
    assert statuses["AU-9"] == "satisfied" and statuses["IA-2(1)"] == "satisfied"
    assert statuses["IR-8"] == "manual"
    assert "signed checkpoint" in full["nodes"][0]["log_detail"] and full["nodes"][0]["checkpoint_seq"]
    # exit code follows the controls: 1 while any is not satisfied
    assert res.code == (1 if data["controls"]["not-satisfied"] else 0)
    oscal = json.loads((tmp_path / "r" / FORMATS["oscal"]).read_text())
    assert oscal["assessment-results"]["metadata"]["oscal-version"].startswith("1.1")
    # OSCAL writes its assessment plan next to the results, where import-ap points
    plan = tmp_path / "r" / oscal["assessment-results"]["import-ap"]["href"]
    assert plan.is_file() and str(plan) in data["files"]
    assert json.loads(plan.read_text())["assessment-plan"]["reviewed-controls"]
    assert len(data["files"]) == len(FORMATS) + 1
    # the report itself is audit evidence
    log = cli("audit", "log", "--home", home, "--kind", "audit-report", "--format", "json")
    assert log.code == 0 and "audit-report" in log.stdout


def test_edited_log_is_reported_failed_and_exit_1(cli, home: Path, tmp_path: Path) -> None:
    assert cli("pki", "issue", "bob", "--kind", "user", "--out", tmp_path / "c", "--home", home).code == 0
    with sqlite3.connect(home / "state" / "audit.db") as db:
        db.execute("UPDATE entries SET data = replace(data, 'bob', 'eve') WHERE kind = 'cert-issued'")
    res = _report(cli, home, tmp_path / "r")
    assert res.code == 1
    node = res.json()["nodes"][0]
    assert node["log_verified"] is False
    md = (tmp_path / "r" / FORMATS["md"]).read_text()
    assert "**FAILED**" in md and "AU-9 Protection of Audit Information: not-satisfied" in md
    assert "evidence from an unverified log" in md


def test_rolled_back_log_is_flagged(cli, home: Path, tmp_path: Path) -> None:
    for name in ("u1", "u2", "u3"):
        assert cli("pki", "issue", name, "--kind", "user", "--out", tmp_path / name, "--home", home).code == 0
    first = _report(cli, home, tmp_path / "r1")
    assert first.json()["nodes"][0]["rolled_back"] is False
    # Roll the log back to an earlier state: drop the newest entries (a valid shorter chain).
    with sqlite3.connect(home / "state" / "audit.db") as db:
        (last,) = db.execute("SELECT max(seq) FROM entries").fetchone()
        db.execute("DELETE FROM entries WHERE seq > ?", (last - 4,))
    second = _report(cli, home, tmp_path / "r2")
    assert second.code == 1
    assert second.json()["nodes"][0]["rolled_back"] is True
    assert "went backwards" in second.stdout or "rolled_back" in second.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def remote(cli, cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    h = tmp_path / "remote"
    assert cli("init", "--home", h, "--cluster", "c1", "--node", "gpu-2", "--admin", "alice").code == 0
    port = _free_port()
    with (h / "trainguard.toml").open("a") as f:
        f.write(f'\n[agent]\nlisten = "127.0.0.1:{port}"\nadmin_names = ["auditor"]\n')
    assert cli("pki", "issue", "auditor", "--kind", "user", "--out", tmp_path / "auditor", "--home", h).code == 0
    proc = subprocess.Popen([sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(h)],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if AgentClient(Home(h), timeout=2).ping():
                break
            time.sleep(0.1)
        yield h, f"tls://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.slow
def test_remote_node_over_mtls_is_pinned_and_verified(cli, remote: tuple[Path, str], tmp_path: Path) -> None:
    rhome, url = remote
    d = tmp_path / "auditor"
    args = ("--node", url, "--cert", d / "auditor.crt", "--key", d / "auditor.key", "--ca", rhome / "pki" / "ca.crt")
    auditor_home = tmp_path / "auditor-home"
    assert cli("init", "--home", auditor_home, "--cluster", "c1", "--node", "laptop", "--admin", "a").code == 0
    res = _report(cli, auditor_home, tmp_path / "r", "--no-local", *args)
    assert res.code in (0, 1), res.stderr
    nodes = res.json()["nodes"]
    assert [n["name"] for n in nodes] == ["gpu-2"] and nodes[0]["log_verified"] is True
    full = json.loads((tmp_path / "r" / FORMATS["json"]).read_text())
    assert "pinned" in json.dumps(full["controls"])  # first sight pins the node key
    # a client certificate from another cluster CA is refused: the node is reported unreachable
    other = tmp_path / "other"
    assert cli("init", "--home", other, "--cluster", "c9", "--node", "x", "--admin", "a").code == 0
    bad = _report(cli, auditor_home, tmp_path / "r2", "--no-local", "--node", url,
                  "--cert", other / "pki" / "node.crt", "--key", other / "pki" / "node.key", "--ca", rhome / "pki" / "ca.crt")
    assert bad.code == 1
    assert bad.json()["nodes"][0]["log_verified"] is False
