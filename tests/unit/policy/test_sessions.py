"""Login sessions: signed, 0600, bound to user/node/cluster; refused when expired, edited,
for a removed or locked user, or from another node."""

from __future__ import annotations

import json
import os
import stat

import pytest
from support.policy_env import Env
from trainguard.core.config import NodeConfig
from trainguard.policy.access import AccessControl
from trainguard.policy.errors import Denied, SessionInvalid, StepUpRequired


def test_login_writes_a_private_signed_token(env: Env, admin: AccessControl) -> None:
    path = admin.sessions.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert admin.current_session().user == "root"
    assert "login" in env.kinds()
    assert "secret" not in path.read_text()


def test_a_session_expires_after_twelve_hours(env: Env, admin: AccessControl) -> None:
    env.clock.advance(12 * 3600 - 60)
    admin.current_session()
    env.clock.advance(120)
    with pytest.raises(SessionInvalid, match="expired"):
        admin.current_session()
    assert env.audit.events[-1][0] == "session-refused"


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["payload"].__setitem__("user", "alice"),
        lambda d: d["payload"].__setitem__("expires_at", d["payload"]["expires_at"] + 86400),
        lambda d: d["payload"].__setitem__("mfa_at", d["payload"]["mfa_at"] + 3600),
        lambda d: d.__setitem__("sig", d["sig"][:-4] + "AAA="),
        lambda d: d.pop("sig"),
    ],
)
def test_an_edited_token_is_refused(env: Env, admin: AccessControl, edit) -> None:
    path = admin.sessions.path
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    with pytest.raises(SessionInvalid):
        admin.current_session()


def test_garbage_and_loose_modes_are_refused(env: Env, admin: AccessControl) -> None:
    path = admin.sessions.path
    os.chmod(path, 0o644)
    with pytest.raises(SessionInvalid):
        admin.current_session()
    path.write_bytes(b"\x00not json")
    os.chmod(path, 0o600)
    with pytest.raises(SessionInvalid):
        admin.current_session()


def test_a_token_from_another_node_or_cluster_is_refused(env: Env, admin: AccessControl) -> None:
    other = env.ac(node=NodeConfig(cluster="default", name="node-2"))
    other.sessions.path.parent.mkdir(parents=True, exist_ok=True)
    other.sessions.path.write_bytes(admin.sessions.path.read_bytes())
    os.chmod(other.sessions.path, 0o600)
    with pytest.raises(SessionInvalid):
        other.current_session()


def test_removed_and_locked_users_lose_their_sessions(env: Env, admin: AccessControl) -> None:
    admin.add_user("alice", "researcher", "proj1", actor="root")
    uri = admin.enrol("alice", actor="root").otpauth_uri
    alice = env.ac()
    alice.sessions = type(alice.sessions)(
        env.tmp / "alice-sessions", cluster="default", node="node-1"
    )
    alice.login("alice", env.fresh_code(uri))
    alice.current_session()
    alice.users.lock("alice", env.clock())
    with pytest.raises(SessionInvalid, match="locked"):
        alice.current_session()
    alice.users.unlock("alice")
    alice.current_session()
    admin.remove_user("alice", actor="root")
    with pytest.raises(SessionInvalid):
        alice.current_session()
    # A new user with the same name does not inherit the old token.
    admin.add_user("alice", "researcher", "proj1", actor="root")
    with pytest.raises(SessionInvalid):
        alice.current_session()


def test_privileged_actions_need_step_up_within_five_minutes(
    env: Env, admin: AccessControl
) -> None:
    admin.require("key:rotate", "/keys", "*")
    env.clock.advance(301)
    with pytest.raises(StepUpRequired):
        admin.require("key:rotate", "/keys", "*")
    admin.require("audit:read", "/audit", "*")  # not privileged: the session is enough
    admin.require("key:rotate", "/keys", "*", otp=env.fresh_code(env.admin_uri))
    env.clock.advance(200)
    admin.require("key:rotate", "/keys", "*")  # the step-up was saved into the session
    with pytest.raises(Denied):
        admin.require("key:rotate", "/keys", "*", otp="000000")


def test_login_with_a_wrong_code_or_unknown_user_says_nothing_specific(env: Env) -> None:
    ac = env.ac()
    msgs = set()
    for user, code in (("root", "000001"), ("ghost", "123456")):
        with pytest.raises(Denied) as info:
            ac.login(user, code)
        msgs.add(type(info.value).__name__)
        assert info.value.exit_code == 1
    assert "login-failed" in env.kinds()
    assert not ac.sessions.path.exists()
