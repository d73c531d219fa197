"""The audit report's federated-training section, end to end through the real CLI: a DP
federation with a sign-flipping site (flagged, excluded), then `trainguard audit report`."""

from __future__ import annotations

import json
from pathlib import Path

import pyotp
import pytest
from support.policy_env import secret_of
from support.trainer_jobs import EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_report_shows_rounds_sites_exclusions_incidents_epsilon_and_checkpoints(cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = cli("init", "--home", home, "--admin", "alice", "--format", "json")
    assert init.code == 0, init.stderr
    secret = secret_of(init.json()["admin"]["otpauth_uri"])
    assert cli("login", "--home", home, "--user", "alice", "--otp", pyotp.TOTP(secret).now()).code == 0
    fl = cli("fl", "run", EXAMPLES / "fl-digits.toml", "--home", home, "--sites", "3", "--user", "alice",
             "--set", "federation.rounds=4", "--set", "privacy.dp=true",
             "--set", "privacy.noise_multiplier=0.1", "--set", "privacy.clip_norm=2.0",
             "--set", 'simulate.byzantine_sites=["site-2"]', "--set", 'simulate.attack="sign-flip"',
             "--format", "json", timeout=600)
    assert fl.code == 1, fl.stderr  # an incident was raised
    run = fl.json()
    assert [s["excluded"] for s in run["sites"]] == [False, True, False]

    out = cli("audit", "report", "--home", home, "--out", tmp_path / "r", "--format", "json",
              "--formats", "md,json,html")
    assert out.code in (0, 1), out.stderr
    full = json.loads((tmp_path / "r" / "trainguard-report.json").read_text())
    (f,) = full["federated_runs"]
    assert f["run"] == run["run_id"] and f["rounds"] == 4 and f["status"] == "completed"
    assert f["sites"] == ["site-1", "site-2", "site-3"] and f["excluded"] == ["site-2"]
    assert [(i["kind"], i["site"]) for i in f["incidents"]] == [("byzantine-worker", "site-2")]
    assert f["epsilon"] == pytest.approx(run["privacy"]["epsilon"]) and f["delta"] == 1e-5
    assert [r for r, _ in f["epsilon_per_round"]] == [1, 2, 3, 4]
    assert [c["sha256"] for c in f["checkpoints"]] == [c["sha256"] for c in run["checkpoints"]]
    md = (tmp_path / "r" / "trainguard-report.md").read_text()
    section = md.split("## Federated training", 1)[1].split("\n## ", 1)[0]
    assert run["run_id"] in section and "excluded: site-2" in section
    assert "byzantine-worker (site-2)" in section and "epsilon" in section
    assert run["checkpoints"][-1]["sha256"] in section
    html = (tmp_path / "r" / "trainguard-report.html").read_text()
    assert "<h2>Federated training</h2>" in html and run["checkpoints"][0]["sha256"] in html
