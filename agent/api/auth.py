"""Who may call the agent API, for what, and which event kinds each caller may submit.

Every caller has one **identity kind** (`CallerKind`), taken from what the transport proves and
never from a request field:

* unix socket (uid and pid from SO_PEERCRED; the socket is 0600 in a 0700 folder, so the uid
  check is the second wall):
  - ``agent``: this agent's own process (its posture checks report through the socket);
  - ``local-admin``: root or the agent's uid: the node's operators and its CLI;
  - ``local-trainer``: a uid in ``[agent] allowed_uids`` (training jobs run under them);
  - ``local-other``: any other uid; it may call only self-service ops (``SELF_SERVICE_ACTIONS``).
* TCP mTLS (the SPIFFE identity of a client certificate from this cluster's CA, checked against
  the current CRL on every handshake, so `trainguard pki revoke` cuts a peer off):
  - ``node``: ``spiffe://<cluster>/node/<name>``;
  - ``user``: ``spiffe://<cluster>/user/<name>``; users in ``[agent] admin_names`` may call every
    op, others what the signed policy grants them on resource ``agent/<node>``.

Three tables decide, deny by default:

* ``CALLER_ACTIONS``: identity kind -> op actions it holds without asking the policy (the node's
  own local callers hold every action; a remote node only submits). An op is registered by
  naming its action (`trainguard.agent.api.server.OPS` or an extension's table); opening a new
  action to remote nodes is one entry here.
* ``EVENT_KINDS``: identity kind -> patterns of audit event kinds it may submit (``event``,
  ``events``). ``RESERVED_KINDS`` are written by the agent itself and refused from every caller,
  whatever the allow-list says.
* ``INCIDENT_KINDS``: identity kind -> incident kinds it may report (``incident``).

The actor of every accepted submission is the caller's authenticated identity
(`ApiPrincipal.actor`); an ``actor`` field in a request is kept only as ``claimed_actor`` in the
data. Every denial is written to the audit log (``api.denied``).
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import logging
import os
import pwd
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trainguard.core.errors import AccessDenied, TrainguardError
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.incidents import AGENT_ACTOR, IncidentKind

__all__ = [
    "CALLER_ACTIONS",
    "EVENT_KINDS",
    "INCIDENT_KINDS",
    "RESERVED_KINDS",
    "ApiAuthorizer",
    "ApiPrincipal",
    "CallerKind",
    "PolicyCheck",
]

log = logging.getLogger(__name__)

_POLICY_TTL_SECONDS = 30.0  # a re-signed policy applies to the API within this long


class CallerKind(enum.StrEnum):
    """What the transport proved about a caller (never what the request says)."""

    AGENT = "agent"
    LOCAL_ADMIN = "local-admin"
    LOCAL_TRAINER = "local-trainer"
    LOCAL_OTHER = "local-other"
    NODE = "node"
    USER = "user"


# Ops any local account may call: they authenticate the caller themselves (the uid from
# SO_PEERCRED must map to a trainguard user; `trainguard.agent.api.sessions`).
SELF_SERVICE_ACTIONS = frozenset({"session"})

# identity kind -> op actions it holds without the signed policy ("*": every action). Remote
# users are decided by `[agent] admin_names` and the policy; everything else is denied.
CALLER_ACTIONS: dict[CallerKind, frozenset[str]] = {
    CallerKind.AGENT: frozenset({"*"}),
    CallerKind.LOCAL_ADMIN: frozenset({"*"}),
    CallerKind.LOCAL_TRAINER: frozenset({"*"}),
    CallerKind.LOCAL_OTHER: SELF_SERVICE_ACTIONS,
    CallerKind.NODE: frozenset({"audit:submit", "incident:submit", "audit:witness"}),
    CallerKind.USER: frozenset(),
}

NODE_ACTIONS = CALLER_ACTIONS[CallerKind.NODE]

# Written by the agent itself (audit chain and witness, API, daemon and job registry, node
# certificate renewal, incident engine, hooks, actions, webhooks, posture cycle): never accepted
# from any caller.
RESERVED_KINDS: tuple[str, ...] = (
    "audit.*",
    "api.*",
    "agent.*",
    "pki.*",
    "incident",
    "incident.*",
    "hook.*",
    "action.*",
    "webhook.*",
    "posture.*",
)

# Security decisions and key/identity changes: today the node's own CLI records them (it runs
# as root or the agent's uid and holds the home); nobody else may.
OPERATOR_KINDS: tuple[str, ...] = (
    "login*",
    "session*",
    "policy*",
    "user*",
    "mfa*",
    "recovery*",
    "totp*",
    "access*",
    "key*",
    "cert*",
    "home*",
)

# Data-plane telemetry and job events from a trainer (local, or another node's launcher).
TRAINER_KINDS: tuple[str, ...] = ("train.*",)

# identity kind -> event kinds it may submit (fnmatch patterns), minus RESERVED_KINDS.
# local-admin gets "*": root or the agent's uid can already write the log file and holds the
# keys, so a narrower list would stop nothing (DESIGN: root on the node is out of scope).
EVENT_KINDS: dict[CallerKind, tuple[str, ...]] = {
    CallerKind.AGENT: ("*",),
    CallerKind.LOCAL_ADMIN: ("*",),
    CallerKind.LOCAL_TRAINER: TRAINER_KINDS,
    CallerKind.LOCAL_OTHER: (),
    CallerKind.NODE: TRAINER_KINDS,
    CallerKind.USER: (),
}

_DATA_PLANE_INCIDENTS = frozenset(
    {
        IncidentKind.BYZANTINE_WORKER,
        IncidentKind.MEMBERSHIP_FAILURE,
        IncidentKind.REPLICA_DIVERGENCE,
        IncidentKind.CHECKPOINT_TAMPERED,
    }
)

# identity kind -> incident kinds it may report.
INCIDENT_KINDS: dict[CallerKind, frozenset[IncidentKind]] = {
    CallerKind.AGENT: frozenset(IncidentKind),
    CallerKind.LOCAL_ADMIN: frozenset(IncidentKind),
    CallerKind.LOCAL_TRAINER: _DATA_PLANE_INCIDENTS,
    CallerKind.LOCAL_OTHER: frozenset(),
    CallerKind.NODE: _DATA_PLANE_INCIDENTS,
    CallerKind.USER: frozenset(),
}

# (principal, action) -> True allow / False deny / None "no policy available"
PolicyCheck = Callable[["ApiPrincipal", str], bool | None]


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return None


@dataclass(frozen=True)
class ApiPrincipal:
    name: str  # "uid:1000" or the SPIFFE URI
    transport: str  # unix | tls
    uid: int | None = None
    pid: int | None = None
    kind: str | None = None  # node | user (TLS only)
    ident: str | None = None  # the node or user name (TLS only)
    caller: CallerKind = CallerKind.LOCAL_OTHER

    @classmethod
    def local(cls, uid: int, pid: int, caller: CallerKind = CallerKind.LOCAL_OTHER) -> ApiPrincipal:
        return cls(f"uid:{uid}", "unix", uid=uid, pid=pid, caller=caller)

    @property
    def actor(self) -> str:
        """The audit actor of what this caller submits: its authenticated identity."""
        if self.caller is CallerKind.AGENT:
            return AGENT_ACTOR
        if self.transport == "unix" and self.uid is not None:
            user = _user_name(self.uid)
            return f"{self.name}({user})" if user else self.name
        return self.name


def _holds(caller: CallerKind, action: str) -> bool:
    actions = CALLER_ACTIONS.get(caller, frozenset())
    return "*" in actions or action in actions


@functools.lru_cache(maxsize=64)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)")


def kind_matches(kind: str, patterns: Iterable[str]) -> bool:
    """True when `kind` matches one of the fnmatch `patterns` (case-sensitive)."""
    return _pattern(tuple(patterns)).match(kind) is not None


def is_reserved(kind: str) -> bool:
    """True for event kinds only the agent itself writes."""
    return kind_matches(kind, RESERVED_KINDS)


class ApiAuthorizer:
    def __init__(
        self,
        *,
        node: str,
        cluster: str,
        owner_uid: int | None = None,
        allowed_uids: list[int] | None = None,
        admin_names: list[str] | None = None,
        policy_check: PolicyCheck | None = None,
        self_pid: int | None = None,
        revoked: Callable[[ssl.SSLObject], bool] | None = None,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.admin_uids = {0, os.geteuid() if owner_uid is None else owner_uid}
        self.trainer_uids = set(allowed_uids or [])
        self.admin_names = set(admin_names or [])
        self.self_pid = self_pid  # the daemon's pid: connections from it are the agent itself
        self._policy_check = policy_check
        self._revoked = revoked

    def unix_principal(self, uid: int, pid: int) -> ApiPrincipal:
        """The identity of a unix-socket peer from its SO_PEERCRED uid and pid."""
        if self.self_pid is not None and pid == self.self_pid and uid == os.geteuid():
            caller = CallerKind.AGENT
        elif uid in self.admin_uids:
            caller = CallerKind.LOCAL_ADMIN
        elif uid in self.trainer_uids:
            caller = CallerKind.LOCAL_TRAINER
        else:
            caller = CallerKind.LOCAL_OTHER
        return ApiPrincipal.local(uid, pid, caller)

    def tls_principal(self, ssl_object: ssl.SSLObject | None) -> ApiPrincipal:
        """The verified identity of a TLS peer of this cluster (raises `PkiError` otherwise,
        also for a certificate on the current CRL)."""
        from trainguard.crypto.pki import IdentityKind, PkiError, peer_identity

        if ssl_object is None:
            raise PkiError("no TLS session")
        if self._revoked is not None and self._revoked(ssl_object):
            raise PkiError("peer certificate is revoked")
        ident = peer_identity(ssl_object, self.cluster)
        caller = CallerKind.NODE if ident.kind is IdentityKind.NODE else CallerKind.USER
        return ApiPrincipal(
            ident.uri, "tls", kind=ident.kind.value, ident=ident.name, caller=caller
        )

    def allowed(self, p: ApiPrincipal, action: str) -> bool:
        if p.transport == "unix":
            return _holds(p.caller, action)
        if p.caller is CallerKind.USER and p.ident in self.admin_names:
            return True
        verdict = self._policy_check(p, action) if self._policy_check else None
        if verdict is not None:
            return verdict
        return _holds(p.caller, action)

    def check(self, p: ApiPrincipal, action: str, audit: AuditLog | None = None) -> None:
        """Return if `p` may perform `action`, else audit and raise `AccessDenied`."""
        if self.allowed(p, action):
            return
        self._deny(p, {"action": action}, audit)

    def check_event_kinds(
        self, p: ApiPrincipal, kinds: Iterable[str], audit: AuditLog | None = None
    ) -> None:
        """Return if `p` may submit events of every kind in `kinds`, else audit and raise."""
        allowed = EVENT_KINDS.get(p.caller, ())
        refused = sorted({k for k in kinds if is_reserved(k) or not kind_matches(k, allowed)})
        if refused:
            self._deny(p, {"action": "audit:submit", "kinds": refused[:20]}, audit)

    def check_incident_kind(
        self, p: ApiPrincipal, kind: IncidentKind, audit: AuditLog | None = None
    ) -> None:
        if kind not in INCIDENT_KINDS.get(p.caller, frozenset()):
            self._deny(p, {"action": "incident:submit", "incident_kind": kind.value}, audit)

    def _deny(self, p: ApiPrincipal, what: dict[str, Any], audit: AuditLog | None) -> None:
        if audit is not None:
            audit.append(
                "api.denied",
                p.actor,
                {**what, "caller": p.caller.value, "transport": p.transport},
            )
        raise AccessDenied("access denied")


def policy_check_for_home(home: Any, config: Any, audit: AuditLog) -> PolicyCheck:
    """A `PolicyCheck` backed by the home's signed policy; None verdicts when it has none."""

    cache: dict[str, Any] = {"ac": None, "at": 0.0}

    def check(p: ApiPrincipal, action: str) -> bool | None:
        if p.transport != "tls" or not p.ident:
            return None
        if p.caller is CallerKind.NODE and action in NODE_ACTIONS:
            return None  # the built-in node role; cut a node off by revoking its certificate
        try:
            from trainguard.policy import AccessControl

            now = time.monotonic()
            if cache.get("ac") is None or now - cache["at"] > _POLICY_TTL_SECONDS:
                cache["ac"], cache["at"] = AccessControl.open(home, config, audit), now
            ac = cache["ac"]
            resource = f"agent/{config.node.name}"
            return bool(ac.engine.decide(p.ident, "*", resource, action).allowed)
        except (ImportError, TrainguardError, OSError) as exc:
            log.info("no usable policy for API authorization (%s); static rules apply", exc)
            return None

    return check
