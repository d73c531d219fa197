"""Where the CLI and the trainer send evidence: the running agent, else the embedded audit log.

Both paths end in the same `AuditLog` file (the agent is the one writer while it runs; the
embedded log takes the same SQLite write lock), so evidence is never split in two places.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from trainguard.agent.audit_log import AuditLog
from trainguard.agent.client import AgentClient, AgentUnavailable
from trainguard.agent.config import AgentConfig
from trainguard.core.audit import AuditSink
from trainguard.core.config import Config
from trainguard.core.home import Home

__all__ = ["AgentSink", "open_embedded_log", "open_sink"]

log = logging.getLogger(__name__)


def _agent_config(config: Config) -> AgentConfig:
    try:
        section = config.section("agent")
    except KeyError:
        return AgentConfig()
    return section if isinstance(section, AgentConfig) else AgentConfig()


def open_embedded_log(home: Home, config: Config) -> AuditLog:
    """The home's audit log opened in this process, signing checkpoints with the node key
    when this user can read it.

    Raises:
        HomeError: `home` was never made by `trainguard init` (nothing is created then).
        AuditLogUnreadable: state/audit.db is not an audit log (exit 2, restore from backup).
    """
    from trainguard.core.errors import TrainguardError
    from trainguard.crypto.signing import SigningKey

    # AuditLog.open creates state/ and audit.db: never do that in a folder that is no home.
    home.require()
    signer = None
    if home.node_signing_key.exists():
        try:
            signer = SigningKey.load(home.node_signing_key)
        except TrainguardError as exc:
            log.warning("audit checkpoints unsigned: %s", exc.message)
    agent = _agent_config(config)
    return AuditLog.open(
        home.audit_db,
        config.node.name,
        signer,
        checkpoint_every=agent.checkpoint_every,
        checkpoint_seconds=agent.checkpoint_seconds,
    )


class AgentSink:
    """Records through the running agent; falls back to the embedded log if the agent goes away.
    Delivery is at least once: an event whose reply was lost is written again locally, because
    a duplicate entry is better evidence than a missing one."""

    def __init__(self, client: AgentClient, home: Home, config: Config) -> None:
        self._client = client
        self._home = home
        self._config = config
        self._fallback: AuditLog | None = None

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None:
        if self._fallback is None:
            try:
                self._client.record(kind, actor, data)
                return
            except AgentUnavailable as exc:
                log.warning(
                    "agent unreachable (%s); writing to the embedded audit log", exc.message
                )
                self._fallback = open_embedded_log(self._home, self._config)
        self._fallback.record(kind, actor, data)

    def close(self) -> None:
        self._client.close()
        if self._fallback is not None:
            self._fallback.close()


def open_sink(home: Home, config: Config) -> AuditSink:
    """The running agent over its unix socket when it answers, else the embedded audit log.
    Raises `HomeError` (exit 2, nothing created) when `home` does not exist."""
    home.require()
    if home.agent_socket.exists():
        client = AgentClient(home, timeout=30.0)
        if client.ping():
            return AgentSink(client, home, config)
        client.close()
    return open_embedded_log(home, config)
