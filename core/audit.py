"""The audit-sink protocol and the shared incident vocabulary.

Library code that must leave evidence (policy decisions, key rotations, checkpoints) takes an
`AuditSink` and calls `record()`. The CLI and the trainer hand in a sink that talks to the local
agent, or the embedded audit log when no agent runs (`trainguard.agent.sink.open_sink`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


class IncidentKind(enum.StrEnum):
    """One vocabulary for detectors, hooks and the report (DESIGN "Incident kinds")."""

    GPU_MISUSE = "gpu-misuse"
    EXFILTRATION = "exfiltration"
    ACCESS_ANOMALY = "access-anomaly"
    BYZANTINE_WORKER = "byzantine-worker"
    CHECKPOINT_TAMPERED = "checkpoint-tampered"
    UNSAFE_ARTIFACT = "unsafe-artifact"
    DEPENDENCY_DRIFT = "dependency-drift"
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


@runtime_checkable
class AuditSink(Protocol):
    """Where evidence goes. `record` returns once the event is durable."""

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None: ...


class NullSink:
    """A sink that keeps events in memory; for tests and dry runs, never the default."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None:
        self.events.append((kind, actor, dict(data)))
