"""The access decision: who (principal) may do what (action) on which resource in which project.

`authorize()` returns a `Decision` or raises `AccessDenied` (a `Denied` subclass); it never
returns a bare bool. The denial the user sees is generic; the reason (the rule that denied,
a missing role, a stale second factor) goes to the audit log. Every decision is audited.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainguard.evidence.sink import AuditSink
from trainguard.policy.actions import ACTIONS
from trainguard.policy.config import PolicyConfig
from trainguard.policy.errors import Denied, SessionInvalid, StepUpRequired
from trainguard.policy.rbac import PolicyEngine
from trainguard.policy.sessions import Session

__all__ = ["Decision", "Principal", "PrincipalKind", "authorize"]


class PrincipalKind(enum.StrEnum):
    USER = "user"  # a person: needs a login session, and step-up MFA for privileged actions
    NODE = "node"  # a node identity proven by its mTLS certificate: no session, no privileges


@dataclass(frozen=True)
class Principal:
    """Who asks. `roles` is informational (e.g. from a certificate) and never trusted:
    decisions use the roles the signed policy gives `name` in the project."""

    name: str
    kind: PrincipalKind = PrincipalKind.USER
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """An allowed request, with the evidence that allowed it."""

    principal: str
    action: str
    resource: str
    domain: str
    reason: str
    mfa_age_s: float | None = None

    @property
    def allowed(self) -> bool:
        return True


def authorize(
    principal: Principal,
    action: str,
    resource: str,
    domain: str,
    *,
    engine: PolicyEngine,
    audit: AuditSink,
    session: Session | None = None,
    config: PolicyConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> Decision:
    """Decide one request. Returns a `Decision` or raises `Denied` (exit 1), audited either way.

    Users need a valid `session` for `principal`; privileged actions (config) also need its
    second factor verified within `step_up_seconds`. Node principals need no session and may
    never perform privileged actions.
    """
    cfg = config or PolicyConfig()
    now = clock()
    request = {
        "action": action,
        "resource": resource,
        "domain": domain,
        "kind": principal.kind.value,
    }
    privileged = action in cfg.privileged_actions

    def deny(exc: Denied) -> Denied:
        audit.record("access-denied", principal.name, {**request, "reason": exc.reason})
        return exc

    generic = f"access denied: {principal.name} may not {action} on {resource} in project {domain}"
    if action not in ACTIONS:
        raise deny(Denied(generic, reason=f"unknown action {action!r}"))
    mfa_age: float | None = None
    if principal.kind is PrincipalKind.USER:
        if session is None or session.user != principal.name:
            raise deny(SessionInvalid("no valid login session", reason="no session for this user"))
        if now >= session.expires_at:
            raise deny(SessionInvalid("your session has expired", reason="session expired"))
        mfa_age = now - session.mfa_at
        if privileged and not session.mfa_fresh(now, cfg.step_up_seconds):
            raise deny(
                StepUpRequired(
                    f"{action} needs a second factor verified within the last "
                    f"{cfg.step_up_seconds // 60 or 1} min",
                    reason=f"step-up MFA stale ({int(mfa_age)} s old)",
                )
            )
    elif privileged:
        raise deny(Denied(generic, reason="privileged action requested by a node identity"))
    verdict = engine.decide(principal.name, domain, resource, action)
    if not verdict.allowed:
        raise deny(Denied(generic, reason=verdict.reason))
    audit.record("access-allowed", principal.name, {**request, "reason": verdict.reason})
    return Decision(principal.name, action, resource, domain, verdict.reason, mfa_age)
