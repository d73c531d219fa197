"""Access control for one home: the pieces wired together for the CLI and the trainer.

`AccessControl` loads the signed policy, the user store, the keyring (for TOTP secrets), the
node key (policy and session signatures) and the OS user's login session, and offers the
operations the CLI exposes. `authorize_cli` is the one-call form for preflight checks.

How a CLI invocation is authenticated: the acting user is the one of the saved login session
(`trainguard login`). Privileged actions (admin commands among them) need step-up MFA: `--otp`
on the command, or a login within the step-up window.

Where this runs: in the CLI for a home the caller can read (a laptop, root on a node), and in
the agent for everyone else (`trainguard.agent.api.sessions`): the agent passes the caller's OS
uid from SO_PEERCRED, and a caller may log in only as the user that uid maps to.

Rollback: the policy's signed version and the user store's change counter must not be older
than the newest versions recorded in the audit log (`trainguard.policy.versions`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from trainguard.core.config import Config, NodeConfig
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey, VerifyKey
from trainguard.evidence.incidents import IncidentKind
from trainguard.evidence.sink import AuditSink
from trainguard.policy.actions import ACTIONS, GLOBAL_DOMAIN
from trainguard.policy.config import PolicyConfig
from trainguard.policy.decision import Decision, Principal, authorize
from trainguard.policy.errors import (
    AuthenticationFailed,
    Denied,
    PolicyFormatError,
    PolicyTampered,
    SessionInvalid,
    StepUpRequired,
    UnknownName,
)
from trainguard.policy.mfa import Enrolment, MfaService, SecretBox
from trainguard.policy.rbac import PolicyEngine
from trainguard.policy.rules import (
    Grant,
    PolicyRules,
    RoleLink,
    check_action_pattern,
    check_domain,
    check_name,
    check_resource,
)
from trainguard.policy.sessions import Session, SessionStore, default_sessions_dir
from trainguard.policy.store import PolicyFile
from trainguard.policy.users import UserRecord, UserStore
from trainguard.policy.versions import VERSION_EVENT, NoLedger, VersionLedger

__all__ = ["AccessControl", "authorize_cli"]


class AccessControl:
    """Everything access control needs for one home and one OS user."""

    def __init__(
        self,
        home: Home,
        policy_config: PolicyConfig,
        node: NodeConfig,
        audit: AuditSink,
        *,
        sessions_dir: Path,
        clock: Callable[[], float] = time.time,
        keyring: SecretBox | None = None,
        signing_key: SigningKey | None = None,
        sessions: SessionStore | None = None,
        ledger: VersionLedger | None = None,
    ) -> None:
        self.home = home
        self.config = policy_config
        self.node = node
        self.audit = audit
        self.clock = clock
        self.sessions = sessions or SessionStore(
            sessions_dir, cluster=node.cluster, node=node.name
        )
        self.policy_file = PolicyFile(home)
        self.ledger: VersionLedger = ledger or NoLedger()
        self._users = UserStore(home.users_db, clock=clock)
        self._users_checked = False
        self._keyring = keyring
        self._signing_key = signing_key
        self._rules: PolicyRules | None = None
        self._policy_version = 0
        self._engine: PolicyEngine | None = None

    @classmethod
    def open(
        cls,
        home: Home,
        config: Config,
        audit: AuditSink,
        *,
        sessions_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        ledger: VersionLedger | None = None,
    ) -> AccessControl:
        """From a loaded config; the session folder defaults to the OS user's config dir."""
        home.require()
        folder = sessions_dir or default_sessions_dir(environ)
        return cls(
            home,
            config.section(PolicyConfig),
            config.node,
            audit,
            sessions_dir=folder,
            clock=clock,
            ledger=ledger,
        )

    def with_sessions(self, sessions: SessionStore) -> AccessControl:
        """The same access control (shared policy, users, keys and caches) for another
        session store: the agent uses one per request for the token the caller presented."""
        clone = copy.copy(self)
        clone.sessions = sessions
        return clone

    # -- versions (rollback) --------------------------------------------------------------
    @property
    def users(self) -> UserStore:
        """The user store, once checked against the newest recorded version."""
        if not self._users_checked:
            recorded = self.ledger.highest("users")
            current = self._users.version()
            if current < recorded:
                self._tampered(
                    "users", str(self.home.users_db), current, recorded,
                    tip="restore state/users.db from the newest backup; an older copy is refused",
                )
            self._users_checked = True
        return self._users

    # Where a `policy-tampered` incident goes (kind, severity, evidence): the CLI passes the
    # agent's (or the embedded) incident engine, the agent its own. Without one the tampering is
    # still an audit entry and an error, just not an incident with hooks.
    report_incident: Callable[[str, str, Mapping[str, Any]], Any] | None = None

    def _incident(self, evidence: Mapping[str, Any]) -> None:
        if self.report_incident is not None:
            self.report_incident(IncidentKind.POLICY_TAMPERED.value, "critical", dict(evidence))

    def _tampered(self, name: str, path: str, current: int, recorded: int, *, tip: str) -> None:
        evidence = {"path": path, "reason": f"{name} version {current} is older than {recorded}"}
        self.audit.record(IncidentKind.POLICY_TAMPERED.value, "trainguard", evidence)
        self._incident(evidence)
        raise PolicyTampered(path, tip=tip)

    def note_versions(self, actor: str) -> None:
        """Record the current policy and user-store versions in the audit log (after a
        change), so an older copy is refused from now on."""
        for name, version in (("policy", self._policy_version), ("users", self._users.version())):
            if version > self.ledger.highest(name):
                self.audit.record(VERSION_EVENT, actor, {"name": name, "version": version})

    # -- keys -----------------------------------------------------------------------------
    @property
    def signing_key(self) -> SigningKey:
        if self._signing_key is None:
            self._signing_key = SigningKey.load(self.home.node_signing_key)
        return self._signing_key

    @cached_property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.public_key()

    @property
    def keyring(self) -> SecretBox:
        if self._keyring is None:
            from trainguard.crypto.keyring import open_keyring

            self._keyring = open_keyring(self.home, clock=self.clock)
        return self._keyring

    @cached_property
    def mfa(self) -> MfaService:
        return _LazyBoxMfa(self)

    # -- policy ---------------------------------------------------------------------------
    @property
    def rules(self) -> PolicyRules:
        if self._rules is None:
            try:
                rules, version = self.policy_file.load_versioned(self.verify_key, self.audit)
            except PolicyTampered:
                self._incident({"path": str(self.policy_file.path),
                                "reason": "does not match its signature"})
                raise
            recorded = self.ledger.highest("policy")
            if version < recorded:
                self._tampered(
                    "policy", str(self.policy_file.path), version, recorded,
                    tip="an older signed policy was put back; restore the newest one, or review"
                    " and `trainguard policy sign` it",
                )
            self._rules, self._policy_version = rules, version
        return self._rules

    @property
    def engine(self) -> PolicyEngine:
        if self._engine is None:
            self._engine = PolicyEngine(self.rules)
        return self._engine

    def save_rules(self, rules: PolicyRules, *, actor: str, change: Mapping[str, Any]) -> None:
        """Sign and write a new policy; the engine (and its cache) is rebuilt."""
        if self._rules is None:
            _ = self.rules  # the version to count on from
        version = self._policy_version + 1
        self.policy_file.save(rules, self.signing_key, version=version)
        self.users.sync_roles(rules)
        self._rules, self._engine, self._policy_version = rules, None, version
        self.audit.record("policy-changed", actor, {**dict(change), "version": version})
        self.note_versions(actor)

    def known_domains(self) -> set[str]:
        return set(self.rules.domains()) | {self.config.default_domain, GLOBAL_DOMAIN}

    def roles(self) -> set[str]:
        return set(self.rules.role_names(self.users.names()))

    # -- sessions and decisions -----------------------------------------------------------
    def current_session(self) -> Session:
        """The OS user's verified session; refused if the user was removed or is locked."""
        now = self.clock()
        try:
            session = self.sessions.load(self.verify_key, now=now)
            if not self.users.exists(session.user) or self.users.uid(session.user) != session.uid:
                raise SessionInvalid("your login session is not valid", reason="user removed")
            if self.caller_uid is not None and self.caller_uid not in _ANY_USER_UIDS:
                if session.os_uid != self.caller_uid or (
                    self.users.os_uid(session.user) != self.caller_uid
                ):
                    raise SessionInvalid(
                        "your login session is not valid", reason="token of another OS account"
                    )
            if self.users.is_locked(session.user):
                raise SessionInvalid(
                    "your account is locked",
                    reason="user locked",
                    tip="ask an admin to run `trainguard user unlock NAME`",
                )
        except SessionInvalid as exc:
            self.audit.record("session-refused", "unknown", {"reason": exc.reason})
            raise
        return session

    # The OS account of the caller (the agent sets it from SO_PEERCRED); None in the CLI of a
    # home the caller can read, where the caller holds the keys anyway.
    caller_uid: int | None = None

    def login(self, name: str, code: str) -> Session:
        """Verify a TOTP or recovery code and write a fresh session token.

        Unknown users, wrong codes and (through the agent) a name the caller's OS account does
        not map to all get the same message."""
        if self.caller_uid is not None and self.caller_uid not in _ANY_USER_UIDS:
            mapped = self.users.name_for_os_uid(self.caller_uid)
            if mapped is None:
                self.audit.record(
                    "login-failed", f"uid:{self.caller_uid}", {"reason": "unmapped OS account"}
                )
                raise AuthenticationFailed(
                    "this OS account is not mapped to a trainguard user",
                    reason="unmapped OS account",
                    tip="ask an admin to run `trainguard user add NAME --uid UID` (or `user map`)",
                )
            if mapped != name:
                # Refused before the code is checked: no failure counts against `name`, so
                # nobody can slow down another user's logins by guessing for them.
                self.audit.record(
                    "login-failed",
                    f"uid:{self.caller_uid}",
                    {"reason": "name is not the caller's user", "user": name},
                )
                raise AuthenticationFailed(
                    "second-factor verification failed", reason="not the caller's user"
                )
        try:
            at = self.mfa.verify(name, code, purpose="login")
        except Denied as exc:
            self.audit.record("login-failed", name, {"reason": exc.reason})
            raise
        uid = self.users.uid(name)
        os_uid = self.caller_uid if self.caller_uid is not None else self.users.os_uid(name)
        session = self.sessions.issue(
            self.signing_key,
            user=name,
            uid=uid,
            now=at,
            hours=self.config.session_hours,
            os_uid=os_uid,
        )
        self.audit.record("login", name, {"node": self.node.name, "expires_at": session.expires_at})
        return session

    def check_request(
        self, action: str, resource: str, domain: str, actor: str, *, new_domain: bool = False
    ) -> None:
        """Unknown actions and projects, malformed resources: usage errors (exit 2), audited."""
        problem: PolicyFormatError | UnknownName | None = None
        if action not in ACTIONS:
            problem = UnknownName(
                f"unknown action {action!r}", tip="known actions: " + ", ".join(ACTIONS)
            )
        else:
            try:
                check_resource(resource)
                check_domain(domain)
            except PolicyFormatError as exc:
                problem = exc
        if problem is None and not new_domain and domain not in self.known_domains():
            problem = UnknownName(
                f"unknown project {domain!r}",
                tip="see `trainguard policy show`; projects are the domains named in the policy",
            )
        if problem is not None:
            self.audit.record(
                "access-denied",
                actor,
                {
                    "action": action,
                    "resource": resource,
                    "domain": domain,
                    "reason": problem.message,
                },
            )
            raise problem

    def require(
        self,
        action: str,
        resource: str,
        domain: str,
        *,
        otp: str | None = None,
        new_domain: bool = False,
    ) -> Decision:
        """Authorize the logged-in user (step-up with `otp` when given). `new_domain` lets a
        command that creates a project (user add, policy grant) name one not yet in the policy."""
        try:
            session = self.current_session()
        except SessionInvalid:
            self.audit.record(
                "access-denied",
                "unknown",
                {
                    "action": action,
                    "resource": resource,
                    "domain": domain,
                    "reason": "no valid session",
                },
            )
            raise
        self.check_request(action, resource, domain, session.user, new_domain=new_domain)
        if otp:
            self.mfa.verify(session.user, otp, purpose="step-up")
            session = self.sessions.refresh_mfa(session, self.signing_key, self.clock())
        return authorize(
            Principal(session.user),
            action,
            resource,
            domain,
            engine=self.engine,
            audit=self.audit,
            session=session,
            config=self.config,
            clock=self.clock,
        )

    def self_step_up(self, session: Session, *, otp: str | None) -> Session:
        """Require a fresh second factor of the logged-in user (self-service operations)."""
        if otp:
            self.mfa.verify(session.user, otp, purpose="step-up")
            return self.sessions.refresh_mfa(session, self.signing_key, self.clock())
        if not session.mfa_fresh(self.clock(), self.config.step_up_seconds):
            exc = StepUpRequired(
                "this needs a second factor verified within the step-up window",
                reason="step-up MFA stale",
            )
            self.audit.record("access-denied", session.user, {"reason": exc.reason})
            raise exc
        return session

    def what_if(self, user: str, action: str, resource: str, domain: str, *, actor: str) -> None:
        """Policy-only decision for another user (no session or MFA involved); raises `Denied`."""
        self.check_request(action, resource, domain, actor)
        verdict = self.engine.decide(user, domain, resource, action)
        self.audit.record(
            "access-what-if",
            actor,
            {
                "user": user,
                "action": action,
                "resource": resource,
                "domain": domain,
                "allowed": verdict.allowed,
                "reason": verdict.reason,
            },
        )
        if not verdict.allowed:
            raise Denied(
                f"access denied: {user} may not {action} on {resource} in project {domain}",
                reason=verdict.reason,
            )

    def require_for_user(self, name: str, *, otp: str | None) -> Decision:
        """`user:manage` over `name`: in every project where `name` holds a role."""
        domains = sorted({lk.domain for lk in self.rules.links_of(name)}) or [GLOBAL_DOMAIN]
        decision = None
        for d in domains:
            decision = self.require("user:manage", f"/users/{name}", d, otp=otp)
            otp = None  # one code per command; the session now carries the step-up
        assert decision is not None
        return decision

    # -- users ----------------------------------------------------------------------------
    def add_user(
        self, name: str, role: str, domain: str, *, actor: str, os_uid: int | None = None
    ) -> UserRecord:
        check_name("user", name)
        check_domain(domain)
        if role not in self.roles():
            raise UnknownName(
                f"unknown role {role!r}", tip="roles: " + ", ".join(sorted(self.roles()))
            )
        if name in self.roles():
            raise UnknownName(f"{name!r} is a role name", tip="pick another user name")
        if not self.users.exists(name):
            self.users.add(name, os_uid=os_uid)
            self.audit.record("user-added", actor, {"user": name, "os_uid": os_uid})
        elif os_uid is not None and self.users.os_uid(name) != os_uid:
            self.map_user(name, os_uid, actor=actor)
        self.save_rules(
            self.rules.with_link(RoleLink(name, role, domain)),
            actor=actor,
            change={"op": "assign", "user": name, "role": role, "domain": domain},
        )
        return self.users.get(name)

    def map_user(self, name: str, os_uid: int | None, *, actor: str) -> None:
        """Map `name` to an OS account (None: unmap); the stored TOTP secret is re-bound."""
        self.users.get(name)
        self.mfa.rebind(name, os_uid)
        self.users.map_os_uid(name, os_uid)
        self.audit.record("user-mapped", actor, {"user": name, "os_uid": os_uid})
        self.note_versions(actor)

    def enrol(self, name: str, *, actor: str) -> Enrolment:
        enrolment = self.mfa.enrol(name, actor=actor, cluster=self.node.cluster)
        self.note_versions(actor)
        return enrolment

    def remove_user(self, name: str, *, actor: str) -> None:
        self.users.get(name)
        self.save_rules(
            self.rules.without_member(name), actor=actor, change={"op": "remove-user", "user": name}
        )
        self.users.remove(name)
        self.audit.record("user-removed", actor, {"user": name})
        self.note_versions(actor)

    def unlock(self, name: str, *, actor: str) -> None:
        self.users.unlock(name)
        self.audit.record("user-unlocked", actor, {"user": name})
        self.note_versions(actor)

    # -- policy editing -------------------------------------------------------------------
    def grant(
        self,
        subject: str,
        action: str,
        resource: str,
        domain: str,
        *,
        deny: bool,
        actor: str,
        revoke: bool = False,
    ) -> Grant:
        g = Grant(
            check_name("role", subject),
            check_domain(domain),
            check_resource(resource),
            check_action_pattern(action),
            "deny" if deny else "allow",
        )
        if revoke:
            if g not in self.rules.grants:
                raise UnknownName(f"no such rule: {g.line()}", tip="see `trainguard policy show`")
            new = self.rules.without_grant(g)
        else:
            new = self.rules.with_grant(g)
        self.save_rules(
            new, actor=actor, change={"op": "revoke" if revoke else "grant", "rule": g.line()}
        )
        return g

    def sign_current(self, *, otp: str | None) -> tuple[Decision, list[str], list[str]]:
        """Re-sign the policy file as it is now (after review of a hand edit).

        The caller is authorized against the last signed policy, never the edited file."""
        self._rules, self._policy_version = self.policy_file.load_last_good(
            self.verify_key, self.audit, actor="policy-sign"
        )
        self._engine = None
        decision = self.require("policy:edit", "/policy", GLOBAL_DOMAIN, otp=otp)
        from trainguard.policy.rules import parse_policy

        body = self.policy_file.unsigned_body()
        new = parse_policy(body, source=str(self.policy_file.path))
        old_lines = {g.line() for g in self.rules.grants} | {lk.line() for lk in self.rules.links}
        new_lines = {g.line() for g in new.grants} | {lk.line() for lk in new.links}
        version = self._policy_version + 1
        self.policy_file.save_text(body, self.signing_key, version=version)
        self.users.sync_roles(new)
        added, removed = sorted(new_lines - old_lines), sorted(old_lines - new_lines)
        self.audit.record(
            "policy-signed",
            decision.principal,
            {"added": added, "removed": removed, "version": version},
        )
        self._rules, self._engine, self._policy_version = new, None, version
        self.note_versions(decision.principal)
        return decision, added, removed


# Callers that may act as any user: root (who can read every key on the node anyway).
_ANY_USER_UIDS = frozenset({0})


class _LazyBoxMfa(MfaService):
    """MfaService that opens the keyring only when a secret is needed."""

    def __init__(self, ac: AccessControl) -> None:
        super().__init__(ac._users, None, ac.config, ac.audit, clock=ac.clock)
        self._ac = ac

    def _require_box(self) -> SecretBox:
        return self._ac.keyring


def authorize_cli(
    home: Home,
    config: Config,
    action: str,
    resource: str,
    domain: str,
    audit: AuditSink,
    *,
    otp: str | None = None,
    clock: Callable[[], float] = time.time,
    sessions_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Decision:
    """Authorize the OS user's logged-in trainguard user (trainer preflight, CLI commands).

    Raises `AccessDenied` (exit 1) or `PolicyError`/`UsageError` (exit 2)."""
    ac = AccessControl.open(
        home, config, audit, sessions_dir=sessions_dir, environ=environ, clock=clock
    )
    return ac.require(action, resource, domain, otp=otp)
