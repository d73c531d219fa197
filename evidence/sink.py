"""The audit-sink protocol and the in-memory sink.

Library code that must leave evidence (policy decisions, key rotations, checkpoints) takes an
`AuditSink` and calls `record()`. The CLI and the trainer hand in a sink that talks to the local
agent, or the embedded audit log when no agent runs (`trainguard.agent.api.client.open_sink`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["AuditSink", "NullSink"]


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
