"""`--format ocsf`: incidents become OCSF Detection Findings, logins Authentication events and
access decisions Authorize Session events, each valid against the published schema's required
attributes (an excerpt shipped in tests/data/ocsf/); other entries have no OCSF event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.export import StreamFormat, to_ocsf
from trainguard.evidence.response.engine import IncidentEngine

DATA = Path(__file__).resolve().parents[2] / "data" / "ocsf"
SCHEMAS = {
    2004: "detection_finding.schema.json",
    3002: "authentication.schema.json",
    3003: "authorize_session.schema.json",
}


def _validator(class_uid: int) -> jsonschema.Draft202012Validator:
    schema = json.loads((DATA / SCHEMAS[class_uid]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _validate(event: dict[str, Any]) -> None:
    _validator(event["class_uid"]).validate(event)
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]


@pytest.fixture
def log(home: Home, signer: SigningKey) -> AuditLog:
    return AuditLog.open(home.audit_db, "node-1", signer, clock=lambda: 1_767_225_600.25)


def _events(log: AuditLog) -> list[dict[str, Any]]:
    out = []
    for e in log.entries():
        record = StreamFormat.OCSF.render(e, product_version="9.9.9")
        if record is not None:
            out.append(json.loads(record))
    return out


def test_incidents_are_detection_findings(home: Home, log: AuditLog) -> None:
    engine = IncidentEngine(home, log, node="node-1", clock=lambda: 1_767_225_600.25)
    try:
        for kind, sev in [("gpu-misuse", "critical"), ("exfiltration", "high"),
                          ("access-anomaly", "medium"), ("posture-failure", "low")]:
            engine.report(kind, sev, {"pid": 4242, "gpu": 0, "kind_detail": kind}, respond=False)
    finally:
        engine.close()
    findings = [e for e in _events(log) if e["class_uid"] == 2004]
    assert len(findings) == 4
    for f in findings:
        _validate(f)
        assert f["category_uid"] == 2 and f["activity_id"] == 1 and f["type_uid"] == 200401
        assert f["time"] == 1_767_225_600_250  # milliseconds
        assert f["metadata"]["product"] == {"name": "trainguard", "vendor_name": "trainguard",
                                            "version": "9.9.9"}
        assert f["finding_info"]["uid"].startswith("inc-")
    by_kind = {f["finding_info"]["types"][0]: f for f in findings}
    assert {k: f["severity_id"] for k, f in by_kind.items()} == {
        "gpu-misuse": 5, "exfiltration": 4, "access-anomaly": 3, "posture-failure": 2}
    assert by_kind["gpu-misuse"]["finding_info"]["title"] == "gpu-misuse on node-1"
    # The audit entry rides along, so nothing the SIEM may need is lost.
    assert by_kind["gpu-misuse"]["unmapped"]["audit"]["data"]["evidence"]["pid"] == 4242


def test_logins_and_access_decisions(log: AuditLog) -> None:
    log.append("login", "alice", {"node": "node-1", "expires_at": 1.0})
    log.append("login-failed", "mallory", {"reason": "bad one-time code"})
    log.append("mfa-failed", "bob", {"user": "bob", "purpose": "step-up", "reason": "stale"})
    log.append("access-allowed", "alice", {"action": "train:launch", "resource": "job/*",
                                           "domain": "vision", "kind": "user", "reason": "role"})
    log.append("access-denied", "mallory", {"action": "checkpoint:export", "resource": "ckpt/1",
                                            "domain": "vision", "reason": "no role"})
    log.append("posture.check", "agent", {"id": "home-modes", "status": "pass"})
    events = _events(log)
    assert [(e["class_uid"], e["status_id"]) for e in events] == [
        (3002, 1), (3002, 2), (3002, 2), (3003, 1), (3003, 2)]  # the posture entry has none
    for e in events:
        _validate(e)
    login, failed, mfa, allowed, denied = events
    assert login["user"] == {"name": "alice"} and login["type_uid"] == 300201
    assert failed["user"] == {"name": "mallory"} and failed["status_detail"] == "bad one-time code"
    assert mfa["is_mfa"] is True
    assert allowed["privileges"] == ["train:launch on job/* in vision"]
    assert allowed["type_uid"] == 300301
    assert denied["user"] == {"name": "mallory"} and denied["severity_id"] > allowed["severity_id"]
    mapped = {"login", "login-failed", "mfa-failed", "access-allowed", "access-denied"}
    assert [e["metadata"]["sequence"] for e in events] == [
        e.seq for e in log.entries() if e.kind in mapped]


def test_the_schema_excerpt_is_not_vacuous(log: AuditLog) -> None:
    log.append("access-denied", "mallory", {"action": "a", "resource": "r", "reason": "x"})
    event = _events(log)[0]
    _validate(event)
    broken = [
        {k: v for k, v in event.items() if k != "user"},
        {k: v for k, v in event.items() if k != "privileges"},
        {**event, "type_uid": 300399 + 1},
        {**event, "severity_id": 7},
        {**event, "time": "2026-01-01T00:00:00Z"},
        {**event, "metadata": {"version": "1.1.0", "product": {"name": "trainguard"}}},
    ]
    for b in broken:
        with pytest.raises(jsonschema.ValidationError):
            _validator(3003).validate(b)


def test_synthetic_test_incidents_say_so(home: Home, log: AuditLog) -> None:
    engine = IncidentEngine(home, log, node="node-1", clock=lambda: 1_767_225_600.25)
    try:
        engine.report("gpu-misuse", "high", {"test": True}, respond=False, synthetic=True)
    finally:
        engine.close()
    (finding,) = _events(log)
    _validate(finding)
    assert finding["finding_info"]["title"] == "gpu-misuse on node-1 (synthetic test)"
    assert "trainguard-synthetic-test" in finding["finding_info"]["types"]


def test_entries_without_an_ocsf_class_render_as_nothing(log: AuditLog) -> None:
    seq = log.append("hook.run", "agent", {"hook": "10-notify", "code": 0})
    entry = next(e for e in log.entries() if e.seq == seq)
    assert to_ocsf(entry, product_version="1") is None
    assert StreamFormat.JSONL.render(entry, product_version="1") is not None
