"""The access-control part of `trainguard init`: default signed policy, users db, first admin."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.sink import AuditSink
from trainguard.policy.access import AccessControl
from trainguard.policy.actions import GLOBAL_DOMAIN, default_policy_lines
from trainguard.policy.config import PolicyConfig
from trainguard.policy.errors import PolicyError
from trainguard.policy.mfa import SecretBox
from trainguard.policy.rules import PolicyRules, RoleLink, check_name, rules_from_lines
from trainguard.policy.store import PolicyFile

__all__ = ["bootstrap_policy"]


def bootstrap_policy(
    home: Home,
    keyring: SecretBox,
    signing_key: SigningKey,
    admin_name: str,
    audit: AuditSink,
    clock: Callable[[], float] = time.time,
    *,
    admin_os_uid: int | None = None,
) -> dict[str, Any]:
    """Write the default signed policy (kept if a valid one exists), create the users db and
    the admin user (role `admin` in every project, ``*``) and enrol its TOTP.

    Returns ``{"name": admin_name, "otpauth_uri": ...}``; the URI carries the TOTP secret, so
    show it once and do not log it. Re-running it (``init --force``) keeps a valid policy and
    re-enrols the admin; a policy that fails verification is replaced by the default.
    """
    check_name("user", admin_name)
    config = load_config(home.config_path, {})
    pf = PolicyFile(home)
    rules: PolicyRules | None = None
    version = 0
    if pf.exists():
        try:
            rules, version = pf.load_versioned(signing_key.public_key(), audit, actor="init")
        except PolicyError:
            rules = None  # replaced below; the failure is already in the audit log
    if rules is None:
        rules = rules_from_lines(default_policy_lines())
    ac = AccessControl(
        home,
        config.section(PolicyConfig),
        config.node,
        audit,
        sessions_dir=Path("/nonexistent"),  # init never reads or writes a session
        clock=clock,
        keyring=keyring,
        signing_key=signing_key,
    )
    ac._rules, ac._policy_version = rules, version  # noqa: SLF001 - nothing to verify yet
    if not ac.users.exists(admin_name):
        ac.users.add(admin_name, os_uid=admin_os_uid)
        audit.record("user-added", "init", {"user": admin_name, "os_uid": admin_os_uid})
    ac.save_rules(
        rules.with_link(RoleLink(admin_name, "admin", GLOBAL_DOMAIN)),
        actor="init",
        change={"op": "bootstrap", "admin": admin_name},
    )
    enrolment = ac.enrol(admin_name, actor="init")
    ac.users.close()
    return {"name": admin_name, "otpauth_uri": enrolment.otpauth_uri}
