"""Client of the node agent's API: the unix socket on this node, or mTLS TCP to a remote agent.

Wire format (both transports): one JSON object per line (UTF-8, ``\\n``-terminated) in each
direction. Requests are ``{"op": NAME, ...params}``; replies ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE, "code": CODE}``. Ops: ``status``, ``event`` (kind, actor,
data), ``events`` (a list of them), ``incident`` (kind, severity, evidence), ``incidents`` (limit),
``export`` (first_seq, last_seq). A request line is capped (1 MiB by default).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.core.errors import AccessDenied, AgentError
from trainguard.core.home import Home

__all__ = ["AgentClient", "AgentRequestError", "AgentUnavailable"]

_MAX_REPLY = 256 << 20


class AgentUnavailable(AgentError):
    """No agent answers on the socket (not running, or the socket is stale)."""

    default_tip = "start it with `trainguard agent run` (or `systemctl start trainguard-agent`)"


class AgentRequestError(AgentError):
    """The agent refused or failed a request."""


class AgentClient:
    """A synchronous client. Thread-safe (one request at a time per client)."""

    def __init__(self, home: Home | None = None, *, timeout: float = 30.0) -> None:
        self._unix_path: Path | None = home.agent_socket if home is not None else None
        self._tcp: tuple[str, int] | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._server_name: str | None = None
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    @classmethod
    def remote(
        cls,
        url: str,
        cert: Path,
        key: Path,
        ca: Path,
        *,
        timeout: float = 30.0,
        server_name: str | None = None,
    ) -> AgentClient:
        """A client for a remote agent at ``tls://HOST:PORT`` (or ``HOST:PORT``), TLS 1.3 with
        this client's certificate; the server must present a certificate from `ca`."""
        host, port = _parse_url(url)
        client = cls(None, timeout=timeout)
        client._tcp = (host, port)
        client._ssl_ctx = _client_context(cert, key, ca)
        client._server_name = server_name or host
        return client

    # ---- transport -----------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            if self._tcp is not None:
                raw = socket.create_connection(self._tcp, timeout=self._timeout)
                assert self._ssl_ctx is not None
                sock: socket.socket = self._ssl_ctx.wrap_socket(
                    raw, server_hostname=self._server_name
                )
            else:
                if self._unix_path is None or not self._unix_path.exists():
                    raise AgentUnavailable("the trainguard agent is not running (no socket)")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(str(self._unix_path))
        except ssl.SSLError as exc:
            raise AgentUnavailable(
                "TLS handshake with the agent failed",
                tip="check the client certificate, key and CA (`trainguard pki list`)",
            ) from exc
        except OSError as exc:
            raise AgentUnavailable(
                f"cannot reach the trainguard agent: {exc.strerror or exc}"
            ) from exc
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **params: Any) -> Any:
        """Send one request and return its result; raises `AgentRequestError` on refusal."""
        line = json.dumps({"op": op, **params}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            try:
                self._sock.sendall(line)
                reply = self._file.readline(_MAX_REPLY)
            except OSError as exc:
                self._close()
                raise AgentUnavailable(f"lost the connection to the agent: {exc}") from exc
            if not reply.endswith(b"\n"):
                self._close()
                raise AgentUnavailable("the agent closed the connection")
        try:
            msg = json.loads(reply)
        except ValueError as exc:
            raise AgentRequestError("the agent sent a malformed reply") from exc
        if not msg.get("ok"):
            if msg.get("code") == "denied":
                raise AccessDenied("the agent denied the request")
            raise AgentRequestError(f"the agent refused {op}: {msg.get('error', 'unknown error')}")
        return msg.get("result")

    # ---- operations ----------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            self.call("status")
        except AgentError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        return dict(self.call("status"))

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None:
        """`AuditSink.record`: returns once the agent has committed the entry."""
        self.call("event", kind=kind, actor=actor, data=dict(data))

    def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        return int(self.call("event", kind=kind, actor=actor, data=dict(data))["seq"])

    def submit_incident(
        self, kind: str, severity: str, evidence: Mapping[str, Any]
    ) -> dict[str, Any]:
        return dict(self.call("incident", kind=kind, severity=severity, evidence=dict(evidence)))

    def recent_incidents(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.call("incidents", limit=limit))

    def export(self, first_seq: int = 1, last_seq: int | None = None) -> dict[str, Any]:
        """A log segment (entries first_seq..last_seq, or to the end) and its latest checkpoint;
        fetched in pages, since the agent caps one reply."""
        segment = dict(self.call("export", first_seq=first_seq, last_seq=last_seq))
        entries = list(segment.get("entries", []))
        while entries:
            nxt = int(entries[-1]["seq"]) + 1
            if last_seq is not None and nxt > last_seq:
                break
            page = dict(self.call("export", first_seq=nxt, last_seq=last_seq))
            if not page.get("entries"):
                break
            entries.extend(page["entries"])
            segment["checkpoint"] = page.get("checkpoint") or segment.get("checkpoint")
        segment["entries"] = entries
        return segment


def _parse_url(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise AgentRequestError(f"bad agent address {url!r}", tip="use tls://HOST:PORT")
    return host.strip("[]"), int(port)


def _client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    try:
        from trainguard.crypto import pki as pki_module
    except ImportError:
        pki_module = None  # type: ignore[assignment]
    pki = pki_module
    factory = getattr(pki, "client_context", None) if pki is not None else None
    if factory is not None:
        return factory(cert=cert, key=key, ca=ca)  # type: ignore[no-any-return]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
