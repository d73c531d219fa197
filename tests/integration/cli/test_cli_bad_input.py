"""Bad input through the real CLI: what a cluster operator hits on a damaged or mistyped setup.

For every case: the exit code (0 clean, 1 findings/denied/verification failed, 2 usage or
config, 3 internal), an `error:` line with a `Tip:`, no traceback without -v, no secret
material (TOTP secret, KEK bytes, private keys) on stdout or stderr, and no partial output.

One home is made with `trainguard init` per module and copied for each test (copytree is much
cheaper than init); login sessions live under the per-test XDG_CONFIG_HOME of the `cli` fixture.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

pytestmark = pytest.mark.integration


# -- homes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    home: Path
    uri: str  # the admin's otpauth URI (holds the TOTP secret)

    @property
    def secret(self) -> str:
        return urllib.parse.parse_qs(urllib.parse.urlparse(self.uri).query)["secret"][0]

    def code(self, ahead: int = 0) -> str:
        """A TOTP code `ahead` steps from now (within the drift window for -1..1)."""
        return pyotp.TOTP(self.secret).at(time.time() + 30 * ahead)

    def secrets(self) -> list[str]:
        """Strings that must never appear in any output."""
        kek = (self.home / "keys" / "kek-v1.key").read_bytes()
        out = [self.secret, self.secret.lower(), kek.hex(), base64.b64encode(kek).decode()]
        for key in (self.home / "keys" / "node.ed25519", self.home / "pki" / "ca.key"):
            body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-")]
            out += body
        return out


def _init(root: Path, tmp: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env["HOME"] = str(tmp)
    env["XDG_CONFIG_HOME"] = str(tmp / ".config")
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard.cli.main", "init", "--home", str(root)]
        + ["--admin", "root", "--node", "n1", "--format", "json"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return str(json.loads(proc.stdout)["admin"]["otpauth_uri"])


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Site]:
    base = tmp_path_factory.mktemp("templates")
    # Same cluster and node names on purpose: only the keys tell the two homes apart.
    return {name: Site(base / name, _init(base / name, base)) for name in ("main", "other")}


def _copy(site: Site, dest: Path) -> Site:
    shutil.copytree(site.home, dest, symlinks=True)
    return Site(dest, site.uri)


@pytest.fixture
def site(templates: dict[str, Site], tmp_path: Path) -> Site:
    return _copy(templates["main"], tmp_path / "home")


@pytest.fixture
def other(templates: dict[str, Site], tmp_path: Path) -> Site:
    return _copy(templates["other"], tmp_path / "other-home")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    (d / "plain.bin").write_bytes(b"model weights " * 100)
    art = d / "artifact"
    art.mkdir()
    (art / "a.txt").write_text("a")
    (art / "b.txt").write_text("b")
    return d


@pytest.fixture
def logged_in(cli, site: Site) -> Iterator[Site]:  # noqa: ANN001
    r = cli("login", "--home", site.home, "--user", "root", "--otp", site.code())
    assert r.code == 0, r.stderr
    yield site


# -- assertions --------------------------------------------------------------------------------


def assert_fails(r, code: int, site: Site | None = None, *, tip: bool = True) -> str:  # noqa: ANN001
    """The common contract of a failing command; returns the error line."""
    assert r.code == code, (r.code, r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors, r.stderr
    if tip:
        assert any(ln.startswith("Tip: ") for ln in r.stderr.splitlines()), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "internal error" not in r.stderr
    if site is not None:
        for s in site.secrets():
            assert s not in r.stdout + r.stderr
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files an interrupted write would leave behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part") or ".tmp" in p.name]


def audit_kinds(cli, site: Site, kind: str) -> list[dict]:  # noqa: ANN001
    r = cli("audit", "log", "--home", site.home, "--kind", kind, "--format", "json")
    assert r.code == 0, r.stderr
    return [e for e in r.json() if e["kind"] == kind]


# -- a missing home ----------------------------------------------------------------------------

MISSING_HOME_COMMANDS = [
    ("seal", "{work}/plain.bin", "{work}/out.tgs"),
    ("key", "list"),
    ("key", "rotate"),
    ("sign", "{work}/artifact"),
    ("verify", "{work}/artifact"),
    ("pki", "list"),
    ("pki", "issue", "n2", "--kind", "node", "--out", "{work}/certs"),
    ("user", "list"),
    ("login", "--user", "root", "--otp", "123456"),
    ("authz", "check", "--user", "root", "--action", "dataset:read", "--resource", "/d"),
    ("policy", "show"),
    ("check",),
]


@pytest.mark.parametrize("argv", MISSING_HOME_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_missing_home_is_a_usage_error_and_creates_nothing(cli, work: Path, argv) -> None:  # noqa: ANN001
    missing = work / "no-such-home"
    args = [a.format(work=work) for a in argv]
    r = cli(*args, "--home", missing)
    line = assert_fails(r, 2)
    assert "no trainguard home" in line and str(missing) in line
    assert "trainguard init" in r.stderr
    assert not missing.exists()
    assert not (work / "out.tgs").exists() and not (work / "certs").exists()


# -- loose modes, damaged or planted key files ---------------------------------------------------


@pytest.mark.parametrize(
    ("key", "argv"),
    [
        ("keys/kek-v1.key", ("seal", "{work}/plain.bin", "{work}/out.tgs")),
        ("keys/node.ed25519", ("sign", "{work}/artifact")),
        ("pki/ca.key", ("pki", "issue", "n2", "--kind", "node", "--out", "{work}/certs")),
    ],
)
def test_group_readable_key_file_is_refused(cli, site: Site, work: Path, key: str, argv) -> None:  # noqa: ANN001
    path = site.home / key
    path.chmod(0o644)
    r = cli(*[a.format(work=work) for a in argv], "--home", site.home)
    line = assert_fails(r, 2, site)
    assert "0644" in line and str(path) in line
    assert f"chmod 600 {path}" in r.stderr
    assert not (work / "out.tgs").exists()
    assert not (work / "artifact.tgsig.json").exists()
    assert not (work / "certs").exists()


def _missing(p: Path) -> None:
    p.unlink()


def _truncated(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:5])


def _emptied(p: Path) -> None:
    p.write_bytes(b"")


def _garbled(p: Path) -> None:
    p.write_bytes(b"{ not json")


def _symlinked(p: Path) -> None:
    target = p.parent.parent.parent / f"planted-{p.name}"
    shutil.move(p, target)
    p.symlink_to(target)


@pytest.mark.parametrize(
    ("key", "damage", "argv", "expect"),
    [
        ("kek-v1.key", _missing, "seal", "missing key file"),
        ("kek-v1.key", _truncated, "seal", "not a 32-byte KEK"),
        ("kek-v1.key", _emptied, "seal", "not a 32-byte KEK"),
        ("kek-v1.key", _symlinked, "seal", "safely"),
        ("keyring.json", _garbled, "seal", "not a keyring file"),
        ("keyring.json", _missing, "key", "missing key file"),
        ("node.ed25519", _missing, "sign", "missing key file"),
        ("node.ed25519", _truncated, "sign", "not a PEM private key"),
        ("node.ed25519", _symlinked, "sign", "safely"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_damaged_keys_folder(cli, site: Site, work: Path, key, damage, argv, expect) -> None:  # noqa: ANN001
    secrets = site.secrets()  # before the damage
    damage(site.home / "keys" / key)
    commands = {
        "seal": ("seal", work / "plain.bin", work / "out.tgs"),
        "key": ("key", "list"),
        "sign": ("sign", work / "artifact"),
    }
    r = cli(*commands[argv], "--home", site.home)
    line = assert_fails(r, 2)
    assert expect in line
    for s in secrets:
        assert s not in r.stdout + r.stderr
    # `trainguard init` refuses an existing home: the tip must point at the backup instead.
    assert "run `trainguard init`" not in r.stderr
    assert ("symlink" in r.stderr) == (damage is _symlinked)
    assert not (work / "out.tgs").exists() and not (work / "artifact.tgsig.json").exists()
    assert leftovers(work) == []


# -- a malformed trainguard.toml -----------------------------------------------------------------

CONFIG_COMMANDS = [
    ("seal", "{work}/plain.bin", "{work}/out.tgs"),
    ("unseal", "{work}/plain.bin", "{work}/out.bin"),
    ("key", "list"),
    ("sign", "{work}/artifact"),
    ("pki", "list"),
    ("login", "--user", "root", "--otp", "123456"),
    ("policy", "show"),
    ("check",),
]


@pytest.mark.parametrize("argv", CONFIG_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_every_config_problem_is_listed_at_once(cli, site: Site, work: Path, argv) -> None:  # noqa: ANN001
    with site.home.joinpath("trainguard.toml").open("a") as f:
        f.write(
            '\n[crypto]\nsegment_sise = 4096\nsegment_size = "big"\n'
            "[bogus]\nx = 1\n[policy]\nsession_hours = -3\n"
        )
    r = cli(*[a.format(work=work) for a in argv], "--home", site.home)
    line = assert_fails(r, 2, site)
    assert "invalid configuration" in line and "trainguard.toml" in line
    for problem in ("segment_sise", "expected int", "[bogus]", "session_hours"):
        assert problem in r.stderr, problem
    assert not (work / "out.tgs").exists() and not (work / "out.bin").exists()
    assert not (work / "artifact.tgsig.json").exists()


def test_config_that_is_not_toml(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    site.home.joinpath("trainguard.toml").write_text("[node\nname = = 'x'\n")
    r = cli("seal", work / "plain.bin", work / "out.tgs", "--home", site.home)
    line = assert_fails(r, 2, site)
    assert "invalid configuration" in line
    assert "not valid TOML" in r.stderr and "line 1" in r.stderr
    assert not (work / "out.tgs").exists()


# -- seal and unseal -----------------------------------------------------------------------------


def test_seal_input_and_output_mistakes(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    h = ("--home", site.home)
    cases = [
        (("seal", work / "nope.bin", work / "out.tgs"), "not a readable file"),
        (("seal", work / "artifact", work / "out.tgs"), "not a readable file"),
        (("seal", work / "plain.bin", work / "artifact"), "is a directory"),
        (("seal", work / "plain.bin", work / "no-dir" / "out.tgs"), "does not exist"),
        (("unseal", work / "nope.tgs", work / "out.bin"), "not a readable file"),
        (("unseal", work / "artifact", work / "out.bin"), "not a readable file"),
    ]
    for argv, expect in cases:
        r = cli(*argv, *h)
        assert expect in assert_fails(r, 2, site), argv
    assert not (work / "out.tgs").exists() and not (work / "out.bin").exists()
    assert not (work / "no-dir").exists()
    assert sorted(p.name for p in (work / "artifact").iterdir()) == ["a.txt", "b.txt"]
    assert leftovers(work) == []


def _generic(line: str, path: Path | str) -> str:
    return line.replace(f"sealed file {path} ", "sealed stream ")


def test_unseal_of_anything_but_our_sealed_file_is_one_generic_failure(
    cli,
    site: Site,
    other: Site,
    work: Path,  # noqa: ANN001
) -> None:
    h = ("--home", site.home)
    assert cli("seal", work / "plain.bin", work / "theirs.tgs", "--home", other.home).code == 0
    assert cli("seal", work / "plain.bin", work / "ours.tgs", *h).code == 0
    ours = (work / "ours.tgs").read_bytes()
    (work / "truncated.tgs").write_bytes(ours[:-20])
    (work / "header-only.tgs").write_bytes(ours[:100])
    lines = set()
    for name in ("plain.bin", "theirs.tgs", "truncated.tgs", "header-only.tgs"):
        r = cli("unseal", work / name, work / "out.bin", *h)
        lines.add(_generic(assert_fails(r, 1, site), work / name))
        assert not (work / "out.bin").exists(), name
    r = cli("unseal", "-", work / "out.bin", *h, input=b"")  # `-` with empty stdin
    lines.add(assert_fails(r, 1, site))
    assert not (work / "out.bin").exists()
    assert lines == {
        "error: sealed stream failed authentication: it is damaged, truncated, reordered, "
        "modified, or sealed under another keyring"
    }
    assert leftovers(work) == []


def test_failed_unseal_keeps_an_existing_output_and_a_good_one_replaces_it(
    cli,
    site: Site,
    other: Site,
    work: Path,  # noqa: ANN001
) -> None:
    h = ("--home", site.home)
    existing = work / "existing.bin"
    existing.write_bytes(b"keep me")
    existing.chmod(0o640)
    assert cli("seal", work / "plain.bin", work / "theirs.tgs", "--home", other.home).code == 0
    assert_fails(cli("unseal", work / "theirs.tgs", existing, *h), 1, site)
    assert existing.read_bytes() == b"keep me"  # no partial plaintext over it
    assert leftovers(work) == []

    assert cli("seal", work / "plain.bin", work / "ours.tgs", *h).code == 0
    r = cli("unseal", work / "ours.tgs", existing, *h)
    assert r.code == 0, r.stderr
    assert existing.read_bytes() == (work / "plain.bin").read_bytes()
    assert existing.stat().st_mode & 0o077 == 0  # plaintext comes out private


def test_seal_of_empty_stdin_round_trips_to_empty(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    h = ("--home", site.home)
    r = cli("seal", "-", work / "empty.tgs", *h, "--format", "json", input=b"")
    assert r.code == 0, r.stderr
    assert r.json()["bytes"] == 0
    r = cli("unseal", work / "empty.tgs", work / "empty.bin", *h)
    assert r.code == 0, r.stderr
    assert (work / "empty.bin").read_bytes() == b""


def test_traceback_only_with_verbose(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    argv = ("unseal", work / "plain.bin", work / "out.bin", "--home", site.home)
    assert "Traceback" not in cli(*argv).stderr
    r = cli(*argv, "-v")
    assert r.code == 1 and "Traceback" in r.stderr
    for s in site.secrets():
        assert s not in r.stdout + r.stderr


# -- sign and verify -----------------------------------------------------------------------------


def test_verify_without_a_manifest(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    for path in (work / "artifact", work / "nope"):
        line = assert_fails(cli("verify", path, "--home", site.home), 2, site)
        assert "no manifest" in line
    r = cli("verify", work / "artifact", "--manifest", work / "none.json", "--home", site.home)
    assert "no manifest" in assert_fails(r, 2, site)


def test_verify_refuses_foreign_and_garbled_manifests(
    cli,
    site: Site,
    other: Site,
    work: Path,  # noqa: ANN001
) -> None:
    art = work / "artifact"
    assert cli("sign", art, "--home", other.home).code == 0  # another home's node key
    (work / "garbled.json").write_text("this is not json {")
    (work / "wrong-shape.json").write_text('{"files": []}')
    manifests = [None, work / "garbled.json", work / "wrong-shape.json"]
    for m in manifests:
        extra = ("--manifest", m) if m else ()
        r = cli("verify", art, *extra, "--home", site.home, "--format", "json")
        line = assert_fails(r, 1, site)
        assert "signature verification failed" in line, m
        assert "modified maliciously" in line


def test_sign_mistakes_leave_no_manifest(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    h = ("--home", site.home)
    assert "does not exist" in assert_fails(cli("sign", work / "nope", *h), 2, site)
    r = cli("sign", work / "artifact", "--out", work / "no-dir" / "m.json", *h)
    assert "does not exist" in assert_fails(r, 2, site)
    r = cli("sign", work / "artifact", "--out", work / "artifact", *h)
    assert "is a directory" in assert_fails(r, 2, site)
    assert not (work / "no-dir").exists() and not (work / "artifact.tgsig.json").exists()
    assert sorted(p.name for p in (work / "artifact").iterdir()) == ["a.txt", "b.txt"]
    assert leftovers(work) == []


# -- pki -----------------------------------------------------------------------------------------


def _issued(cli, site: Site) -> list[str]:  # noqa: ANN001
    r = cli("pki", "list", "--home", site.home, "--format", "json")
    assert r.code == 0, r.stderr
    return sorted(c["name"] for c in r.json())


@pytest.mark.parametrize("name", ["bad name", "../etc", "", ".hidden", "x" * 65, "a/b"])
def test_pki_issue_bad_name(cli, site: Site, work: Path, name: str) -> None:  # noqa: ANN001
    out = work / "certs"
    r = cli("pki", "issue", name, "--kind", "user", "--out", out, "--home", site.home)
    assert "invalid name" in assert_fails(r, 2, site)
    assert not out.exists() or list(out.iterdir()) == []
    assert not (work / "etc.key").exists() and not (work / "b.key").exists()


def test_pki_issue_into_an_unusable_folder_issues_nothing(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    before = _issued(cli, site)
    for out in (work / "plain.bin", work / "plain.bin" / "sub"):
        r = cli("pki", "issue", "n2", "--kind", "node", "--out", out, "--home", site.home)
        assert "output folder" in assert_fails(r, 2, site)
    assert _issued(cli, site) == before  # no certificate whose key went nowhere


def test_pki_revoke_unknown_and_damaged_ca(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    r = cli("pki", "revoke", "ghost", "--home", site.home)
    assert "ghost" in assert_fails(r, 2, site)
    crl = (site.home / "pki" / "crl.pem").read_bytes()
    (site.home / "pki" / "ca.crt").write_text("not a certificate\n")
    r = cli("pki", "issue", "n2", "--kind", "node", "--out", work / "certs", "--home", site.home)
    assert "ca.crt" in assert_fails(r, 2, site)
    assert not (work / "certs").exists()
    assert (site.home / "pki" / "crl.pem").read_bytes() == crl


# -- login ---------------------------------------------------------------------------------------

GENERIC_LOGIN = "error: second-factor verification failed"


@pytest.mark.parametrize(
    ("user", "code"),
    [
        ("root", "wrong"),  # replaced by a wrong but well-formed code below
        ("root", "abcdef"),
        ("root", "12345678901234567890"),
        ("root", ""),
        ("root", "-1"),
        ("ghost", "123456"),
        ("ghost", ""),
    ],
)
def test_login_failures_are_generic_and_audited(
    cli,
    cli_env: dict[str, str],
    site: Site,
    user: str,
    code: str,  # noqa: ANN001
) -> None:
    if code == "wrong":
        good = {site.code(k) for k in (-1, 0, 1)}
        code = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in good)
    r = cli("login", "--home", site.home, "--user", user, "--otp", code)
    line = assert_fails(r, 1, site)
    assert line == GENERIC_LOGIN  # the same words for an unknown user: no user enumeration
    assert "check the code" in r.stderr
    assert r.stdout == ""
    events = audit_kinds(cli, site, "login-failed")
    assert [e["actor"] for e in events] == [user]
    if len(code) >= 6:
        assert code not in json.dumps(events)  # what was typed is not evidence worth keeping
    assert not list(Path(cli_env["XDG_CONFIG_HOME"]).glob("**/*.session"))


def test_reused_code_is_refused_and_no_code_is_a_usage_error(cli, site: Site) -> None:  # noqa: ANN001
    code = site.code()
    assert cli("login", "--home", site.home, "--user", "root", "--otp", code).code == 0
    r = cli("login", "--home", site.home, "--user", "root", "--otp", code)
    assert assert_fails(r, 1, site) == GENERIC_LOGIN
    reasons = [e["data"].get("reason", "") for e in audit_kinds(cli, site, "login-failed")]
    assert any("replay" in x for x in reasons), reasons
    r = cli("login", "--home", site.home, "--user", "root", input=b"")  # no terminal, no code
    assert "no code" in assert_fails(r, 2, site)
    assert "Warning" not in r.stderr  # no getpass noise when stdin is not a terminal
    r = cli("login", "--home", site.home, "--user", "root", input=site.code(1) + "\n")
    assert r.code == 0, r.stderr  # the code can come on stdin, out of the process list


# -- authz, policy, users ------------------------------------------------------------------------


def test_authz_check_unknown_names_are_usage_errors(cli, logged_in: Site) -> None:  # noqa: ANN001
    base = ("authz", "check", "--home", logged_in.home, "--user", "root", "--resource", "/d")
    cases = [
        (("--action", "nosuch:thing"), "unknown action"),
        (("--action", "dataset:read", "--project", "nosuchproject"), "unknown project"),
        (("--action", "dataset:read", "--project", "Bad Project!"), "invalid project"),
    ]
    for extra, expect in cases:
        assert expect in assert_fails(cli(*base, *extra), 2, logged_in), extra
    assert len(audit_kinds(cli, logged_in, "access-denied")) == len(cases)


def test_user_commands_without_a_session_are_denied(cli, site: Site) -> None:  # noqa: ANN001
    h = ("--home", site.home)
    for argv in (
        ("user", "add", "bob", "--role", "researcher"),
        ("user", "enrol", "root"),
        ("policy", "grant", "researcher", "dataset:read", "/d/*", "--project", "default"),
    ):
        r = cli(*argv, *h)
        assert "not logged in" in assert_fails(r, 1, site)
        assert "trainguard login" in r.stderr
    denied = audit_kinds(cli, site, "access-denied")
    assert {e["data"]["action"] for e in denied} >= {"user:manage", "policy:edit"}
    # Nothing changed: after logging in, bob does not exist.
    assert cli("login", *h, "--user", "root", "--otp", site.code()).code == 0
    r = cli("user", "list", *h, "--format", "json")
    assert r.code == 0, r.stderr
    assert "bob" not in r.stdout


def test_a_session_of_another_home_is_not_valid_here(cli, site: Site, other: Site) -> None:  # noqa: ANN001
    assert cli("login", "--home", other.home, "--user", "root", "--otp", other.code()).code == 0
    r = cli("user", "list", "--home", site.home)
    assert "session is not valid" in assert_fails(r, 1, site)
    assert other.secret not in r.stdout + r.stderr


def test_hand_edited_policy_is_refused_and_audited(cli, logged_in: Site) -> None:  # noqa: ANN001
    site = logged_in
    policy = site.home / "policy" / "policy.csv"
    with policy.open("a") as f:
        f.write("p, researcher, *, /*, *, allow\n")
    edited = policy.read_bytes()
    h = ("--home", site.home)
    for argv in (
        ("policy", "show"),
        ("authz", "check", "--user", "root", "--action", "dataset:read", "--resource", "/d"),
        ("user", "add", "bob", "--role", "researcher", "--otp", site.code(1)),
        ("policy", "grant", "researcher", "dataset:read", "/d/*", "--project", "default"),
    ):
        line = assert_fails(cli(*argv, *h), 2, site)
        assert "does not match its signature" in line, argv
    assert policy.read_bytes() == edited  # evidence left in place for review
    events = audit_kinds(cli, site, "policy-tampered")
    assert events and events[0]["data"]["path"] == str(policy)


def test_garbled_user_database(cli, site: Site) -> None:  # noqa: ANN001
    (site.home / "state" / "users.db").write_bytes(b"this is not sqlite" * 10)
    r = cli("login", "--user", "root", "--otp", site.code(), "--home", site.home)
    assert "users.db" in assert_fails(r, 2, site)
    assert "backup" in r.stderr


def test_pki_issue_with_a_broken_audit_log_issues_nothing(cli, site: Site, work: Path) -> None:  # noqa: ANN001
    before = _issued(cli, site)
    audit_db = site.home / "state" / "audit.db"
    good = audit_db.read_bytes()
    audit_db.write_bytes(b"this is not sqlite" * 10)
    out = work / "certs"
    r = cli("pki", "issue", "n2", "--kind", "node", "--out", out, "--home", site.home)
    assert r.code != 0 and "Traceback" not in r.stderr
    assert not out.exists()  # no key handed out that the audit log never saw
    audit_db.write_bytes(good)
    assert _issued(cli, site) == before


# -- killed processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["seal", "unseal"])
def test_killed_mid_stream_leaves_no_output(
    cli_env: dict[str, str], site: Site, work: Path, verb: str
) -> None:
    """SIGKILL runs no cleanup: only an output that never had a name is safe."""
    env = dict(cli_env, TRAINGUARD_HOME=str(site.home))
    base = [sys.executable, "-m", "trainguard.cli.main"]
    payload = os.urandom(3 << 20)
    if verb == "unseal":
        (work / "big.bin").write_bytes(payload)
        r = subprocess.run([*base, "seal", str(work / "big.bin"), str(work / "big.tgs")], env=env)
        assert r.returncode == 0
        payload = (work / "big.tgs").read_bytes()
        (work / "big.bin").unlink()
    out = work / "killed.out"
    proc = subprocess.Popen(
        [*base, verb, "-", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    proc.stdin.write(payload[: 2 << 20])  # more than a segment: output has been written
    proc.stdin.flush()
    proc.kill()
    proc.wait(timeout=30)
    proc.stdin.close()
    assert not out.exists()
    names = sorted(p.name for p in work.iterdir())
    assert names == sorted(["artifact", "plain.bin"] + (["big.tgs"] if verb == "unseal" else []))


def test_user_add_bad_name_says_user_name(cli, logged_in: Site) -> None:  # noqa: ANN001
    r = cli("user", "add", "Bad Name!", "--role", "researcher", "--home", logged_in.home)
    line = assert_fails(r, 2, logged_in)
    assert "invalid user name" in line and "resource" not in line


# -- init ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (("--cluster", "bad name"), "invalid name"),
        (("--node", "../x"), "invalid name"),
        (("--admin", "Root!"), "invalid user name"),
        (("--admin", ""), "--admin needs a name"),
    ],
)
def test_init_with_a_bad_name_leaves_no_half_made_home(cli, tmp_path: Path, flags, expect) -> None:  # noqa: ANN001
    home = tmp_path / "new-home"
    r = cli("init", "--home", home, *flags)
    assert expect in assert_fails(r, 2)
    assert not home.exists()  # else the next `init` says "already exists" over a broken home


def test_init_force_with_a_bad_name_puts_the_old_home_back(cli, site: Site) -> None:  # noqa: ANN001
    kek = (site.home / "keys" / "kek-v1.key").read_bytes()
    r = cli("init", "--home", site.home, "--force", "--admin", "Bad!")
    assert "invalid user name" in assert_fails(r, 2, site)
    assert (site.home / "keys" / "kek-v1.key").read_bytes() == kek
    assert sorted(p.name for p in site.home.parent.iterdir() if ".bak-" in p.name) == []


def test_init_where_no_home_can_be(cli, work: Path) -> None:  # noqa: ANN001
    r = cli("init", "--home", work / "plain.bin", "--admin", "root")
    assert "not a folder" in assert_fails(r, 2)
    r = cli("init", "--home", "/proc/no-home-here", "--admin", "root")
    assert "cannot create a home" in assert_fails(r, 2)
