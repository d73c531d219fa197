"""A non-root account uses RBAC and MFA through the agent, never through the home.

The home is root's (inside a 0700 folder). The CLI runs as `nobody` (setpriv) against the
running agent's socket: it logs in as the user its uid maps to, is allowed what the policy
allows, denied the rest, and cannot log in as another user with that user's valid code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from support.policy_env import secret_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOBODY = 65534
_BOOT = (
    "import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
    "sys.argv[0] = 'trainguard'; runpy.run_module('trainguard.cli.main', run_name='__main__')"
)


def _unprivileged_python() -> list[str]:
    """A command that runs the trainguard CLI as uid 65534 (skip where that cannot work)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as another account")
    site = sysconfig.get_paths()["purelib"]
    for python in (sys.executable, "/usr/bin/python3"):
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
               "-c", _BOOT, site]
        probe = subprocess.run([*cmd[:-3], "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            # The account must also be able to read the installed code (an editable install
            # points into the checkout, which may sit in a 0700 folder such as a mktemp -d).
            readable = subprocess.run(
                [*cmd[:-3], "-c", "import site, sys; site.addsitedir(sys.argv[1]); "
                 "import trainguard.cli.main", site], capture_output=True, text=True, cwd="/")
            if readable.returncode != 0:
                pytest.skip(f"uid {NOBODY} cannot import trainguard from this checkout "
                            "(run the suite from a world-readable folder)")
            return cmd
    pytest.skip("no Python of this version that an unprivileged account can run")


def _code(uri: str) -> str:
    return pyotp.TOTP(secret_of(uri)).now()


@pytest.fixture
def system(cli, tmp_path: Path) -> Iterator[dict[str, object]]:  # type: ignore[no-untyped-def]
    as_nobody = _unprivileged_python()
    home = tmp_path / "home"  # under pytest's 0700 folder: nobody cannot even stat it
    init = cli("init", "--home", home, "--cluster", "lab", "--node", "n1", "--admin", "root",
               "--format", "json")
    assert init.code == 0, init.stderr
    root_uri = init.json()["admin"]["otpauth_uri"]
    assert cli("login", "--home", home, "--user", "root", "--otp", _code(root_uri)).code == 0
    added = cli("user", "add", "bob", "--role", "researcher", "--project", "default",
                "--uid", str(NOBODY), "--home", home, "--format", "json")
    assert added.code == 0, added.stderr
    assert added.json()["uid"] == NOBODY
    enrol = cli("user", "enrol", "bob", "--home", home, "--format", "json")
    assert enrol.code == 0, enrol.stderr
    bob_uri = enrol.json()["otpauth_uri"]

    run_dir = Path(tempfile.mkdtemp(prefix="tg-run-", dir="/tmp"))
    run_dir.chmod(0o755)
    sock = run_dir / "agent.sock"
    nobody_home = Path(tempfile.mkdtemp(prefix="tg-nobody-", dir="/tmp"))
    os.chown(nobody_home, NOBODY, NOBODY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(home)],
        env={**env, "TRAINGUARD_AGENT_SOCKET": f'"{sock}"'},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert agent.poll() is None, agent.stderr.read().decode() if agent.stderr else ""
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.2)

        def nobody(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*as_nobody, "--home", str(home), *args],
                env={"PATH": "/usr/bin:/bin", "HOME": str(nobody_home),
                     "TRAINGUARD_SOCKET": str(sock)},
                capture_output=True, text=True, timeout=120, cwd="/",
            )

        yield {"home": home, "nobody": nobody, "bob_uri": bob_uri, "root_uri": root_uri,
               "sock": sock, "nobody_home": nobody_home}
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(nobody_home, ignore_errors=True)


def test_a_mapped_account_logs_in_through_the_agent_and_gets_what_the_policy_allows(
    system: dict[str, object], cli  # type: ignore[no-untyped-def]
) -> None:
    nobody = system["nobody"]
    assert callable(nobody)
    login = nobody("login", "--user", "bob", "--otp", _code(str(system["bob_uri"])),
                   "--format", "json")
    assert login.returncode == 0, login.stderr
    assert json.loads(login.stdout)["via"] == "agent"
    allowed = nobody("authz", "check", "--user", "bob", "--action", "dataset:read",
                     "--resource", "/datasets/x", "--project", "default")
    assert allowed.returncode == 0, allowed.stderr
    denied = nobody("authz", "check", "--user", "bob", "--action", "key:rotate",
                    "--resource", "/keys", "--project", "default")
    assert denied.returncode == 1
    # The token the agent signed is useless without the agent: nobody cannot verify or mint one.
    token_files = list(Path(str(system["nobody_home"])).rglob("*.session"))
    assert token_files and all(f.stat().st_uid == NOBODY for f in token_files)


def test_a_mapped_account_cannot_log_in_as_another_user_with_that_users_valid_code(
    system: dict[str, object], cli  # type: ignore[no-untyped-def]
) -> None:
    nobody = system["nobody"]
    assert callable(nobody)
    stolen = nobody("login", "--user", "root", "--otp", _code(str(system["root_uri"])))
    assert stolen.returncode == 1
    assert "second-factor verification failed" in stolen.stderr
    log = cli("audit", "log", "--home", system["home"], "--kind", "login-failed",
              "--format", "json")
    reasons = [e["data"].get("reason") for e in log.json()]
    assert "name is not the caller's user" in reasons


def test_an_unmapped_account_is_refused(system: dict[str, object]) -> None:
    sock = system["sock"]
    outsider = subprocess.run(
        ["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups", sys.executable, "-c",
         "import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
         "s.sendall(json.dumps({'op': 'auth.login', 'user': 'bob', 'code': '123456'}).encode()"
         " + b'\\n'); print(s.makefile().readline())", str(sock)],
        capture_output=True, text=True, timeout=60,
    )
    if outsider.returncode != 0 and "Permission denied" in outsider.stderr:
        pytest.skip("this Python cannot run as another account here")
    reply = json.loads(outsider.stdout)
    assert reply["result"]["refused"]["message"].startswith("this OS account is not mapped")
