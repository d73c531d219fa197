"""The sharded examples end to end through `trainguard train --script` with real torchrun
workers on gloo: FSDP2, HSDP (2x2 mesh), tensor parallel and a 2-stage pipeline each train,
lose a worker or stop, and resume from their sealed DCP checkpoint, at another world size where
DCP reshards; `trainguard checkpoint export` turns a sharded step into one sealed file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest
from support.trainer_jobs import EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    root = tmp_path / "home"
    init = cli("init", "--home", root, "--admin", "alice", "--format", "json")
    assert init.code == 0, init.stderr
    secret = parse_qs(urlparse(init.json()["admin"]["otpauth_uri"]).query)["secret"][0]
    root.joinpath(".secret").write_text(secret)
    return root


def _fresh_code(home: Path) -> str:
    """A TOTP code not used before in this home (a code is accepted once)."""
    totp = pyotp.TOTP(home.joinpath(".secret").read_text())
    used = home / ".used"
    while (code := totp.now()) == (used.read_text() if used.exists() else None):
        time.sleep(1)
    used.write_text(code)
    return code


def _login(cli, home: Path) -> None:
    out = cli("login", "--home", home, "--user", "alice", "--otp", _fresh_code(home),
              "--format", "json")
    assert out.code == 0, out.stderr


def _train(cli, home: Path, script: str, nproc: int, ck: Path, *flags: str,
           args: tuple[str, ...] = (), code: int = 0) -> dict[str, Any]:
    _login(cli, home)  # fresh MFA for train:launch before each launch
    out = cli("train", "--script", EXAMPLES / script, "--home", home, "--nproc", str(nproc),
              "--checkpoint-dir", ck, "--skip-deps-verify", "--format", "json", *flags,
              "--", *args, timeout=900)
    assert out.code == code, out.stderr
    result = out.json()
    assert result["status"] == "completed", result
    assert result["world_size"] == nproc and result["parallelism"] in ("sharded", "partitioned")
    return result


def _kill(rank: int, step: int) -> tuple[str, ...]:
    return ("--set", f"simulate.kill_rank={rank}", "--set", f"simulate.kill_at_step={step}")


def _sealed_dcp_steps(result: dict[str, Any]) -> list[int]:
    from trainguard.crypto.sealed.format import MAGIC

    assert Path(result["checkpoints"][-1]["path"]).is_dir()  # older ones may be pruned (keep 3)
    for c in result["checkpoints"]:
        folder = Path(c["path"])
        assert folder.name.endswith(".dcp")
        if not folder.exists():
            continue
        assert Path(c["path"] + ".tgsig.json").is_file()
        files = list(folder.iterdir())
        assert any(f.name == ".metadata" for f in files)
        assert all(f.read_bytes()[:6] == MAGIC for f in files)  # nothing readable on disk
    return [c["step"] for c in result["checkpoints"]]


def test_fsdp2_resumes_after_a_kill_then_at_1_and_3_ranks_and_exports_one_sealed_file(
        cli, home: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = _train(cli, home, "fsdp2_digits.py", 2, ck, *_kill(1, 25),
                   args=("--steps", "40", "--checkpoint-every", "10"))
    assert first["attempts"] == 2 and first["resumed_from_step"] == 20
    assert first["incidents"] == [] and first["steps"] == 40
    assert _sealed_dcp_steps(first) == [10, 20, 30, 40]
    # The weights after resuming at 1 rank are exactly the weights saved at 2 (resharded).
    second = _train(cli, home, "fsdp2_digits.py", 1, ck, "--resume",
                    args=("--steps", "60", "--checkpoint-every", "10", "--async-save"))
    assert second["resumed_from_step"] == 40 and _sealed_dcp_steps(second) == [50, 60]
    assert second["resumed_checksum"] == pytest.approx(first["checksum"], rel=1e-9)
    third = _train(cli, home, "fsdp2_digits.py", 3, ck, "--resume",
                   args=("--steps", "70", "--checkpoint-every", "10"))
    assert third["resumed_from_step"] == 60
    assert third["resumed_checksum"] == pytest.approx(second["checksum"], rel=1e-9)
    assert third["final_accuracy"] >= 0.8

    _export_checks(cli, home, ck, tmp_path, second["checksum"])


def _export_checks(cli, home: Path, ck: Path, tmp_path: Path, checksum_60: float) -> None:
    import torch
    from trainguard.core.home import Home
    from trainguard.crypto.keyring import open_keyring
    from trainguard.trainer.checkpoint import CheckpointStore
    from trainguard.trainer.launcher import trust_for

    out_dir = tmp_path / "export"
    missing = cli("checkpoint", "export", ck, "--step", "99", "--out", out_dir, "--home", home,
                  "--format", "json")
    assert missing.code == 2 and "step 99" in missing.stderr and "Tip:" in missing.stderr
    _login(cli, home)
    done = cli("checkpoint", "export", ck, "--step", "60", "--out", out_dir, "--home", home,
               "--format", "json")
    assert done.code == 0, done.stderr
    exported = done.json()
    assert exported["step"] == 60 and Path(exported["out"]).name == "step-00000060.tgseal"
    # One sealed, signed file that the single-file loader verifies and loads.
    h = Home(home)
    payload, info = CheckpointStore(out_dir, open_keyring(h), trust_for(h)).load(Path(exported["out"]))
    assert info.step == 60 and info.sha256 == exported["sha256"]
    weights = payload["state"]["app"]["model"]
    assert sum(float(t.double().sum()) for t in weights.values()) == pytest.approx(checksum_60, rel=1e-9)
    assert all(isinstance(t, torch.Tensor) for t in weights.values())

    shard = next((ck / "step-00000070.dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    refused = cli("checkpoint", "export", ck, "--step", "70", "--out", tmp_path / "export-70",
                  "--home", home, "--format", "json")
    assert refused.code == 1, refused.stderr
    assert "does not match its manifest" in refused.stderr and "Tip:" in refused.stderr
    assert not (tmp_path / "export-70" / "step-00000070.tgseal").exists()
    log = cli("audit", "log", "--home", home, "--format", "json").json()
    kinds = [e["kind"] for e in log]
    assert "checkpoint.export" in kinds and "checkpoint.export.refused" in kinds
    allowed = [e for e in log if e["kind"] == "access-allowed"
               and e["data"].get("action") == "checkpoint:export"]
    assert allowed and allowed[-1]["actor"] == "alice"
    assert any(e["kind"] == "incident" and "checkpoint-tampered" in json.dumps(e["data"])
               for e in log)


def test_export_needs_a_login_with_a_fresh_second_factor(cli, home: Path, tmp_path: Path) -> None:
    (tmp_path / "ck" / "step-00000010.dcp").mkdir(parents=True)
    (tmp_path / "ck" / "step-00000010.dcp.tgsig.json").write_text("{}")
    out = cli("checkpoint", "export", tmp_path / "ck", "--step", "10", "--out", tmp_path / "x",
              "--home", home, "--format", "json")
    assert out.code in (1, 2) and "login" in out.stderr
    assert not (tmp_path / "x").exists()


def test_hsdp_saved_on_a_2x2_mesh_resumes_at_2_ranks_past_a_tampered_step(
        cli, home: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = _train(cli, home, "hsdp_digits.py", 4, ck, args=("--steps", "20", "--checkpoint-every", "10"))
    assert _sealed_dcp_steps(first) == [10, 20]
    meta = ck / "step-00000020.dcp" / ".metadata"
    data = bytearray(meta.read_bytes())
    data[-10] ^= 0x01
    meta.write_bytes(bytes(data))
    second = _train(cli, home, "hsdp_digits.py", 2, ck, "--resume",
                    args=("--steps", "30", "--checkpoint-every", "10"), code=1)
    assert second["resumed_from_step"] == 10  # step 20 refused: the newest that verifies
    assert [i["kind"] for i in second["incidents"]] == ["checkpoint-tampered"]
    assert "step-00000020.dcp" in second["incidents"][0]["evidence"]["checkpoint"]
    assert second["steps"] == 30 and _sealed_dcp_steps(second) == [20, 30]
    # the refused step was set aside for forensics when training reached step 20 again
    assert len([p for p in ck.iterdir() if p.name.startswith("step-00000020.dcp.refused-")]) == 2


def test_tensor_parallel_resumes_after_a_kill_and_at_1_rank(cli, home: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = _train(cli, home, "tp_digits.py", 2, ck, *_kill(1, 15),
                   args=("--steps", "20", "--checkpoint-every", "10"))
    assert first["attempts"] == 2 and first["resumed_from_step"] == 10
    assert _sealed_dcp_steps(first) == [10, 20]
    second = _train(cli, home, "tp_digits.py", 1, ck, "--resume",
                    args=("--steps", "30", "--checkpoint-every", "10"))
    assert second["resumed_from_step"] == 20
    assert second["resumed_checksum"] == pytest.approx(first["checksum"], rel=1e-9)


def test_two_stage_pipeline_resumes_after_a_kill(cli, home: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = _train(cli, home, "pipeline_digits.py", 2, ck, *_kill(1, 15),
                   args=("--steps", "20", "--checkpoint-every", "10"))
    assert first["attempts"] == 2 and first["resumed_from_step"] == 10
    assert first["parallelism"] == "partitioned" and _sealed_dcp_steps(first) == [10, 20]
    # each stage wrote its own layers: two shard files in every step
    assert len(list((ck / "step-00000020.dcp").glob("*.distcp"))) == 2
    second = _train(cli, home, "pipeline_digits.py", 2, ck, "--resume",
                    args=("--steps", "30", "--checkpoint-every", "10", "--async-save"))
    assert second["resumed_from_step"] == 20 and _sealed_dcp_steps(second) == [30]
    assert second["resumed_checksum"] == pytest.approx(first["checksum"], rel=1e-9)
