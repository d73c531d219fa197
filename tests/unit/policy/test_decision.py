"""authorize(): Decision or AccessDenied, audited, generic to the user."""

from __future__ import annotations

import pytest
from support.policy_env import Env
from trainguard.policy import PRIVILEGED_ACTIONS
from trainguard.policy.access import AccessControl
from trainguard.policy.decision import Principal, PrincipalKind, authorize
from trainguard.policy.errors import Denied, PolicyFormatError, SessionInvalid, UnknownName
from trainguard.policy.rbac import PolicyEngine
from trainguard.policy.rules import PolicyRules, rules_from_lines


def test_a_denial_is_generic_for_the_user_and_specific_in_the_audit_log(
    env: Env, admin: AccessControl
) -> None:
    admin.add_user("alice", "researcher", "proj1", actor="root")
    admin.grant("alice", "dataset:read", "/data/secret/*", "proj1", deny=True, actor="root")
    session = admin.current_session()
    engine = admin.engine
    with pytest.raises(Denied) as info:
        authorize(
            Principal("alice"),
            "dataset:read",
            "/data/secret/x",
            "proj1",
            engine=engine,
            audit=env.audit,
            session=session.__class__(**{**session.__dict__, "user": "alice"}),
            clock=env.clock,
        )
    assert "rule" not in str(info.value) and info.value.exit_code == 1
    kind, actor, data = env.audit.events[-1]
    assert (kind, actor) == ("access-denied", "alice")
    assert "p, alice, proj1, /data/secret/*, dataset:read, deny" in data["reason"]


def test_an_allowed_request_returns_a_decision_and_is_audited(
    env: Env, admin: AccessControl
) -> None:
    d = admin.require("checkpoint:read", "/ckpt/1", "*")
    assert d.allowed and d.principal == "root" and "admin" in d.reason
    assert env.audit.events[-1][0] == "access-allowed"


def test_users_without_a_session_are_denied() -> None:
    engine = PolicyEngine(rules_from_lines(["p, bob, *, *, *, allow"]))
    from trainguard.evidence.sink import NullSink

    with pytest.raises(SessionInvalid):
        authorize(Principal("bob"), "dataset:read", "/x", "p", engine=engine, audit=NullSink())


def test_nodes_need_no_session_but_get_no_privileged_action() -> None:
    from trainguard.evidence.sink import NullSink

    engine = PolicyEngine(rules_from_lines(["p, admin, *, *, *, allow", "g, n1, admin, *"]))
    node = Principal("n1", PrincipalKind.NODE)
    authorize(node, "audit:submit", "/audit", "p", engine=engine, audit=NullSink())
    for action in PRIVILEGED_ACTIONS:
        with pytest.raises(Denied):
            authorize(node, action, "/x", "p", engine=engine, audit=NullSink())


def test_an_empty_policy_denies(env: Env) -> None:
    from trainguard.evidence.sink import NullSink

    engine = PolicyEngine(PolicyRules())
    with pytest.raises(Denied):
        authorize(
            Principal("n", PrincipalKind.NODE),
            "audit:submit",
            "/a",
            "p",
            engine=engine,
            audit=NullSink(),
        )


@pytest.mark.parametrize(
    ("action", "resource", "domain", "error"),
    [
        ("dataset:delete", "/x", "*", UnknownName),  # unknown action
        ("dataset:read", "/x", "nope", UnknownName),  # unknown project
        ("dataset:read", "/x", "Bad Project", PolicyFormatError),
        ("dataset:read", "/x*y", "*", PolicyFormatError),  # '*' only at the end
        ("dataset:read", "", "*", PolicyFormatError),
    ],
)
def test_bad_requests_are_usage_errors_and_audited(
    env: Env, admin: AccessControl, action, resource, domain, error
) -> None:
    with pytest.raises(error) as info:
        admin.require(action, resource, domain)
    assert info.value.exit_code == 2
    assert env.audit.events[-1][0] == "access-denied"


def test_unknown_role_on_user_add_is_refused(env: Env, admin: AccessControl) -> None:
    with pytest.raises(UnknownName, match="unknown role"):
        admin.add_user("carol", "superuser", "proj1", actor="root")
    with pytest.raises(UnknownName):
        admin.add_user("admin", "researcher", "proj1", actor="root")  # a role's name


def test_project_admin_cannot_manage_users_elsewhere(env: Env, admin: AccessControl) -> None:
    admin.add_user("pa", "admin", "proj1", actor="root")
    uri = admin.enrol("pa", actor="root").otpauth_uri
    admin.add_user("zed", "researcher", "proj2", actor="root")
    pa = env.ac()
    pa.sessions = type(pa.sessions)(env.tmp / "pa", cluster="default", node="node-1")
    pa.login("pa", env.fresh_code(uri))
    pa.require("user:manage", "/users/new", "proj1")
    with pytest.raises(Denied):
        pa.require_for_user("zed", otp=None)
    with pytest.raises(Denied):
        pa.require("policy:edit", "/policy", "*")
