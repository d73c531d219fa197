"""`Guard`: the public API that protects a torchrun training script (and the built-in recipe).

    from trainguard.trainer import Guard, StopTraining

    with Guard.from_env() as guard:          # process group, device, membership proof
        model = guard.wrap(model)            # DDP + aggregation hook + update monitoring
                                             # (an FSDP2/TP-sharded module passes through)
        state = {"model": model, "optim": optimizer, "sched": scheduler}
        step = guard.resume(state) or 0      # newest checkpoint that verifies, loaded in place
        while step < total:
            ...                              # forward, backward, optimizer.step()
            step += 1
            guard.step(step, loss=loss)      # telemetry, replica hash, stop requests
            if step % 100 == 0:
                guard.save(step, state)      # sealed + signed, every tensor dtype

Replicated state (DDP) is checkpointed as one sealed file written by rank 0; sharded state
(DTensors of FSDP2, HSDP, tensor parallelism, or per-rank pipeline stages) as a sealed DCP step
written by every rank (`trainguard.trainer.dcp`), decided per save from the state itself
(`trainguard.trainer.dcp.sharding`). `resume` takes the newest step of either kind that
verifies. ``save(..., async_=True)`` returns once the state is copied off the live tensors.

Every call is made on every rank (like torch.distributed.checkpoint); the guard decides where
I/O happens: rank 0 writes checkpoints and telemetry, local rank 0 of each node writes incidents
and the result for its launcher, every rank reads the checkpoint it resumes from. The state
follows DCP's convention: a dict of tensors and objects with ``state_dict()`` /
``load_state_dict()`` (Stateful), loaded in place.

Device-agnostic: ``backend="auto"`` is nccl when CUDA is available and gloo otherwise; under
NCCL the rank's CUDA device comes from LOCAL_RANK; every collective the guard runs
(membership, telemetry, stop flag, resume step, the aggregation hook, replica hash) uses
tensors on `guard.device`. No ``*_object`` collective is ever called.

A security stop (membership failure, replica divergence, a stop request from the agent) raises
`StopTraining`, a `SystemExit` with status 0: left uncaught it ends the worker quietly and
torchrun does not restart into the same failure.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import signal
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from trainguard.evidence.incidents import IncidentKind, Severity
from trainguard.trainer.aggregation import HookState, make_hook
from trainguard.trainer.config import TrainConfig, build_config
from trainguard.trainer.consistency import check_replicas
from trainguard.trainer.context import LaunchContext
from trainguard.trainer.dcp.sharding import holds_dtensors
from trainguard.trainer.errors import (
    MembershipError,
    ReplicaDivergence,
    TrainerError,
)
from trainguard.trainer.guard_checkpoints import (  # noqa: F401 - _load_in_place, _state_dict: tests
    GuardCheckpoints,
    _load_in_place,
    _state_dict,
)
from trainguard.trainer.hsdp import protect_hsdp
from trainguard.trainer.keys import KeyClient
from trainguard.trainer.membership import prove_membership
from trainguard.trainer.monitor import RankMonitor
from trainguard.trainer.rundir import RunDir
from trainguard.trainer.testing.simulate import AttackPlan

__all__ = ["Guard", "RankEnv", "StopTraining"]

log = logging.getLogger(__name__)


class StopTraining(SystemExit):
    """The job was stopped on purpose (`reason`); exits with status 0 when not caught."""

    def __init__(self, reason: str) -> None:
        super().__init__(0)
        self.reason = reason

    def __str__(self) -> str:
        return f"training stopped: {self.reason}"


@dataclass(frozen=True)
class RankEnv:
    """What torchrun tells a worker."""

    rank: int
    local_rank: int
    world_size: int
    restart_count: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    agent_store: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> RankEnv:
        try:
            return cls(
                rank=int(environ["RANK"]),
                local_rank=int(environ.get("LOCAL_RANK", "0")),
                world_size=int(environ["WORLD_SIZE"]),
                restart_count=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(environ.get("MASTER_PORT", "29500")),
                agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True",
            )
        except (KeyError, ValueError) as exc:
            raise TrainerError("RANK and WORLD_SIZE are not set: not started by torchrun",
                               tip="launch with `trainguard train --script PATH`") from exc


def pick_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


class Guard:
    """One rank of a protected job. Build it with `Guard.from_env()`."""

    def __init__(self, ctx: LaunchContext, env: RankEnv, *, backend: str = "auto",
                 keys: Any = None, timeout_s: float = 120.0) -> None:
        self.context = ctx
        self.env = env
        self.config: TrainConfig = build_config(dict(ctx.settings), source="launch context",
                                                base_dir=ctx.run_dir)
        self.backend = pick_backend(backend if backend != "auto" else self.config.train.backend)
        if self.backend == "nccl":
            self.device = torch.device("cuda", env.local_rank)
        else:
            self.device = torch.device("cpu")
        self.rank, self.world_size, self.local_rank = env.rank, env.world_size, env.local_rank
        self.is_main = env.rank == 0
        self.job_id = ctx.job_id
        self.run = RunDir(ctx.run_dir)
        self._keys = keys if keys is not None else KeyClient(ctx.key_socket)
        self._checkpoints = GuardCheckpoints(ctx.checkpoint_dir, self._keys, ctx.trust,
                                             keep=self.config.checkpoint.keep, is_main=self.is_main,
                                             device=self.device, run=self.run, refused=self._refused)
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._model: torch.nn.Module | None = None
        self._hook: HookState | None = None
        self._hook_ranks: list[int] = []  # HSDP: the global rank of each replica index
        self._monitor: RankMonitor | None = None
        self._state: MutableMapping[str, Any] | None = None
        self._last_step = 0
        self._last_time = time.perf_counter()
        self._t0 = time.perf_counter()
        self._started_at_step = 0
        self._result_status: tuple[str, str | None] | None = None
        self.resumed_from: int | None = None
        self.resumed_signer: str | None = None  # who signed the checkpoint this rank loaded
        self.checkpoints: list[int] = []
        self.flagged: dict[int, int] = {}
        self.metrics: dict[str, Any] = {}
        self._closed = False
        self._parallelism = "none"  # after wrap: "ddp", "sharded" or "partitioned"

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_env(cls, *, backend: str = "auto", environ: Mapping[str, str] | None = None) -> Guard:
        """Join the job `trainguard train` launched: process group on the right device, then
        the membership proof. Raises `LaunchContextMissing` outside `trainguard train`."""
        env_map = os.environ if environ is None else environ
        ctx = LaunchContext.from_environ(env_map)
        guard = cls(ctx, RankEnv.from_environ(env_map), backend=backend)
        guard._start()
        return guard

    def _start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        env = self.env
        # `trainguard train` turns torchrun's store sharing off (TORCH_DISABLE_SHARE_RDZV_TCP_STORE),
        # so every rendezvous round has a fresh store hosted by its rank 0 and one prefix is
        # right even though nodes count restarts differently (a node restarted by another
        # node's failure does not count it). A store shared across rounds keeps a killed
        # attempt's addresses: there, a per-attempt prefix.
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size,
                              is_master=not env.agent_store and env.rank == 0, timeout=self._timeout)
        attempt = env.restart_count if env.agent_store else 0
        prefixed = dist.PrefixStore(f"trainguard/attempt-{attempt}", store)
        dist.init_process_group(backend=self.backend, store=prefixed, rank=env.rank,
                                world_size=env.world_size, timeout=self._timeout)
        try:
            prove_membership(self.context.job_key, self.job_id, device=self.device)
        except MembershipError as exc:
            self.incident(IncidentKind.MEMBERSHIP_FAILURE, Severity.CRITICAL,
                          {"reason": exc.message, "world_size": env.world_size})
            self._finish("aborted", "membership-failure")
            dist.destroy_process_group()
            self._closed = True
            raise StopTraining("membership-failure") from exc
        # A transport error in the round (a peer crashed) propagates: torchrun restarts the
        # workers and the round runs again with fresh nonces.

    # -- the model ----------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module, *, data_parallel: bool = True) -> torch.nn.Module:
        """Move `model` to `guard.device` and wrap it in DDP with the aggregation hook.

        A module that is already sharded (FSDP2 `fully_shard`, HSDP, tensor parallel: its
        parameters are DTensors) is returned as it is: FSDP / DTensor reduce its gradients
        inside the shard group, where every rank is trusted. Under HSDP (a 2-D mesh) the
        all-reduce across the replicate dimension goes through the configured robust rule and
        the rank monitor (`trainguard.trainer.hsdp`); the replica hash does not apply to
        sharded modules; telemetry, stop requests and sealed checkpoints do. With
        ``data_parallel=False`` (a pipeline stage: one part of a model partitioned across
        ranks) the module is moved to `guard.device` and returned without DDP."""
        from torch.nn.parallel import DistributedDataParallel

        if holds_dtensors(model) or not data_parallel:
            self._parallelism = "sharded" if holds_dtensors(model) else "partitioned"
            if self._parallelism == "partitioned":
                model = model.to(self.device)
            self._model = model
            robust = protect_hsdp(model, self._replicate_state) if holds_dtensors(model) else None
            if robust is not None:  # HSDP: the replicate dimension is aggregated robustly
                self._hook, self._hook_ranks = robust.state, robust.global_ranks
                self._monitor = RankMonitor(robust.inner.size(), self.config.aggregation.flag_after)
                self._begin(self._last_step)
            return model
        self._parallelism = "ddp"
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
        agg = self.config.aggregation
        self._hook = HookState(agg, rank=self.rank, world_size=self.world_size,
                               attack=AttackPlan.from_config(self.config.simulate), device=self.device)
        make_hook(ddp, self._hook)
        self._monitor = RankMonitor(self.world_size, agg.flag_after)
        self._model = ddp
        self._begin(self._last_step)
        return ddp

    def _replicate_state(self, inner: Any) -> tuple[HookState, AttackPlan | None]:
        """The hook state of HSDP's replicate group `inner` (indices are replica indices) and
        the simulated attack mapped onto them."""
        ranks = dist.get_process_group_ranks(inner)
        plan = AttackPlan.from_config(self.config.simulate)
        if plan is not None:
            plan = dataclasses.replace(plan, ranks=frozenset(ranks.index(r) for r in plan.ranks
                                                             if r in ranks))
        state = HookState(self.config.aggregation, rank=inner.rank(), world_size=inner.size(),
                          group=inner, device=self.device, gathered=True)
        return state, plan

    def _observe(self, step: int) -> bool:
        return step % max(1, self.config.telemetry.every) == 0

    def _begin(self, step: int) -> None:
        if self._hook is not None:
            self._hook.begin_step(step, self._observe(step))

    # -- checkpoints --------------------------------------------------------------------------

    def _may_resume(self) -> bool:
        """--resume, or a restart within the job as any rank saw it (a collective: a node
        restarted because another node's worker failed keeps restart count 0)."""
        restarted = torch.tensor([self.env.restart_count], dtype=torch.int64, device=self.device)
        dist.all_reduce(restarted, op=dist.ReduceOp.MAX)
        return self.context.resume or int(restarted[0]) > 0

    def resume(self, state: MutableMapping[str, Any]) -> int | None:
        """Load the newest checkpoint that verifies into `state` in place; its step, or None.

        Both kinds count: single sealed files and sealed DCP steps (the newest step wins).
        Rank 0 picks the candidate (refused ones are reported as checkpoint-tampered) and
        broadcasts it; every rank then verifies and loads it itself (a DCP step collectively,
        with DCP's resharding, so a different world size loads it too)."""
        self._state = state
        resumed = self._checkpoints.resume(state, may_resume=self._may_resume())
        if resumed is None:
            return None
        self.resumed_signer = resumed.signer
        self.resumed_from = self._last_step = self._started_at_step = resumed.step
        self._begin(resumed.step)
        return resumed.step

    def save(self, step: int, state: MutableMapping[str, Any], *, async_: bool = False) -> None:
        """Write a sealed, signed checkpoint of `state` at `step` (every rank calls it).

        Replicated state: one file that rank 0 writes. Sharded state (DTensors, or ranks
        holding different entries): a DCP step that every rank writes, the signed manifest
        last. With `async_`, returns once the state is copied off the live tensors; the step
        counts when its manifest is written (a crash before that leaves the previous step the
        newest). A save still in flight is waited for first."""
        self._state = state
        self._checkpoints.save(step, state, async_=async_)
        self.checkpoints.append(step)

    def _refused(self, path: Path, reason: str) -> None:
        self.incident(IncidentKind.CHECKPOINT_TAMPERED, Severity.HIGH,
                      {"checkpoint": str(path), "reason": reason})

    # -- every step ---------------------------------------------------------------------------

    def step(self, step: int, *, loss: torch.Tensor | float | None = None) -> None:
        """Call once per optimizer step with the number of steps done so far."""
        now = time.perf_counter()
        step_time, self._last_time = now - self._last_time, now
        self._after_hook(step)
        self._checkpoints.settle(block=False)
        self._last_step = step
        self._maybe_kill(step)
        every = max(1, self.config.telemetry.every)
        if step % every == 0:
            self._telemetry(step, loss, step_time)
        if (self.config.consistency.every and step % self.config.consistency.every == 0
                and self._parallelism in ("none", "ddp")):
            self.check_replicas()
        if step % every == 0 and self._stop_requested():
            if self._state is not None and (not self.checkpoints or self.checkpoints[-1] != step):
                self.save(step, self._state)
            self._finish("aborted", "stop-training requested")
            raise StopTraining("stop-training requested")
        self._begin(step)

    def _after_hook(self, step: int) -> None:
        if self._hook is None or self._monitor is None:
            return
        stats = self._hook.finish_step()
        if stats is None:
            return
        agg = self.config.aggregation
        for r in self._monitor.observe(stats):
            who = self._hook_ranks[r] if self._hook_ranks else r  # HSDP: replica -> global rank
            self.flagged[who] = step
            cos = stats.cosine[r]
            self.incident(IncidentKind.BYZANTINE_WORKER, Severity.HIGH, {
                "rank": who, "step": step, "cosine": None if cos != cos else round(cos, 4),
                "norm_ratio": round(stats.norm_ratio[r], 4),
                "rule": getattr(self._monitor.rule, "name", "?"), "excluded": agg.exclude_flagged})
            if agg.exclude_flagged:
                self._hook.excluded.add(r)

    def _telemetry(self, step: int, loss: torch.Tensor | float | None, step_time: float) -> None:
        # The mean over the ranks that have a loss (in a pipeline only the last stage has one).
        value = 0.0 if loss is None else float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        packed = torch.tensor([value, float(loss is not None)], dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        if self.is_main:
            mean = float(packed[0]) / float(packed[1]) if packed[1] else float("nan")
            record: dict[str, Any] = {"step": step, "loss": mean,
                                      "grad_norm": self._grad_norm(), "step_time": step_time}
            if self._hook is not None:
                record["bytes_sent"] = self._hook.bytes_sent
            if self._parallelism in ("sharded", "partitioned"):
                record["grad_norm_of"] = "rank 0's shard"
            self.run.append("telemetry", record)

    def _grad_norm(self) -> float | None:
        if self._model is None:
            return None
        # Local shards only: a DTensor's norm would be a collective that rank 0 runs alone.
        norms = [_local(p.grad).detach().norm() for p in self._model.parameters()
                 if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None

    def check_replicas(self) -> str:
        """All ranks agree on a SHA-256 of the parameters, or the job stops (replica-divergence)."""
        if self._model is None:
            raise TrainerError("check_replicas() needs guard.wrap(model) first")
        if self._parallelism != "ddp":
            raise TrainerError(f"check_replicas() compares whole replicas; this model is {self._parallelism}",
                               tip="replica hashes apply to DDP-wrapped models only")
        try:
            return check_replicas(self._model, device=self.device)
        except ReplicaDivergence as exc:
            self.incident(IncidentKind.REPLICA_DIVERGENCE, Severity.CRITICAL,
                          {"step": self._last_step, "reason": exc.message})
            self._finish("aborted", "replica-divergence")
            raise StopTraining("replica-divergence") from exc

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1 if self.is_main and self._stop_file_applies() else 0],
                            device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0])

    def _stop_file_applies(self) -> bool:
        """A stop request from the agent's stop-training action, made after this job started
        and naming this job (or no job)."""
        path = self.context.stop_file
        request = self.run.read_json(path) if path.exists() else None
        if not request:
            return False
        fresh = float(request.get("time", 0)) >= self.context.created
        return fresh and request.get("job") in (None, self.job_id)

    def _maybe_kill(self, step: int) -> None:
        sim = self.config.simulate  # TEST FACILITY: a worker dies on the first attempt only
        if sim.kill_rank == self.rank and step == sim.kill_at_step and self.env.restart_count == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    # -- reporting ----------------------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this rank handed to the aggregation collectives so far."""
        return self._hook.bytes_sent if self._hook is not None else 0

    def report(self, **metrics: Any) -> None:
        """Add metrics (e.g. ``final_accuracy=0.97``) to the job result (rank 0's are kept)."""
        self.metrics.update(metrics)
        if self._result_status is not None:
            self._finish(*self._result_status)

    def incident(self, kind: IncidentKind, severity: Severity, evidence: dict[str, Any]) -> None:
        """Record an incident for the launcher (local rank 0 of each node writes it)."""
        if self.local_rank != 0:
            return
        self.run.append("incidents", {
            "kind": kind.value, "severity": severity.value,
            "evidence": {"job": self.job_id, **evidence},
            "rank": self.rank, "attempt": self.env.restart_count})

    def _finish(self, status: str, reason: str | None) -> None:
        self._result_status = (status, reason)
        if self.local_rank != 0:
            return
        self.run.write_json(self.run.result_file, {
            "status": status, "reason": reason, "steps": self._last_step,
            "resumed_from_step": self.resumed_from, "resumed_signer": self.resumed_signer,
            "checkpoints_this_attempt": self.checkpoints,
            "flagged_ranks": sorted(self.flagged),
            "excluded_ranks": sorted(self._hook.excluded) if self._hook else [],
            "attempt": self.env.restart_count, "world_size": self.world_size,
            "aggregation": self.config.aggregation.method.value,
            "parallelism": self._parallelism,
            "compress": self.config.aggregation.compress.value,
            "bytes_sent": self.bytes_sent, "device": str(self.device), "backend": self.backend,
            "timing": {"train_seconds": time.perf_counter() - self._t0,
                       "steps_this_attempt": self._last_step - self._started_at_step},
            **self.metrics,
        })

    def close(self) -> None:
        """Write the result (completed) and leave the process group together."""
        if self._closed:
            return
        self._checkpoints.settle(block=True)
        if self._result_status is None:
            self._finish("completed", None)
        self._leave(barrier=True)

    def _leave(self, *, barrier: bool) -> None:
        self._closed = True
        self._checkpoints.close()
        if isinstance(self._keys, KeyClient):
            self._keys.close()
        if not dist.is_initialized():
            return
        if barrier:
            # Leave together: a rank that tears the group down while rank 0 still writes its
            # final checkpoint makes rank 0 abort, and torchrun restarts a finished job.
            try:
                if self.device.type == "cuda":
                    dist.barrier(device_ids=[self.device.index])
                else:
                    dist.barrier()
            except RuntimeError as exc:  # a peer already died: nothing left to wait for
                log.warning("barrier before shutdown failed: %s", exc)
        dist.destroy_process_group()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif isinstance(exc, StopTraining):
            self._leave(barrier=True)
        elif not self._closed:
            self._leave(barrier=False)  # a crash: torchrun restarts the attempt

    def __repr__(self) -> str:
        return (f"Guard(job={self.job_id}, rank={self.rank}/{self.world_size}, "
                f"device={self.device}, backend={self.backend})")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
