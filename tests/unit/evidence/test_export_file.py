"""File forwarding: JSON lines rotated by size keep exactly N older files, newest entries kept
in order, nothing written twice across a restart; `[export]` settings are validated at load."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from trainguard.core.config import ConfigError, load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.export import ExportConfig, ExportForwarder


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rotation_keeps_n_files_with_the_newest_entries(
    home: Home, signer: SigningKey, tmp_path: Path
) -> None:
    out = tmp_path / "siem" / "audit.jsonl"
    cfg = ExportConfig(file=str(out), file_max_bytes=2048, file_keep=3)
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        fwd = ExportForwarder.from_config(home, cfg, log)
        assert fwd is not None
        for i in range(120):
            log.append("posture.check", "agent", {"id": f"check-{i}", "status": "pass"})
            if i % 7 == 0:
                fwd.cycle()
        fwd.cycle()
        fwd.close()
        last = log.last_seq()
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    for name in files:
        p = out.parent / name
        assert p.stat().st_size <= 2048
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # Oldest to newest: .3, .2, .1, the live file: one unbroken run of seqs ending at the last.
    seqs = [e["seq"] for n in ("audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
            for e in _lines(out.parent / n)]
    assert seqs == list(range(seqs[0], last + 1))
    assert seqs[0] > 1  # older files were dropped, as configured
    assert all(str(e["time"]).endswith("Z") for e in _lines(out))


def test_a_restart_resumes_from_the_cursor(home: Home, signer: SigningKey) -> None:
    cfg = ExportConfig(file="export/audit.jsonl")  # relative: under the home
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        for round_ in range(3):
            fwd = ExportForwarder.from_config(home, cfg, log)
            assert fwd is not None
            log.append("posture.check", "agent", {"round": round_})
            fwd.cycle()
            fwd.close()
        seqs = [e["seq"] for e in _lines(home.root / "export" / "audit.jsonl")]
        assert seqs == list(range(1, log.last_seq() + 1))


def test_delivered_records_are_pruned_after_a_week(home: Home, signer: SigningKey) -> None:
    clock = [1_767_225_600.0]
    cfg = ExportConfig(file="export/audit.jsonl")
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        fwd = ExportForwarder.from_config(home, cfg, log, clock=lambda: clock[0])
        assert fwd is not None
        fwd.cycle()
        queue = fwd.destinations[0].queue
        delivered = queue.counts()["delivered"]
        assert delivered == log.last_seq() and queue.counts()["pending"] == 0
        clock[0] += 6 * 86400
        fwd.cycle()
        assert queue.counts()["delivered"] == delivered  # kept for a week
        clock[0] += 2 * 86400
        log.append("posture.check", "agent", {})
        fwd.cycle()
        assert queue.counts() == {"pending": 0, "delivered": 1}  # only the new one is left
        fwd.close()
        lines = (home.root / "export" / "audit.jsonl").read_text().splitlines()
        assert len(lines) == log.last_seq()  # pruning never re-sends


def test_no_destination_means_no_forwarder(home: Home, signer: SigningKey) -> None:
    with AuditLog.open(home.audit_db, "node-1", signer) as log:
        assert ExportForwarder.from_config(home, ExportConfig(), log) is None


def test_bad_export_settings_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "trainguard.toml"
    path.write_text(
        '[export]\nfile_format = "xml"\nsyslog = "http://siem:514"\nsyslog_facility = "mail2"\n'
        "file_keep = -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    text = str(info.value)
    for key in ("file_format", "syslog target", "syslog_facility", "file_keep"):
        assert key in text
