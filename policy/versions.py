"""Monotonic versions of the policy and the user store, anchored in the audit log.

Every signed policy carries a version in its signature line and the user store a change
counter (`UserStore.version`). Each change records ``state-version`` {"name", "version"} in the
audit log, which is hash-chained, signed at a cadence and copied off-node. `AccessControl`
refuses a policy file or user store older than the newest version recorded there: putting an
older signed copy back (to undo a revocation, or to bring back a removed admin) is tampering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["VERSION_EVENT", "AuditLedger", "NoLedger", "VersionLedger"]

VERSION_EVENT = "state-version"


class VersionLedger(Protocol):
    """The newest version recorded for a piece of state (0 when none)."""

    def highest(self, name: str) -> int: ...


class _Entries(Protocol):
    def entries(self, since: float | None = None, kind: str | None = None) -> Iterable[Any]: ...


class AuditLedger:
    """A ledger read from an audit log (`trainguard.evidence.AuditLog`)."""

    def __init__(self, log: _Entries) -> None:
        self._log = log

    def highest(self, name: str) -> int:
        best = 0
        for entry in self._log.entries(kind=VERSION_EVENT):
            data: Mapping[str, Any] = entry.data
            version = data.get("version")
            if data.get("name") == name and isinstance(version, int):
                best = max(best, version)
        return best


class NoLedger:
    """No audit log to compare with (tests, `init` of a fresh home): nothing is refused."""

    def highest(self, name: str) -> int:
        return 0
