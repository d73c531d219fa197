"""What every exporter implements, and the formats an audit entry can be written in.

An exporter frames one already-formatted record (bytes, no trailing newline) into the payload
that is queued, then stores or sends that payload, or raises `ExportUnavailable` (an `OSError`: the destination is down, full or
unreachable), in which case the record stays in the durable queue and is sent again later, in
order. Formatting is separate (`StreamFormat.render`), so the CLI stream and every exporter
write exactly the same bytes for the same entry.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from typing import Any

from trainguard.core.errors import UsageError
from trainguard.evidence.audit_chain import AuditEntry

__all__ = ["ExportConfigError", "ExportUnavailable", "Exporter", "StreamFormat"]


class ExportUnavailable(OSError):
    """The destination cannot take records now; they stay queued and are retried."""


class ExportConfigError(UsageError):
    """An `[export]` destination is not usable as configured."""

    default_tip = "fix the [export] section of trainguard.toml (see the README, 'Event stream for SIEMs')"


class Exporter(ABC):
    """One destination for formatted audit records."""

    name: str

    def frame(self, record: bytes, entry: AuditEntry) -> bytes:
        """What is queued for `record` (the rendering of `entry`): the message as it will be
        stored or sent. Framed when queued, so a retry sends the very same bytes."""
        return record

    @abstractmethod
    def send(self, payload: bytes) -> None:
        """Store or send one framed payload; raise `ExportUnavailable` to retry it later."""

    def close(self) -> None:  # noqa: B027 - most exporters hold nothing between sends
        """Release sockets or files."""


class StreamFormat(enum.StrEnum):
    """How an audit entry is written for machines: one JSON object per entry."""

    JSONL = "jsonl"  # the entry as it is in the log, `time` as ISO-8601 UTC
    OCSF = "ocsf"  # an OCSF 1.x event; entries with no OCSF class render as nothing

    def to_object(self, entry: AuditEntry, *, product_version: str) -> dict[str, Any] | None:
        if self is StreamFormat.JSONL:
            from trainguard.evidence.export.jsonl import entry_object

            return entry_object(entry)
        from trainguard.evidence.export.ocsf import to_ocsf

        return to_ocsf(entry, product_version=product_version)

    def render(self, entry: AuditEntry, *, product_version: str) -> bytes | None:
        """One line of compact JSON (no newline), or None when this format has no event for
        `entry` (OCSF maps incidents and access decisions only)."""
        obj = self.to_object(entry, product_version=product_version)
        if obj is None:
            return None
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
