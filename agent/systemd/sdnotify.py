"""The systemd notification protocol (sd_notify(3)) in a few lines: datagrams of
``KEY=VALUE\\n`` lines to the unix socket named by $NOTIFY_SOCKET (``@`` = abstract namespace).

Only the CLI entry point reads the environment; it builds a `Notifier` from $NOTIFY_SOCKET,
$WATCHDOG_USEC and $WATCHDOG_PID and hands it to the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1. A no-op without a socket."""

    def __init__(self, socket_path: str | None = None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.sent: list[str] = []  # what went out, for `agent status` and tests

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """Read $NOTIFY_SOCKET / $WATCHDOG_USEC / $WATCHDOG_PID (entry points only)."""
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(environ.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Ping at half the watchdog timeout, as sd_watchdog_enabled(3) recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, **fields: str) -> bool:
        """Send one notification, e.g. ``notify(READY="1", STATUS="running")``."""
        if self.socket_path is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        addr = self.socket_path
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(addr)
                sock.sendall(msg.encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        self.sent.append(msg)
        if len(self.sent) > 100:
            del self.sent[:50]
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY="1", **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def stopping(self) -> bool:
        return self.notify(STOPPING="1")

    def reloading(self) -> bool:
        return self.notify(RELOADING="1")
