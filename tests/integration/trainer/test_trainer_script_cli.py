"""The issue's integration cases for the user's own script, each through `trainguard train
--script` (the real CLI: init, login with TOTP, preflight) with real torchrun workers: a rogue
rank without the job key, a tampered newest checkpoint and a checkpoint copied in from another
project's job (both refused, the previous one used, the same job still resumes), a
sign-flipping rank, a bf16 state dict resumed with no key material in the workers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.cluster_homes import ClusterNode, cluster_homes, login
from support.trainer_jobs import EXAMPLES, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLAIN = EXAMPLES / "digits_plain.py"
PROBE = Path(__file__).parent / "scripts" / "probe_keys.py"


@pytest.fixture
def node(cli, tmp_path: Path) -> ClusterNode:
    return cluster_homes(cli, tmp_path / "cluster", ("node-1",))[0]


def _train(cli, node: ClusterNode, script: Path, *args: Any, script_args: tuple[str, ...] = ()):
    login(cli, node)  # a launch needs fresh MFA
    return cli("train", "--script", script, "--home", node.home, "--user", "alice",
               "--skip-deps-verify", "--format", "json", *args, "--", *script_args, timeout=600)


def _audit(cli, node: ClusterNode) -> list[dict[str, Any]]:
    out = cli("audit", "log", "--home", node.home, "--format", "json")
    assert out.code == 0, out.stderr
    return list(out.json())


def test_rogue_rank_without_the_job_key_stops_the_job_before_any_step(
        cli, cli_env: dict[str, str], node: ClusterNode, tmp_path: Path) -> None:
    from trainguard.trainer.context import ENV_CONTEXT, LaunchContext, Trust, job_identity
    from trainguard.trainer.launcher import LaunchOptions, shared_job_id

    endpoint = f"127.0.0.1:{free_port()}"
    ck = tmp_path / "ck"
    # Everything the rogue needs travels in the clear or is guessable: the script, the
    # endpoint, the project and folder name, hence the job id. Not the job key.
    job_id = shared_job_id(job_identity("default", PLAIN, ck),
                           LaunchOptions(nnodes="2", rdzv_endpoint=endpoint), str(PLAIN))
    rogue_run = tmp_path / "rogue-run"
    rogue_run.mkdir(mode=0o700)
    LaunchContext(job_id=job_id, run_dir=rogue_run, job_key=os.urandom(32),
                  key_socket=rogue_run / "none.sock", checkpoint_dir=rogue_run / "ck", resume=False,
                  created=time.time(), stop_file=rogue_run / "stop.json", settings={},
                  trust=Trust(), kind="script").write(rogue_run / "context.json")
    login(cli, node)
    rogue = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--nnodes", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job_id,
         "--max-restarts", "0", str(PLAIN)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**cli_env, ENV_CONTEXT: str(rogue_run / "context.json")})
    try:
        out = cli("train", "--script", PLAIN, "--home", node.home, "--user", "alice",
                  "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint,
                  "--checkpoint-dir", ck, "--max-restarts", "0", "--skip-deps-verify",
                  "--format", "json", timeout=400)
    finally:
        rogue.wait(timeout=200)
    assert out.code == 1, out.stderr  # findings: the job was stopped
    result = out.json()
    assert result["job_id"] == job_id
    assert result["status"] == "aborted" and result["reason"] == "membership-failure"
    assert result["steps"] == 0 and result["checkpoints"] == [] and not ck.exists()
    assert [i["kind"] for i in result["incidents"]] == ["membership-failure"]
    finish = next(e for e in _audit(cli, node) if e["kind"] == "train.finish")
    assert finish["data"]["incidents"] == ["membership-failure"]


def test_tampered_and_foreign_checkpoints_are_refused_and_the_previous_one_used(
        cli, node: ClusterNode, tmp_path: Path) -> None:
    login(cli, node)
    grant = cli("policy", "grant", "admin", "train:launch", "/train/*", "--project", "other",
                "--home", node.home)
    assert grant.code == 0, grant.stderr
    ck = tmp_path / "ck"
    args = ("--epochs", "2", "--checkpoint-every", "20")  # the LR schedule spans 2 epochs
    first = _train(cli, node, PLAIN, "--nproc", "2", "--checkpoint-dir", ck, script_args=args)
    assert first.code == 0, first.stderr
    assert [c["step"] for c in first.json()["checkpoints"]] == [20, 40, 42]
    # Another project's job, checkpoint folder of the same name, one step further along:
    # validly signed by this very node, so only the job binding tells it apart.
    other_ck = tmp_path / "other" / "ck"
    other = _train(cli, node, PLAIN, "--nproc", "2", "--project", "other",
                   "--checkpoint-dir", other_ck,
                   script_args=("--epochs", "3", "--checkpoint-every", "100"))
    assert other.code == 0, other.stderr
    assert [c["step"] for c in other.json()["checkpoints"]] == [63]
    for f in other_ck.glob("step-00000063.*"):
        shutil.copy2(f, ck / f.name)
    newest_own = ck / "step-00000042.tgseal"
    data = bytearray(newest_own.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest_own.write_bytes(bytes(data))

    again = _train(cli, node, PLAIN, "--nproc", "2", "--checkpoint-dir", ck, "--resume",
                   script_args=args)
    assert again.code == 1, again.stderr  # completed, with incidents to look at
    r = again.json()
    assert r["status"] == "completed" and r["steps"] == 42
    assert r["resumed_from_step"] == 40  # this job's own previous checkpoint
    assert [c["step"] for c in r["checkpoints"]] == [42]
    assert r["attempts"] == 1
    refused = {Path(i["evidence"]["checkpoint"]).name: i["evidence"]["reason"]
               for i in r["incidents"] if i["kind"] == "checkpoint-tampered"}
    assert len(r["incidents"]) == 2
    assert "signed for another job" in refused["step-00000063.tgseal"]
    assert '"project":"other"' in refused["step-00000063.tgseal"]
    assert "does not match its signature" in refused["step-00000042.tgseal"]
    finish = [e for e in _audit(cli, node) if e["kind"] == "train.finish"][-1]
    assert finish["data"]["incidents"] == ["checkpoint-tampered", "checkpoint-tampered"]


def test_sign_flipping_rank_is_flagged_and_excluded(cli, node: ClusterNode, tmp_path: Path) -> None:
    out = _train(cli, node, PLAIN, "--nproc", "3", "--checkpoint-dir", tmp_path / "ck",
                 "--set", 'aggregation.method="median"', "--set", "simulate.byzantine_ranks=[2]",
                 "--set", 'simulate.attack="sign-flip"',
                 "--set", "telemetry.every=1",  # update statistics every step (default every 10)
                 script_args=("--epochs", "3", "--checkpoint-every", "100"))
    assert out.code == 1, out.stderr
    r = out.json()
    assert r["status"] == "completed" and r["world_size"] == 3
    assert r["flagged_ranks"] == [2] and r["aggregation"]["excluded_ranks"] == [2]
    assert {(i["kind"], i["evidence"]["rank"]) for i in r["incidents"]} == {("byzantine-worker", 2)}
    assert r["final_accuracy"] >= 0.85
    assert r["simulate"]["test_facility"] is True
    launch = [e for e in _audit(cli, node) if e["kind"] == "train.launch"][-1]
    assert launch["data"]["simulate_test_facility"] is True


def test_bf16_state_dict_resumes_and_workers_hold_no_key_material(
        cli, node: ClusterNode, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ck = tmp_path / "ck"
    first = _train(cli, node, PROBE, "--nproc", "2", "--checkpoint-dir", ck,
                   script_args=(str(out_dir),))
    assert first.code == 0, first.stderr
    assert [c["step"] for c in first.json()["checkpoints"]] == [3]
    second = _train(cli, node, PROBE, "--nproc", "2", "--checkpoint-dir", ck, "--resume",
                    script_args=(str(out_dir),))
    assert second.code == 0, second.stderr
    assert second.json()["resumed_from_step"] == 3
    keys_dir = str((node.home / "keys").resolve())
    kek_hashes = {hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in (node.home / "keys").glob("kek-v*.key")}
    for rank in (0, 1):
        saved = json.loads((out_dir / f"probe-{rank}-None.json").read_text())
        resumed = json.loads((out_dir / f"probe-{rank}-3.json").read_text())
        assert resumed["dtype"] == "torch.bfloat16"
        assert resumed["weight_sum"] == saved["weight_sum"]  # bf16 weights restored exactly
        assert resumed["mask"] == [False, True, False, False] and resumed["z"][0] == "(1+2j)"
        for report in (saved, resumed):
            assert not [fd for fd in report["fds"] if fd.startswith(keys_dir)], report["fds"]
            assert report["key_types"] == [] and not kek_hashes & set(report["byte_hashes"])
