"""Incidents: one vocabulary (`IncidentKind`, `Severity`, `IncidentStatus`) and one record
(`Incident`) from the detector through the hooks and the audit log to the report.

Kinds are the DESIGN's "Incident kinds"; add a kind there and here together. The engine that
gates, records and responds to incidents is `trainguard.evidence.response.engine`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.errors import UsageError
from trainguard.crypto.signing import canonical_json

__all__ = [
    "AGENT_ACTOR",
    "Incident",
    "IncidentKind",
    "IncidentStatus",
    "LOG_LEVELS",
    "Severity",
    "dedup_key",
    "parse_kind",
    "parse_severity",
]

AGENT_ACTOR = "trainguard-agent"


class IncidentKind(enum.StrEnum):
    """One vocabulary for detectors, hooks and the report (DESIGN "Incident kinds")."""

    GPU_MISUSE = "gpu-misuse"
    EXFILTRATION = "exfiltration"
    ACCESS_ANOMALY = "access-anomaly"
    BYZANTINE_WORKER = "byzantine-worker"
    CHECKPOINT_TAMPERED = "checkpoint-tampered"
    UNSAFE_ARTIFACT = "unsafe-artifact"
    DEPENDENCY_DRIFT = "dependency-drift"
    DEPENDENCY_VULNERABLE = "dependency-vulnerable"
    POLICY_TAMPERED = "policy-tampered"
    AUDIT_TAMPERED = "audit-tampered"
    MEMBERSHIP_FAILURE = "membership-failure"
    REPLICA_DIVERGENCE = "replica-divergence"
    POSTURE_FAILURE = "posture-failure"


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# How loudly an incident is logged (and so its journald priority): critical -> crit, high ->
# err, medium -> warning, low -> info.
LOG_LEVELS: dict[Severity, int] = {
    Severity.CRITICAL: logging.CRITICAL,
    Severity.HIGH: logging.ERROR,
    Severity.MEDIUM: logging.WARNING,
    Severity.LOW: logging.INFO,
}


class IncidentStatus(enum.StrEnum):
    """What the engine did with a reported incident."""

    NEW = "new"
    DUPLICATE = "duplicate"  # of a recent one with the same dedup key
    RATE_LIMITED = "rate-limited"


@dataclass(frozen=True)
class Incident:
    id: str
    kind: IncidentKind
    severity: Severity
    node: str
    time: float
    evidence: dict[str, Any] = field(default_factory=dict)
    status: IncidentStatus = IncidentStatus.NEW

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "node": self.node,
            "time": self.time,
            "evidence": self.evidence,
            "status": self.status.value,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Incident:
        return cls(
            id=str(raw["id"]),
            kind=IncidentKind(raw["kind"]),
            severity=Severity(raw["severity"]),
            node=str(raw["node"]),
            time=float(raw["time"]),
            evidence=dict(raw.get("evidence") or {}),
            status=IncidentStatus(raw.get("status", IncidentStatus.NEW)),
        )


def parse_kind(kind: IncidentKind | str) -> IncidentKind:
    try:
        return IncidentKind(kind)
    except ValueError as exc:
        known = ", ".join(k.value for k in IncidentKind)
        raise UsageError(f"unknown incident kind {kind!r}", tip=f"use one of: {known}") from exc


def parse_severity(severity: Severity | str) -> Severity:
    try:
        return Severity(severity)
    except ValueError as exc:
        raise UsageError(
            f"unknown severity {severity!r}", tip="use low, medium, high or critical"
        ) from exc


def dedup_key(kind: IncidentKind, evidence: Mapping[str, Any]) -> str:
    """Same kind + same ``evidence["dedup_key"]`` (or same evidence) = the same incident."""
    if "dedup_key" in evidence:
        basis = str(evidence["dedup_key"]).encode()
    else:
        basis = canonical_json(dict(evidence))
    return f"{kind.value}:{hashlib.sha256(basis).hexdigest()[:16]}"
