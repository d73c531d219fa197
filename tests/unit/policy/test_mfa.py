"""TOTP: drift, replay, backoff, lockout, unlock, recovery codes, encrypted secrets."""

from __future__ import annotations

import sqlite3

import pyotp
import pytest
from support.policy_env import Env, code_at, secret_of
from trainguard.policy.config import PolicyConfig
from trainguard.policy.errors import AuthenticationFailed, LockedOut
from trainguard.policy.mfa import match_step


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_code_from_the_enrolled_secret_is_accepted_once(env: Env) -> None:
    mfa = env.ac().mfa
    code = env.fresh_code(env.admin_uri)
    mfa.verify("root", code)
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", code)  # replay in the same step
    env.clock.advance(10)
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", code)  # still the same step, still refused
    assert ("mfa-failed", "root") in [(k, a) for k, a, _ in env.audit.events]
    reasons = [d["reason"] for k, _, d in env.audit.events if k == "mfa-failed"]
    assert any("replay" in r for r in reasons)


def test_one_step_of_drift_either_side_is_accepted_two_are_not(env: Env) -> None:
    mfa = env.ac().mfa
    env.clock.advance(300)
    now = env.clock()
    mfa.verify("root", code_at(env.admin_uri, now - 30))  # the authenticator is slow
    env.clock.advance(300)
    now = env.clock()
    mfa.verify("root", code_at(env.admin_uri, now + 30))  # or fast
    env.clock.advance(300)
    now = env.clock()
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", code_at(env.admin_uri, now - 60))
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", code_at(env.admin_uri, now + 90))


def test_an_older_step_is_refused_after_a_newer_one_was_used(env: Env) -> None:
    mfa = env.ac().mfa
    env.clock.advance(120)
    now = env.clock()
    mfa.verify("root", code_at(env.admin_uri, now + 30))
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", code_at(env.admin_uri, now))  # step older than the last accepted


def test_backoff_after_five_failures_then_lockout_after_ten(env: Env) -> None:
    mfa = env.ac().mfa
    for _ in range(5):
        env.clock.advance(1)
        with pytest.raises(AuthenticationFailed):
            mfa.verify(
                "root", "000000" if code_at(env.admin_uri, env.clock()) != "000000" else "111111"
            )
    # Five failures: the next attempt must wait, even with a right code; it is not checked.
    with pytest.raises(LockedOut, match="try again in"):
        mfa.verify("root", code_at(env.admin_uri, env.clock()))
    waits = []
    for _ in range(5):
        refused_at = env.clock()
        while True:  # advance until the backoff lets an attempt through
            env.clock.advance(1)
            try:
                mfa.verify("root", _wrong(code_at(env.admin_uri, env.clock())))
            except LockedOut:
                continue
            except AuthenticationFailed:
                break
        waits.append(env.clock() - refused_at)
    assert waits == sorted(waits) and waits[-1] > waits[0]  # exponential growth
    assert "user-locked" in env.kinds()
    env.clock.advance(3600)
    with pytest.raises(LockedOut, match="locked"):
        mfa.verify("root", env.fresh_code(env.admin_uri))  # stays locked, right code or not


def test_failures_older_than_the_window_do_not_count(env: Env) -> None:
    mfa = env.ac(PolicyConfig(backoff_after=10)).mfa
    for _ in range(9):
        env.clock.advance(60)
        with pytest.raises(AuthenticationFailed):
            mfa.verify("root", _wrong(code_at(env.admin_uri, env.clock())))
    env.clock.advance(901)
    with pytest.raises(AuthenticationFailed):
        mfa.verify("root", _wrong(code_at(env.admin_uri, env.clock())))
    assert "user-locked" not in env.kinds()
    mfa.verify("root", env.fresh_code(env.admin_uri))


def test_unlock_lifts_a_lockout(env: Env) -> None:
    ac = env.ac(PolicyConfig(backoff_after=10, lockout_after=10))
    for _ in range(10):
        env.clock.advance(1)
        with pytest.raises(AuthenticationFailed):
            ac.mfa.verify("root", _wrong(code_at(env.admin_uri, env.clock())))
    assert ac.users.is_locked("root")
    ac.unlock("root", actor="test")
    ac.mfa.verify("root", env.fresh_code(env.admin_uri))
    assert "user-unlocked" in env.kinds()


def test_recovery_codes_are_single_use_and_stored_hashed(env: Env) -> None:
    ac = env.ac()
    codes = ac.mfa.new_recovery_codes("root", actor="root")
    assert len(codes) == 10 and len(set(codes)) == 10
    ac.mfa.verify("root", codes[3].upper())
    with pytest.raises(AuthenticationFailed):
        ac.mfa.verify("root", codes[3])
    ac.mfa.verify("root", codes[4])
    db = sqlite3.connect(env.home.users_db)
    dump = b"".join(bytes(r[0]) for r in db.execute("SELECT hash FROM recovery_codes"))
    assert not any(c.encode() in dump for c in codes)
    # New codes replace the old ones.
    ac.mfa.new_recovery_codes("root", actor="root")
    with pytest.raises(AuthenticationFailed):
        ac.mfa.verify("root", codes[5])


def test_the_secret_is_encrypted_and_bound_to_its_user(env: Env) -> None:
    ac = env.ac()
    secret = secret_of(env.admin_uri)
    raw = env.home.users_db.read_bytes()
    assert secret.encode() not in raw
    ac.users.add("mallory")
    blob = ac.users.totp_blob("root")
    assert blob is not None
    ac.users.set_totp("mallory", blob)  # copy root's sealed secret onto another user
    with pytest.raises(AuthenticationFailed) as info:
        ac.mfa.verify("mallory", code_at(env.admin_uri, env.clock()))
    assert "does not decrypt" in env.audit.events[-1][2]["reason"]
    assert secret not in str(info.value)


def test_unknown_user_and_unenrolled_user_get_the_same_generic_refusal(env: Env) -> None:
    ac = env.ac()
    ac.users.add("bob")
    messages = set()
    for name in ("nobody", "bob"):
        with pytest.raises(AuthenticationFailed) as info:
            ac.mfa.verify(name, "123456")
        messages.add(info.value.message)
    assert messages == {"second-factor verification failed"}


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "12 456", "１２３４５６"])
def test_malformed_codes_never_match(bad: str) -> None:
    secret = pyotp.random_base32()
    assert match_step(secret, bad, 1_800_000_000.0) is None


def test_match_step_agrees_with_pyotp() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    for t in range(1_800_000_000, 1_800_003_000, 37):
        assert match_step(secret, totp.at(t), t) == t // 30
        assert totp.verify(totp.at(t), for_time=t, valid_window=1)
