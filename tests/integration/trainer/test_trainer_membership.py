"""A process that joins the rendezvous without the job key is rejected before training."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import free_port, prepare
from trainguard.evidence.sink import NullSink
from trainguard.trainer.context import ENV_CONTEXT, LaunchContext, Trust

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rogue_node_without_the_job_key_stops_the_job_before_any_step(tmp_path: Path) -> None:
    from trainguard.trainer.launcher import launch

    home = make_home(tmp_path / "home")
    endpoint = f"127.0.0.1:{free_port()}"
    ck = tmp_path / "ck"
    plan = prepare(home, ["train.steps=50", f'checkpoint.dir="{ck}"'], nproc=1, nnodes="2",
                   rdzv_endpoint=endpoint, max_restarts=0)
    # The rogue knows the job id, the endpoint and the settings (all travel in the clear) but
    # not the job key: it runs the real recipe with a launch context of its own.
    rogue_run = tmp_path / "rogue-run"
    rogue_run.mkdir(mode=0o700)
    rogue_ctx = LaunchContext(
        job_id=plan.job_id, run_dir=rogue_run, job_key=os.urandom(32),
        key_socket=rogue_run / "none.sock", checkpoint_dir=rogue_run / "ck", resume=False,
        created=time.time(), stop_file=rogue_run / "stop.json", settings=dict(plan.config.raw),
        trust=Trust(), kind="config")
    rogue_ctx.write(rogue_run / "context.json")
    assert dataclasses.replace(rogue_ctx, job_key=plan.job_key) != rogue_ctx
    rogue = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--nnodes", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", plan.job_id,
         "--max-restarts", "0", "-m", "trainguard.trainer.worker"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, ENV_CONTEXT: str(rogue_run / "context.json")},
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
