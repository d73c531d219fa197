"""Node posture checks: file modes, plaintext checkpoints, KEK age, node certificate, MFA."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import make_home
from trainguard.agent.checks import CheckContext, Status, run_checks
from trainguard.agent.checks.config import ChecksConfig
from trainguard.core.config import Config
from trainguard.core.home import Home

DAY = 86400.0
NOW = 1_800_000_000.0


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A home without a keyring: the key checks below create (or miss) one themselves."""
    return make_home(tmp_path / "home", keyring=False)


def ctx(home: Home, *, clock: float = NOW, **checks: object) -> CheckContext:
    cfg = Config(source="test", sections={"checks": dataclasses.replace(ChecksConfig(), **checks)})
    return CheckContext(home=home, config=cfg, clock=lambda: clock)


def run(c: CheckContext, cid: str):  # noqa: ANN201
    (result,) = run_checks(c.home, c.config, [cid], context=c)
    return result


# -- home-modes ----------------------------------------------------------------------------


def test_home_modes_pass_on_a_fresh_home(home: Home) -> None:
    assert run(ctx(home), "home-modes").status is Status.PASS


def test_home_modes_fail_names_the_loose_key_file(home: Home) -> None:
    home.node_signing_key.chmod(0o644)
    r = run(ctx(home), "home-modes")
    assert r.status is Status.FAIL
    assert r.evidence["loose"][0]["path"] == str(home.node_signing_key)
    assert f"chmod 600 {home.node_signing_key}" in r.remediation


def test_home_modes_fail_on_an_open_folder_and_a_symlinked_key(home: Home, tmp_path: Path) -> None:
    home.state_dir.chmod(0o755)
    (tmp_path / "elsewhere").write_text("x")
    (home.keys_dir / "planted").symlink_to(tmp_path / "elsewhere")
    r = run(ctx(home), "home-modes")
    assert r.status is Status.FAIL
    assert str(home.state_dir) in {p["path"] for p in r.evidence["loose"]}
    assert r.evidence["symlinks"] == [str(home.keys_dir / "planted")]


def test_home_modes_fail_without_a_home(tmp_path: Path) -> None:
    r = run(ctx(Home(tmp_path / "nothing")), "home-modes")
    assert r.status is Status.FAIL and "trainguard init" in r.remediation


# -- plaintext-checkpoints -----------------------------------------------------------------


def test_plaintext_checkpoints_not_applicable_without_folders(home: Home) -> None:
    assert run(ctx(home), "plaintext-checkpoints").status is Status.NOT_APPLICABLE


def test_plaintext_checkpoint_fails_and_sealed_one_passes(home: Home, tmp_path: Path) -> None:
    ck = tmp_path / "ckpt"
    (ck / "run1").mkdir(parents=True)
    (ck / "run1" / "step-10.pt").write_bytes(b"TGSEAL\x01" + os.urandom(64))
    (ck / "notes.txt").write_text("not a checkpoint")
    c = ctx(home, checkpoint_dirs=(str(ck),))
    r = run(c, "plaintext-checkpoints")
    assert r.status is Status.PASS and r.evidence["sealed"] == 1
    (ck / "run1" / "step-20.pt").write_bytes(b"PK\x03\x04 torch zip")
    r = run(c, "plaintext-checkpoints")
    assert r.status is Status.FAIL
    assert r.evidence["plaintext"] == [str(ck / "run1" / "step-20.pt")]
    assert "trainguard seal" in r.remediation


def test_a_really_sealed_file_passes(home: Home, tmp_path: Path) -> None:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.sealed.stream import seal_file

    ring = Keyring.create(home.keys_dir)
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (tmp_path / "plain.bin").write_bytes(os.urandom(3000))
    seal_file(tmp_path / "plain.bin", ck / "model.bin", ring)
    assert run(ctx(home, checkpoint_dirs=(str(ck),)), "plaintext-checkpoints").status is Status.PASS


def test_missing_checkpoint_folder_warns(home: Home, tmp_path: Path) -> None:
    r = run(ctx(home, checkpoint_dirs=(str(tmp_path / "gone"),)), "plaintext-checkpoints")
    assert r.status is Status.WARN


# -- kek-age -------------------------------------------------------------------------------


def test_kek_age_against_the_rotation_policy(home: Home) -> None:
    from trainguard.crypto.keyring import Keyring

    Keyring.create(home.keys_dir, clock=lambda: NOW)
    assert run(ctx(home, clock=NOW + 10 * DAY), "kek-age").status is Status.PASS
    assert run(ctx(home, clock=NOW + 85 * DAY), "kek-age").status is Status.WARN
    r = run(ctx(home, clock=NOW + 91 * DAY), "kek-age")
    assert r.status is Status.FAIL
    assert r.evidence["age_days"] == 91.0 and "key rotate" in r.remediation
    assert run(ctx(home, clock=NOW + 40 * DAY, kek_max_age_days=30), "kek-age").status is Status.FAIL


def test_kek_age_passes_again_after_rotation(home: Home) -> None:
    from trainguard.crypto.keyring import Keyring

    ring = Keyring.create(home.keys_dir, clock=lambda: NOW)
    Keyring.open(home.keys_dir, clock=lambda: NOW + 100 * DAY).rotate()
    r = run(ctx(home, clock=NOW + 101 * DAY), "kek-age")
    assert r.status is Status.PASS and r.evidence["current_version"] == ring.current_version + 1


def test_kek_age_fails_without_a_keyring(home: Home) -> None:
    r = run(ctx(home), "kek-age")
    assert r.status is Status.FAIL and "keyring" in r.summary


# -- node-cert -----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki(home: Home, *, start: float, days: float, other_ca: bool = False, revoke: bool = False) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    t0 = dt.datetime.fromtimestamp(start, dt.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(_name("ca")).issuer_name(_name("ca"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(t0 - dt.timedelta(days=1)).not_valid_after(t0 + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    signer = ec.generate_private_key(ec.SECP256R1()) if other_ca else ca_key
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("node-1")).issuer_name(_name("ca"))
        .public_key(key.public_key()).serial_number(42)
        .not_valid_before(t0).not_valid_after(t0 + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://c/node/node-1")]),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    (home.pki_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (home.pki_dir / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if revoke:
        crl = (
            x509.CertificateRevocationListBuilder().issuer_name(_name("ca"))
            .last_update(t0).next_update(t0 + dt.timedelta(days=30))
            .add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(42).revocation_date(t0).build()
            )
            .sign(ca_key, hashes.SHA256())
        )
        (home.pki_dir / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_node_cert_valid_then_expiring_then_expired(home: Home) -> None:
    _pki(home, start=NOW, days=30)
    r = run(ctx(home, clock=NOW + DAY), "node-cert")
    assert r.status is Status.PASS
    assert r.evidence["days_left"] == 29.0 and r.evidence["uris"] == ["spiffe://c/node/node-1"]
    assert run(ctx(home, clock=NOW + 25 * DAY), "node-cert").status is Status.WARN
    assert run(ctx(home, clock=NOW + 31 * DAY), "node-cert").status is Status.FAIL
    assert run(ctx(home, clock=NOW - DAY), "node-cert").status is Status.FAIL


def test_short_lived_cert_warns_only_in_its_last_third(home: Home) -> None:
    _pki(home, start=NOW, days=1)
    assert run(ctx(home, clock=NOW + 3600), "node-cert").status is Status.PASS
    assert run(ctx(home, clock=NOW + 20 * 3600), "node-cert").status is Status.WARN


def test_node_cert_from_another_ca_fails(home: Home) -> None:
    _pki(home, start=NOW, days=30, other_ca=True)
    r = run(ctx(home, clock=NOW + DAY), "node-cert")
    assert r.status is Status.FAIL and "not trusted" in r.summary


def test_revoked_node_cert_fails(home: Home) -> None:
    _pki(home, start=NOW, days=30, revoke=True)
    r = run(ctx(home, clock=NOW + DAY), "node-cert")
    assert r.status is Status.FAIL and "revocation" in r.summary


def test_missing_node_cert_fails(home: Home) -> None:
    r = run(ctx(home), "node-cert")
    assert r.status is Status.FAIL and "pki issue" in r.remediation


def test_cert_issued_by_the_cluster_ca_passes(home: Home) -> None:
    from trainguard.crypto.pki import ClusterCA

    ca = ClusterCA.create(home.pki_dir, "c1")
    cert, key = ca.issue("node-1", "node")
    (home.pki_dir / "node.crt").write_bytes(cert)
    r = run(ctx(home, clock=__import__("time").time()), "node-cert")
    assert r.status is Status.PASS, r.summary


# -- mfa-coverage ------------------------------------------------------------------------


def test_privileged_mfa(home: Home) -> None:
    from trainguard.policy import UserStore
    from trainguard.policy.rules import PolicyRules, RoleLink

    assert run(ctx(home), "mfa-coverage").status is Status.NOT_APPLICABLE
    store = UserStore(home.users_db)
    for name in ("alice", "bob", "carol"):
        store.add(name)
    links = (RoleLink("alice", "admin", "*"), RoleLink("bob", "researcher", "*"))
    store.sync_roles(PolicyRules(links=links))
    store.set_totp("alice", b"sealed-secret")
    r = run(ctx(home), "mfa-coverage")
    assert r.status is Status.PASS and r.evidence["privileged_users"] == ["alice"]
    store.sync_roles(PolicyRules(links=(*links, RoleLink("carol", "ml-engineer", "proj"))))
    r = run(ctx(home), "mfa-coverage")
    assert r.status is Status.FAIL
    assert r.evidence["without_mfa"] == ["carol"] and "user enrol" in r.remediation
    store.close()
