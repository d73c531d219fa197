"""Login, authorization and step-up for local accounts that cannot read the home.

The agent is the only process that holds the node key and the KEK that decrypts TOTP secrets
(DESIGN threat model: "local non-root user escalates"). A CLI run by such an account calls these
ops over the unix socket; the caller's uid comes from SO_PEERCRED, never from the request:

* ``auth.login`` {user, code} -> {token, user, expires_at}: the uid must map to `user`
  (`trainguard user add NAME --uid UID`); the token is signed here and bound to that uid.
* ``auth.authorize`` {token, action, resource, domain, otp?, new_domain?} -> {decision,
  token}: the token must be one this agent signed for the same uid; with `otp` the step-up
  happens here and the refreshed token comes back.
* ``auth.whoami`` {token} -> {user, expires_at, mfa_at}.

Refusals come back as ``{"refused": {type, message, tip, reason}}`` so the CLI raises the same
error class (and exit code) it would raise in process. Every decision is audited by the policy
area, with the caller's uid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainguard.agent.api.auth import ApiPrincipal
from trainguard.agent.api.server import ApiError, Handler
from trainguard.core.config import Config
from trainguard.core.errors import TrainguardError
from trainguard.core.home import Home
from trainguard.evidence.audit_log import AuditLog
from trainguard.policy import AccessControl
from trainguard.policy.errors import (
    AuthenticationFailed,
    Denied,
    LockedOut,
    SessionInvalid,
    StepUpRequired,
    UnknownName,
)
from trainguard.policy.sessions import MemorySessionStore
from trainguard.policy.versions import AuditLedger

__all__ = ["REFUSALS", "SessionOps"]

log = logging.getLogger(__name__)

# The error classes a refusal may name on the wire (anything else becomes a plain Denied).
REFUSALS: Mapping[str, type[TrainguardError]] = {
    cls.__name__: cls
    for cls in (AuthenticationFailed, Denied, LockedOut, SessionInvalid, StepUpRequired, UnknownName)
}
_MAX_TOKEN = 8192


class SessionOps:
    """The ``auth.*`` ops of one agent (an `ApiExtension`)."""

    def __init__(
        self,
        home: Home,
        config: Config,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
        engine: Callable[[], Any] | None = None,
    ) -> None:
        # The agent's current IncidentEngine (a getter: a reload replaces it): tampering found
        # here is an incident with hooks, not only an audit entry.
        self.engine = engine
        self.home = home
        self.config = config
        self.audit = audit
        self.clock = clock
        # One thread for every decision: the user store's SQLite connection and the policy
        # cache belong to it (SQLite objects may not cross threads), and decisions serialise.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessions")
        self._base: AccessControl | None = None
        self._policy_mtime: int | None = None

    def ops(self) -> Mapping[str, tuple[str, Handler]]:
        return {
            "auth.login": ("session", self._login),
            "auth.authorize": ("session", self._authorize),
            "auth.whoami": ("session", self._whoami),
        }

    # ---- plumbing -----------------------------------------------------------------------

    def _access(self, token: bytes | None, uid: int) -> AccessControl:
        policy = self.home.policy_dir / "policy.csv"
        mtime = policy.stat().st_mtime_ns if policy.exists() else None
        if self._base is None or mtime != self._policy_mtime:  # re-signed: load it again
            self._base = AccessControl.open(
                self.home,
                self.config,
                self.audit,
                sessions_dir=Path("/nonexistent"),
                clock=self.clock,
                ledger=AuditLedger(self.audit),
            )
            self._policy_mtime = mtime
            if self.engine is not None:
                current = self.engine
                self._base.report_incident = lambda kind, severity, evidence: current().report(
                    kind, severity, evidence)
        node = self.config.node
        ac = self._base.with_sessions(
            MemorySessionStore(token, cluster=node.cluster, node=node.name)
        )
        ac.caller_uid = uid
        return ac

    async def _run(self, p: ApiPrincipal, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if p.transport != "unix" or p.uid is None:
            raise ApiError("bad-request", "sessions are for local accounts (the unix socket)")

        def guarded() -> dict[str, Any]:
            try:
                return work()
            except tuple(REFUSALS.values()) as exc:
                return {"refused": _refusal(exc)}

        return await asyncio.get_running_loop().run_in_executor(self._executor, guarded)

    # ---- ops ----------------------------------------------------------------------------

    async def _login(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        user, code = _text(req, "user", 64), _text(req, "code", 64)
        assert p.uid is not None

        def work() -> dict[str, Any]:
            ac = self._access(None, p.uid or 0)
            session = ac.login(user, code)
            token = ac.sessions.read_token()
            return {"token": token.decode(), "user": session.user, "expires_at": session.expires_at}

        return await self._run(p, work)

    async def _authorize(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        token = _text(req, "token", _MAX_TOKEN).encode()
        action = _text(req, "action", 64)
        resource = _text(req, "resource", 600)
        domain = _text(req, "domain", 80)
        otp = req.get("otp")
        if otp is not None and not isinstance(otp, str):
            raise ApiError("bad-request", "otp must be a string")
        new_domain = bool(req.get("new_domain", False))

        def work() -> dict[str, Any]:
            ac = self._access(token, p.uid or 0)
            decision = ac.require(action, resource, domain, otp=otp, new_domain=new_domain)
            store = ac.sessions
            assert isinstance(store, MemorySessionStore)
            return {
                "decision": {
                    "principal": decision.principal,
                    "action": decision.action,
                    "resource": decision.resource,
                    "domain": decision.domain,
                    "reason": decision.reason,
                    "mfa_age_s": decision.mfa_age_s,
                },
                "token": (store.token or token).decode(),
            }

        return await self._run(p, work)

    async def _whoami(self, req: dict[str, Any], p: ApiPrincipal) -> Any:
        token = _text(req, "token", _MAX_TOKEN).encode()

        def work() -> dict[str, Any]:
            session = self._access(token, p.uid or 0).current_session()
            return {
                "user": session.user,
                "expires_at": session.expires_at,
                "mfa_at": session.mfa_at,
                "os_uid": session.os_uid,
            }

        return await self._run(p, work)


def _text(req: Mapping[str, Any], key: str, limit: int) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ApiError("bad-request", f"{key} must be a string of 1-{limit} characters")
    return value


def _refusal(exc: TrainguardError) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": exc.message,
        "tip": exc.tip,
        "reason": getattr(exc, "reason", ""),
    }


