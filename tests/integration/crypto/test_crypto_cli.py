"""The crypto commands through the real CLI in subprocesses: seal/unseal (files and pipes),
key list/rotate/rewrap/retire, sign/verify, exit codes 0/1/2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import HEADER_SIZE
from trainguard.crypto.signing import SigningKey

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home built directly, so these tests do not depend on `trainguard init`."""
    h = Home(tmp_path / "home")
    h.create_dirs()
    h.config_path.write_text("[crypto]\nsegment_size = 4096\n")
    Keyring.create(h.keys_dir)
    SigningKey.generate().save(h.node_signing_key)
    return h.root


@pytest.fixture
def admin_home(cli, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """`trainguard init` and the admin logged in: key rotation is privileged (step-up MFA)."""
    import pyotp
    from support.policy_env import secret_of

    root = tmp_path / "home"
    r = cli("init", "--home", root, "--admin", "root", "--format", "json")
    assert r.code == 0, r.stderr
    uri = r.json()["admin"]["otpauth_uri"]
    assert cli("login", "--home", root, "--user", "root",
               "--otp", pyotp.TOTP(secret_of(uri)).now()).code == 0
    return root


def test_seal_unseal_files_json(cli, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(50_000))
    r = cli("seal", plain, tmp_path / "data.tgs", "--home", home, "--format", "json")
    assert r.code == 0, r.stderr
    assert r.json()["bytes"] == 50_000 and r.json()["segment_size"] == 4096
    assert plain.read_bytes()[:1000] not in (tmp_path / "data.tgs").read_bytes()
    r = cli(
        "unseal", tmp_path / "data.tgs", tmp_path / "back.bin", "--home", home, "--format", "json"
    )
    assert r.code == 0 and r.json()["verified"] is True
    assert (tmp_path / "back.bin").read_bytes() == plain.read_bytes()


def test_seal_unseal_through_pipes(home: Path, cli_env: dict[str, str]) -> None:
    data = os.urandom(30_000)
    base = [sys.executable, "-m", "trainguard.cli.main"]
    env = dict(cli_env, TRAINGUARD_HOME=str(home))
    sealer = subprocess.Popen(
        [*base, "seal", "-", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    unsealer = subprocess.Popen(
        [*base, "unseal", "-", "-"], stdin=sealer.stdout, stdout=subprocess.PIPE, env=env
    )
    assert sealer.stdout is not None and sealer.stdin is not None
    sealer.stdout.close()
    sealer.stdin.write(data)
    sealer.stdin.close()
    out, _ = unsealer.communicate(timeout=120)
    assert sealer.wait(timeout=120) == 0 and unsealer.returncode == 0
    assert out == data


def test_tampered_file_exit_1_and_no_output(cli, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain = tmp_path / "p"
    plain.write_bytes(os.urandom(20_000))
    assert cli("seal", plain, tmp_path / "s", "--home", home).code == 0
    raw = bytearray((tmp_path / "s").read_bytes())
    raw[HEADER_SIZE + 9000] ^= 0x10
    (tmp_path / "s").write_bytes(bytes(raw))
    r = cli("unseal", tmp_path / "s", tmp_path / "out", "--home", home)
    assert r.code == 1
    assert "failed authentication" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "p", "s", "user-home"]
    # through a pipe the bad segment is never written and the exit status says so
    r = cli("unseal", "-", "-", "--home", home, input=bytes(raw))
    assert r.code == 1


def test_usage_errors_exit_2(cli, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("seal", tmp_path / "missing", tmp_path / "o", "--home", home).code == 2
    assert cli("seal", "x", "y", "--home", tmp_path / "no-home").code == 2
    assert cli("key", "retire", "--below", "5", "--home", home).code == 2
    (tmp_path / "p").write_bytes(b"x")
    assert (
        cli("seal", tmp_path / "p", tmp_path / "o", "--segment-size", "0", "--home", home).code == 2
    )
    assert cli("key", "bogus", "--home", home).code == 2
    assert cli("seal", tmp_path / "p", tmp_path / "no" / "o", "--home", home).code == 2


def test_key_rotation_workflow(cli, admin_home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = admin_home
    files = tmp_path / "ckpts"
    files.mkdir()
    for i in range(3):
        (files / f"p{i}").write_bytes(os.urandom(10_000))
        assert cli("seal", files / f"p{i}", files / f"c{i}.tgs", "--home", home).code == 0
        (files / f"p{i}").unlink()
    body_before = (files / "c0.tgs").read_bytes()[HEADER_SIZE:]
    r = cli("key", "rotate", "--home", home, "--format", "json")
    assert r.code == 0 and r.json()["version"] == 2
    # retiring while files still need v1 is refused and names them
    r = cli("key", "retire", "--below", "2", files, "--home", home)
    assert r.code == 2 and "c0.tgs" in r.stderr
    r = cli("key", "rewrap", files, "--home", home, "--format", "json")
    assert r.code == 0 and len(r.json()["rewrapped"]) == 3
    assert (files / "c0.tgs").read_bytes()[HEADER_SIZE:] == body_before
    r = cli("key", "retire", "--below", "2", files, "--home", home, "--format", "json")
    assert r.code == 0 and r.json()["retired"] == [1]
    listing = cli("key", "list", "--home", home, "--format", "json").json()
    assert [(v["version"], v["retired"], v["current"]) for v in listing["versions"]] == [
        (1, True, False),
        (2, False, True),
    ]
    r = cli("unseal", files / "c1.tgs", tmp_path / "c1.out", "--home", home)
    assert r.code == 0
    from trainguard.evidence.audit_log import AuditLog

    log = AuditLog.open(Home(home).audit_db, "node-1", None)
    kinds = [e.kind for e in log.entries()]
    assert ["key-rotated", "key-rewrapped", "key-retired"] == [
        k for k in kinds if k.startswith("key-")
    ]


def test_retired_key_error_is_clear(cli, admin_home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = admin_home
    (tmp_path / "p").write_bytes(b"weights" * 100)
    assert cli("seal", tmp_path / "p", tmp_path / "s", "--home", home).code == 0
    assert cli("key", "rotate", "--home", home).code == 0
    assert cli("key", "retire", "--below", "2", "--home", home).code == 0
    r = cli("unseal", tmp_path / "s", tmp_path / "o", "--home", home)
    assert r.code == 1 and "KEK version 1" in r.stderr and "key rewrap" in r.stderr


def test_sign_verify_names_changed_files(cli, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(b"a" * 100)
    (model / "b.bin").write_bytes(b"b" * 100)
    r = cli("sign", model, "--home", home, "--format", "json")
    assert r.code == 0 and r.json()["files"] == 2
    assert (tmp_path / "model.tgsig.json").exists()
    assert cli("verify", model, "--home", home).code == 0
    (model / "b.bin").write_bytes(b"B" * 100)
    (model / "c.pth").write_bytes(b"x")
    (model / "a.bin").unlink()
    r = cli("verify", model, "--home", home, "--format", "json")
    assert r.code == 1
    assert (r.json()["missing"], r.json()["extra"], r.json()["changed"]) == (
        ["a.bin"],
        ["c.pth"],
        ["b.bin"],
    )
    assert "a.bin" in r.stderr
    # another node's key cannot vouch for it
    other = tmp_path / "other.ed25519"
    SigningKey.generate().save(other)
    r = cli("verify", model, "--key", str(other) + ".pub", "--home", home)
    assert r.code == 1 and "signature verification failed" in r.stderr


def test_key_list_says_when_rotation_is_due(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    h = Home(tmp_path / "old-home")
    h.create_dirs()
    h.config_path.write_text("[crypto]\nkek_rotation_days = 30\n")
    Keyring.create(h.keys_dir, clock=lambda: 1_000_000.0)  # a KEK from 1970
    r = cli("key", "list", "--home", h.root, "--format", "json")
    assert r.code == 0 and r.json()["rotation_due"] is True and r.json()["rotation_days"] == 30
    r = cli("key", "list", "--home", h.root)
    assert "rotation due" in r.stdout and "trainguard key rotate" in r.stdout


def test_key_rotation_needs_a_fresh_second_factor(cli, admin_home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression: `key rotate` ran without any second factor."""
    elsewhere = {"XDG_CONFIG_HOME": str(tmp_path / "no-session")}
    r = cli("key", "rotate", "--home", admin_home, env=elsewhere)
    assert r.code == 1 and "not logged in" in r.stderr  # no session: refused
    r = cli("key", "rotate", "--home", admin_home, "--otp", "000000")  # a wrong step-up code
    assert r.code == 1 and "second-factor verification failed" in r.stderr
    listing = cli("key", "list", "--home", admin_home, "--format", "json").json()
    assert listing["current_version"] == 1
