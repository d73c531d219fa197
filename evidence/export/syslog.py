"""Syslog (RFC 5424) over UDP, TCP or a unix socket.

One record per message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [meta sequenceId="SEQ"] BOM MSG

PRI = facility * 8 + severity (an incident's severity: critical 2, high 3, medium 4, low 5; a
denied access 5; everything else 6 informational); TIMESTAMP is the entry's time in UTC;
MSGID is the audit kind; ``meta sequenceId`` (RFC 5424 section 7.3.1) is the audit sequence
number; MSG is the JSON record, UTF-8 after a BOM.

Transports: ``udp://HOST:PORT`` (one datagram per message; UDP loses what a receiver does not
get, and only a refused port is noticed), ``tcp://HOST:PORT`` (octet-counting framing, RFC 6587:
``LEN SP MESSAGE``; a connection the receiver closed is noticed before the next send, and the
record stays queued until a fresh connection takes it), ``unix:///dev/log`` (a datagram socket,
like the local syslog daemon's).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import select
import socket
from urllib.parse import urlsplit

from trainguard.evidence.audit_chain import AuditEntry
from trainguard.evidence.export.interface import ExportConfigError, Exporter, ExportUnavailable

__all__ = ["FACILITIES", "SyslogExporter", "format_rfc5424", "parse_target"]

FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10, "audit": 13,
    **{f"local{i}": 16 + i for i in range(8)},
}
_INCIDENT_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
_NOTICE, _INFO = 5, 6
_DENIED = frozenset({"access-denied", "api.denied", "login-failed", "mfa-failed", "session-refused"})
_BOM = b"\xef\xbb\xbf"


def _severity(entry: AuditEntry) -> int:
    if entry.kind == "incident":
        return _INCIDENT_SEVERITY.get(str(entry.data.get("severity")), 4)
    return _NOTICE if entry.kind in _DENIED else _INFO


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the nil value."""
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def format_rfc5424(
    record: bytes, entry: AuditEntry, *, facility: int, app_name: str, hostname: str, procid: str
) -> bytes:
    """The RFC 5424 message for `record` (no framing)."""
    pri = facility * 8 + _severity(entry)
    stamp = dt.datetime.fromtimestamp(entry.time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = (
        f"<{pri}>1 {stamp} {_field(hostname, 255)} {_field(app_name, 48)} "
        f"{_field(procid, 128)} {_field(entry.kind, 32)} [meta sequenceId=\"{entry.seq}\"] "
    )
    return header.encode("ascii") + _BOM + record


def parse_target(target: str) -> tuple[str, str | tuple[str, int]]:
    """``udp://H:P`` / ``tcp://H:P`` / ``unix:///path`` -> (scheme, address)."""
    parts = urlsplit(target)
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ExportConfigError(f"syslog target {target!r}: unix:// needs an absolute path")
        return "unix", parts.path
    if parts.scheme in ("udp", "tcp"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ExportConfigError(f"syslog target {target!r} must name a host and a port")
        return parts.scheme, (parts.hostname, port)
    raise ExportConfigError(
        f"syslog target {target!r}: use udp://HOST:PORT, tcp://HOST:PORT or unix:///dev/log"
    )


class SyslogExporter(Exporter):
    def __init__(
        self,
        target: str,
        *,
        facility: int = FACILITIES["authpriv"],
        app_name: str = "trainguard",
        hostname: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.scheme, self.address = parse_target(target)
        self.name = f"syslog:{target}"
        self.facility = facility
        self.app_name = app_name
        self.hostname = hostname or socket.gethostname()
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is not None and self.scheme == "tcp" and _peer_closed(self._sock):
            self.close()
        if self._sock is None:
            family = socket.AF_UNIX if self.scheme == "unix" else socket.AF_INET
            if self.scheme != "unix" and ":" in str(self.address[0]):
                family = socket.AF_INET6
            kind = socket.SOCK_STREAM if self.scheme == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(family, kind)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def frame(self, record: bytes, entry: AuditEntry) -> bytes:
        return format_rfc5424(
            record, entry, facility=self.facility, app_name=self.app_name,
            hostname=self.hostname, procid=str(os.getpid()),
        )

    def send(self, payload: bytes) -> None:
        message = payload
        try:
            sock = self._connect()
            if self.scheme == "tcp":
                sock.sendall(str(len(message)).encode() + b" " + message)
            else:
                sock.send(message)
        except OSError as exc:
            self.close()
            raise ExportUnavailable(f"syslog {self.scheme} send failed: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """True when the receiver closed (or reset) the connection: it is readable and has no data.
    A syslog receiver never writes, so anything readable means it is gone."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except OSError:
        return True
