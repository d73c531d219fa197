"""The action vocabulary, the default roles and their default grants.

Actions (``area:verb``; a grant may name one action, ``area:*`` or ``*``):

==================== ==================================================== ===========
action               what it allows                                       privileged
==================== ==================================================== ===========
train:launch         start a training job (`trainguard train`)            yes
checkpoint:read      load a checkpoint                                    no
checkpoint:write     write a checkpoint                                   no
checkpoint:export    copy a checkpoint out of the cluster (unsealed)      yes
dataset:read         read a dataset                                       no
key:rotate           rotate or retire keyring versions, rewrap files      yes
policy:edit          grant, revoke, re-sign the policy                    yes
user:manage          add, enrol, unlock, remove users; recovery codes     yes
audit:read           read the audit log and reports                       no
agent:admin          operate the node agent (install, stop, hooks)        no
audit:submit         submit audit events (node identities)                no
incident:submit      report incidents (node identities)                   no
==================== ==================================================== ===========

Resources are paths matched with casbin's ``keyMatch`` (``/checkpoints/run-1/*``); ``*`` is
any resource of the project. Projects are casbin domains; ``*`` as a domain means every project.
"""

from __future__ import annotations

import re

__all__ = [
    "ACTIONS",
    "DEFAULT_PRIVILEGED_ACTIONS",
    "DEFAULT_ROLES",
    "GLOBAL_DOMAIN",
    "default_policy_lines",
]

ACTIONS: dict[str, str] = {
    "train:launch": "start a training job",
    "checkpoint:read": "load a checkpoint",
    "checkpoint:write": "write a checkpoint",
    "checkpoint:export": "copy a checkpoint out of the cluster",
    "dataset:read": "read a dataset",
    "key:rotate": "rotate or retire keyring versions",
    "policy:edit": "grant, revoke and re-sign the policy",
    "user:manage": "add, enrol, unlock and remove users",
    "audit:read": "read the audit log and reports",
    "agent:admin": "operate the node agent",
    "audit:submit": "submit audit events (nodes)",
    "incident:submit": "report incidents (nodes)",
}

DEFAULT_PRIVILEGED_ACTIONS: tuple[str, ...] = (
    "key:rotate",
    "policy:edit",
    "user:manage",
    "checkpoint:export",
    "train:launch",
)

GLOBAL_DOMAIN = "*"

DEFAULT_ROLES: dict[str, str] = {
    "admin": "everything, in every project it is assigned to",
    "ml-engineer": "researcher + train:launch, checkpoint:export",
    "researcher": "dataset:read, checkpoint:read, checkpoint:write",
    "auditor": "audit:read",
    "node": "audit:submit, incident:submit (node identities)",
}

_DEFAULT_GRANTS: tuple[tuple[str, str], ...] = (
    ("admin", "*"),
    ("researcher", "dataset:read"),
    ("researcher", "checkpoint:read"),
    ("researcher", "checkpoint:write"),
    ("ml-engineer", "train:launch"),
    ("ml-engineer", "checkpoint:export"),
    ("auditor", "audit:read"),
    ("node", "audit:submit"),
    ("node", "incident:submit"),
)


def default_policy_lines() -> list[str]:
    """The policy `init` writes: default grants in every project, ml-engineer > researcher."""
    lines = [f"p, {role}, *, *, {act}, allow" for role, act in _DEFAULT_GRANTS]
    lines.append("g, ml-engineer, researcher, *")
    return lines


NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
DOMAIN_RE = re.compile(r"^(\*|[a-z0-9][a-z0-9._-]{0,63})$")
# Resources: a path-like string, '*' only as the last character (keyMatch's wildcard).
RESOURCE_RE = re.compile(r"^(\*|[A-Za-z0-9_./:@+=-]{1,512}\*?)$")


def action_pattern_ok(pattern: str) -> bool:
    """An action in a grant: a known action, ``area:*`` of a known area, or ``*``."""
    if pattern == "*" or pattern in ACTIONS:
        return True
    if pattern.endswith(":*"):
        area = pattern[:-1]
        return any(a.startswith(area) for a in ACTIONS)
    return False
