"""trainguard.agent.api: the agent's API (server, who may call it, and the client every other area
uses to reach an agent)."""

from __future__ import annotations

from trainguard.agent.api.client import (
    AgentClient,
    AgentRequestError,
    AgentSink,
    AgentUnavailable,
    open_sink,
    report_incident,
)

__all__ = [
    "AgentClient",
    "AgentRequestError",
    "AgentSink",
    "AgentUnavailable",
    "open_sink",
    "report_incident",
]
