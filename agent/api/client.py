"""Client of the node agent's API: the unix socket on this node, or mTLS TCP to a remote agent.

This is the one way other areas (the CLI, the trainer, the report) reach an agent: `AgentClient`
for requests, `open_sink` for evidence (the agent when it answers, else the embedded audit log)
and `report_incident` for incidents (likewise).

Wire format (both transports): one JSON object per line (UTF-8, ``\\n``-terminated) in each
direction. Requests are ``{"op": NAME, ...params}``; replies ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE, "code": CODE}``. Ops: ``status``, ``event`` (kind, actor,
data), ``events`` (a list of them), ``incident`` (kind, severity, evidence), ``incidents`` (limit),
``export`` (first_seq, last_seq). A request line is capped (1 MiB by default).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.core.config import Config
from trainguard.core.errors import AccessDenied, AgentError
from trainguard.core.home import Home
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.embedded import open_embedded_log
from trainguard.evidence.incidents import (
    Incident,
    IncidentKind,
    Severity,
    parse_kind,
    parse_severity,
)
from trainguard.evidence.sink import AuditSink

__all__ = [
    "AgentClient",
    "AgentRequestError",
    "AgentSink",
    "AgentUnavailable",
    "open_sink",
    "report_incident",
]

log = logging.getLogger(__name__)

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


class AgentSink:
    """Records through the running agent; falls back to the embedded log if the agent goes away.
    Delivery is at least once: an event whose reply was lost is written again locally, because
    a duplicate entry is better evidence than a missing one."""

    def __init__(self, client: AgentClient, home: Home, config: Config) -> None:
        self._client = client
        self._home = home
        self._config = config
        self._fallback: AuditLog | None = None

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None:
        if self._fallback is None:
            try:
                self._client.record(kind, actor, data)
                return
            except AgentUnavailable as exc:
                log.warning(
                    "agent unreachable (%s); writing to the embedded audit log", exc.message
                )
                self._fallback = open_embedded_log(self._home, self._config)
        self._fallback.record(kind, actor, data)

    def close(self) -> None:
        self._client.close()
        if self._fallback is not None:
            self._fallback.close()


def open_sink(home: Home, config: Config) -> AuditSink:
    """The running agent over its unix socket when it answers, else the embedded audit log.
    Raises `HomeError` (exit 2, nothing created) when `home` does not exist."""
    home.require()
    if home.agent_socket.exists():
        client = AgentClient(home, timeout=30.0)
        if client.ping():
            return AgentSink(client, home, config)
        client.close()
    return open_embedded_log(home, config)


def report_incident(
    home: Home,
    config: Config,
    kind: IncidentKind | str,
    severity: Severity | str,
    evidence: Mapping[str, Any],
) -> Incident:
    """Report to the running agent, or (no agent) record and respond in this process."""
    from trainguard.evidence.response.engine import IncidentEngine

    k, sev = parse_kind(kind), parse_severity(severity)
    if home.agent_socket.exists():
        try:
            with AgentClient(home) as client:
                return Incident.from_dict(client.submit_incident(k.value, sev.value, evidence))
        except AgentUnavailable:
            log.info("agent not reachable; handling the incident in this process")
    with open_embedded_log(home, config) as audit:
        engine = IncidentEngine.from_config(home, config, audit)
        try:
            return engine.report(k, sev, evidence)
        finally:
            engine.close()
