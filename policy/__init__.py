"""Access control: RBAC with projects on casbin, TOTP MFA, login sessions and step-up.

Public API (other areas import only these names)::

    authorize(principal, action, resource, domain, *, engine, audit, session=None, ...) -> Decision
    authorize_cli(home, config, action, resource, domain, audit, *, otp=None) -> Decision
    bootstrap_policy(home, keyring, signing_key, admin_name, audit) -> {"name", "otpauth_uri"}
    UserStore(home.users_db).list_users() -> [UserRecord(name, roles, mfa_enrolled, ...)]
    PRIVILEGED_ACTIONS, ACTIONS, DEFAULT_ROLES
"""

from trainguard.policy.access import AccessControl, authorize_cli
from trainguard.policy.actions import ACTIONS, DEFAULT_ROLES, GLOBAL_DOMAIN
from trainguard.policy.actions import DEFAULT_PRIVILEGED_ACTIONS as PRIVILEGED_ACTIONS
from trainguard.policy.bootstrap import bootstrap_policy
from trainguard.policy.config import PolicyConfig
from trainguard.policy.decision import Decision, Principal, PrincipalKind, authorize
from trainguard.policy.errors import (
    AccessDenied,
    AuthenticationFailed,
    Denied,
    LockedOut,
    PolicyError,
    PolicyFormatError,
    PolicyTampered,
    SessionInvalid,
    StepUpRequired,
    UnknownName,
)
from trainguard.policy.mfa import MfaService
from trainguard.policy.rbac import PolicyEngine, casbin_enforcer
from trainguard.policy.rules import Grant, PolicyRules, RoleLink, parse_policy
from trainguard.policy.sessions import Session, SessionStore
from trainguard.policy.store import PolicyFile
from trainguard.policy.users import UserRecord, UserStore

__all__ = [
    "ACTIONS",
    "DEFAULT_ROLES",
    "GLOBAL_DOMAIN",
    "PRIVILEGED_ACTIONS",
    "AccessControl",
    "AccessDenied",
    "AuthenticationFailed",
    "Decision",
    "Denied",
    "Grant",
    "LockedOut",
    "MfaService",
    "PolicyConfig",
    "PolicyEngine",
    "PolicyError",
    "PolicyFile",
    "PolicyFormatError",
    "PolicyRules",
    "PolicyTampered",
    "Principal",
    "PrincipalKind",
    "RoleLink",
    "Session",
    "SessionInvalid",
    "SessionStore",
    "StepUpRequired",
    "UnknownName",
    "UserRecord",
    "UserStore",
    "authorize",
    "authorize_cli",
    "bootstrap_policy",
    "casbin_enforcer",
    "parse_policy",
]
