"""`fl server` and `fl site` as separate commands, the way sites on other machines would run
them: the server's home holds the cluster CA; each site gets its certificate with `pki issue
NAME --kind node --out DIR` and joins with `fl site` (here on 127.0.0.1, each command in its
own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from support.trainer_jobs import EXAMPLES, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FL = EXAMPLES / "fl-digits.toml"


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "trainguard.cli.main", *map(str, args)]


def test_server_and_three_sites_as_separate_commands(cli, cli_env, tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = cli("init", "--home", home, "--admin", "alice", "--format", "json")
    assert init.code == 0, init.stderr
    secret = parse_qs(urlparse(init.json()["admin"]["otpauth_uri"]).query)["secret"][0]
    assert cli("login", "--home", home, "--user", "alice", "--otp",
               pyotp.TOTP(secret).now()).code == 0
    certs = tmp_path / "certs"
    for site in ("site-1", "site-2", "site-3"):
        assert cli("pki", "issue", site, "--kind", "node", "--home", home, "--out", certs).code == 0
    port = free_port()
    env = {**cli_env, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        _cmd("fl", "server", FL, "--home", home, "--listen", f"127.0.0.1:{port}", "--user", "alice",
             "--set", "federation.rounds=4", "--format", "json", "--timeout", "200"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sites = [subprocess.Popen(
        _cmd("fl", "site", FL, "--site", s, "--server", f"localhost:{port}",
             "--cert", certs / f"{s}.crt", "--key", certs / f"{s}.key", "--ca", certs / "ca.crt",
             "--set", "federation.rounds=4", "--home", tmp_path / f"{s}-home"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for s in ("site-1", "site-2", "site-3")]
    try:
        out, err = server.communicate(timeout=280)
        site_codes = [p.wait(timeout=60) for p in sites]
    finally:
        for p in (server, *sites):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert server.returncode == 0, err.decode()[-3000:]
    r = json.loads(out)
    assert r["status"] == "completed" and r["rounds"] == 4 and r["final_accuracy"] >= 0.85
    assert [(s["name"], s["rounds_joined"]) for s in r["sites"]] == [
        ("site-1", 4), ("site-2", 4), ("site-3", 4)]
    assert site_codes == [0, 0, 0]


def test_a_site_without_its_tls_files_is_refused_with_a_tip(cli, tmp_path: Path) -> None:
    out = cli("fl", "site", FL, "--site", "site-1", "--server", "localhost:1",
              "--home", tmp_path / "nohome", "--cert", tmp_path / "x.crt")
    assert out.code == 2
    assert "missing TLS files" in out.stderr and "pki issue site-1" in out.stderr


def test_a_bind_all_listen_address_is_refused_with_a_tip(cli, tmp_path: Path) -> None:
    out = cli("fl", "server", FL, "--listen", "0.0.0.0:9093", "--home", tmp_path / "nohome")
    assert out.code == 2
    assert "needs a named address" in out.stderr and "--name" in out.stderr
