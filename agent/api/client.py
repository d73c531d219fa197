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
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.core.config import Config
from trainguard.core.errors import AccessDenied, AgentError, TrainguardError
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
    "agent_socket",
    "home_readable",
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


def agent_socket(home: Home | None, environ: Mapping[str, str] | None = None) -> Path:
    """The unix socket of this node's agent, as a client finds it (`agent.config.client_socket`):
    from the home's config when this account can read it, else $TRAINGUARD_SOCKET, else the
    systemd default."""
    from trainguard.agent.config import AgentConfig, client_socket
    from trainguard.core.config import load_config

    env = os.environ if environ is None else environ
    if home is not None and home_readable(home):
        try:
            cfg = load_config(home.config_path, env).section(AgentConfig)
        except TrainguardError:
            cfg = AgentConfig()
        return client_socket(home.root, cfg, env)
    return client_socket(None, None, env)


def home_readable(home: Home) -> bool:
    """Whether this account can use the home itself (else it must go through the agent). A
    home that plainly does not exist counts as readable, so the caller hears "no home"."""
    if not os.access(home.root, os.F_OK) and os.access(home.root.parent, os.X_OK):
        return True
    return os.access(home.root, os.R_OK | os.X_OK) and (
        not home.config_path.exists() or os.access(home.config_path, os.R_OK)
    )


class AgentClient:
    """A synchronous client. Thread-safe (one request at a time per client)."""

    def __init__(
        self,
        home: Home | None = None,
        *,
        timeout: float = 30.0,
        socket_path: Path | None = None,
    ) -> None:
        self._unix_path: Path | None = socket_path or (
            agent_socket(home) if home is not None else None
        )
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
    if agent_socket(home).exists():
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
    if agent_socket(home).exists():
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


class AgentGate:
    """Login and authorization through the agent, for an account that cannot read the home
    (`trainguard.agent.api.sessions` is the other side). It mirrors the part of
    `trainguard.policy.AccessControl` the CLI uses (`login`, `require`, `current_session`), so a
    command does not care which one it has. The session token is stored in this account's
    config folder like a local one, but only the agent can verify or refresh it."""

    def __init__(
        self, client: AgentClient, sessions: Any, *, step_up_seconds: int | None = None
    ) -> None:
        self.client = client
        self.sessions = sessions  # a policy.sessions.SessionStore (this account's token file)
        self.step_up_seconds = step_up_seconds

    def _call(self, op: str, **params: Any) -> dict[str, Any]:
        from trainguard.agent.api.sessions import REFUSALS
        from trainguard.policy.errors import Denied

        result = dict(self.client.call(op, **params))
        refused = result.get("refused")
        if isinstance(refused, dict):
            cls = REFUSALS.get(str(refused.get("type")), Denied)
            exc = cls.__new__(cls)
            TrainguardError.__init__(exc, str(refused.get("message")), tip=refused.get("tip"))
            exc.reason = str(refused.get("reason") or "")  # type: ignore[attr-defined]
            raise exc
        return result

    def login(self, name: str, code: str) -> Any:
        from trainguard.policy.sessions import Session

        result = self._call("auth.login", user=name, code=code)
        token = str(result["token"]).encode()
        self.sessions.save_token(token)
        return Session(**json.loads(token)["payload"])

    def current_session(self) -> Any:
        from trainguard.policy.sessions import Session

        token = self.sessions.read_token()
        self._call("auth.whoami", token=token.decode())
        return Session(**json.loads(token)["payload"])

    def require(
        self,
        action: str,
        resource: str,
        domain: str,
        *,
        otp: str | None = None,
        new_domain: bool = False,
    ) -> Any:
        from trainguard.policy.decision import Decision

        token = self.sessions.read_token().decode()
        params: dict[str, Any] = {
            "token": token, "action": action, "resource": resource, "domain": domain,
            "new_domain": new_domain,
        }
        if otp:
            params["otp"] = otp
        result = self._call("auth.authorize", **params)
        if result.get("token") and result["token"] != token:
            self.sessions.save_token(str(result["token"]).encode())
        return Decision(**result["decision"])

    def close(self) -> None:
        self.client.close()


def authorize(
    home: Home,
    config: Config,
    action: str,
    resource: str,
    domain: str,
    audit: AuditSink,
    *,
    otp: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Authorize this account's logged-in user for one action: in this process when the home
    is readable (`policy.authorize_cli`), else through the agent (`AgentGate`). Returns the
    `Decision`; raises `AccessDenied` subclasses (exit 1) or usage errors (exit 2)."""
    from trainguard.policy import authorize_cli
    from trainguard.policy.sessions import SessionStore, default_sessions_dir

    if home_readable(home):
        return authorize_cli(home, config, action, resource, domain, audit, otp=otp,
                             environ=environ)
    node = config.node
    sessions = SessionStore(default_sessions_dir(environ), cluster=node.cluster, node=node.name)
    with AgentClient(home) as client:
        return AgentGate(client, sessions).require(action, resource, domain, otp=otp)
