"""The fast engine decides exactly as plain casbin does; deny wins; roles inherit; empty denies."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.policy.actions import ACTIONS, default_policy_lines
from trainguard.policy.rbac import PolicyEngine, casbin_enforcer
from trainguard.policy.rules import Grant, PolicyRules, RoleLink, rules_from_lines

USERS = ["u0", "u1", "u2", "u3"]
ROLES = ["r0", "r1", "r2", "r3"]
DOMAINS = ["d0", "d1", "*"]
RESOURCES = ["*", "/a/*", "/a/b", "/a/b/*", "/c", "/c*"]
REQ_RESOURCES = ["/a/b", "/a/b/c", "/a/x", "/c", "/cd", "/z"]
ACTS = ["dataset:read", "checkpoint:read", "checkpoint:*", "*", "train:launch"]
REQ_ACTS = ["dataset:read", "checkpoint:read", "checkpoint:write", "train:launch"]

grants = st.builds(
    Grant,
    st.sampled_from(ROLES + USERS[:1]),
    st.sampled_from(DOMAINS),
    st.sampled_from(RESOURCES),
    st.sampled_from(ACTS),
    st.sampled_from(["allow", "allow", "deny"]),
)
links = st.builds(
    RoleLink, st.sampled_from(USERS + ROLES), st.sampled_from(ROLES), st.sampled_from(DOMAINS)
)
policies = st.builds(
    lambda g, lk: PolicyRules(tuple(dict.fromkeys(g)), tuple(dict.fromkeys(lk))),
    st.lists(grants, max_size=12),
    st.lists(links, max_size=8),
)
requests = st.tuples(
    st.sampled_from(USERS + ROLES),
    st.sampled_from(DOMAINS[:2] + ["*"]),
    st.sampled_from(REQ_RESOURCES),
    st.sampled_from(REQ_ACTS),
)


def _all_requests() -> list[tuple[str, str, str, str]]:
    return [
        (s, d, o, a)
        for s in USERS + ROLES
        for d in ("d0", "d1", "*")
        for o in REQ_RESOURCES
        for a in REQ_ACTS
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies)
def test_engine_equals_plain_casbin_on_random_policies(rules: PolicyRules) -> None:
    engine = PolicyEngine(rules)
    reference = casbin_enforcer(rules)
    for req in _all_requests():
        assert engine.decide(*req).allowed == reference.enforce(*req), req


@settings(max_examples=150, deadline=None)
@given(policies, requests)
def test_an_explicit_deny_always_wins(rules: PolicyRules, req: tuple[str, str, str, str]) -> None:
    sub, dom, obj, act = req
    denied = rules.with_grant(Grant(sub, dom, obj, act, "deny"))
    assert not PolicyEngine(denied).decide(*req).allowed
    # Adding allows never lifts a deny.
    more = denied.with_grant(Grant(sub, "*", "*", "*", "allow"))
    assert not PolicyEngine(more).decide(*req).allowed


@settings(max_examples=150, deadline=None)
@given(policies, requests, st.sampled_from(ROLES))
def test_a_member_inherits_what_its_role_may_do(
    rules: PolicyRules, req: tuple[str, str, str, str], role: str
) -> None:
    sub, dom, obj, act = req
    if sub == role:
        return
    engine = PolicyEngine(rules)
    linked = PolicyEngine(rules.with_link(RoleLink(sub, role, dom)))
    # Whatever the role may do in the project, the new member may do too, unless a deny
    # reaches the member itself.
    role_ok = engine.decide(role, dom, obj, act).allowed
    if role_ok:
        has_deny = any(g.effect == "deny" for g in rules.grants)
        assert linked.decide(*req).allowed or has_deny
    assert linked.decide(*req).allowed == casbin_enforcer(
        rules.with_link(RoleLink(sub, role, dom))
    ).enforce(*req)


@given(requests)
def test_an_empty_policy_denies_everything(req: tuple[str, str, str, str]) -> None:
    assert not PolicyEngine(PolicyRules()).decide(*req).allowed


def test_default_grants_match_the_issue() -> None:
    rules = rules_from_lines(
        [
            *default_policy_lines(),
            "g, eve, ml-engineer, p1",
            "g, rita, researcher, p1",
            "g, al, auditor, p1",
            "g, n1, node, *",
            "g, root, admin, *",
        ]
    )
    engine = PolicyEngine(rules)
    expected = {
        "rita": {"dataset:read", "checkpoint:read", "checkpoint:write"},
        "eve": {
            "dataset:read",
            "checkpoint:read",
            "checkpoint:write",
            "train:launch",
            "checkpoint:export",
        },
        "al": {"audit:read"},
        "n1": {"audit:submit", "incident:submit"},
        "root": set(ACTIONS),
    }
    for user, allowed in expected.items():
        got = {a for a in ACTIONS if engine.decide(user, "p1", "/any/thing", a).allowed}
        assert got == allowed, user
    # A project role does not leak into another project.
    assert not engine.decide("eve", "p2", "/x", "dataset:read").allowed


def test_differential_thousands_of_random_requests_on_a_large_policy() -> None:
    rng = random.Random(7)
    users = [f"user{i}" for i in range(120)]
    roles = [f"role{i}" for i in range(15)] + ["researcher", "ml-engineer", "admin"]
    projects = [f"proj{i}" for i in range(5)]
    acts = list(ACTIONS)
    lines = list(default_policy_lines())
    for r in roles[:15]:
        for _ in range(12):
            d = rng.choice(projects + ["*"])
            res = rng.choice(["*", f"/data/{rng.randrange(5)}/*", f"/ckpt/{rng.randrange(5)}"])
            eft = "deny" if rng.random() < 0.15 else "allow"
            lines.append(f"p, {r}, {d}, {res}, {rng.choice(acts + ['checkpoint:*'])}, {eft}")
        if rng.random() < 0.5:
            lines.append(f"g, {r}, {rng.choice(roles)}, {rng.choice(projects + ['*'])}")
    for u in users:
        for _ in range(rng.randrange(1, 3)):
            lines.append(f"g, {u}, {rng.choice(roles)}, {rng.choice(projects + ['*'])}")
        if rng.random() < 0.1:
            lines.append(
                f"p, {u}, {rng.choice(projects)}, /data/{rng.randrange(5)}/*, dataset:read, deny"
            )
    rules = rules_from_lines(lines)
    engine, reference = PolicyEngine(rules), casbin_enforcer(rules)
    allowed = 0
    for _ in range(3000):
        req = (
            rng.choice(users + roles),
            rng.choice(projects + ["*"]),
            rng.choice(["/data/1/x", "/data/3/y", "/ckpt/2", "/ckpt/4", "/other"]),
            rng.choice(acts),
        )
        got = engine.decide(*req).allowed
        assert got == reference.enforce(*req), req
        allowed += got
    assert 0 < allowed < 3000  # the sample exercises both outcomes
