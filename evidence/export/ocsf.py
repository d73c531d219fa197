"""Audit entries as OCSF 1.x events (https://schema.ocsf.io), for SIEMs that ingest OCSF.

| audit kind | OCSF class (class_uid) | activity |
|---|---|---|
| ``incident`` | Detection Finding (2004, category Findings 2) | 1 Create |
| ``login``, ``login-failed``, ``mfa-failed``, ``session-refused`` | Authentication (3002, category IAM 3) | 1 Logon |
| ``access-allowed``, ``access-denied``, ``api.denied`` | Authorize Session (3003, category IAM 3) | 1 Assign Privileges |

Other entries (posture checks, hook runs, checkpoints...) have no OCSF class here and render as
nothing; the JSON-lines format carries every entry. Every event has the base attributes the
schema requires (`activity_id`, `category_uid`, `class_uid`, `type_uid` = class_uid * 100 +
activity_id, `severity_id`, `time` in epoch milliseconds, `metadata` with `product` and the
schema `version`), `status_id` (1 Success / 2 Failure; a finding's status is 1 New), the
audit sequence number as `metadata.sequence` and ``<node>:<seq>`` as `metadata.uid`, so a
consumer can deduplicate and resume. The whole audit entry is kept under `unmapped`.
"""

from __future__ import annotations

from typing import Any

from trainguard.evidence.audit_chain import AuditEntry

__all__ = ["OCSF_VERSION", "PRODUCT_NAME", "VENDOR_NAME", "to_ocsf"]

OCSF_VERSION = "1.1.0"  # Detection Finding first appears in 1.1.0
PRODUCT_NAME = "trainguard"
VENDOR_NAME = "trainguard"

# severity_id: 0 Unknown, 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical, 6 Fatal, 99 Other
_SEVERITY_ID = {"low": 2, "medium": 3, "high": 4, "critical": 5}
_INFORMATIONAL, _LOW = 1, 2
_SUCCESS, _FAILURE = 1, 2  # base status_id
_FINDING_NEW = 1  # finding status_id

_DETECTION_FINDING = (2, 2004, "Findings", "Detection Finding")
_AUTHENTICATION = (3, 3002, "Identity & Access Management", "Authentication")
_AUTHORIZE_SESSION = (3, 3003, "Identity & Access Management", "Authorize Session")

# audit kind -> succeeded?
_AUTH_KINDS = {"login": True, "login-failed": False, "mfa-failed": False, "session-refused": False}
_AUTHZ_KINDS = {"access-allowed": True, "access-denied": False, "api.denied": False}


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) and value else default


def _base(
    entry: AuditEntry,
    cls: tuple[int, int, str, str],
    *,
    activity: tuple[int, str],
    severity_id: int,
    message: str,
    product_version: str,
) -> dict[str, Any]:
    category_uid, class_uid, category_name, class_name = cls
    activity_id, activity_name = activity
    return {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class_uid,
        "class_name": class_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "severity_id": severity_id,
        "time": int(round(entry.time * 1000)),
        "message": message,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": PRODUCT_NAME,
                "vendor_name": VENDOR_NAME,
                "version": product_version,
            },
            "uid": f"{entry.node}:{entry.seq}",
            "sequence": entry.seq,
            "log_name": "audit",
            "original_time": str(entry.time),
        },
        "unmapped": {"audit": entry.to_dict()},
    }


def _finding(entry: AuditEntry, product_version: str) -> dict[str, Any]:
    data = entry.data
    kind = _text(data.get("kind"), "unknown")
    severity = _text(data.get("severity"), "medium")
    node = _text(data.get("node"), entry.node)
    event = _base(
        entry,
        _DETECTION_FINDING,
        activity=(1, "Create"),
        severity_id=_SEVERITY_ID.get(severity, 0),
        message=f"trainguard incident {kind} ({severity}) on {node}",
        product_version=product_version,
    )
    created = data.get("time")
    title, types = f"{kind} on {node}", [kind]
    if data.get("synthetic"):  # `trainguard hooks test`: say so, so a SIEM can filter it out
        title += " (synthetic test)"
        types.append("trainguard-synthetic-test")
        event["message"] += " (synthetic test from `trainguard hooks test`)"
    event.update(
        {
            "severity": severity.capitalize(),
            "status_id": _FINDING_NEW,
            "status": "New",
            "finding_info": {
                "uid": _text(data.get("id"), f"{entry.node}:{entry.seq}"),
                "title": title,
                "types": types,
                "created_time": int(round(float(created) * 1000))
                if isinstance(created, int | float)
                else event["time"],
            },
        }
    )
    return event


def _user(entry: AuditEntry) -> str:
    data = entry.data
    return _text(data.get("user")) or _text(data.get("claimed_actor")) or entry.actor


def _authentication(entry: AuditEntry, ok: bool, product_version: str) -> dict[str, Any]:
    user = _user(entry)
    outcome = "succeeded" if ok else "failed"
    event = _base(
        entry,
        _AUTHENTICATION,
        activity=(1, "Logon"),
        severity_id=_INFORMATIONAL if ok else _LOW,
        message=f"trainguard login {outcome} for {user}",
        product_version=product_version,
    )
    event.update(
        {
            "status_id": _SUCCESS if ok else _FAILURE,
            "status": "Success" if ok else "Failure",
            "user": {"name": user},
            "actor": {"user": {"name": entry.actor}},
            "service": {"name": "trainguard", "uid": entry.node},
            "is_mfa": entry.kind == "mfa-failed" or None,
        }
    )
    if reason := _text(entry.data.get("reason")):
        event["status_detail"] = reason
    return {k: v for k, v in event.items() if v is not None}


def _authorize(entry: AuditEntry, ok: bool, product_version: str) -> dict[str, Any]:
    data = entry.data
    user = _user(entry)
    action = _text(data.get("action"), _text(data.get("method"), "request"))
    resource = _text(data.get("resource"), _text(data.get("path"), "*"))
    privilege = f"{action} on {resource}"
    if domain := _text(data.get("domain")):
        privilege += f" in {domain}"
    event = _base(
        entry,
        _AUTHORIZE_SESSION,
        activity=(1, "Assign Privileges"),
        severity_id=_INFORMATIONAL if ok else _LOW,
        message=f"trainguard {'allowed' if ok else 'denied'} {user}: {privilege}",
        product_version=product_version,
    )
    event.update(
        {
            "status_id": _SUCCESS if ok else _FAILURE,
            "status": "Success" if ok else "Failure",
            "user": {"name": user},
            "actor": {"user": {"name": entry.actor}},
            "privileges": [privilege],
        }
    )
    if reason := _text(data.get("reason")):
        event["status_detail"] = reason
    return event


def to_ocsf(entry: AuditEntry, *, product_version: str) -> dict[str, Any] | None:
    """The OCSF event for `entry`, or None when its kind has no OCSF class here."""
    if entry.kind == "incident":
        return _finding(entry, product_version)
    if entry.kind in _AUTH_KINDS:
        return _authentication(entry, _AUTH_KINDS[entry.kind], product_version)
    if entry.kind in _AUTHZ_KINDS:
        return _authorize(entry, _AUTHZ_KINDS[entry.kind], product_version)
    return None
