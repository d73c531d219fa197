"""`trainguard audit log --follow --format jsonl|ocsf [--since SEQ]` through the real CLI: entries
stream as they are committed, a consumer that restarts from the last seq it printed neither
skips nor repeats one, SIGTERM / SIGINT / a closed pipe end it cleanly; `agent run --once`
forwards to the `[export]` file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.core.config import load_config
from trainguard.evidence.embedded import open_embedded_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def home(cli) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tg") as d:  # short: AF_UNIX path limit
        h = Path(d) / "h"
        r = cli("init", "--home", h, "--admin", "alice", "--node", "n1")
        assert r.code == 0, r.stderr
        yield h


def _append(home: Path, n: int, kind: str = "posture.check") -> None:
    from trainguard.core.home import Home

    h = Home(home)
    with open_embedded_log(h, load_config(h.config_path, {})) as log:
        for i in range(n):
            log.append(kind, "tester", {"i": i})


def _follow(home: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "audit", "log", "--home", str(home),
         "--follow", "--poll-interval", "0.05", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def _read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float = 30) -> list[dict]:
    assert proc.stdout is not None
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(json.loads(line))
    return out


def _last_seq(home: Path) -> int:
    from trainguard.core.home import Home

    h = Home(home)
    with open_embedded_log(h, load_config(h.config_path, {})) as log:
        return int(log.last_seq())


def test_follow_resumes_by_seq_without_gaps_or_repeats(
    home: Path, cli, cli_env: dict[str, str]  # type: ignore[no-untyped-def]
) -> None:
    start = _last_seq(home)
    first = _follow(home, cli_env, "--format", "jsonl", "--since", str(start))
    try:
        _append(home, 40)
        got = _read_lines(first, 40)
        first.send_signal(signal.SIGTERM)
        rest, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert b"Traceback" not in err
    got += [json.loads(line) for line in rest.splitlines()]
    assert [e["seq"] for e in got] == list(range(start + 1, start + 41))
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in got)
    # Entries committed while no consumer runs are picked up on resume, from the last seq.
    _append(home, 25)
    second = _follow(home, cli_env, "--format", "jsonl", "--since", str(got[-1]["seq"]))
    try:
        more = _read_lines(second, 25)
        _append(home, 5)
        more += _read_lines(second, 5)
        second.send_signal(signal.SIGINT)
        _, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0 and b"Traceback" not in err, err
    seqs = [e["seq"] for e in got + more]
    assert seqs == list(range(start + 1, start + 71))  # 70 entries, each exactly once


def test_a_closed_pipe_ends_the_stream_quietly(home: Path, cli_env: dict[str, str]) -> None:
    proc = _follow(home, cli_env, "--format", "ocsf")
    try:
        assert proc.stdout is not None
        _append(home, 1, kind="login-failed")
        assert json.loads(proc.stdout.readline())["class_uid"] == 3002
        proc.stdout.close()  # the reader goes away (`| head -1`)
        _append(home, 3, kind="login-failed")
        proc.wait(timeout=20)
        err = proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert err == b""


def test_without_follow_it_prints_and_exits(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    last = _last_seq(home)
    all_lines = cli("audit", "log", "--home", home, "--format", "jsonl")
    assert all_lines.code == 0, all_lines.stderr
    entries = [json.loads(x) for x in all_lines.stdout.splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, last + 1))
    after = cli("audit", "log", "--home", home, "--format", "jsonl", "--since", "3")
    assert [json.loads(x)["seq"] for x in after.stdout.splitlines()][0] == 4
    # The old forms still work: --since as a time, text and JSON output, the global --format.
    assert cli("audit", "log", "--home", home, "--since", "1h", "--format", "json").json()
    assert cli("--format", "json", "audit", "log", "--home", home, "--limit", "1").json()
    assert "audit.genesis" in cli("audit", "log", "--home", home).stdout
    bad = cli("audit", "log", "--home", home, "--follow", "--format", "json")
    assert bad.code == 2 and "jsonl" in bad.stderr


def test_agent_forwards_to_the_export_file(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    config = home / "trainguard.toml"
    config.write_text(config.read_text() + '\n[export]\nfile = "export/audit.ocsf.jsonl"\n'
                      'file_format = "ocsf"\n')
    _append(home, 2, kind="login-failed")
    r = cli("agent", "run", "--once", "--home", home)
    assert r.code == 0, r.stderr
    events = [json.loads(x) for x in (home / "export" / "audit.ocsf.jsonl").read_text().splitlines()]
    assert [e["class_uid"] for e in events][-2:] == [3002, 3002]
    assert all(e["metadata"]["product"]["name"] == "trainguard" for e in events)
    seqs = [e["metadata"]["sequence"] for e in events]
    assert seqs == sorted(set(seqs))
    # A second run forwards only what is new.
    _append(home, 1, kind="login")
    assert cli("agent", "run", "--once", "--home", home).code == 0
    again = [json.loads(x) for x in (home / "export" / "audit.ocsf.jsonl").read_text().splitlines()]
    assert [e["metadata"]["sequence"] for e in again][: len(events)] == seqs
    assert again[-1]["class_uid"] == 3002 and again[-1]["status_id"] == 1
    assert len({e["metadata"]["sequence"] for e in again}) == len(again)
    assert os.stat(home / "export" / "audit.ocsf.jsonl").st_mode & 0o077 == 0
