"""trainguard.evidence: the hash-chained audit log and its sinks, incidents, and the response to
them (hooks, built-in actions, the durable delivery queue).

Every area that must leave evidence takes an `AuditSink`. The agent writes the log while it runs;
`open_embedded_log` opens the same file in this process when it does not."""

from __future__ import annotations

from trainguard.core.errors import (
    EvidenceError,
)
from trainguard.evidence.audit_log import (
    AuditEntry,
    AuditLog,
    AuditLogInvalid,
    AuditLogUnavailable,
    AuditLogUnreadable,
    AuditTampered,
    Checkpoint,
    VerifyReport,
    verify_entries,
)
from trainguard.evidence.config import (
    AuditConfig,
    IncidentsConfig,
)
from trainguard.evidence.embedded import (
    open_embedded_log,
)
from trainguard.evidence.incidents import (
    AGENT_ACTOR,
    Incident,
    IncidentKind,
    IncidentStatus,
    Severity,
)
from trainguard.evidence.sink import (
    AuditSink,
    NullSink,
)

__all__ = [
    "AGENT_ACTOR",
    "AuditConfig",
    "AuditEntry",
    "AuditLog",
    "AuditLogInvalid",
    "AuditLogUnavailable",
    "AuditLogUnreadable",
    "AuditSink",
    "AuditTampered",
    "Checkpoint",
    "EvidenceError",
    "Incident",
    "IncidentKind",
    "IncidentStatus",
    "IncidentsConfig",
    "NullSink",
    "Severity",
    "VerifyReport",
    "open_embedded_log",
    "verify_entries",
]
