"""`trainguard fl run` end to end: init, login with TOTP, a Flower server and three site
processes over TLS from the cluster CA on 127.0.0.1, every round in the audit log; one
sign-flipping site wrecks FedAvg but not median / centered clipping, and is flagged and excluded."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from support.trainer_jobs import EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FL = EXAMPLES / "fl-digits.toml"
SIGN_FLIP = ["--set", 'simulate.byzantine_sites=["site-2"]', "--set", 'simulate.attack="sign-flip"']


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    root = tmp_path / "home"
    init = cli("init", "--home", root, "--admin", "alice", "--format", "json")
    assert init.code == 0, init.stderr
    secret = parse_qs(urlparse(init.json()["admin"]["otpauth_uri"]).query)["secret"][0]
    code = pyotp.TOTP(secret).now()
    out = cli("login", "--home", root, "--user", "alice", "--otp", code, "--format", "json")
    assert out.code == 0, out.stderr
    return root


def _fl(cli, home: Path, *extra: str):
    return cli("fl", "run", FL, "--home", home, "--sites", "3", "--user", "alice", *extra,
               "--format", "json", timeout=300)


def _audit(cli, home: Path, kind: str) -> list[dict]:
    out = cli("audit", "log", "--home", home, "--kind", kind, "--format", "jsonl")
    assert out.code == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_launch_without_login_is_refused_before_any_site_starts(cli, tmp_path: Path) -> None:
    root = tmp_path / "h"
    assert cli("init", "--home", root, "--admin", "alice").code == 0
    out = cli("fl", "run", FL, "--home", root, "--sites", "3", "--format", "json")
    assert out.code in (1, 2)
    assert "login" in out.stderr
    assert not (root / "state" / "fl").exists()


def test_three_sites_learn_digits_over_tls_and_every_round_is_audited(cli, home: Path) -> None:
    out = _fl(cli, home)
    assert out.code == 0, out.stderr
    r = out.json()
    assert r["status"] == "completed" and r["rounds"] == 8
    assert r["final_accuracy"] >= 0.90
    assert [(s["name"], s["rounds_joined"], s["excluded"]) for s in r["sites"]] == [
        ("site-1", 8, False), ("site-2", 8, False), ("site-3", 8, False)]
    assert r["incidents"] == [] and r["privacy"] is None
    assert len(r["bytes_per_round"]) == 8 and all(b["up"] > 0 for b in r["bytes_per_round"])
    assert r["transport"]["tls"] is True
    # each site got its own home with a certificate from the cluster CA
    run_dir = Path(r["run_dir"])
    assert oct(run_dir.parent.stat().st_mode & 0o777) == "0o700"  # <home>/state/fl
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((run_dir / "server" / "node.key").stat().st_mode & 0o777) == "0o600"
    for site in ("site-1", "site-2", "site-3"):
        assert (run_dir / "sites" / site / "pki" / "node.crt").read_bytes().startswith(b"-----BEGIN")
    # the SuperLink (Flower's deployment engine) served HTTPS, and every site connected to it
    server_log = (run_dir / "logs" / "server.log").read_text()
    assert "Uvicorn running on https://" in server_log and "http://" not in server_log
    assert r["transport"]["engine"].startswith("flwr deployment engine")
    for site in ("site-1", "site-2", "site-3"):
        assert "Connection successful" in (run_dir / "logs" / f"{site}.log").read_text()
    rounds = _audit(cli, home, "fl.round")
    assert len(rounds) == 8
    assert "site-3" in json.dumps(rounds[-1]) and "update_norms" in json.dumps(rounds[-1])
    assert len(_audit(cli, home, "fl.launch")) == 1


def test_a_sign_flipping_site_wrecks_fedavg(cli, home: Path) -> None:
    out = _fl(cli, home, *SIGN_FLIP, "--set", "aggregation.exclude_flagged=false")
    assert out.code == 1, out.stderr  # finished, with an incident
    r = out.json()
    assert r["status"] == "completed" and r["final_accuracy"] < 0.5
    assert r["simulate"]["test_facility"] is True
    assert [i["site"] for i in r["incidents"]] == ["site-2"]


@pytest.mark.parametrize("method", ["median", "centered-clip"])
def test_robust_rules_hold_and_the_sign_flipping_site_is_flagged_and_excluded(
        cli, home: Path, method: str) -> None:
    out = _fl(cli, home, *SIGN_FLIP, "--set", f'aggregation.method="{method}"')
    assert out.code == 1, out.stderr
    r = out.json()
    assert r["status"] == "completed" and r["final_accuracy"] >= 0.85
    assert [(i["kind"], i["site"]) for i in r["incidents"]] == [("byzantine-worker", "site-2")]
    site2 = next(s for s in r["sites"] if s["name"] == "site-2")
    assert site2["excluded"] is True and site2["rounds_joined"] == 2
    last = _audit(cli, home, "fl.round")[-1]
    assert last["data"]["excluded"] == ["site-2"] and "site-2" not in last["data"]["sites"]


def test_a_bad_config_is_refused_with_every_problem_before_asking_for_mfa(cli, home: Path) -> None:
    out = cli("fl", "run", FL, "--home", home, "--sites", "3", "--set", 'aggregation.method="krum"',
              "--set", 'simulate.byzantine_sites=["site-9"]', "--format", "json")
    assert out.code == 2
    assert "krum" in out.stderr and "site-9" in out.stderr and "fl-digits.toml" in out.stderr


def test_without_flower_every_fl_command_names_the_federated_extra(cli, home: Path,
                                                                   tmp_path: Path) -> None:
    shadow = tmp_path / "no-flower" / "flwr"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named flwr")\n')
    env = {"PYTHONPATH": str(shadow.parent)}
    for args in (("run", FL, "--sites", "3", "--user", "alice"),
                 ("server", FL, "--listen", "127.0.0.1:1", "--user", "alice"),
                 ("site", FL, "--site", "site-1", "--server", "localhost:1")):
        out = cli("fl", *args, "--home", home, env=env)
        assert out.code == 3, out.stderr
        assert "Flower is not installed" in out.stderr and "trainguard[federated]" in out.stderr
    assert not (home / "state" / "fl").exists()
