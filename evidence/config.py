"""Settings of the evidence area: `[audit]` (checkpoint cadence) and `[incidents]` (dedup and
rate limits). Both sections used to be keys of `[agent]`; `trainguard.core.config` still reads
them there (a moved key keeps working and is logged once as deprecated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["AuditConfig", "IncidentsConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """How often the audit log appends a signed checkpoint."""

    SECTION: ClassVar[str] = "audit"

    checkpoint_every: int = 1000  # audit entries between signed checkpoints
    checkpoint_seconds: float = 300.0  # ... or at most this long

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.checkpoint_every < 1:
            problems.append("checkpoint_every must be >= 1")
        if self.checkpoint_seconds <= 0:
            problems.append("checkpoint_seconds must be > 0")
        return problems


@dataclass(frozen=True)
class IncidentsConfig:
    """Incident dedup and rate limits."""

    SECTION: ClassVar[str] = "incidents"

    dedup_seconds: float = 300.0  # same kind + same evidence key within this window = one incident
    rate_limit: int = 60  # at most this many incidents ...
    rate_window_seconds: float = 60.0  # ... per window; the rest are counted and audited as dropped

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.dedup_seconds < 0:
            problems.append("dedup_seconds must be >= 0")
        if self.rate_limit < 1:
            problems.append("rate_limit must be >= 1")
        if self.rate_window_seconds <= 0:
            problems.append("rate_window_seconds must be > 0")
        return problems
