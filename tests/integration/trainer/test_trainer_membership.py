"""A process that joins the rendezvous without the job key is rejected before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import free_port, prepare
from trainguard.evidence.sink import NullSink
from trainguard.trainer.membership import write_job_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rogue_node_without_the_job_key_stops_the_job_before_any_step(tmp_path: Path) -> None:
    from trainguard.trainer.launcher import launch

    home = make_home(tmp_path / "home")
    endpoint = f"127.0.0.1:{free_port()}"
    ck = tmp_path / "ck"
    plan = prepare(home, ["train.steps=50", f'checkpoint.dir="{ck}"'], nproc=1, nnodes="2",
                   rdzv_endpoint=endpoint, max_restarts=0)
    # The rogue knows the job id and the endpoint (both travel in the clear) but not the key.
    rogue_home = make_home(tmp_path / "rogue-home")
    rogue_run = tmp_path / "rogue-run"
    rogue_run.mkdir(mode=0o700)
    job = json.loads(plan.run.job_file.read_text())
    job["home"] = str(rogue_home.root)
    (rogue_run / "job.json").write_text(json.dumps(job))
    write_job_key(rogue_run / "job.key", os.urandom(32))
    rogue = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--nnodes", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", plan.job_id,
         "--max-restarts", "0", "-m", "trainguard.trainer.worker", str(rogue_run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        reported: list[str] = []
        result = launch(plan, NullSink(), lambda k, s, e: reported.append(k), timeout=180)
    finally:
        rogue.wait(timeout=120)
    assert result["status"] == "aborted"
    assert result["reason"] == "membership-failure"
    assert result["steps"] == 0
    assert result["checkpoints"] == [] and not ck.exists()
    assert [i["kind"] for i in result["incidents"]] == ["membership-failure"]
    assert reported == ["membership-failure"]
