"""Access decided for a caller the agent identified by its OS uid (SO_PEERCRED): a caller logs
in only as the user its uid maps to, whatever code it presents; tokens are bound to the uid;
privileged actions need a fresh second factor."""

from __future__ import annotations

import pytest
from support.policy_env import Env, code_at
from trainguard.policy.access import AccessControl
from trainguard.policy.actions import DEFAULT_PRIVILEGED_ACTIONS, GLOBAL_DOMAIN
from trainguard.policy.errors import AuthenticationFailed, SessionInvalid, StepUpRequired
from trainguard.policy.sessions import MemorySessionStore

ROOT_UID, BOB_UID, EVE_UID = 1000, 1001, 1002


@pytest.fixture
def mapped(env: Env, admin: AccessControl) -> tuple[Env, str]:
    admin.map_user("root", ROOT_UID, actor="test")
    admin.add_user("bob", "researcher", "default", actor="root", os_uid=BOB_UID)
    bob_uri = admin.enrol("bob", actor="root").otpauth_uri
    return env, bob_uri


def _agent_ac(env: Env, uid: int, token: bytes | None = None) -> AccessControl:
    ac = env.ac(caller_uid=uid)
    return ac.with_sessions(MemorySessionStore(token, cluster="default", node="node-1"))


def test_a_caller_logs_in_as_the_user_its_uid_maps_to(mapped: tuple[Env, str]) -> None:
    env, bob_uri = mapped
    ac = _agent_ac(env, BOB_UID)
    session = ac.login("bob", env.fresh_code(bob_uri))
    assert (session.user, session.os_uid) == ("bob", BOB_UID)


def test_a_caller_cannot_log_in_as_another_user_even_with_that_users_valid_code(
    mapped: tuple[Env, str],
) -> None:
    """Regression: any local user with file access could log in as the admin."""
    env, _ = mapped
    with pytest.raises(AuthenticationFailed, match="second-factor verification failed"):
        _agent_ac(env, BOB_UID).login("root", env.fresh_code(env.admin_uri))
    # Refused before the code was checked: nothing counts against the admin.
    assert env.ac().users.failures_since("root", 0) == []
    assert env.audit.events[-1][2]["reason"] == "name is not the caller's user"


def test_an_unmapped_uid_is_refused(mapped: tuple[Env, str]) -> None:
    env, bob_uri = mapped
    with pytest.raises(AuthenticationFailed, match="not mapped"):
        _agent_ac(env, EVE_UID).login("bob", env.fresh_code(bob_uri))


def test_a_token_presented_from_another_uid_is_refused(mapped: tuple[Env, str]) -> None:
    env, bob_uri = mapped
    ac = _agent_ac(env, BOB_UID)
    ac.login("bob", env.fresh_code(bob_uri))
    token = ac.sessions.read_token()
    assert _agent_ac(env, BOB_UID, token).current_session().user == "bob"
    with pytest.raises(SessionInvalid):
        _agent_ac(env, EVE_UID, token).require("dataset:read", "/d", "default")


def test_root_may_log_in_as_any_user(mapped: tuple[Env, str]) -> None:
    env, bob_uri = mapped
    assert _agent_ac(env, 0).login("bob", env.fresh_code(bob_uri)).user == "bob"


@pytest.mark.parametrize("action", DEFAULT_PRIVILEGED_ACTIONS)
def test_every_privileged_action_refuses_a_stale_session(env: Env, action: str) -> None:
    """`key rotate` ran without any second factor; every privileged action now needs a fresh
    step-up, whatever the policy grants."""
    ac = env.ac()
    ac.login("root", env.fresh_code(env.admin_uri))
    env.clock.advance(ac.config.step_up_seconds + 1)
    with pytest.raises(StepUpRequired):
        ac.require(action, "/anything", GLOBAL_DOMAIN)
    # ... and a fresh code lets the same request through.
    env.clock.advance(30)
    decision = ac.require(action, "/anything", GLOBAL_DOMAIN,
                          otp=code_at(env.admin_uri, env.clock()))
    assert decision.action == action
