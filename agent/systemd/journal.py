"""Log lines that journald and people can read.

Under systemd (``$JOURNAL_STREAM`` names the device and inode of our stderr) each line starts with
an sd-daemon priority prefix (``<3>`` for errors, sd-daemon(3)), which journald strips and stores
as the entry's priority, so `journalctl -p warning -u trainguard-agent` works and a critical
incident is not filed as "info". Elsewhere lines carry an ISO-8601 UTC timestamp. The unit sets
``SyslogIdentifier=trainguard-agent`` so entries are not tagged "python".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import IO

__all__ = ["PRIORITIES", "JournalFormatter", "TimestampFormatter", "log_handler", "under_journald"]

# logging level -> syslog priority (sd-daemon(3): 2 crit, 3 err, 4 warning, 5 notice, 6 info, 7 debug)
PRIORITIES: Mapping[int, int] = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _priority(levelno: int) -> int:
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` on every line (a traceback's lines keep the record's priority)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {super().format(record)}"
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class TimestampFormatter(logging.Formatter):
    """``2026-12-03T10:07:58Z WARNING name: message`` (UTC)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")


def under_journald(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """True when `stream` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def log_handler(stream: IO[str], environ: Mapping[str, str]) -> logging.Handler:
    """A handler for a long-running process: journal priorities or UTC timestamps."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if under_journald(stream, environ) else TimestampFormatter())
    return handler
