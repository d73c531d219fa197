"""Follow an audit log by sequence number: every committed entry once, in order.

The log assigns `seq` under its write lock and commits whole transactions, so a reader that asks
for ``seq > last`` never sees entry N+1 before N: resuming from the last sequence number a
consumer kept skips nothing and repeats nothing. A poll is one indexed range query on the primary
key (``WHERE seq > ? ORDER BY seq LIMIT n``), cheap enough to run every fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from trainguard.evidence.audit_chain import AuditEntry

__all__ = ["AuditReader", "AuditStream", "write_stream"]


class AuditReader(Protocol):
    def entries(
        self, since: float | None = None, kind: str | None = None, *, after_seq: int = 0,
        limit: int | None = None,
    ) -> Any: ...


class AuditStream:
    """A cursor over one audit log; `after_seq` is the last sequence number already read."""

    def __init__(
        self, log: AuditReader, *, after_seq: int = 0, batch: int = 1000, kind: str | None = None
    ) -> None:
        """`kind`: only entries of this kind (exact, or a prefix ending in ``*`` / ``.``)."""
        if after_seq < 0:
            raise ValueError("after_seq must be >= 0")
        self.log = log
        self.after_seq = after_seq
        self.batch = batch
        self.kind = kind

    def _read(self, limit: int | None = None) -> list[AuditEntry]:
        return list(
            self.log.entries(kind=self.kind, after_seq=self.after_seq, limit=limit or self.batch)
        )

    def poll(self, limit: int | None = None) -> list[AuditEntry]:
        """Entries committed since the last poll (at most `limit`, default one batch)."""
        entries = self._read(limit)
        if entries:
            self.after_seq = entries[-1].seq
        return entries

    def follow(
        self, stopped: Callable[[], bool], sleep: Callable[[float], None], interval: float = 0.5
    ) -> Iterator[AuditEntry]:
        """Yield entries as they are committed until `stopped()`; waits with `sleep(interval)`
        when there is nothing new. `after_seq` is always the last entry yielded."""
        while not stopped():
            batch = self._read()
            for entry in batch:
                yield entry
                self.after_seq = entry.seq
                if stopped():
                    return
            if len(batch) < self.batch:
                sleep(interval)


def write_stream(
    stream: AuditStream,
    out: TextIO,
    render: Callable[[AuditEntry], str | None],
    *,
    follow: bool,
    stopped: Callable[[], bool],
    sleep: Callable[[float], None],
    interval: float = 0.5,
) -> int:
    """Write one line per entry that `render` has a line for, each flushed at once; without
    `follow`, stop at the end of the log. Returns the number of lines written."""
    entries: Iterator[AuditEntry] = (
        stream.follow(stopped, sleep, interval) if follow else _to_end(stream)
    )
    written = 0
    for entry in entries:
        line = render(entry)
        if line is None:
            continue
        out.write(line + "\n")
        out.flush()
        written += 1
    return written


def _to_end(stream: AuditStream) -> Iterator[AuditEntry]:
    while batch := stream.poll():
        yield from batch
