"""Checkpoints under real torchrun: a killed worker resumes from the last checkpoint, and a
tampered newest checkpoint is refused in favour of the previous good one."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killed_worker_is_restarted_and_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    result, sink = run_job(home, [
        "train.steps=160", "checkpoint.every=50", f'checkpoint.dir="{tmp_path / "ck"}"',
        "simulate.kill_rank=1", "simulate.kill_at_step=120",
    ], nproc=2)
    assert result["status"] == "completed"
    assert result["attempts"] == 2  # torchrun restarted the workers once
    assert result["resumed_from_step"] == 100
    assert result["steps"] == 160
    assert result["final_accuracy"] >= 0.85
    assert [c["step"] for c in result["checkpoints"]] == [50, 100, 150, 160]
    kinds = [k for k, _, _ in sink.events]
    assert "train.resume" in kinds and "train.checkpoint" in kinds


def test_flipped_byte_in_newest_checkpoint_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    ck = tmp_path / "ck"
    first, _ = run_job(home, ["train.steps=100", "checkpoint.every=50", f'checkpoint.dir="{ck}"'],
                       nproc=2)
    newest = Path(first["checkpoints"][-1]["path"])
    assert newest.name == "step-00000100.tgseal"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))

    second, _ = run_job(home, ["train.steps=120", "checkpoint.every=50", f'checkpoint.dir="{ck}"'],
                        nproc=2, resume=True)
    assert second["status"] == "completed"
    assert second["resumed_from_step"] == 50
    tampered = [i for i in second["incidents"] if i["kind"] == "checkpoint-tampered"]
    assert len(tampered) == 1 and tampered[0]["evidence"]["checkpoint"] == str(newest)
    assert ("checkpoint-tampered", "high") in second["reported"]


def test_stop_training_request_checkpoints_and_stops(tmp_path: Path) -> None:
    import json
    import time

    home = make_home(tmp_path / "home")
    # What the agent's stop-training action writes (agent/actions.py), for any job.
    request = {"v": 1, "incident": "i-1", "kind": "gpu-misuse", "severity": "high",
               "time": time.time() + 3600, "job": None, "reason": "trainguard incident gpu-misuse"}
    (home.state_dir / "stop-training.json").write_text(json.dumps(request))
    result, _ = run_job(home, ["train.steps=300", "telemetry.every=10", "checkpoint.every=0",
                               f'checkpoint.dir="{tmp_path / "ck"}"'], nproc=2)
    assert result["status"] == "aborted"
    assert result["reason"] == "stop-training requested"
    assert result["steps"] == 10
    assert [c["step"] for c in result["checkpoints"]] == [10]
