"""Bad input through the real CLI for the agent-side commands: audit, hooks, agent, anomaly.

The contract (DESIGN "CLI contract"): exit 0 clean, 1 findings or failed verification, 2 usage
or config, 3 never (a bug); an `error:` line with a `Tip:`; no traceback without -v; stdout
empty (or valid JSON) on errors; and nothing created or half-written on disk.

One home is made with `trainguard init` per module and copied for each test (see
test_cli_bad_input.py, whose conventions this file follows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("agent-bad-input")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env["HOME"] = str(base)
    env["XDG_CONFIG_HOME"] = str(base / ".config")
    home = base / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard.cli.main", "init", "--home", str(home)]
        + ["--admin", "root", "--node", "n1", "--format", "json"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return home


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "home"
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def assert_fails(r, code: int, *, tip: bool = True) -> str:  # noqa: ANN001
    """The common contract of a failing command; returns the first error line."""
    assert r.code == code, (r.code, r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors, r.stderr
    if tip:
        assert any(ln.startswith("Tip: ") for ln in r.stderr.splitlines()), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "internal error" not in r.stderr
    assert "Errno" not in r.stderr
    return errors[0]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Every audit, hooks and agent sub-command that reads a home (install-unit does not).
HOME_COMMANDS = [
    ("audit", "verify"),
    ("audit", "log"),
    ("audit", "report", "--out", "{work}/report"),
    ("hooks", "list"),
    ("hooks", "test", "gpu-misuse"),
    ("agent", "run", "--once"),
    ("agent", "status"),
]


def _argv(argv: tuple[str, ...], work: Path) -> list[str]:
    return [a.format(work=work) for a in argv]


# -- bug 2: a garbled audit log: verify fails (1), everything else stops with a tip (2) -----------


def _garble(db: Path) -> bytes:
    db.write_bytes(b"x\n")
    return db.read_bytes()


def _damage_pages(db: Path) -> bytes:
    """Keep SQLite's header (so the file opens) but overwrite every page after the first."""
    raw = bytearray(db.read_bytes())
    raw[4096:] = b"\xff" * (len(raw) - 4096)
    db.write_bytes(bytes(raw))
    return bytes(raw)


def test_audit_log_library_names_a_garbled_file(tmp_path: Path) -> None:
    from trainguard.evidence.audit_log import AuditLog, AuditLogUnreadable

    db = tmp_path / "audit.db"
    before = _garble(db)
    with pytest.raises(AuditLogUnreadable, match="not a valid audit log") as info:
        AuditLog.open(db, "n1", None)
    assert info.value.exit_code == 2 and "backup" in (info.value.tip or "")
    assert info.value.as_tampered().exit_code == 1
    assert db.read_bytes() == before  # the evidence is left exactly as found


def test_malformed_exported_segment_fails_verification() -> None:
    from trainguard.evidence.audit_log import AuditTampered, verify_segment

    for segment in ({"entries": [{"seq": 1}]}, {"entries": 5}, {"entries": [[1, 2]]}):
        with pytest.raises(AuditTampered, match="malformed entry"):
            verify_segment(segment, None)


@pytest.mark.parametrize("damage", [_garble, _damage_pages], ids=["garbled", "damaged-pages"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_audit_verify_of_a_garbled_log_is_tampering(cli, home: Path, damage, fmt) -> None:  # noqa: ANN001
    db = home / "state" / "audit.db"
    before = damage(db)
    r = cli("audit", "verify", "--home", home, "--format", fmt)
    line = assert_fails(r, 1)
    assert str(db) in line and "not a valid audit log" in line
    assert "tampered" in r.stderr
    assert r.stdout == ""
    assert db.read_bytes() == before


GARBLED_LOG_COMMANDS = [
    ("audit", "log"),
    ("audit", "report", "--out", "{work}/report"),
    ("login", "--user", "root", "--otp", "123456"),
    ("hooks", "test", "gpu-misuse"),
    ("agent", "run", "--once"),
]


@pytest.mark.parametrize("argv", GARBLED_LOG_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_other_commands_on_a_garbled_log_stop_with_a_tip(cli, home: Path, work: Path, argv) -> None:  # noqa: ANN001
    db = home / "state" / "audit.db"
    before = _garble(db)
    r = cli(*_argv(argv, work), "--home", home, "--format", "json")
    line = assert_fails(r, 2)
    assert str(db) in line and "not a valid audit log" in line
    assert "backup" in r.stderr
    assert r.stdout == ""
    assert db.read_bytes() == before
    assert tree(work) == []  # no report folder


def test_audit_log_with_damaged_pages_is_a_usage_error(cli, home: Path) -> None:  # noqa: ANN001
    _damage_pages(home / "state" / "audit.db")
    r = cli("audit", "log", "--home", home)
    assert "not a valid audit log" in assert_fails(r, 2)


# -- bugs 4 and 5: audit verify's own inputs, and the home before any key ----------------------


def test_missing_checkpoint_file_is_named_with_a_tip(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--checkpoint", work / "saved.json")
    line = assert_fails(r, 2)
    assert "no such checkpoint file" in line and str(work / "saved.json") in line
    assert "--save-checkpoint" in r.stderr
    assert r.stdout == ""


def test_checkpoint_that_is_a_folder_is_a_usage_error(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--checkpoint", work)
    assert "is a directory" in assert_fails(r, 2)


@pytest.mark.parametrize("content", ["{ not json", "[1, 2]", '{"seq": 3}', "\udcff"])
def test_garbled_checkpoint_fails_verification(cli, home: Path, work: Path, content: str) -> None:  # noqa: ANN001
    saved = work / "saved.json"
    saved.write_bytes(content.encode("utf-8", "surrogateescape"))
    r = cli("audit", "verify", "--home", home, "--checkpoint", saved, "--format", "json")
    line = assert_fails(r, 1)
    assert str(saved) in line and "not a trainguard audit checkpoint" in line
    assert r.stdout == ""


def test_save_checkpoint_into_a_folder_is_refused(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--save-checkpoint", work, "--format", "json")
    assert "is a directory" in assert_fails(r, 2)
    assert r.stdout == ""


def test_saved_checkpoint_round_trip(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    every = {"TRAINGUARD_AGENT_CHECKPOINT_EVERY": "1"}
    assert cli("audit", "log", "--home", home, env=every).code == 0
    r = cli("hooks", "test", "posture-failure", "--home", home, env=every)  # signs a checkpoint
    assert r.code in (0, 1), r.stderr
    saved = work / "saved.json"
    r = cli("audit", "verify", "--home", home, "--save-checkpoint", saved, env=every)
    assert r.code == 0, r.stderr
    assert json.loads(saved.read_text())["signature"]
    r = cli("audit", "verify", "--home", home, "--checkpoint", saved, "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["ok"] is True


def test_missing_segment_and_garbled_segment(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--segment", work / "seg.json")
    assert "no such segment file" in assert_fails(r, 2)
    (work / "seg.json").write_text("{ nope")
    r = cli("audit", "verify", "--home", home, "--segment", work / "seg.json")
    assert "not a trainguard audit segment" in assert_fails(r, 1)
    (work / "seg.json").write_text('{"entries": [{"seq": 1}]}')
    r = cli("audit", "verify", "--home", home, "--segment", work / "seg.json")
    assert "malformed entry" in assert_fails(r, 1)


def test_missing_pubkey_tip_does_not_send_users_to_init(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "verify", "--home", home, "--pubkey", work / "node.pub")
    line = assert_fails(r, 2)
    assert str(work / "node.pub") in line
    assert "trainguard init" not in r.stderr
    (home / "keys" / "node.ed25519.pub").unlink()
    r = cli("audit", "verify", "--home", home)
    assert_fails(r, 2)
    assert "backup" in r.stderr and "trainguard init" not in r.stderr


def test_exported_segment_verifies_without_a_home(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    from trainguard.evidence.audit_log import AuditLog

    with AuditLog.open(home / "state" / "audit.db", "n1", None) as log:
        (work / "seg.json").write_text(json.dumps(log.export_segment()))
    pub = home / "keys" / "node.ed25519.pub"
    missing = work / "nope"
    r = cli("audit", "verify", "--segment", work / "seg.json", "--pubkey", pub, "--home", missing)
    assert r.code == 0, r.stderr
    assert not missing.exists()
    r = cli("audit", "verify", "--segment", work / "seg.json", "--home", missing)
    assert "no trainguard home" in assert_fails(r, 2)


# -- bug 6: agent status reads the home (and its config) before asking for the agent ---------


def test_agent_status_with_a_broken_config_lists_the_problems(cli, home: Path) -> None:  # noqa: ANN001
    with (home / "trainguard.toml").open("a") as f:
        f.write('\n[agent]\ncheckpoint_evry = 3\ncheckpoint_every = "x"\n')
    r = cli("agent", "status", "--home", home, "--format", "json")
    line = assert_fails(r, 2)
    assert "invalid configuration" in line
    assert "checkpoint_evry" in r.stderr and "expected int" in r.stderr
    assert r.stdout == ""


def test_agent_status_of_a_home_without_agent_is_json(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("agent", "status", "--home", home, "--format", "json")
    assert r.code == 1
    assert r.json()["running"] is False


# -- bug 1: a missing home gets nothing created in it ---------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("argv", HOME_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_missing_home_is_named_and_nothing_is_created(cli, work: Path, argv, fmt) -> None:  # noqa: ANN001
    missing = work / "nope"
    r = cli(*_argv(argv, work), "--home", missing, "--format", fmt)
    line = assert_fails(r, 2)
    assert "no trainguard home" in line and str(missing) in line
    assert "public key" not in r.stderr and "not running" not in r.stderr + r.stdout
    assert r.stdout == ""
    assert not missing.exists()
    assert tree(work) == []


@pytest.mark.parametrize("argv", HOME_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_empty_folder_is_no_home_and_stays_empty(cli, work: Path, argv) -> None:  # noqa: ANN001
    empty = work / "empty"
    empty.mkdir()
    r = cli(*_argv(argv, work), "--home", empty)
    assert "no trainguard home" in assert_fails(r, 2)
    assert tree(work) == ["empty"]


def test_audit_sink_of_a_missing_home_creates_nothing(tmp_path: Path) -> None:
    from trainguard.agent.api.client import open_sink
    from trainguard.core.config import load_config
    from trainguard.core.home import Home, HomeError
    from trainguard.evidence.embedded import open_embedded_log

    home = Home(tmp_path / "nope")
    config = load_config(home.config_path, {})
    for opener in (open_sink, open_embedded_log):
        with pytest.raises(HomeError, match="no trainguard home"):
            opener(home, config)
    assert not home.root.exists()


def test_scan_audit_with_a_missing_home_leaves_no_audit_log(cli, work: Path) -> None:  # noqa: ANN001
    # `scan` is not ours, but it records through the shared sink: the sink refuses the home.
    (work / "f.txt").write_text("hello")
    missing = work / "nope"
    r = cli("scan", "--audit", work / "f.txt", "--home", missing)
    assert r.code == 2 and "no trainguard home" in r.stderr
    assert not missing.exists()


# -- bug 3: audit report --out -----------------------------------------------------------------


def test_report_out_that_is_a_file_is_a_usage_error(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    target = work / "report.txt"
    target.write_text("keep me")
    r = cli("audit", "report", "--home", home, "--out", target, "--format", "json")
    line = assert_fails(r, 2)
    assert str(target) in line and "not a folder" in line
    assert r.stdout == ""
    assert target.read_text() == "keep me"
    assert tree(work) == ["report.txt"]


def test_report_out_under_a_file_writes_nothing(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    (work / "plain").write_text("x")
    r = cli("audit", "report", "--home", home, "--out", work / "plain" / "sub")
    assert "cannot write the report" in assert_fails(r, 2)
    assert r.stdout == ""
    assert tree(work) == ["plain"]


def test_report_into_a_new_folder_still_works(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    r = cli("audit", "report", "--home", home, "--out", work / "r", "--formats", "md,json")
    assert r.code in (0, 1), r.stderr  # 1: some controls are not satisfied on a fresh home
    assert tree(work / "r") == ["trainguard-report.json", "trainguard-report.md"]


# -- malformed trainguard.toml and a damaged webhook queue --------------------------------------


@pytest.mark.parametrize("argv", HOME_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_every_config_problem_is_listed(cli, home: Path, work: Path, argv) -> None:  # noqa: ANN001
    with (home / "trainguard.toml").open("a") as f:
        f.write("\n[agent]\ncheckpoint_evry = 3\n[hooks]\ntimeout_seconds = -1\n[bogus]\nx = 1\n")
    r = cli(*_argv(argv, work), "--home", home, "--format", "json")
    line = assert_fails(r, 2)
    assert "invalid configuration" in line and "trainguard.toml" in line
    for problem in ("checkpoint_evry", "timeout_seconds", "[bogus]"):
        assert problem in r.stderr, problem
    assert r.stdout == ""
    assert tree(work) == []


@pytest.mark.parametrize("argv", [("hooks", "list"), ("hooks", "test", "gpu-misuse")])
def test_garbled_webhook_queue(cli, home: Path, argv) -> None:  # noqa: ANN001
    queue = home / "state" / "queue.db"
    queue.write_bytes(b"not sqlite")
    r = cli(*argv, "--home", home, "--format", "json")
    line = assert_fails(r, 2)
    assert str(queue) in line and "backup" in r.stderr
    assert r.stdout == ""
    assert queue.read_bytes() == b"not sqlite"


# -- bug 7: anomaly detect writes nothing for input that is not a NAB CSV ----------------------

GOOD_ROWS = "".join(f"2026-01-01 00:{m:02d}:00,{m % 3}\n" for m in range(5))


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    ("stdin", "expect"),
    [
        ("", "header"),
        ("time,val\n2026-01-01 00:00:00,1\n", "header"),
        ("timestamp,value\n2026-01-01 00:00:00,abc\n", "row 2"),
        ("timestamp,value\n2026-01-01 00:00:00,nan\n", "not finite"),
        ("timestamp,value\nyesterday,1\n", "timestamp"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "CSV"),  # undecodable or no header: locale
    ],
    ids=["empty", "wrong-header", "not-a-number", "nan", "bad-time", "binary"],
)
def test_detect_bad_input_leaves_stdout_empty(cli, home: Path, stdin, expect, fmt) -> None:  # noqa: ANN001
    r = cli("anomaly", "detect", "-", "--home", home, "--format", fmt, input=stdin)
    assert expect in assert_fails(r, 2)
    assert r.stdout == ""


def test_detect_bad_row_later_stops_and_says_what_was_written(cli, home: Path) -> None:  # noqa: ANN001
    stdin = "timestamp,value\n" + GOOD_ROWS + "2026-01-01 01:00:00,oops\n" + GOOD_ROWS
    r = cli("anomaly", "detect", "-", "--home", home, input=stdin)
    line = assert_fails(r, 2)
    assert "row 7" in line and "5 rows before it" in line
    lines = r.stdout.splitlines()
    assert lines[0] == "timestamp,value,score,alert" and len(lines) == 6
    r = cli("anomaly", "detect", "-", "--home", home, "--format", "json", input=stdin)
    assert_fails(r, 2)
    assert r.stdout == ""  # JSON is all or nothing


def test_detect_header_only_is_an_empty_result(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("anomaly", "detect", "-", "--home", home, input="timestamp,value\n")
    assert r.code == 0, r.stderr
    assert r.stdout == "timestamp,value,score,alert\n"
    r = cli("anomaly", "detect", "-", "--home", home, "--format", "json", input="timestamp,value\n")
    assert r.code == 0 and r.json()["rows"] == 0


def test_detect_good_input_streams_csv(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("anomaly", "detect", "-", "--home", home, input="timestamp,value\n" + GOOD_ROWS)
    assert r.code in (0, 1), r.stderr
    assert len(r.stdout.splitlines()) == 6


def test_detect_needs_no_home_and_creates_none(cli, work: Path) -> None:  # noqa: ANN001
    missing = work / "nope"
    r = cli("anomaly", "detect", "-", "--home", missing, input="timestamp,value\n" + GOOD_ROWS)
    assert r.code in (0, 1), r.stderr
    assert not missing.exists()


def test_detect_threshold_out_of_range(cli, home: Path) -> None:  # noqa: ANN001
    r = cli("anomaly", "detect", "-", "--home", home, "--threshold", "3", input="")
    assert "--threshold" in assert_fails(r, 2)


@pytest.mark.parametrize("out", ["{work}", "{work}/no-such-dir/m.skops"])
def test_fit_out_mistakes_are_caught_before_fitting(cli, home: Path, work: Path, out: str) -> None:  # noqa: ANN001
    csv = work / "base.csv"
    csv.write_text("timestamp,a\n" + "".join(f"{i},{i % 7}\n" for i in range(40)))
    r = cli("anomaly", "fit", csv, "--out", out.format(work=work), "--home", home)
    assert "--out" in assert_fails(r, 2)
    assert tree(work) == ["base.csv"]


def test_fit_with_too_few_rows_has_a_tip(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    csv = work / "base.csv"
    csv.write_text("timestamp,a\n1,2\n")
    r = cli("anomaly", "fit", csv, "--out", work / "m.skops", "--home", home)
    assert_fails(r, 2)
    assert tree(work) == ["base.csv"]


def test_detect_binary_file_is_not_a_csv(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    blob = work / "model.bin"
    blob.write_bytes(b"timestamp,value\n\xff\xfe\x00\x81 binary")
    r = cli("anomaly", "detect", blob, "--home", home, env={"PYTHONIOENCODING": "utf-8"})
    assert "not a text CSV" in assert_fails(r, 2)
    assert r.stdout == ""


def test_score_with_a_file_that_is_no_model(cli, home: Path, work: Path) -> None:  # noqa: ANN001
    (work / "in.csv").write_text("timestamp,a\n1,2\n")
    (work / "junk.skops").write_text("not a zip")
    r = cli("anomaly", "score", work / "in.csv", "--model", work / "junk.skops", "--home", home)
    assert "junk.skops" in assert_fails(r, 2)
    assert "anomaly fit" in r.stderr and r.stdout == ""


# -- agent install-unit and audit log flags --------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (("--path", "{work}"), "is a directory"),
        (("--exec", "'/opt/tg/bin/trainguard", "--print"), "cannot split --exec"),
        (("--watchdog", "-5", "--print"), "--watchdog"),
    ],
    ids=["path-dir", "exec-quote", "watchdog"],
)
def test_install_unit_mistakes(cli, work: Path, flags, expect: str) -> None:  # noqa: ANN001
    r = cli("agent", "install-unit", *[f.format(work=work) for f in flags])
    assert expect in assert_fails(r, 2)
    assert r.stdout == ""
    assert tree(work) == []


def test_install_unit_writes_where_asked(cli, work: Path) -> None:  # noqa: ANN001
    r = cli("agent", "install-unit", "--path", work / "tg.service", "--format", "json")
    assert r.code == 0, r.stderr
    assert "WatchdogSec=60s" in (work / "tg.service").read_text()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_audit_log_limit_must_be_positive(cli, home: Path, limit: str) -> None:  # noqa: ANN001
    r = cli("audit", "log", "--home", home, "--limit", limit, "--format", "json")
    assert "--limit" in assert_fails(r, 2)
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (("--node", "garbage", "--no-local"), "bad --node address"),
        (("--node", "http://10.0.0.1:7443"), "bad --node address"),
        (("--node", "tls://10.0.0.1:7443", "--cert", "{work}/no.crt"), "--cert"),
    ],
    ids=["no-port", "wrong-scheme", "missing-cert"],
)
def test_report_node_mistakes_are_usage_errors(cli, home: Path, work: Path, flags, expect) -> None:  # noqa: ANN001
    # Left to the gather step, each would be a "node unreachable" finding (exit 1).
    out = work / "report"
    r = cli("audit", "report", "--home", home, "--out", out, *[f.format(work=work) for f in flags])
    assert expect in assert_fails(r, 2)
    assert r.stdout == "" and not out.exists()
