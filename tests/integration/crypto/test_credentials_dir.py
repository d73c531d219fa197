"""A home whose KEKs live only in a systemd credentials folder ($CREDENTIALS_DIRECTORY, as
systemd-creds hands them over): every command that needs a KEK works through the real CLI, and
without the credential each one says the key is unavailable, never a misleading auth failure."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pyotp
import pytest
from support.trainer_jobs import DIGITS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _code(uri: str, ahead: int = 0) -> str:
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    return pyotp.TOTP(secret).at(time.time() + 30 * ahead)


@pytest.fixture
def site(cli, tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """(home, root's otpauth URI, environment with CREDENTIALS_DIRECTORY); keys/ holds no KEK."""
    home = tmp_path / "home"
    r = cli("init", "--home", home, "--admin", "root", "--format", "json")
    assert r.code == 0, r.stderr
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    keks = sorted((home / "keys").glob("kek-v*.key"))
    assert [k.name for k in keks] == ["kek-v1.key"]
    for k in keks:
        shutil.move(k, creds / k.name)
    assert not list((home / "keys").glob("kek-v*.key"))
    return home, r.json()["admin"]["otpauth_uri"], {"CREDENTIALS_DIRECTORY": str(creds)}


def test_every_kek_command_works_with_the_kek_only_in_the_credentials_dir(
    cli, site, tmp_path: Path
) -> None:
    home, root_uri, creds = site
    alice_env = {**creds, "XDG_CONFIG_HOME": str(tmp_path / "alice-config")}

    # login decrypts the admin's TOTP secret with the KEK
    r = cli("login", "--home", home, "--user", "root", "--otp", _code(root_uri), env=creds)
    assert r.code == 0, r.stderr

    # user add + enrol (encrypts the new secret), and that user's login (decrypts it)
    r = cli("user", "add", "alice", "--role", "researcher", "--project", "vision",
            "--home", home, env=creds)
    assert r.code == 0, r.stderr
    r = cli("user", "enrol", "alice", "--home", home, "--format", "json", env=creds)
    assert r.code == 0, r.stderr
    alice_uri = r.json()["otpauth_uri"]
    r = cli("login", "--home", home, "--user", "alice", "--otp", _code(alice_uri), env=alice_env)
    assert r.code == 0, r.stderr

    # policy edits are signed after the step-up of root's fresh login
    r = cli("policy", "grant", "researcher", "dataset:read", "/data/*", "--project", "vision",
            "--home", home, env=creds)
    assert r.code == 0, r.stderr
    r = cli("policy", "sign", "--home", home, "--otp", _code(root_uri, 1), env=creds)
    assert r.code == 0, r.stderr

    # seal / unseal
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(20_000))
    r = cli("seal", plain, tmp_path / "s.tgs", "--home", home, env=creds)
    assert r.code == 0, r.stderr
    r = cli("unseal", tmp_path / "s.tgs", tmp_path / "back.bin", "--home", home, env=creds)
    assert r.code == 0, r.stderr
    assert (tmp_path / "back.bin").read_bytes() == plain.read_bytes()

    # key list / rotate: v2 is created in keys/, v1 still comes from the credential
    r = cli("key", "list", "--home", home, "--format", "json", env=creds)
    assert r.code == 0, r.stderr
    assert [v["version"] for v in r.json()["versions"]] == [1]
    r = cli("key", "rotate", "--home", home, "--format", "json", env=creds)
    assert r.code == 0, r.stderr
    assert (home / "keys" / "kek-v2.key").is_file()
    r = cli("unseal", tmp_path / "s.tgs", tmp_path / "back2.bin", "--home", home, env=creds)
    assert r.code == 0, r.stderr
    # rewrap (unwraps under v1 from the credential, wraps under v2), then retire v1
    r = cli("key", "rewrap", tmp_path / "s.tgs", "--home", home, "--format", "json", env=creds)
    assert r.code == 0, r.stderr
    r = cli("key", "retire", "--below", "2", tmp_path / "s.tgs", "--home", home, env=creds)
    assert r.code == 0, r.stderr
    r = cli("unseal", tmp_path / "s.tgs", tmp_path / "back3.bin", "--home", home, env=creds)
    assert r.code == 0, r.stderr
    assert (tmp_path / "back3.bin").read_bytes() == plain.read_bytes()

    # posture check and the audit report (KEK age, the log's checkpoints)
    r = cli("check", "--id", "kek-age", "--home", home, "--format", "json", env=creds)
    assert r.code == 0, r.stderr
    assert r.json()["results"][0]["status"] == "pass"
    r = cli("audit", "report", "--home", home, "--out", tmp_path / "report", "--formats", "json",
            "--format", "json", env=creds)
    assert r.code in (0, 1), r.stderr  # 1: some control unmet on a fresh node, not an error
    assert (tmp_path / "report").is_dir()
    assert "keyring" not in r.stderr.lower()

    # train derives the job key from the KEK before preflight: with no login session for this
    # OS user it gets as far as the login requirement (nothing runs).
    r = cli("train", DIGITS, "--home", home, "--nproc", "1", "--skip-deps-verify",
            env={**creds, "XDG_CONFIG_HOME": str(tmp_path / "nobody")})
    assert r.code in (1, 2) and "login" in r.stderr, r.stderr
    assert "KEK" not in r.stderr

    kinds = [row[0] for row in sqlite3.connect(home / "state" / "audit.db").execute(
        "SELECT kind FROM entries ORDER BY seq")]
    assert "login" in kinds or any(k.startswith("login") for k in kinds)


def test_without_the_credential_commands_say_the_kek_is_unavailable(
    cli, site, tmp_path: Path
) -> None:
    home, root_uri, _creds = site
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x" * 100)

    r = cli("login", "--home", home, "--user", "root", "--otp", _code(root_uri))
    assert r.code != 0
    assert "second-factor verification failed" not in r.stderr
    assert "KEK version 1" in r.stderr and "unavailable" in r.stderr
    assert "Tip:" in r.stderr or "tip:" in r.stderr.lower()

    r = cli("seal", plain, tmp_path / "s.tgs", "--home", home)
    assert r.code != 0 and "KEK version 1" in r.stderr
    assert not (tmp_path / "s.tgs").exists()

    r = cli("train", DIGITS, "--home", home, "--nproc", "1", "--skip-deps-verify")
    assert r.code != 0 and "KEK version 1" in r.stderr


def test_the_trainers_key_process_takes_the_kek_from_the_credential(
    site, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Without a running agent the launcher starts this process for checkpoint keys; it inherits
    # the launcher's environment, $CREDENTIALS_DIRECTORY included.
    from trainguard.trainer.keys import KeyClient

    home, _uri, creds = site
    sock = Path(tempfile.mkdtemp(prefix="tg-keys-")) / "keys.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard.agent.api.keys", "--home", str(home),
         "--socket", str(sock)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env={**cli_env, **creds},
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        client = KeyClient(sock)
        key = client.data_key()
        assert client.unwrap_dek(key.wrapped) == key.dek
        client.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
