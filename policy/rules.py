"""The policy as data: parsed, validated casbin lines.

File format (one rule per line, ``#`` comments and blank lines allowed)::

    p, SUBJECT, DOMAIN, RESOURCE, ACTION, allow|deny   # SUBJECT is a role or a user
    g, MEMBER, ROLE, DOMAIN                            # MEMBER (user or role) has ROLE in DOMAIN

``DOMAIN`` is a project name or ``*`` (every project). Lines are validated strictly: a line that
casbin would read differently from what a reviewer sees is refused with its line number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainguard.policy.actions import (
    DOMAIN_RE,
    GLOBAL_DOMAIN,
    NAME_RE,
    RESOURCE_RE,
    action_pattern_ok,
)
from trainguard.policy.errors import PolicyFormatError

__all__ = ["Grant", "PolicyRules", "RoleLink", "parse_policy"]

EFFECTS = ("allow", "deny")


@dataclass(frozen=True, order=True)
class Grant:
    """A `p` line: `subject` may (allow) or may not (deny) do `action` on `resource` in `domain`."""

    subject: str
    domain: str
    resource: str
    action: str
    effect: str = "allow"

    def line(self) -> str:
        return f"p, {self.subject}, {self.domain}, {self.resource}, {self.action}, {self.effect}"

    def casbin(self) -> list[str]:
        return [self.subject, self.domain, self.resource, self.action, self.effect]


@dataclass(frozen=True, order=True)
class RoleLink:
    """A `g` line: `member` (a user or a role) has `role` in `domain`."""

    member: str
    role: str
    domain: str

    def line(self) -> str:
        return f"g, {self.member}, {self.role}, {self.domain}"

    def casbin(self) -> list[str]:
        return [self.member, self.role, self.domain]


@dataclass(frozen=True)
class PolicyRules:
    """An immutable rule set. Changes return a new object (and so a new engine)."""

    grants: tuple[Grant, ...] = ()
    links: tuple[RoleLink, ...] = ()

    def render(self) -> str:
        """The file text: grants then links, in a stable order, one per line."""
        head = "# trainguard policy (casbin, RBAC with projects). Signed: edit with `trainguard policy`.\n"
        body = [g.line() for g in self.grants] + [lk.line() for lk in self.links]
        return head + "\n".join(body) + "\n"

    def role_names(self, users: Iterable[str] = ()) -> frozenset[str]:
        """Names used as roles (link targets and grant subjects), minus the given users."""
        names = {lk.role for lk in self.links} | {g.subject for g in self.grants}
        return frozenset(names - set(users))

    def domains(self) -> frozenset[str]:
        names = {g.domain for g in self.grants} | {lk.domain for lk in self.links}
        return frozenset(names - {GLOBAL_DOMAIN})

    def with_grant(self, grant: Grant) -> PolicyRules:
        if grant in self.grants:
            return self
        return PolicyRules(tuple(sorted((*self.grants, grant), key=_grant_key)), self.links)

    def without_grant(self, grant: Grant) -> PolicyRules:
        return PolicyRules(tuple(g for g in self.grants if g != grant), self.links)

    def with_link(self, link: RoleLink) -> PolicyRules:
        if link in self.links:
            return self
        return PolicyRules(self.grants, (*self.links, link))

    def without_member(self, member: str) -> PolicyRules:
        return PolicyRules(
            tuple(g for g in self.grants if g.subject != member),
            tuple(lk for lk in self.links if lk.member != member),
        )

    def links_of(self, member: str) -> list[RoleLink]:
        return [lk for lk in self.links if lk.member == member]


def _grant_key(g: Grant) -> tuple[str, str, str, str, str]:
    return (g.domain != GLOBAL_DOMAIN and "1" or "0", g.domain, g.subject, g.action, g.resource)


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise PolicyFormatError(
            f"invalid {kind} name {value!r}",
            tip=f"a {kind} name is 1-64 characters: lower-case letters, digits, '.', '_', '-', "
            "starting with a letter",
        )
    return value


def check_domain(value: str) -> str:
    if not DOMAIN_RE.fullmatch(value):
        raise PolicyFormatError(
            f"invalid project name {value!r}",
            tip="a project is '*' (every project) or 1-64 characters: lower-case letters, "
            "digits, '.', '_', '-'",
        )
    return value


def check_resource(value: str) -> str:
    if not RESOURCE_RE.fullmatch(value):
        raise PolicyFormatError(
            f"invalid resource {value!r}",
            tip="a resource is a path such as /checkpoints/run-1/* ('*' only at the end) or '*'",
        )
    return value


def check_action_pattern(value: str) -> str:
    if not action_pattern_ok(value):
        raise PolicyFormatError(
            f"unknown action {value!r}",
            tip="see `trainguard policy show` or the README for the action vocabulary; a grant "
            "may also name 'area:*' or '*'",
        )
    return value


def parse_line(line: str) -> Grant | RoleLink | None:
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    fields = [f.strip() for f in text.split(",")]
    if fields[0] == "p":
        if len(fields) != 6:
            raise PolicyFormatError(
                "a 'p' line needs 6 fields: p, SUBJECT, DOMAIN, RESOURCE, ACTION, EFFECT"
            )
        _, sub, dom, res, act, eft = fields
        if eft not in EFFECTS:
            raise PolicyFormatError(f"effect must be allow or deny, not {eft!r}")
        return Grant(
            check_name("subject", sub),
            check_domain(dom),
            check_resource(res),
            check_action_pattern(act),
            eft,
        )
    if fields[0] == "g":
        if len(fields) != 4:
            raise PolicyFormatError("a 'g' line needs 4 fields: g, MEMBER, ROLE, DOMAIN")
        _, member, role, dom = fields
        return RoleLink(check_name("member", member), check_name("role", role), check_domain(dom))
    raise PolicyFormatError(f"a line must start with 'p' or 'g', not {fields[0]!r}")


def parse_policy(text: str, *, source: str = "policy") -> PolicyRules:
    """Parse and validate a policy file; the first bad line is named with its number."""
    grants: list[Grant] = []
    links: list[RoleLink] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            rule = parse_line(line)
        except PolicyFormatError as exc:
            raise PolicyFormatError(f"{source}:{number}: {exc.message}", tip=exc.tip) from exc
        if isinstance(rule, Grant):
            grants.append(rule)
        elif isinstance(rule, RoleLink):
            links.append(rule)
    return PolicyRules(tuple(dict.fromkeys(grants)), tuple(dict.fromkeys(links)))


def rules_from_lines(lines: Iterable[str]) -> PolicyRules:
    return parse_policy("\n".join(lines))
