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


def test_backoff_grows_after_five_failures_and_never_locks_for_good(env: Env) -> None:
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
    # Anyone can type wrong codes for any name: failures slow down, they never lock for good.
    assert "user-locked" not in env.kinds()
    assert not env.ac().users.is_locked("root")
    env.clock.advance(3600)
    mfa.verify("root", env.fresh_code(env.admin_uri))


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


def test_unlock_clears_the_failures_that_slow_a_user_down(env: Env) -> None:
    ac = env.ac(PolicyConfig(backoff_after=5, backoff_base_seconds=60))
    for _ in range(5):
        env.clock.advance(1)
        with pytest.raises(AuthenticationFailed):
            ac.mfa.verify("root", _wrong(code_at(env.admin_uri, env.clock())))
    with pytest.raises(LockedOut, match="try again in"):
        ac.mfa.verify("root", env.fresh_code(env.admin_uri))
    ac.unlock("root", actor="test")
    ac.mfa.verify("root", env.fresh_code(env.admin_uri))
    assert "user-unlocked" in env.kinds()


def test_unknown_names_get_the_same_message_and_the_same_delays(env: Env) -> None:
    """Regression (user enumeration): once throttled, a known user saw "try again in N s" and
    an unknown name never did. Now both are counted and delayed alike."""
    mfa = env.ac(PolicyConfig(backoff_after=3, backoff_base_seconds=30)).mfa
    seen: dict[str, list[str]] = {"root": [], "ghost": []}
    for name in seen:
        for _ in range(4):
            env.clock.advance(1)
            try:
                mfa.verify(name, _wrong(code_at(env.admin_uri, env.clock())))
            except (AuthenticationFailed, LockedOut) as exc:
                seen[name].append(f"{type(exc).__name__}: {exc.message}")
    assert [m.split(" in ")[0] for m in seen["root"]] == [m.split(" in ")[0] for m in seen["ghost"]]
    assert seen["ghost"][-1].startswith("LockedOut: too many failed attempts")


def test_a_totp_secret_copied_to_another_row_does_not_decrypt(env: Env) -> None:
    """Regression: copying the admin's TOTP blob (and uid) onto another row logged that row in
    with the admin's codes. The ciphertext is bound to the name, uid and OS account."""
    import sqlite3

    ac = env.ac()
    ac.add_user("mallory", "researcher", "default", actor="test")
    ac.enrol("mallory", actor="test")
    db = sqlite3.connect(env.home.users_db)
    blob, fmt = db.execute("SELECT totp_secret, totp_format FROM users WHERE name='root'").fetchone()
    db.execute("UPDATE users SET totp_secret=?, totp_format=?, last_step=-1 WHERE name='mallory'",
               (blob, fmt))
    db.commit()
    db.close()
    with pytest.raises(AuthenticationFailed):
        env.ac().mfa.verify("mallory", env.fresh_code(env.admin_uri))


def test_remapping_a_user_to_another_os_account_in_the_file_breaks_its_secret(env: Env) -> None:
    import sqlite3

    db = sqlite3.connect(env.home.users_db)
    db.execute("UPDATE users SET os_uid=4242 WHERE name='root'")
    db.commit()
    db.close()
    with pytest.raises(AuthenticationFailed):
        env.ac().mfa.verify("root", env.fresh_code(env.admin_uri))


def test_map_user_rebinds_the_secret_so_the_user_can_still_log_in(env: Env) -> None:
    ac = env.ac()
    ac.map_user("root", 4242, actor="test")
    assert ac.users.os_uid("root") == 4242
    env.ac().mfa.verify("root", env.fresh_code(env.admin_uri))


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
    stored = ac.users.totp_blob("root")
    assert stored is not None
    ac.users.set_totp("mallory", stored[0], fmt=stored[1])  # copy root's sealed secret over
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
