"""`trainguard train` end to end: init, login with TOTP, preflight, torchrun workers, audit
trail; the built-in recipe (CONFIG.toml) and the user's own scripts (--script), plain PyTorch
and Hugging Face Accelerate."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from support.trainer_jobs import DIGITS, EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    root = tmp_path / "home"
    init = cli("init", "--home", root, "--admin", "alice", "--format", "json")
    assert init.code == 0, init.stderr
    secret = parse_qs(urlparse(init.json()["admin"]["otpauth_uri"]).query)["secret"][0]
    root.joinpath(".secret").write_text(secret)
    return root


def _login(cli, home: Path) -> None:
    code = pyotp.TOTP(home.joinpath(".secret").read_text()).now()
    out = cli("login", "--home", home, "--user", "alice", "--otp", code, "--format", "json")
    assert out.code == 0, out.stderr


def test_launch_without_login_is_refused_before_anything_runs(cli, home: Path) -> None:
    out = cli("train", DIGITS, "--home", home, "--nproc", "2", "--skip-deps-verify",
              "--format", "json")
    assert out.code in (1, 2)
    assert "login" in out.stderr
    assert not list((home / "state" / "runs").glob("*/torchrun.log"))


def test_digits_converges_with_three_workers_and_leaves_an_audit_trail(cli, home: Path, tmp_path: Path) -> None:
    _login(cli, home)
    out = cli("train", DIGITS, "--home", home, "--nproc", "3", "--user", "alice",
              "--set", f'checkpoint.dir="{tmp_path / "ck"}"', "--skip-deps-verify",
              "--export-weights", tmp_path / "final.pt", "--format", "json")
    assert out.code == 0, out.stderr
    result = out.json()
    assert result["status"] == "completed"
    assert result["final_accuracy"] >= 0.90
    assert result["steps"] == 300 and result["world_size"] == 3
    assert [c["step"] for c in result["checkpoints"]] == [100, 200, 300]
    assert result["incidents"] == [] and result["resumed_from_step"] is None
    steps = {s["name"]: s["status"] for s in result["preflight"]["steps"]}
    assert steps["authorize"] == "passed" and steps["deps-verify"] == "skipped"
    assert result["preflight"]["principal"] == "alice"

    weights = Path(result["model_weights"])
    assert oct(weights.stat().st_mode & 0o777) == "0o600"
    import torch

    state = torch.load(weights, weights_only=True)
    assert "artifact-scan" in steps
    assert state["1.weight"].shape == (64, 64)  # digits_mlp: Flatten, then 64 inputs -> 64 hidden

    log = cli("audit", "log", "--home", home, "--format", "json").json()
    kinds = [e["kind"] for e in log]
    launch = next(e for e in log if e["kind"] == "train.launch")
    assert launch["actor"] == "alice" and launch["data"]["mfa_age_s"] is not None
    assert "train.preflight.skipped" in kinds  # a skipped check is never silent
    assert kinds.count("train.checkpoint") == 3
    assert "train.telemetry" in kinds and "train.finish" in kinds and "train.export" in kinds
    verify = cli("audit", "verify", "--home", home, "--format", "json")
    assert verify.code == 0, verify.stderr


@pytest.mark.parametrize("example", ["digits_plain.py", "digits_accelerate.py"])
def test_script_example_is_protected_end_to_end(cli, home: Path, tmp_path: Path, example: str) -> None:
    _login(cli, home)
    ck = tmp_path / "ck"
    out = cli("train", "--script", EXAMPLES / example, "--home", home, "--nproc", "2",
              "--checkpoint-dir", ck, "--skip-deps-verify", "--format", "json",
              "--", "--epochs", "3", "--checkpoint-every", "25")
    assert out.code == 0, out.stderr
    result = out.json()
    assert result["status"] == "completed" and result["script"].endswith(example)
    assert result["final_accuracy"] >= 0.85
    assert result["world_size"] == 2 and result["device"] == "cpu" and result["backend"] == "gloo"
    assert [c["step"] for c in result["checkpoints"]] == [25, 50, 63]
    assert sorted(p.name for p in ck.glob("*.tgseal")) == [
        "step-00000025.tgseal", "step-00000050.tgseal", "step-00000063.tgseal"]
    steps = {s["name"]: s["status"] for s in result["preflight"]["steps"]}
    assert steps["authorize"] == "passed" and steps["artifact-scan"] == "passed"
    log = cli("audit", "log", "--home", home, "--format", "json").json()
    launch = next(e for e in log if e["kind"] == "train.launch")
    assert launch["data"]["script"].endswith(example)
    assert launch["data"]["script_args"] == ["--epochs", "3", "--checkpoint-every", "25"]
    assert [e["kind"] for e in log].count("train.checkpoint") == 3


def test_script_outside_trainguard_train_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """The protected script under plain torchrun (real workers, no launch context)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "--max-restarts", "0",
                          EXAMPLES / "digits_plain.py"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode != 0
    assert out.stderr.count("LaunchContextMissing") >= 2  # every worker refuses, before any data
    assert "not started by `trainguard train`" in out.stderr
    assert "Tip: launch the script with `trainguard train --script PATH`" in out.stderr


def test_multi_node_without_a_rendezvous_is_a_usage_error(cli, home: Path) -> None:
    out = cli("train", "--script", EXAMPLES / "digits_plain.py", "--home", home, "--nnodes", "2",
              "--skip-deps-verify", "--format", "json")
    assert out.code == 2, out.stderr
    assert "--rdzv-endpoint" in out.stderr
    assert not list((home / "state" / "runs").glob("*/torchrun.log"))
