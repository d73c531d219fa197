"""The embedded audit log: the home's `AuditLog` opened in this process when no agent runs.

It is the same file the agent writes (the agent is the one writer while it runs; the embedded
log takes the same SQLite write lock), so evidence is never split in two places. Choosing between
the agent and this log is `trainguard.agent.api.client.open_sink`.
"""

from __future__ import annotations

import logging

from trainguard.core.config import Config
from trainguard.core.home import Home
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.config import AuditConfig

__all__ = ["open_embedded_log"]

log = logging.getLogger(__name__)


def _audit_config(config: Config) -> AuditConfig:
    return config.section(AuditConfig)


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
    cadence = _audit_config(config)
    return AuditLog.open(
        home.audit_db,
        config.node.name,
        signer,
        checkpoint_every=cadence.checkpoint_every,
        checkpoint_seconds=cadence.checkpoint_seconds,
    )
