"""Prepare a job, launch it through torchrun, follow it, and collect the result.

A job is the built-in recipe (a config file) or the user's own script (`--script`); both get
the same launch context (`trainguard.trainer.context`, a 0600 file named by
$TRAINGUARD_LAUNCH_CONTEXT) and the same result. Checkpoint keys come from the node agent when
it serves them, else from a key process the launcher starts and ends (`KeyProcess`), never
from inside a worker.

The launcher is the only process of a job that writes evidence: it forwards the workers'
telemetry, checkpoint events and incidents from the run folder to the agent (or the embedded
audit log) while the job runs, so the embedded SQLite log keeps one writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import UsageError
from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink
from trainguard.trainer.config import (
    TrainConfig,
    build_config,
    cross_check,
    load_train_config,
    merge_overrides,
)
from trainguard.trainer.context import ENV_CONTEXT, LaunchContext, Trust, job_identity
from trainguard.trainer.errors import JobFailed, TrainConfigError
from trainguard.trainer.rundir import RunDir

__all__ = ["JobFollower", "JobPlan", "KeyProcess", "LaunchOptions", "launch", "prepare_job",
           "torchrun_command"]

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

    @property
    def multinode(self) -> bool:
        return self.rdzv_endpoint is not None and int(self.nnodes.split(":")[-1]) > 1

    def check(self) -> None:
        """Refuse what torchrun would silently turn into something else (exit 2)."""
        try:
            nodes = [int(n) for n in self.nnodes.split(":")]
        except ValueError as exc:
            raise UsageError(f"--nnodes {self.nnodes!r} is not N or MIN:MAX") from exc
        if self.nproc < 1 or min(nodes) < 1:
            raise UsageError("--nproc and --nnodes must be >= 1")
        if max(nodes) > 1 and not self.rdzv_endpoint:
            raise UsageError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT",
                             tip="every node joins the same c10d rendezvous; without one each "
                                 "node would train alone")


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    config: TrainConfig
    run: RunDir
    options: LaunchOptions
    world_size_hint: int
    checkpoint_dir: Path
    job_key: bytes = field(repr=False)
    home: Home
    created: float
    job_binding: str  # `context.job_identity`: what this job's checkpoint manifests are bound to
    script: Path | None = None  # None: the built-in recipe
    script_args: tuple[str, ...] = ()

    @property
    def context_file(self) -> Path:
        return self.run.root / "context.json"


@dataclass
class JobFollower:
    """Offsets into the run folder's JSON-lines streams already forwarded."""

    run: RunDir
    audit: AuditSink
    report: ReportIncident
    job: str = ""  # the job id in audit events (default: the run folder's name)
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
        job = self.job or self.run.root.name
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


def shared_job_id(binding: str, options: LaunchOptions, source: str) -> str:
    """The job id every node of a multi-node job computes alike when no --job-id is given:
    from the job identity and the rendezvous endpoint, which every node passes the same. It
    names torchrun's rendezvous and derives the membership key, so nodes launched with the
    same command meet in one job; a relaunch (`--resume`) gets the same id and a new run
    folder."""
    digest = hashlib.sha256(f"{binding}\n{options.rdzv_endpoint}".encode()).hexdigest()[:16]
    return f"{Path(source).stem}-{digest}"


def new_run_dir(home: Home, job_id: str) -> RunDir:
    """A fresh 0700 run folder: ``runs/<job id>``, or ``runs/<job id>.N`` when that job id
    ran before (a relaunch with the same --job-id), so no earlier result is read as this
    launch's."""
    runs = home.state_dir / "runs"
    runs.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in range(1, 10_000):
        root = runs / (job_id if n == 1 else f"{job_id}.{n}")
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return RunDir(root)
    raise JobFailed(f"too many run folders for job {job_id} under {runs}",
                    tip="remove old run folders or pass another --job-id")


def default_checkpoint_dir(home: Home, script: Path) -> Path:
    """One folder per script under the home's checkpoint root."""
    tag = hashlib.sha256(str(script).encode()).hexdigest()[:8]
    return home.state_dir / "checkpoints" / f"{script.stem}-{tag}"


def prepare_job(
    home: Home,
    config_path: Path | None,
    overrides: Sequence[str],
    options: LaunchOptions,
    job_key: Callable[[str], bytes],
    *,
    script: Path | None = None,
    script_args: Sequence[str] = (),
    checkpoint_dir: Path | None = None,
    project: str = "default",
    clock: Callable[[], float] = time.time,
) -> JobPlan:
    """Validate the config (a file for the built-in recipe; defaults plus `--set` for a
    script) and create the 0700 run folder. Nothing secret is written yet. The job's
    checkpoints are bound to `project`, the script's (or config's) file name and the
    checkpoint folder's name (`job_identity`), so `--resume` of the same job finds them and
    a checkpoint copied in from another job is refused."""
    options.check()
    if script is not None:
        cfg = build_config(merge_overrides({}, overrides), source="--set", base_dir=Path.cwd())
        source = str(script)
        ckpt = (checkpoint_dir or default_checkpoint_dir(home, script)).absolute()
    elif config_path is not None:
        cfg = load_train_config(config_path, overrides)
        source = str(config_path)
        ckpt = (checkpoint_dir or cfg.checkpoint.dir).absolute()
    else:
        raise UsageError("give a job config or --script PATH")
    world_hint = options.nproc * int(options.nnodes.split(":")[-1])
    problems = cross_check(cfg, world_hint)
    if problems:
        raise TrainConfigError(problems, source=source)
    binding = job_identity(project, source, ckpt)
    if options.job_id:
        job_id = options.job_id
    elif options.multinode:
        job_id = shared_job_id(binding, options, source)
    else:
        job_id = new_job_id()
    run = new_run_dir(home, job_id)
    created = clock()
    run.write_json(run.job_file, {
        "job_id": job_id, "home": str(home.root), "config_path": str(config_path or ""),
        "script": str(script or ""), "script_args": list(script_args), "config": dict(cfg.raw),
        "checkpoint_dir": str(ckpt), "resume": options.resume, "created": created,
        "project": project, "job_identity": binding,
    })
    return JobPlan(job_id=job_id, config=cfg, run=run, options=options,
                   world_size_hint=world_hint, checkpoint_dir=ckpt, job_key=job_key(job_id),
                   home=home, created=created, job_binding=binding, script=script,
                   script_args=tuple(script_args))


def trust_for(home: Home) -> Trust:
    """Public material checkpoint signatures are verified with (read by the launcher, which may
    open the home; the workers may not)."""
    def text(path: Path) -> str | None:
        return path.read_text() if path.exists() else None

    return Trust(verify_key_pem=text(home.node_verify_key), ca_pem=text(home.pki_dir / "ca.crt"),
                 crl_pem=text(home.pki_dir / "crl.pem"))


def write_context(plan: JobPlan, key_socket: Path) -> Path:
    ctx = LaunchContext(
        job_id=plan.job_id, run_dir=plan.run.root, job_key=plan.job_key, key_socket=key_socket,
        checkpoint_dir=plan.checkpoint_dir, resume=plan.options.resume, created=plan.created,
        stop_file=plan.home.state_dir / "stop-training.json", settings=dict(plan.config.raw),
        trust=dataclasses.replace(trust_for(plan.home), job=plan.job_binding),
        kind="script" if plan.script else "config")
    ctx.write(plan.context_file)
    return plan.context_file


def torchrun_command(plan: JobPlan, python: str = sys.executable) -> list[str]:
    o = plan.options
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(o.nproc),
           "--max-restarts", str(o.max_restarts), "--monitor-interval", str(o.monitor_interval)]
    if o.rdzv_endpoint:
        cmd += ["--nnodes", o.nnodes, "--rdzv-backend", o.rdzv_backend,
                "--rdzv-endpoint", o.rdzv_endpoint, "--rdzv-id", plan.job_id]
    else:
        cmd += ["--standalone", "--nnodes", "1"]
    if plan.script is not None:
        return cmd + [str(plan.script), *plan.script_args]
    return cmd + ["-m", "trainguard.trainer.worker"]


class KeyProcess:
    """The launcher's own key service when no agent answers: ``python -m
    trainguard.agent.api.keys`` on a 0600 socket in a 0700 folder, ended when the job ends."""

    def __init__(self, home: Home, run: RunDir, python: str = sys.executable) -> None:
        sock = run.root / "keys.sock"
        if len(str(sock).encode()) > 100:  # AF_UNIX paths are short: a private temp folder
            sock = Path(tempfile.mkdtemp(prefix="tg-keys-")) / "keys.sock"
        self.socket = sock
        self._proc = subprocess.Popen(
            [python, "-m", "trainguard.agent.api.keys", "--home", str(home.root),
             "--socket", str(sock)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise JobFailed("the launcher's key process did not start",
                                tip="run `python -m trainguard.agent.api.keys --help` to see why")
            time.sleep(0.05)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self.socket.parent.name.startswith("tg-keys-"):
            shutil.rmtree(self.socket.parent, ignore_errors=True)


def key_service(home: Home, run: RunDir) -> tuple[Path, KeyProcess | None]:
    """The agent's socket when the agent serves checkpoint keys, else a key process of ours."""
    from trainguard.agent.api.client import agent_socket
    from trainguard.trainer.keys import KeyClient, KeyServiceUnavailable

    path = agent_socket(home)
    if path.exists():
        client = KeyClient(path, timeout=5.0)
        try:
            client.call("checkpoint-key")
            return path, None
        except KeyServiceUnavailable as exc:
            log.info("the agent does not serve checkpoint keys (%s); using a key process", exc.message)
        finally:
            client.close()
    proc = KeyProcess(home, run)
    return proc.socket, proc


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
    # A fresh store per rendezvous round, hosted by that round's rank 0 (see Guard._start):
    # torchrun's shared store keeps a killed round's keys, and nodes disagree on restart counts.
    child_env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    t0 = time.monotonic()
    follower = JobFollower(plan.run, audit, report, job=plan.job_id)
    log_path = plan.run.root / "torchrun.log"
    socket_path, keyproc = key_service(plan.home, plan.run)
    child_env[ENV_CONTEXT] = str(write_context(plan, socket_path))
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
            if keyproc is not None:
                keyproc.close()
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
    known = {"status", "reason", "steps", "resumed_from_step", "resumed_signer",
             "checkpoints_this_attempt",
             "flagged_ranks", "excluded_ranks", "attempt", "world_size", "aggregation",
             "timing", "compress", "bytes_sent", "device", "backend"}
    return {
        **{k: v for k, v in result.items() if k not in known},  # the job's own metrics
        "job_id": plan.job_id,
        "script": str(plan.script) if plan.script else None,
        "status": result["status"],
        "reason": result.get("reason"),
        "final_accuracy": result.get("final_accuracy"),
        "steps": result.get("steps"),
        "resumed_from_step": result.get("resumed_from_step"),
        "resumed_signer": result.get("resumed_signer"),
        "world_size": result.get("world_size"),
        "attempts": int(result.get("attempt", 0)) + 1,
        "aggregation": {"method": cfg.aggregation.method.value,
                        "compress": cfg.aggregation.compress.value,
                        "excluded_ranks": result.get("excluded_ranks", []),
                        "bytes_sent_rank0": result.get("bytes_sent")},
        "device": result.get("device"),
        "backend": result.get("backend"),
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


def export_weights(plan: JobPlan, home: Home, out: Path) -> dict[str, Any]:
    """Write the model weights of the newest verified checkpoint as a plain state dict (0600).

    This is plaintext on disk: the CLI only calls it after authorizing `checkpoint:export`.
    """
    import torch
    from trainguard.core.fs import atomic_output
    from trainguard.crypto.keyring import open_keyring
    from trainguard.trainer.checkpoint import CheckpointStore

    trust = dataclasses.replace(trust_for(home), job=plan.job_binding)
    store = CheckpointStore(plan.checkpoint_dir, open_keyring(home), trust)
    outcome = store.load_newest()
    if outcome.state is None or outcome.info is None:
        raise JobFailed("no verified checkpoint to export", tip="run the job first")
    model = outcome.state["state"].get("model")
    if model is None:
        raise JobFailed("the checkpoint has no 'model' entry to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, mode=0o600) as tmp:
        torch.save(model, tmp)
    return {"path": str(out), "step": outcome.info.step, "from": str(outcome.info.path)}
