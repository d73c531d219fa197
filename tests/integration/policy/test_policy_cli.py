"""Access control end to end through the real CLI: init, login, users, authz, policy signing."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from pathlib import Path

import pyotp
import pytest

pytestmark = pytest.mark.integration


def _secret(uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def _code(uri: str, ahead: int = 0) -> str:
    return pyotp.TOTP(_secret(uri)).at(time.time() + 30 * ahead)


def _audit_kinds(home: Path) -> list[str]:
    db = sqlite3.connect(home / "state" / "audit.db")
    return [r[0] for r in db.execute("SELECT kind FROM entries ORDER BY seq")]


@pytest.fixture
def site(cli, tmp_path: Path):
    home = tmp_path / "home"
    r = cli("init", "--home", home, "--admin", "root", "--format", "json")
    assert r.code == 0, r.stderr
    uri = r.json()["admin"]["otpauth_uri"]
    r = cli("login", "--home", home, "--user", "root", "--otp", _code(uri))
    assert r.code == 0, r.stderr
    return home, uri


def test_users_roles_decisions_and_policy_edits(cli, site, tmp_path: Path) -> None:
    home, root_uri = site
    alice_env = {"XDG_CONFIG_HOME": str(tmp_path / "alice-config")}

    assert (
        cli(
            "user", "add", "alice", "--role", "researcher", "--project", "vision", "--home", home
        ).code
        == 0
    )
    r = cli("user", "enrol", "alice", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    alice_uri = r.json()["otpauth_uri"]
    assert alice_uri.startswith("otpauth://totp/")

    r = cli("login", "--home", home, "--user", "alice", "--otp", _code(alice_uri), env=alice_env)
    assert r.code == 0, r.stderr

    def check(action: str, resource: str, domain: str = "vision", **kw: str) -> int:
        args = [
            "authz",
            "check",
            "--home",
            home,
            "--user",
            "alice",
            "--action",
            action,
            "--resource",
            resource,
            "--project",
            domain,
            "--format",
            "json",
        ]
        for k, v in kw.items():
            args += [f"--{k}", v]
        return cli(*args, env=alice_env).code

    assert check("dataset:read", "/data/imagenet") == 0
    assert check("train:launch", "/jobs/1") == 1  # researcher may not launch
    assert check("dataset:read", "/data/imagenet", "audio") == 2  # unknown project
    assert check("dataset:fly", "/data/imagenet") == 2  # unknown action

    r = cli(
        "policy",
        "grant",
        "researcher",
        "dataset:read",
        "/data/restricted/*",
        "--project",
        "vision",
        "--deny",
        "--home",
        home,
    )
    assert r.code == 0, r.stderr
    assert check("dataset:read", "/data/restricted/x") == 1  # deny wins over the default allow
    assert check("dataset:read", "/data/imagenet") == 0

    r = cli("policy", "show", "--project", "vision", "--home", home, "--format", "json")
    assert {
        "subject": "researcher",
        "domain": "vision",
        "resource": "/data/restricted/*",
        "action": "dataset:read",
        "effect": "deny",
    } in r.json()["grants"]

    # Alice is no admin: her attempts to change the policy or users are denied (exit 1).
    r = cli(
        "policy",
        "grant",
        "researcher",
        "*",
        "*",
        "--project",
        "vision",
        "--home",
        home,
        env=alice_env,
    )
    assert r.code == 1 and "denied" in r.stderr
    assert (
        cli(
            "user", "add", "eve", "--role", "admin", "--project", "*", "--home", home, env=alice_env
        ).code
        == 1
    )

    # Admin what-if for another user: policy-only decision.
    r = cli(
        "authz",
        "check",
        "--home",
        home,
        "--user",
        "alice",
        "--action",
        "checkpoint:write",
        "--resource",
        "/ckpt/1",
        "--project",
        "vision",
        "--format",
        "json",
    )
    assert r.code == 0 and r.json()["mode"] == "policy-only"

    r = cli("user", "list", "--home", home, "--format", "json")
    rows = {u["name"]: u for u in r.json()}
    assert rows["alice"]["roles"] == ["researcher@vision"] and rows["alice"]["mfa_enrolled"]

    # Removal ends alice's session.
    assert cli("user", "remove", "alice", "--home", home).code == 0
    assert check("dataset:read", "/data/imagenet") == 1
    kinds = _audit_kinds(home)
    for kind in (
        "user-added",
        "user-enrolled",
        "login",
        "access-allowed",
        "access-denied",
        "policy-changed",
        "user-removed",
        "session-refused",
    ):
        assert kind in kinds, kind


def test_hand_edited_policy_fails_until_an_admin_resigns_it(cli, site) -> None:
    home, root_uri = site
    policy = home / "policy" / "policy.csv"
    text = policy.read_text()
    policy.write_text(
        text.replace("# trainguard-signature", "g, mallory, admin, *\n# trainguard-signature")
    )
    r = cli(
        "authz",
        "check",
        "--home",
        home,
        "--user",
        "root",
        "--action",
        "audit:read",
        "--resource",
        "/a",
        "--project",
        "*",
    )
    assert r.code == 2 and "signature" in r.stderr and "policy sign" in r.stderr
    assert "policy-tampered" in _audit_kinds(home)

    r = cli("policy", "sign", "--home", home, "--otp", _code(root_uri, ahead=1), "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["added"] == ["g, mallory, admin, *"]
    r = cli(
        "authz",
        "check",
        "--home",
        home,
        "--user",
        "root",
        "--action",
        "audit:read",
        "--resource",
        "/a",
        "--project",
        "*",
    )
    assert r.code == 0


def test_sessions_lockout_unlock_and_recovery_codes(cli, site, tmp_path: Path, cli_env) -> None:
    home, root_uri = site
    bob_env = {"XDG_CONFIG_HOME": str(tmp_path / "bob-config")}
    assert (
        cli("user", "add", "bob", "--role", "ml-engineer", "--project", "nlp", "--home", home).code
        == 0
    )
    bob_uri = cli("user", "enrol", "bob", "--home", home, "--format", "json").json()["otpauth_uri"]
    codes = cli("user", "recovery-codes", "bob", "--home", home, "--format", "json").json()[
        "recovery_codes"
    ]
    assert len(codes) == 10

    # A wrong code: generic refusal, exit 1, no session written.
    r = cli(
        "login",
        "--home",
        home,
        "--user",
        "bob",
        "--otp",
        "000000" if _code(bob_uri) != "000000" else "111111",
        env=bob_env,
    )
    assert r.code == 1 and "second-factor verification failed" in r.stderr
    # A recovery code works once.
    assert cli("login", "--home", home, "--user", "bob", "--otp", codes[0], env=bob_env).code == 0
    assert cli("login", "--home", home, "--user", "bob", "--otp", codes[0], env=bob_env).code == 1

    # The session file is private; an edited one is refused.
    session = next((tmp_path / "bob-config" / "trainguard" / "sessions").glob("*.session"))
    assert session.stat().st_mode & 0o777 == 0o600
    doc = json.loads(session.read_text())
    doc["payload"]["user"] = "root"
    session.write_text(json.dumps(doc))
    r = cli(
        "authz",
        "check",
        "--home",
        home,
        "--user",
        "bob",
        "--action",
        "dataset:read",
        "--resource",
        "/d",
        "--project",
        "nlp",
        env=bob_env,
    )
    assert r.code == 1 and "trainguard login" in r.stderr

    # Locked users are refused until an admin unlocks them (lockout itself: unit tests).
    from trainguard.policy.users import UserStore

    UserStore(home / "state" / "users.db").lock("bob", time.time())
    r = cli("login", "--home", home, "--user", "bob", "--otp", _code(bob_uri), env=bob_env)
    assert r.code == 1 and "locked" in r.stderr
    assert cli("user", "unlock", "bob", "--home", home).code == 0
    r = cli("login", "--home", home, "--user", "bob", "--otp", _code(bob_uri), env=bob_env)
    assert r.code == 0, r.stderr
    r = cli(
        "authz",
        "check",
        "--home",
        home,
        "--user",
        "bob",
        "--action",
        "train:launch",
        "--resource",
        "/jobs/1",
        "--project",
        "nlp",
        env=bob_env,
    )
    assert r.code == 0, r.stderr  # ml-engineer, logged in just now: step-up is fresh


def test_enrol_prints_a_terminal_qr_code(cli, site) -> None:
    home, _ = site
    assert (
        cli("user", "add", "carol", "--role", "auditor", "--project", "*", "--home", home).code == 0
    )
    r = cli("user", "enrol", "carol", "--home", home)
    assert r.code == 0 and "otpauth://totp/" in r.stdout and "█" in r.stdout
    r = cli("user", "add", "dave", "--role", "wizard", "--project", "x", "--home", home)
    assert r.code == 2 and "unknown role" in r.stderr
