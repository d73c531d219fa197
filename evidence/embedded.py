"""The embedded audit log: the home's `AuditLog` opened in this process when no agent runs.

It is the same file the agent writes (the agent is the one writer while it runs; the embedded
log takes the same SQLite write lock), so evidence is never split in two places. Choosing between
the agent and this log is `trainguard.agent.api.client.open_sink`.

Only `create_home_log` (called by ``trainguard init``) makes a log. Opening never creates one:
a home whose log is gone, or whose log is not the one its signed genesis record
(``state/audit-genesis.json``) names, is refused with exit 2 and a restore tip, because a fresh
log there would verify and hide what was erased. The refusal is itself an ``audit-tampered``
incident; with no trustworthy log to hold it, it goes to ``state/audit-tampered.jsonl`` (one
JSON incident per line) and to stderr, and the first open of a restored log appends the pending
incidents to it as ``incident`` entries (so the report and hooks see them).

A home made before genesis existed (a log and no record) keeps working; `audit verify` fails it
until ``trainguard audit seal-genesis`` signs a legacy genesis and writes the record.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

from trainguard.core.config import Config
from trainguard.core.errors import TrainguardError
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey, VerifyKey
from trainguard.evidence.audit_genesis import (
    AuditLogMissing,
    AuditLogReplaced,
    Genesis,
    GenesisRecord,
)
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.config import AuditConfig
from trainguard.evidence.incidents import Incident, IncidentKind, Severity

__all__ = [
    "audit_config",
    "check_genesis_record",
    "create_home_log",
    "genesis_record_path",
    "open_embedded_log",
    "pending_incidents_path",
    "record_tampering",
    "seal_genesis",
]

log = logging.getLogger(__name__)


def audit_config(config: Config) -> AuditConfig:
    return config.section(AuditConfig)


def genesis_record_path(home: Home) -> Path:
    return home.state_dir / "audit-genesis.json"


def pending_incidents_path(home: Home) -> Path:
    return home.state_dir / "audit-tampered.jsonl"


def _open(home: Home, config: Config, signer: SigningKey | None) -> AuditLog:
    cadence = audit_config(config)
    return AuditLog.open(
        home.audit_db,
        config.node.name,
        signer,
        checkpoint_every=cadence.checkpoint_every,
        checkpoint_seconds=cadence.checkpoint_seconds,
    )


def _load_signer(home: Home) -> SigningKey | None:
    if not home.node_signing_key.exists():
        return None
    try:
        return SigningKey.load(home.node_signing_key)
    except TrainguardError as exc:
        log.warning("audit checkpoints unsigned: %s", exc.message)
        return None


def create_home_log(home: Home, config: Config, signer: SigningKey) -> Genesis:
    """Create the home's audit log with its signed genesis as entry 1, and the signed record
    that the home has this log. Only `trainguard init` calls this (on a new home)."""
    if home.audit_db.exists() or genesis_record_path(home).exists():
        raise AuditLogReplaced(home.audit_db, "init found an audit log already there")
    with _open(home, config, signer) as audit:
        genesis, digest = audit.write_genesis(signer, cluster=config.node.cluster)
    GenesisRecord.create(signer, genesis, digest).save(genesis_record_path(home))
    return genesis


def seal_genesis(home: Home, config: Config, signer: SigningKey) -> Genesis:
    """Give a home made before genesis existed its legacy genesis and record (`audit
    seal-genesis`). The caller verifies the log first."""
    if genesis_record_path(home).exists():
        raise AuditLogReplaced(home.audit_db, "this home already has a genesis record")
    with _open(home, config, signer) as audit:
        genesis, digest = audit.write_genesis(signer, cluster=config.node.cluster)
    GenesisRecord.create(signer, genesis, digest).save(genesis_record_path(home))
    return genesis


def check_genesis_record(home: Home, audit: AuditLog) -> GenesisRecord | None:
    """Raise `AuditLogReplaced` unless the log is the one the home's signed record names.
    Returns the record, or None for a home made before genesis (no record, no genesis)."""
    path = genesis_record_path(home)
    found = audit.genesis()
    if not path.exists():
        if found is not None:
            raise AuditLogReplaced(
                home.audit_db, f"the log has a genesis but the home's record {path} is gone"
            )
        return None
    try:
        record = GenesisRecord.load(path, VerifyKey.load(home.node_verify_key))
    except OSError as exc:
        raise AuditLogReplaced(home.audit_db, f"cannot read the genesis record {path}") from exc
    if found is None:
        raise AuditLogReplaced(home.audit_db, "the log has no genesis (rebuilt or replaced)")
    genesis, seq, digest = found
    if (genesis.log_id, seq, digest) != (record.log_id, record.seq, record.hash):
        raise AuditLogReplaced(home.audit_db, "its genesis is not the one this home recorded")
    return record


def record_tampering(home: Home, config: Config, reason: str) -> None:
    """Keep an audit-tampered incident where it survives without a log (see the module doc)."""
    incident = Incident(
        id=secrets.token_hex(8),
        kind=IncidentKind.AUDIT_TAMPERED,
        severity=Severity.CRITICAL,
        node=config.node.name,
        time=time.time(),
        evidence={"path": str(home.audit_db), "reason": reason, "dedup_key": reason},
    )
    path = pending_incidents_path(home)
    try:
        if path.exists() and json.dumps(reason)[1:-1] in path.read_text(encoding="utf-8"):
            log.error("audit-tampered (already pending in %s): %s", path, reason)
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(incident.to_dict(), sort_keys=True) + "\n")
    except OSError as exc:
        log.error("cannot keep the audit-tampered incident in %s: %s", path, exc)
    log.error("audit-tampered incident %s: %s", incident.id, reason)


def _import_pending(home: Home, audit: AuditLog) -> None:
    path = pending_incidents_path(home)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot read pending audit incidents %s: %s", path, exc)
        return
    events = []
    for line in lines:
        try:
            events.append(("incident", "trainguard", Incident.from_dict(json.loads(line)).to_dict()))
        except (KeyError, TypeError, ValueError):
            events.append(("incident.unreadable", "trainguard", {"line": line[:2000]}))
    if events:
        audit.append_many(events)
    path.rename(path.with_name(f"{path.name}.imported-{int(time.time())}"))


def open_embedded_log(home: Home, config: Config, *, check_genesis: bool = True) -> AuditLog:
    """The home's audit log opened in this process, signing checkpoints with the node key
    when this user can read it.

    `check_genesis=False` is for `audit verify`, which reports a replaced log as a failed
    verification (exit 1) instead of refusing to open it.

    Raises:
        HomeError: `home` was never made by `trainguard init` (nothing is created then).
        AuditLogMissing: the log is gone (exit 2; an audit-tampered incident is kept).
        AuditLogReplaced: the log is not the one the home recorded (exit 2, likewise).
        AuditLogUnreadable: state/audit.db is not an audit log (exit 2, restore from backup).
    """
    # AuditLog.open creates state/ and audit.db: never do that in a folder that is no home,
    # nor in a home that lost its log.
    home.require()
    if not home.audit_db.exists():
        exc: TrainguardError = AuditLogMissing(home.audit_db)
        record_tampering(home, config, exc.message)
        raise exc
    audit = _open(home, config, _load_signer(home))
    audit.on_lost = lambda reason: record_tampering(home, config, reason)
    if not check_genesis:
        return audit
    try:
        if check_genesis_record(home, audit) is None:
            log.warning(
                "audit log %s has no signed genesis (made before trainguard signed one): run "
                "`trainguard audit seal-genesis` once",
                home.audit_db,
            )
        _import_pending(home, audit)
    except AuditLogReplaced as replaced:
        audit.close()
        record_tampering(home, config, replaced.message)
        raise
    except BaseException:
        audit.close()
        raise
    return audit
