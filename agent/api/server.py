"""The agent's API server: a unix socket for this node and an optional TLS 1.3 mTLS TCP listener.

Wire format: see `trainguard.agent.api.client` (one JSON object per line each way). Every request is
authorized before it runs (`ApiAuthorizer`): on the unix socket the caller's uid comes from
SO_PEERCRED; on TCP the caller is the SPIFFE identity of its client certificate. Oversized,
malformed or unknown requests get an error reply and a log line; the connection handler never
lets an exception escape, so no request can stop the agent.

Submitted audit events are group-committed: concurrent requests are appended in one transaction
and each is acknowledged only after that commit. Their actor is the caller's authenticated
identity, their kinds must be on the caller kind's allow-list (`trainguard.agent.api.auth`), and
numbers must be finite: ``NaN``, ``Infinity`` and overflowing literals such as ``1e999`` are
refused with code ``non-finite-number`` (strict JSON consumers of the log cannot read them).
Incidents submitted here are recorded with the caller's provenance: the response engine never
acts on a remote report's paths or PIDs (`trainguard.evidence.response.verify`). Each remote
identity (node or user certificate), and each local account that is not the node's own, has a
request budget (`RemoteQuota`: a token bucket, one token per request and per event in a batch);
past it, requests get code ``rate-limited`` and one ``api.rate-limited`` entry per identity per
minute, so nobody else can flood this node's log or its event loop (root, the agent's uid and
``allowed_uids`` are not limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainguard.agent.api.auth import ApiAuthorizer, ApiPrincipal, CallerKind
from trainguard.agent.config import AgentConfig
from trainguard.core.errors import AccessDenied, AgentError, TrainguardError
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.incidents import AGENT_ACTOR, parse_kind
from trainguard.evidence.response.engine import IncidentEngine
from trainguard.evidence.response.verify import Provenance

__all__ = ["OPS", "AgentServer", "ApiError", "ApiExtension", "Handler", "RemoteQuota"]

log = logging.getLogger(__name__)

_MAX_BATCH = 512
_MAX_EVENTS_PER_REQUEST = 1000
_MAX_EXPORT = 20_000  # entries per export reply; the client pages
_MAX_NAME = 200
_REMOTE_RATE = 500.0  # tokens per second per remote identity
_REMOTE_BURST = 20_000.0
_NOTE_EVERY_SECONDS = 60.0
_IDLE_SECONDS = 300.0
_MAX_DEPTH = 32  # nesting of submitted data; deeper is refused, never a RecursionError
_KIND = re.compile(r"[a-z0-9][a-z0-9._:-]{0,199}")
_HANDSHAKE_SECONDS = 10.0

# op -> policy action it needs
OPS: dict[str, str] = {
    "status": "audit:read",
    "event": "audit:submit",
    "events": "audit:submit",
    "incident": "incident:submit",
    "incidents": "audit:read",
    "export": "audit:read",
}


Handler = Callable[[dict[str, Any], ApiPrincipal], Awaitable[Any]]


class ApiExtension(Protocol):
    """A group of ops served by another module (sessions, data keys, audit witness): each op
    maps to (the action the authorizer checks, its handler). The daemon injects extensions,
    so registering an op is one entry in the extension's table."""

    def ops(self) -> Mapping[str, tuple[str, Handler]]: ...


class RemoteQuota:
    """A token bucket per remote identity (refilled at `rate` per second up to `burst`)."""

    def __init__(
        self,
        rate: float = _REMOTE_RATE,
        burst: float = _REMOTE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._noted: dict[str, float] = {}

    def take(self, name: str, n: float = 1.0) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= n
        self._buckets[name] = (tokens - n if ok else tokens, now)
        return ok

    def should_note(self, name: str) -> bool:
        """True at most once per minute per identity (for the audit entry)."""
        now = self._clock()
        if now - self._noted.get(name, float("-inf")) < _NOTE_EVERY_SECONDS:
            return False
        self._noted[name] = now
        return True


class ApiError(AgentError):
    """A request the API refuses; `code` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Pending:
    event: tuple[str, str, dict[str, Any]]
    future: asyncio.Future[int]


class AgentServer:
    """Serves the API of one agent. Collaborators are injected; the daemon builds them."""

    def __init__(
        self,
        audit: AuditLog,
        engine: IncidentEngine,
        config: AgentConfig,
        authorizer: ApiAuthorizer,
        *,
        status: Callable[[], Mapping[str, Any]],
        extensions: Sequence[ApiExtension] = (),
    ) -> None:
        self.audit = audit
        self._extra: dict[str, tuple[str, Handler]] = {}
        for ext in extensions:
            for op, entry in ext.ops().items():
                if op in OPS or op in self._extra:
                    raise ValueError(f"API op {op!r} registered twice")
                self._extra[op] = entry
        self.engine = engine
        self.config = config
        self.authorizer = authorizer
        self._status = status
        self._servers: list[asyncio.AbstractServer] = []
        self._pending: asyncio.Queue[_Pending] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._incident_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {
            "requests": 0,
            "errors": 0,
            "denied": 0,
            "tls_rejected": 0,
            "rate_limited": 0,
        }
        self.quota = RemoteQuota()

    # ---- lifecycle -----------------------------------------------------------------------

    async def start_unix(self, path: os.PathLike[str] | str, *, shared: bool = False) -> None:
        """Listen on a unix socket: 0600 inside the home; with `shared` (a socket outside the
        private home, e.g. /run/trainguard) 0666, so any local account can ask: the authorizer
        decides from the caller's uid (SO_PEERCRED)."""
        path = os.fspath(path)
        if shared:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if len(path.encode()) > 100:
            raise AgentError(
                f"socket path too long for AF_UNIX: {path}", tip="use a shorter --home path"
            )
        _remove_stale_socket(path)
        old = os.umask(0o177)  # the socket is created 0600: no window with looser modes
        try:
            server = await asyncio.start_unix_server(
                self._handle_unix, path=path, limit=self.config.max_request_bytes + 1
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o666 if shared else 0o600)
        self._servers.append(server)
        self._ensure_writer()

    async def start_tcp(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
    ) -> int:
        """Listen on TCP; TLS is negotiated per connection so failed handshakes are audited.
        `ssl_context` may be a callable, asked once per connection (so a CRL written while the
        agent runs applies to the next handshake). Returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        contexts = ssl_context if callable(ssl_context) else (lambda: ssl_context)
        limit = self.config.max_request_bytes + 1

        def factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=limit)
            return _PausedOnConnect(
                reader,
                lambda proto, transport: self._track(
                    loop.create_task(self._handle_tcp(reader, proto, transport, contexts))
                ),
            )

        server = await loop.create_server(factory, host=host, port=port)
        self._servers.append(server)
        self._ensure_writer()
        return int(server.sockets[0].getsockname()[1])

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _ensure_writer(self) -> None:
        if self._writer_task is None:
            self._pending = asyncio.Queue()
            self._writer_task = asyncio.create_task(self._writer(), name="audit-writer")

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for task in list(self._tasks):  # idle connections: end them, do not leak their tasks
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer_task is not None:
            assert self._pending is not None
            while not self._pending.empty():  # flush what was accepted before stopping
                await asyncio.sleep(0.01)
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None

    # ---- connections ---------------------------------------------------------------------

    async def _handle_unix(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._track(task)
        sock = writer.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            principal = self.authorizer.unix_principal(uid, pid)
        except OSError as exc:
            log.warning("cannot identify unix peer: %s", exc)
            writer.close()
            return
        await self._serve(reader, writer, principal)

    async def _handle_tcp(
        self,
        reader: asyncio.StreamReader,
        proto: asyncio.StreamReaderProtocol,
        transport: asyncio.BaseTransport,
        contexts: Callable[[], ssl.SSLContext],
    ) -> None:
        loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        try:
            ctx = contexts()
            tls = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                proto,
                ctx,
                server_side=True,
                ssl_handshake_timeout=_HANDSHAKE_SECONDS,
            )
            if tls is None:
                raise ConnectionError("connection closed during the handshake")
            writer = asyncio.StreamWriter(tls, proto, reader, loop)
            principal = self.authorizer.tls_principal(tls.get_extra_info("ssl_object"))
        except (ssl.SSLError, OSError, TimeoutError, TrainguardError) as exc:
            self.stats["tls_rejected"] += 1
            self._audit_rejected(peer, exc)
            transport.close()
            return
        await self._serve(reader, writer, principal)

    def _audit_rejected(self, peer: Any, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, TrainguardError) else type(exc).__name__
        log.warning("rejected TLS connection from %s: %s", peer, reason)
        if self.stats["tls_rejected"] <= 100 or self.stats["tls_rejected"] % 1000 == 0:
            self._submit_nowait(
                "api.tls-rejected",
                "trainguard-agent",
                {
                    "peer": str(peer[0]) if peer else "?",
                    "reason": reason,
                    "count": self.stats["tls_rejected"],
                },
            )

    def _submit_nowait(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        if self._pending is not None:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.exception())  # never "exception never retrieved"
            self._pending.put_nowait(_Pending((kind, actor, data), fut))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, principal: ApiPrincipal
    ) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), _IDLE_SECONDS)
                except ValueError:  # longer than max_request_bytes
                    log.warning(
                        "request from %s over %d bytes refused",
                        principal.name,
                        self.config.max_request_bytes,
                    )
                    await self._reply(writer, _error("too-large", "request too large"))
                    return
                if not line:
                    return
                reply = await self._dispatch(line, principal)
                await self._reply(writer, reply)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception:  # noqa: BLE001 - a connection must never take the agent down
            log.exception("API connection from %s failed", principal.name)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, reply: Mapping[str, Any]) -> None:
        writer.write(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
        await writer.drain()

    async def _dispatch(self, line: bytes, principal: ApiPrincipal) -> dict[str, Any]:
        self.stats["requests"] += 1
        try:
            self._charge(principal, 1)
            req = _parse(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ApiError("bad-request", 'expected {"op": ...}')
            op = req["op"]
            handler = self._handlers().get(op)
            action = OPS.get(op)
            if handler is None and op in self._extra:
                action, handler = self._extra[op]
            if handler is None or action is None:
                raise ApiError("bad-request", f"unknown op {op[:40]!r}")
            self.authorizer.check(principal, action, self.audit)
            return {"ok": True, "result": await handler(req, principal)}
        except _RateLimited:
            self.stats["rate_limited"] += 1
            return _error("rate-limited", "too many requests from this identity; slow down")
        except AccessDenied:
            self.stats["denied"] += 1
            log.warning("API request denied for %s", principal.name)
            return _error("denied", "access denied")
        except ApiError as exc:
            self.stats["errors"] += 1
            log.warning("bad API request from %s: %s", principal.name, exc.message)
            return _error(exc.code, exc.message)
        except TrainguardError as exc:
            self.stats["errors"] += 1
            return _error("failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged with traceback
            self.stats["errors"] += 1
            log.exception("API op failed")
            return _error("internal", f"internal error: {type(exc).__name__}")

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], ApiPrincipal], Awaitable[Any]]]:
        return {
            "status": self._op_status,
            "event": self._op_event,
            "events": self._op_events,
            "incident": self._op_incident,
            "incidents": self._op_incidents,
            "export": self._op_export,
        }

    def _charge(self, p: ApiPrincipal, n: int) -> None:
        if p.caller not in _LIMITED or self.quota.take(p.name, n):
            return
        if self.quota.should_note(p.name):
            log.warning("API requests from %s over the rate limit", p.name)
            self._submit_nowait(
                "api.rate-limited",
                AGENT_ACTOR,
                {"caller": p.name, "rate": self.quota.rate, "burst": self.quota.burst},
            )
        raise _RateLimited

    # ---- ops -----------------------------------------------------------------------------

    async def _op_status(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        return {**dict(self._status()), "api": dict(self.stats), "caller": p.name}

    async def _op_event(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        event = _event(req, p)
        self.authorizer.check_event_kinds(p, [event[0]], self.audit)
        return {"seq": await self._append(event)}

    async def _op_events(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        items = req.get("events")
        if not isinstance(items, list) or not 0 < len(items) <= _MAX_EVENTS_PER_REQUEST:
            raise ApiError("bad-request", f"events must be a list of 1-{_MAX_EVENTS_PER_REQUEST}")
        self._charge(p, len(items))
        events = [_event(i if isinstance(i, dict) else {}, p) for i in items]
        self.authorizer.check_event_kinds(p, {e[0] for e in events}, self.audit)
        seqs = await asyncio.gather(*(self._append(e) for e in events))
        return {"seqs": list(seqs)}

    async def _op_incident(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        evidence = req.get("evidence", {})
        if not isinstance(evidence, dict):
            raise ApiError("bad-request", "evidence must be an object")
        _check_json(evidence, "evidence")
        kind, severity = parse_kind(_name(req, "kind")), _name(req, "severity")
        self.authorizer.check_incident_kind(p, kind, self.audit)
        async with self._incident_lock:  # hooks run one incident at a time, off the event loop
            incident = await asyncio.to_thread(
                self.engine.report,
                kind,
                severity,
                {**evidence, "reported_by": p.name},
                actor=p.actor,
                provenance=_PROVENANCE[p.caller],
            )
        return incident.to_dict()

    async def _op_incidents(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        limit = req.get("limit", 50)
        if not isinstance(limit, int) or not 0 < limit <= 1000:
            raise ApiError("bad-request", "limit must be 1-1000")
        return await asyncio.to_thread(self.engine.recent, limit)

    async def _op_export(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        first, last = req.get("first_seq", 1), req.get("last_seq")
        if (
            not isinstance(first, int)
            or first < 1
            or (last is not None and not isinstance(last, int))
        ):
            raise ApiError("bad-request", "first_seq/last_seq must be integers >= 1")
        last = first + _MAX_EXPORT - 1 if last is None else min(last, first + _MAX_EXPORT - 1)
        return await asyncio.to_thread(self.audit.export_segment, first, last)

    # ---- group commit --------------------------------------------------------------------

    async def _append(self, event: tuple[str, str, dict[str, Any]]) -> int:
        assert self._pending is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._pending.put(_Pending(event, fut))
        return await fut

    async def _writer(self) -> None:
        assert self._pending is not None
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < _MAX_BATCH:
                batch.append(self._pending.get_nowait())
            try:
                seqs = await asyncio.to_thread(self.audit.append_many, [b.event for b in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets the failure
                log.exception("audit append failed")
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(AgentError(f"audit append failed: {exc}"))
                continue
            for b, seq in zip(batch, seqs, strict=True):
                if not b.future.done():
                    b.future.set_result(seq)


class _PausedOnConnect(asyncio.StreamReaderProtocol):
    """Stops reading the moment a TCP connection is made, so the client's first TLS bytes reach
    the TLS layer started next instead of the plain-text stream buffer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        on_connect: Callable[[asyncio.StreamReaderProtocol, asyncio.BaseTransport], object],
    ) -> None:
        super().__init__(reader)
        self._on_connect = on_connect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        super().connection_made(transport)
        self._on_connect(self, transport)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


def _name(req: Mapping[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ApiError("bad-request", f"{key} must be a non-empty string of at most {_MAX_NAME}")
    return value


# callers with a request budget: other nodes, user certificates, and local accounts that are not
# the node's own (the shared socket lets any local user connect)
_LIMITED = frozenset({CallerKind.NODE, CallerKind.USER, CallerKind.LOCAL_OTHER})

_PROVENANCE: dict[CallerKind, Provenance] = {
    CallerKind.AGENT: Provenance.AGENT,
    CallerKind.LOCAL_ADMIN: Provenance.LOCAL,
    CallerKind.LOCAL_TRAINER: Provenance.LOCAL,
    CallerKind.LOCAL_OTHER: Provenance.LOCAL,
    CallerKind.NODE: Provenance.REMOTE,
    CallerKind.USER: Provenance.REMOTE,
}


class _RateLimited(Exception):
    pass


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFinite(text[:40])
    return value


def _parse(line: bytes) -> Any:
    """Strict JSON: no NaN/Infinity (nor literals that overflow to them)."""
    try:
        return json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise ApiError(
            "non-finite-number",
            f"non-finite number {exc} refused: JSON numbers must be finite (send null instead)",
        ) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError("bad-request", "not a JSON object") from exc


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    """Submitted data must be plain, finite, string-keyed JSON of bounded depth (also when it
    did not come from `_parse`, e.g. an in-process caller)."""
    if depth > _MAX_DEPTH:
        raise ApiError("bad-request", f"{where} is nested deeper than {_MAX_DEPTH}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError("non-finite-number", f"{where} holds a non-finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ApiError("bad-request", f"{where} has a non-string key")
            _check_json(v, where, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, where, depth + 1)
    elif value is not None and not isinstance(value, str | int | bool):
        raise ApiError("bad-request", f"{where} holds a {type(value).__name__}")


def _event(req: Mapping[str, Any], p: ApiPrincipal) -> tuple[str, str, dict[str, Any]]:
    """(kind, actor, data) of a submitted event. The actor is the caller's authenticated
    identity; a requested ``actor`` is kept only as ``claimed_actor``."""
    data = req.get("data", {})
    if not isinstance(data, dict):
        raise ApiError("bad-request", "data must be an object")
    _check_json(data, "data")
    kind = _name(req, "kind")
    if not _KIND.fullmatch(kind):
        raise ApiError("bad-request", "kind must be lower-case letters, digits and . _ : -")
    out = {**data, "submitted_by": p.name}
    claimed = req.get("actor")
    if isinstance(claimed, str) and claimed:
        out["claimed_actor"] = claimed[:_MAX_NAME]
    else:
        out.pop("claimed_actor", None)
    return kind, p.actor, out


def _remove_stale_socket(path: str) -> None:
    """Refuse to start next to a live agent; remove a socket nobody answers on."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise AgentError(
        f"another agent is already serving {path}",
        tip="stop it first (`systemctl stop trainguard-agent`) or use another --home",
    )
