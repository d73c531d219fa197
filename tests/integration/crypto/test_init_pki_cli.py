"""`trainguard init` and `trainguard pki` through the real CLI."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pyotp
import pytest

pytestmark = pytest.mark.integration


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_a_private_complete_home(cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = cli("init", "--home", home, "--cluster", "c1", "--node", "gpu-01", "--admin", "root-admin", "--format", "json")
    assert res.code == 0, res.stderr
    data = res.json()
    assert data["node_identity"] == "spiffe://c1/node/gpu-01"
    assert data["kek_version"] == 1
    uri = data["admin"]["otpauth_uri"]
    assert data["admin"]["name"] == "root-admin"
    assert pyotp.parse_uri(uri).now().isdigit()
    for d in ["", "keys", "pki", "policy", "state", "hooks.d", "quarantine"]:
        assert _mode(home / d) == 0o700, d
    for f in ["keys/node.ed25519", "pki/ca.key", "pki/node.key", "trainguard.toml"]:
        assert _mode(home / f) == 0o600, f
    assert any(p.name.startswith("kek-") for p in (home / "keys").iterdir())
    # the audit log already holds the creation event
    log = cli("audit", "log", "--home", home, "--format", "json")
    if log.code == 0:
        assert "home-created" in log.stdout


def test_init_refuses_to_overwrite_and_force_moves_aside(cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "a").code == 0
    marker = (home / "keys" / "node.ed25519").read_bytes()
    again = cli("init", "--home", home, "--admin", "a")
    assert again.code == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (home / "keys" / "node.ed25519").read_bytes() == marker
    forced = cli("init", "--home", home, "--admin", "a", "--force", "--format", "json")
    assert forced.code == 0, forced.stderr
    backup = Path(forced.json()["moved_aside"])
    assert (backup / "keys" / "node.ed25519").read_bytes() == marker
    assert (home / "keys" / "node.ed25519").read_bytes() != marker


def test_text_output_shows_enrolment_and_no_traceback_on_error(cli, tmp_path: Path) -> None:
    res = cli("init", "--home", tmp_path / "h", "--admin", "ops")
    assert res.code == 0
    assert "otpauth://totp/" in res.stdout and "authenticator" in res.stdout
    bad = cli("pki", "list", "--home", tmp_path / "missing")
    assert bad.code == 2
    assert "no trainguard home" in bad.stderr and "Traceback" not in bad.stderr
    assert "Tip:" in bad.stderr


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert cli("init", "--home", h, "--cluster", "c1", "--node", "n1", "--admin", "a").code == 0
    return h


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_pki_issue_revoke_list(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    res = cli("pki", "issue", "alice", "--kind", "user", "--out", out, "--home", home, "--format", "json")
    assert res.code == 0, res.stderr
    assert res.json()["identity"] == "spiffe://c1/user/alice"
    assert _mode(out / "alice.key") == 0o600
    ok = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", out / "ca.crt", out / "alice.crt"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    listed = cli("pki", "list", "--home", home, "--format", "json").json()
    assert {(c["kind"], c["name"], c["revoked"]) for c in listed} == {("node", "n1", False), ("user", "alice", False)}
    assert cli("pki", "revoke", "alice", "--home", home).code == 0
    revoked = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-crl_check", "-CAfile", out / "ca.crt",
         "-CRLfile", home / "pki" / "crl.pem", out / "alice.crt"], capture_output=True, text=True)
    assert revoked.returncode != 0 and "revoked" in revoked.stderr
    assert cli("pki", "revoke", "nobody", "--home", home).code == 2


def test_usage_errors_exit_2(cli, home: Path) -> None:
    assert cli("pki", "issue", "x", "--home", home).code == 2  # --kind missing
    assert cli("pki", "issue", "bad/name", "--kind", "node", "--home", home).code == 2
    assert cli("nosuchcommand").code == 2
