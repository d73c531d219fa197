"""JSON lines: one audit entry per line, as the log holds it, with `time` as ISO-8601 UTC.

The fields are the entry's own (`seq`, `node`, `actor`, `kind`, `data`, `prev_hash`, `hash`),
so a SIEM can resume by `seq` and cross-check an entry against `trainguard audit verify`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from trainguard.evidence.audit_chain import AuditEntry

__all__ = ["entry_object", "iso_time"]


def iso_time(t: float) -> str:
    """``2026-01-31T12:00:00.123456Z``: UTC, microseconds, a Z suffix."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_object(entry: AuditEntry) -> dict[str, Any]:
    return {**entry.to_dict(), "time": iso_time(entry.time)}
