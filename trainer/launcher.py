"""Prepare a job, launch it through torchrun, follow it, and collect the result.

The launcher is the only process of a job that writes evidence: it forwards the workers'
telemetry, checkpoint events and incidents from the run folder to the agent (or the embedded
audit log) while the job runs, so the embedded SQLite log keeps one writer.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink
from trainguard.trainer.config import TrainConfig, cross_check, load_train_config
from trainguard.trainer.errors import JobFailed, TrainConfigError
from trainguard.trainer.membership import write_job_key
from trainguard.trainer.rundir import RunDir

__all__ = ["JobPlan", "LaunchOptions", "JobFollower", "launch", "prepare_job", "torchrun_command"]

log = logging.getLogger(__name__)

ACTOR = "trainer"
ReportIncident = Callable[[str, str, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class LaunchOptions:
    nproc: int = 1
    nnodes: str = "1"
    rdzv_endpoint: str | None = None
    rdzv_backend: str = "c10d"
    max_restarts: int = 2
    resume: bool = False
    job_id: str | None = None  # multi-node: every node passes the same id
    monitor_interval: float = 0.5


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    config: TrainConfig
    run: RunDir
    options: LaunchOptions
    world_size_hint: int


@dataclass
class JobFollower:
    """Offsets into the run folder's JSON-lines streams already forwarded."""

    run: RunDir
    audit: AuditSink
    report: ReportIncident
    offsets: dict[str, int] = field(default_factory=dict)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> None:
        for stream in ("events", "incidents", "telemetry"):
            records, self.offsets[stream] = self.run.read(stream, self.offsets.get(stream, 0))
            for rec in records:
                self._forward(stream, rec)

    def _forward(self, stream: str, rec: dict[str, Any]) -> None:
        job = self.run.root.name
        if stream == "incidents":
            self.incidents.append(rec)
            try:
                self.report(rec["kind"], rec["severity"], rec["evidence"])
            except Exception as exc:  # noqa: BLE001 - evidence is also in the run folder
                log.error("could not report incident %s: %s", rec.get("kind"), exc)
        elif stream == "events":
            self.events.append(rec)
            self.audit.record(f"train.{rec['kind']}", ACTOR, {"job": job, **rec})
        else:
            self.telemetry.append(rec)
            self.audit.record("train.telemetry", ACTOR, {"job": job, **rec})


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


def prepare_job(
    home: Home,
    config_path: Path,
    overrides: Sequence[str],
    options: LaunchOptions,
    job_key: Callable[[str], bytes],
    *,
    clock: Callable[[], float] = time.time,
) -> JobPlan:
    """Validate the config, create the run folder (0700) with job.json and the 0600 job key."""
    cfg = load_train_config(config_path, overrides)
    world_hint = options.nproc * int(options.nnodes.split(":")[-1])
    problems = cross_check(cfg, world_hint)
    if problems:
        raise TrainConfigError(problems, source=str(config_path))
    job_id = options.job_id or new_job_id()
    run = RunDir(home.state_dir / "runs" / job_id)
    run.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_job_key(run.key_file, job_key(job_id))
    run.write_json(run.job_file, {
        "job_id": job_id,
        "home": str(home.root),
        "config_path": str(config_path),
        "base_dir": str(config_path.parent.absolute()),
        "config": dict(cfg.raw),
        "resume": options.resume,
        "created": clock(),
    })
    return JobPlan(job_id, cfg, run, options, world_hint)


def torchrun_command(plan: JobPlan, python: str = sys.executable) -> list[str]:
    o = plan.options
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(o.nproc),
           "--max-restarts", str(o.max_restarts), "--monitor-interval", str(o.monitor_interval)]
    if o.rdzv_endpoint:
        cmd += ["--nnodes", o.nnodes, "--rdzv-backend", o.rdzv_backend,
                "--rdzv-endpoint", o.rdzv_endpoint, "--rdzv-id", plan.job_id]
    else:
        cmd += ["--standalone", "--nnodes", "1"]
    return cmd + ["-m", "trainguard.trainer.worker", str(plan.run.root)]


def launch(
    plan: JobPlan,
    audit: AuditSink,
    report: ReportIncident,
    *,
    env: Mapping[str, str] | None = None,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run torchrun, forward evidence while it runs, return the job result."""
    cmd = torchrun_command(plan)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("OMP_NUM_THREADS", str(plan.config.train.threads))
    t0 = time.monotonic()
    follower = JobFollower(plan.run, audit, report)
    log_path = plan.run.root / "torchrun.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        try:
            while proc.poll() is None:
                follower.poll()
                if timeout is not None and time.monotonic() - t0 > timeout:
                    proc.terminate()
                    proc.wait(30)
                    raise JobFailed(f"job {plan.job_id} ran past {timeout:.0f}s and was stopped")
                time.sleep(poll_seconds)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    follower.poll()
    wall = time.monotonic() - t0
    return collect_result(plan, follower, proc.returncode, wall, log_path)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def collect_result(
    plan: JobPlan, follower: JobFollower, returncode: int, wall: float, log_path: Path
) -> dict[str, Any]:
    result = plan.run.read_json(plan.run.result_file)
    if result is None:
        raise JobFailed(
            f"job {plan.job_id} failed (torchrun exit {returncode}) without a result; "
            f"last log lines:\n{_tail(log_path)}",
            tip=f"see {log_path}",
        )
    restarts = sum(1 for e in follower.events if e["kind"] == "resume")
    steps_timed = [t["step_time"] for t in follower.telemetry if t.get("step_time")]
    cfg = plan.config
    return {
        "job_id": plan.job_id,
        "status": result["status"],
        "reason": result.get("reason"),
        "final_accuracy": result.get("final_accuracy"),
        "steps": result.get("steps"),
        "resumed_from_step": result.get("resumed_from_step"),
        "world_size": result.get("world_size"),
        "attempts": int(result.get("attempt", 0)) + 1,
        "aggregation": {"method": cfg.aggregation.method.value,
                        "excluded_ranks": result.get("excluded_ranks", [])},
        "flagged_ranks": result.get("flagged_ranks", []),
        "incidents": follower.incidents,
        "checkpoints": [
            {"step": e["step"], "path": e["path"], "sha256": e["sha256"]}
            for e in follower.events if e["kind"] == "checkpoint"
        ],
        "resumes": restarts,
        "simulate": _simulate_summary(cfg),
        "timings": {
            "wall_s": round(wall, 3),
            "mean_step_s": round(sum(steps_timed) / len(steps_timed), 6) if steps_timed else None,
            **{k: round(v, 4) for k, v in (result.get("timing") or {}).items()},
        },
        "torchrun_exit": returncode,
        "run_dir": str(plan.run.root),
    }


def _simulate_summary(cfg: TrainConfig) -> dict[str, Any] | None:
    sim = cfg.simulate
    if not sim.active:
        return None
    return {"test_facility": True, "byzantine_ranks": sim.byzantine_ranks,
            "attack": sim.attack.value, "kill_rank": sim.kill_rank}


def result_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)


def export_weights(plan: JobPlan, home: Home, out: Path) -> dict[str, Any]:
    """Write the model weights of the newest verified checkpoint as a plain state dict (0600).

    This is plaintext on disk: the CLI only calls it after authorizing `checkpoint:export`.
    """
    import torch
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey, VerifyKey
    from trainguard.trainer.checkpoint import CheckpointStore

    store = CheckpointStore(plan.config.checkpoint.dir, Keyring.open(home.keys_dir),
                            SigningKey.load(home.node_signing_key),
                            VerifyKey.load(home.node_verify_key), job_id=plan.job_id)
    outcome = store.load_newest()
    if outcome.state is None or outcome.info is None:
        raise JobFailed("no verified checkpoint to export", tip="run the job first")
    out.parent.mkdir(parents=True, exist_ok=True)
    from trainguard.core.home import atomic_output

    with atomic_output(out, mode=0o600) as tmp:
        torch.save(outcome.state["model"], tmp)
    return {"path": str(out), "step": outcome.info.step, "from": str(outcome.info.path)}
