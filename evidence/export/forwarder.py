"""Agent-side forwarding of the audit log to the `[export]` destinations, outage-proof.

Each destination has its own durable queue (the webhook queue's `DeliveryQueue`, a SQLite file
in WAL mode with synchronous=FULL, at ``state/export/<destination>.queue.db``) and its own
cursor (``state/export/<destination>.cursor``: the last audit sequence number queued). A cycle:

1. reads the entries after the cursor (`AuditStream`), renders each in the destination's format,
   frames it (a syslog header, a newline) and queues it under the key ``seq:<N>`` (queueing a key
   twice is a no-op), then moves the cursor: a crash between the two queues nothing twice;
2. sends what is due, oldest first, and stops at the first failure: the destination is retried
   after ``retry_base_seconds * 2**failures`` (capped), from that same record, so records arrive
   in order and an outage of any length loses nothing.

A fresh destination starts at the beginning of the log. The cursor and the queues survive
restarts; delivered rows stay in the queue file for `DELIVERED_KEEP_SECONDS` (7 days) as a record
of what was sent, then are pruned (hourly), so the queue files stay small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.evidence.export.config import ExportConfig
from trainguard.evidence.export.interface import Exporter, StreamFormat
from trainguard.evidence.export.stream import AuditReader, AuditStream
from trainguard.evidence.response.queue import DeliveryQueue

__all__ = ["Destination", "ExportForwarder", "product_version"]

log = logging.getLogger(__name__)

DELIVERED_KEEP_SECONDS = 7 * 86400
_PRUNE_EVERY_SECONDS = 3600.0


def product_version() -> str:
    try:
        return version("trainguard")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Destination:
    """One exporter with its format, queue, cursor file and retry state."""

    key: str
    exporter: Exporter
    format: StreamFormat
    queue: DeliveryQueue
    cursor_path: Path
    failures: int = 0
    retry_at: float = 0.0
    stream: AuditStream | None = field(default=None, repr=False)

    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def save_cursor(self, seq: int) -> None:
        write_private(self.cursor_path, f"{seq}\n".encode())


class ExportForwarder:
    """Feeds the configured exporters from the audit log, by sequence number."""

    def __init__(
        self,
        audit: AuditReader,
        destinations: list[Destination],
        *,
        clock: Callable[[], float] = time.time,
        base_seconds: float = 2.0,
        max_seconds: float = 300.0,
        max_per_cycle: int = 5000,
    ) -> None:
        self.audit = audit
        self.destinations = destinations
        self._clock = clock
        self._base = base_seconds
        self._max = max_seconds
        self.max_per_cycle = max_per_cycle
        self._version = product_version()
        self._pruned_at = float("-inf")
        for d in destinations:
            d.stream = AuditStream(audit, after_seq=d.cursor())

    @classmethod
    def from_config(
        cls, home: Home, config: ExportConfig, audit: AuditReader, *,
        clock: Callable[[], float] = time.time,
    ) -> ExportForwarder | None:
        """The forwarder for `config`, or None when no destination is configured."""
        if not config.enabled:
            return None
        from trainguard.evidence.export.file import RotatingFileExporter
        from trainguard.evidence.export.syslog import FACILITIES, SyslogExporter

        root = home.state_dir / "export"
        made: list[tuple[str, Exporter, str]] = []
        if config.file:
            path = Path(config.file)
            path = path if path.is_absolute() else home.root / path
            made.append(("file", RotatingFileExporter(
                path, max_bytes=config.file_max_bytes, keep=config.file_keep), config.file_format))
        if config.syslog:
            made.append(("syslog", SyslogExporter(
                config.syslog, facility=FACILITIES[config.syslog_facility],
                app_name=config.syslog_app_name, timeout=config.syslog_timeout_seconds,
            ), config.syslog_format))
        destinations = [
            Destination(key, exporter, StreamFormat(fmt),
                        DeliveryQueue(root / f"{key}.queue.db", clock=clock),
                        root / f"{key}.cursor")
            for key, exporter, fmt in made
        ]
        return cls(audit, destinations, clock=clock, base_seconds=config.retry_base_seconds,
                   max_seconds=config.retry_max_seconds)

    def enqueue(self, d: Destination) -> int:
        """Queue what was appended since the destination's cursor; returns how many entries."""
        assert d.stream is not None
        read = 0
        while read < self.max_per_cycle:
            batch = d.stream.poll()
            if not batch:
                break
            for entry in batch:
                record = d.format.render(entry, product_version=self._version)
                if record is not None:
                    d.queue.enqueue(f"seq:{entry.seq}", d.exporter.name, d.exporter.frame(record, entry))
            d.save_cursor(batch[-1].seq)
            read += len(batch)
        return read

    def deliver(self, d: Destination, limit: int = 1000) -> int:
        """Send due records in order until one fails; returns how many were sent."""
        now = self._clock()
        if now < d.retry_at:
            return 0
        sent = 0
        for item in d.queue.due(limit):
            try:
                d.exporter.send(item.body)
            except OSError as exc:
                d.failures += 1
                wait = float(min(self._max, self._base * 2 ** min(d.failures - 1, 30)))
                d.retry_at = now + wait
                # Due again at once: the destination's own backoff decides, so the oldest
                # record is the first one sent when it is back.
                d.queue.mark_failed(item.id, str(exc), now)
                log.warning("export to %s failed (%s); %d queued, retry in %.0f s",
                            d.exporter.name, exc, d.queue.counts()["pending"], wait)
                break
            d.queue.mark_delivered(item.id)
            d.failures = 0
            sent += 1
        return sent

    def cycle(self, errors: list[str] | None = None) -> int:
        """Queue new entries and send what is due for every destination; a failure is appended
        to `errors` and never raised. Returns how many records were sent."""
        sent = 0
        now = self._clock()
        prune = now - self._pruned_at >= _PRUNE_EVERY_SECONDS
        if prune:
            self._pruned_at = now
        for d in self.destinations:
            try:
                self.enqueue(d)
                sent += self.deliver(d)
                if prune:
                    d.queue.prune(now - DELIVERED_KEEP_SECONDS)
            except Exception as exc:  # noqa: BLE001 - export must never stop the agent
                log.exception("export to %s failed", d.exporter.name)
                if errors is not None:
                    errors.append(f"export {d.key}: {type(exc).__name__}: {exc}")
        return sent

    def close(self) -> None:
        for d in self.destinations:
            d.exporter.close()
            d.queue.close()
