"""The signed policy file: loaded only when it verifies; a hand edit takes no effect until an
admin with MFA re-signs it."""

from __future__ import annotations

import pytest
from support.policy_env import Env
from trainguard.policy.access import AccessControl
from trainguard.policy.errors import Denied, PolicyFormatError, PolicyTampered
from trainguard.policy.rules import parse_policy
from trainguard.policy.store import PolicyFile


def _edit(env: Env, extra: str) -> None:
    pf = PolicyFile(env.home)
    text = pf.path.read_text()
    pf.path.write_text(text.replace("# trainguard-signature", extra + "\n# trainguard-signature"))


def test_a_hand_edit_takes_no_effect_and_is_audited(env: Env, admin: AccessControl) -> None:
    _edit(env, "g, mallory, admin, *")
    fresh = env.ac()
    with pytest.raises(PolicyTampered) as info:
        fresh.require("audit:read", "/x", "*")
    assert info.value.exit_code == 2
    assert "policy-tampered" in env.kinds()


@pytest.mark.parametrize("damage", ["drop-sig", "flip", "truncate", "empty"])
def test_damaged_files_are_refused(env: Env, damage: str) -> None:
    pf = PolicyFile(env.home)
    raw = pf.path.read_bytes()
    if damage == "drop-sig":
        raw = raw[: raw.rfind(b"# trainguard-signature")]
    elif damage == "flip":
        raw = raw.replace(b"checkpoint:read", b"checkpoint:write", 1)
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = b""
    pf.path.write_bytes(raw)
    with pytest.raises(PolicyTampered):
        pf.load(env.key.public_key(), env.audit)


def test_a_file_signed_by_another_key_is_refused(env: Env) -> None:
    from trainguard.crypto.signing import SigningKey

    pf = PolicyFile(env.home)
    pf.save_text(pf.unsigned_body() + "g, mallory, admin, *\n", SigningKey.generate(), version=99)
    with pytest.raises(PolicyTampered):
        pf.load(env.key.public_key(), env.audit)


def test_policy_sign_by_an_admin_with_mfa_accepts_a_reviewed_edit(
    env: Env, admin: AccessControl
) -> None:
    admin.add_user("bob", "researcher", "proj1", actor="root")
    _edit(env, "g, bob, ml-engineer, proj1")
    env.clock.advance(301)  # the login's step-up has gone stale
    signer = env.ac()
    with pytest.raises(Denied):
        signer.sign_current(otp=None)
    decision, added, removed = signer.sign_current(otp=env.fresh_code(env.admin_uri))
    assert decision.principal == "root"
    assert added == ["g, bob, ml-engineer, proj1"] and removed == []
    assert env.ac().engine.decide("bob", "proj1", "/x", "train:launch").allowed
    assert "policy-signed" in env.kinds()
    assert env.ac().users.get("bob").roles == ("ml-engineer", "researcher")


def test_a_non_admin_cannot_sign_even_if_the_edit_makes_them_admin(
    env: Env, admin: AccessControl
) -> None:
    admin.add_user("bob", "researcher", "proj1", actor="root")
    uri = admin.enrol("bob", actor="root").otpauth_uri
    bob = env.ac()
    bob.sessions = type(bob.sessions)(env.tmp / "bob", cluster="default", node="node-1")
    bob.login("bob", env.fresh_code(uri))
    _edit(env, "g, bob, admin, *")
    with pytest.raises(Denied):
        bob.sign_current(otp=env.fresh_code(uri))
    with pytest.raises(PolicyTampered):
        env.ac().engine


def test_a_malformed_edit_cannot_be_signed(env: Env, admin: AccessControl) -> None:
    _edit(env, "p, bob, proj1, /x, dataset:read")  # missing the effect
    with pytest.raises(PolicyFormatError, match=":12:|:13:"):
        env.ac().sign_current(otp=env.fresh_code(env.admin_uri))


@pytest.mark.parametrize(
    "line",
    [
        "p, bob, proj1, /x, dataset:read",
        "p, bob, proj1, /x, dataset:read, maybe",
        "p, bob, proj1, /x, dataset:destroy, allow",
        "p, Bob, proj1, /x, dataset:read, allow",
        "p, bob, proj 1, /x, dataset:read, allow",
        "p, bob, proj1, /x*y, dataset:read, allow",
        "g, bob, admin",
        "g, bob, admin, *, extra",
        "x, bob, admin, *",
        "p, bob, proj1, /x, dataset:read, allow, extra",
    ],
)
def test_malformed_lines_are_refused_with_their_line_number(line: str) -> None:
    with pytest.raises(PolicyFormatError, match=r"policy:2: "):
        parse_policy("p, admin, *, *, *, allow\n" + line + "\n")


def test_render_and_parse_round_trip(env: Env, admin: AccessControl) -> None:
    admin.grant("researcher", "checkpoint:*", "/ckpt/*", "proj1", deny=True, actor="root")
    rules = admin.rules
    assert parse_policy(rules.render()) == rules


def test_an_older_signed_policy_put_back_is_refused_as_rollback(
    env: Env, admin: AccessControl
) -> None:
    """Regression: the signature carried no version, so an older signed policy (say, from
    before a revocation) was accepted silently."""
    pf = PolicyFile(env.home)
    before = pf.path.read_bytes()  # bob is not admin here
    admin.add_user("bob", "admin", "*", actor="root")
    assert any(lk.member == "bob" for lk in env.ac().rules.links)
    pf.path.write_bytes(before)  # put the older signed copy back: the signature still verifies
    pf.last_good.write_bytes(before)
    with pytest.raises(PolicyTampered, match="older than the newest version"):
        env.ac().require("audit:read", "/x", "*")
    assert env.audit.events[-1][0] == "policy-tampered"


def test_an_older_user_database_put_back_is_refused(env: Env, admin: AccessControl) -> None:
    import shutil

    shutil.copy(env.home.users_db, env.tmp / "users.old")
    admin.add_user("bob", "researcher", "default", actor="root")  # users version recorded
    admin.users.close()
    for suffix in ("-wal", "-shm"):
        (env.home.users_db.parent / (env.home.users_db.name + suffix)).unlink(missing_ok=True)
    shutil.copy(env.tmp / "users.old", env.home.users_db)
    with pytest.raises(PolicyTampered, match="older than the newest version"):
        env.ac().users  # noqa: B018


def test_every_signed_change_raises_the_policy_version(env: Env, admin: AccessControl) -> None:
    versions = [d["version"] for k, _, d in env.audit.events
                if k == "state-version" and d["name"] == "policy"]
    admin.grant("researcher", "audit:read", "*", "default", deny=False, actor="root")
    admin.add_user("carol", "auditor", "default", actor="root")
    after = [d["version"] for k, _, d in env.audit.events
             if k == "state-version" and d["name"] == "policy"]
    assert after[len(versions):] == [versions[-1] + 1, versions[-1] + 2]


def test_rollback_and_hand_edits_are_reported_as_incidents(env: Env, admin: AccessControl) -> None:
    pf = PolicyFile(env.home)
    before = pf.path.read_bytes()
    admin.add_user("bob", "admin", "*", actor="root")
    pf.path.write_bytes(before)
    reported: list[tuple[str, str, dict]] = []
    ac = env.ac()
    ac.report_incident = lambda kind, sev, ev: reported.append((kind, sev, dict(ev)))
    with pytest.raises(PolicyTampered):
        ac.require("audit:read", "/x", "*")
    _edit(env, "g, mallory, admin, *")
    ac = env.ac()
    ac.report_incident = lambda kind, sev, ev: reported.append((kind, sev, dict(ev)))
    with pytest.raises(PolicyTampered):
        ac.require("audit:read", "/x", "*")
    assert [(k, s) for k, s, _ in reported] == [("policy-tampered", "critical")] * 2
    assert "older than" in reported[0][2]["reason"]
