"""Settings of the evidence area: `[audit]` (checkpoint cadence) and `[incidents]` (dedup and
rate limits). Both sections used to be keys of `[agent]`; `trainguard.core.config` still reads
them there (a moved key keeps working and is logged once as deprecated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from trainguard.evidence.audit_chain import Cadence

__all__ = ["AuditConfig", "IncidentsConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """How often the audit log appends a signed checkpoint, how much unsigned history
    `audit verify` tolerates, and the witness peer that keeps copies of the checkpoints."""

    SECTION: ClassVar[str] = "audit"

    checkpoint_every: int = 1000  # audit entries between signed checkpoints
    checkpoint_seconds: float = 300.0  # ... or at most this long
    # `audit verify` fails a run of entries without a signed checkpoint longer than this;
    # 0 derives it: 2 x checkpoint_every entries, 2 x checkpoint_seconds + 60 s (slack for a
    # busy writer and the agent's timer).
    max_unsigned_entries: int = 0
    max_unsigned_seconds: float = 0.0
    # A peer agent ("HOST:PORT", its mTLS API) that keeps copies of this node's signed
    # checkpoints; "" for none. `audit verify` and `audit report` compare the log with them.
    witness: str = ""

    def cadence(self) -> Cadence:
        """The verification cadence, derived from the checkpoint cadence unless set."""
        from trainguard.evidence.audit_chain import Cadence

        derived = Cadence.derived(self.checkpoint_every, self.checkpoint_seconds)
        return Cadence(
            max_entries=self.max_unsigned_entries or derived.max_entries,
            max_seconds=self.max_unsigned_seconds or derived.max_seconds,
        )

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.checkpoint_every < 1:
            problems.append("checkpoint_every must be >= 1")
        if self.checkpoint_seconds <= 0:
            problems.append("checkpoint_seconds must be > 0")
        if self.max_unsigned_entries < 0:
            problems.append("max_unsigned_entries must be >= 0 (0 derives it)")
        elif 0 < self.max_unsigned_entries < self.checkpoint_every:
            problems.append("max_unsigned_entries must be >= checkpoint_every")
        if self.max_unsigned_seconds < 0:
            problems.append("max_unsigned_seconds must be >= 0 (0 derives it)")
        elif 0 < self.max_unsigned_seconds < self.checkpoint_seconds:
            problems.append("max_unsigned_seconds must be >= checkpoint_seconds")
        if self.witness:
            host, sep, port = self.witness.removeprefix("tls://").rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"witness must be HOST:PORT, not {self.witness!r}")
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
