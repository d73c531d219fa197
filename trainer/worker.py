"""The rank entry point torchrun starts: ``python -m trainguard.trainer.worker RUN_DIR``.

A torchtune-style recipe: `setup` (process group, membership proof, model, data, optimizer,
checkpoint resume, DDP with the aggregation hook), `train`, `save_checkpoint`,
`load_checkpoint`, `cleanup` (destroy_process_group, always). Only rank 0 writes checkpoints,
telemetry and the result; incidents are written by local rank 0 of each node for its launcher.
A security stop (membership failure, replica divergence, stop request) ends the job with exit
status 0 and an "aborted" result, so torchrun does not restart into the same failure.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from trainguard.core.errors import TrainguardError
from trainguard.core.home import Home
from trainguard.evidence.incidents import IncidentKind, Severity
from trainguard.trainer.aggregation import HookState, robust_hook
from trainguard.trainer.config import AdversarialMethod, TrainConfig, build_config
from trainguard.trainer.consistency import check_replicas
from trainguard.trainer.errors import MembershipError, ReplicaDivergence
from trainguard.trainer.membership import prove_membership, read_job_key
from trainguard.trainer.models import load_dataset, resolve
from trainguard.trainer.monitor import RankMonitor
from trainguard.trainer.rundir import RunDir
from trainguard.trainer.testing.simulate import AttackPlan

log = logging.getLogger(__name__)

ENV_RUN_DIR = "TRAINGUARD_RUN_DIR"


@dataclass(frozen=True)
class WorkerEnv:
    """What torchrun and the launcher tell a worker (read once, in `main`)."""

    rank: int
    local_rank: int
    world_size: int
    restart_count: int
    run: RunDir
    job_id: str
    home: Home
    stop_file: Path
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    agent_store: bool = True

    @classmethod
    def from_environ(cls, run_dir: Path, environ: dict[str, str]) -> WorkerEnv:
        run = RunDir(run_dir)
        job = run.read_json(run.job_file) or {}
        home = Home(Path(job["home"]))
        return cls(
            rank=int(environ["RANK"]),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            world_size=int(environ["WORLD_SIZE"]),
            restart_count=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            run=run,
            job_id=str(job["job_id"]),
            home=home,
            stop_file=home.state_dir / "stop-training.json",
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", "29500")),
            agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True",
        )


class SecurityStop(Exception):
    """Raised inside the loop to end the job on purpose (not restarted)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Recipe:
    """One rank of a hardened training job."""

    def __init__(self, cfg: TrainConfig, env: WorkerEnv) -> None:
        self.adversarial = _adversarial_step(cfg, env.rank)
        self.cfg = cfg
        self.env = env
        self.is_rank0 = env.rank == 0
        self.writes_local = env.local_rank == 0
        self.step = 0
        self.resumed_from: int | None = None
        self.checkpoints: list[int] = []
        self.incidents: list[dict[str, Any]] = []
        self.flagged: dict[int, int] = {}
        self._store: Any = None
        self.timing: dict[str, float] = {}

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(cfg.train.threads)
        backend = cfg.train.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        self._init_process_group(backend)
        self._prove_membership()
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        self.model = resolve(cfg.model.factory)(**cfg.model.params)
        self.data = load_dataset(cfg.data.dataset, cfg.data.test_fraction)
        self.optimizer = self._optimizer()
        self.load_checkpoint()
        self.ddp = DistributedDataParallel(self.model)
        self.hook = HookState(
            cfg.aggregation,
            rank=self.env.rank,
            world_size=self.env.world_size,
            attack=AttackPlan.from_config(cfg.simulate),
        )
        self.ddp.register_comm_hook(self.hook, robust_hook)
        self.monitor = RankMonitor(self.env.world_size, cfg.aggregation.flag_after)
        shard = torch.arange(len(self.data.y_train))[self.env.rank :: self.env.world_size]
        self.shard = shard

    def _init_process_group(self, backend: str) -> None:
        """init_process_group on torchrun's store under a per-attempt prefix: after a restart
        the killed attempt's gloo addresses are still in the store and must not be reused."""
        env = self.env
        timeout = datetime.timedelta(seconds=120)
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size,
                              is_master=not env.agent_store and env.rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore(f"trainguard/attempt-{env.restart_count}", store)
        dist.init_process_group(backend=backend, store=prefixed, rank=env.rank,
                                world_size=env.world_size, timeout=timeout)

    def _prove_membership(self) -> None:
        try:
            key = read_job_key(self.env.run.key_file)
        except TrainguardError as exc:
            # Still take part in the round (with a key nobody shares) so the peers fail fast
            # with a clear membership failure instead of a hung collective.
            log.error("cannot read the job key: %s", exc.message)
            key = os.urandom(32)
        try:
            prove_membership(key, self.env.job_id)
        except MembershipError as exc:
            self.incident(IncidentKind.MEMBERSHIP_FAILURE, Severity.CRITICAL,
                          {"reason": exc.message, "world_size": self.env.world_size})
            raise SecurityStop("membership-failure") from exc
        # A transport error in the round (a peer crashed) propagates: torchrun restarts the
        # workers and the round runs again with fresh nonces.

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optimizer
        if o.name == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(
            self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoints(self) -> Any:
        if self._store is None:
            from trainguard.crypto.keyring import Keyring
            from trainguard.crypto.signing import SigningKey, VerifyKey
            from trainguard.trainer.checkpoint import CheckpointStore

            home = self.env.home
            self._store = CheckpointStore(
                self.cfg.checkpoint.dir,
                Keyring.open(home.keys_dir),
                SigningKey.load(home.node_signing_key),
                VerifyKey.load(home.node_verify_key),
                job_id=self.env.job_id,
                keep=self.cfg.checkpoint.keep,
            )
        return self._store

    def load_checkpoint(self) -> None:
        """Rank 0 loads the newest verified checkpoint; step and optimizer state are broadcast
        (the weights travel with DDP's initial broadcast)."""
        found = torch.zeros(1, dtype=torch.int64)
        if self.is_rank0 and self._may_resume():
            outcome = self._checkpoints().load_newest()
            for path, reason in outcome.refused:
                self.incident(
                    IncidentKind.CHECKPOINT_TAMPERED,
                    Severity.HIGH,
                    {"checkpoint": str(path), "reason": reason},
                )
            if outcome.state is not None and outcome.info is not None:
                self.model.load_state_dict(outcome.state["model"])
                self.optimizer.load_state_dict(outcome.state["optimizer"])
                found[0] = outcome.info.step
                self.env.run.append("events", {"kind": "resume", "step": outcome.info.step,
                                               "checkpoint": str(outcome.info.path),
                                               "sha256": outcome.info.sha256})
        dist.broadcast(found, src=0)
        if int(found[0]) > 0:
            self.step = self.resumed_from = int(found[0])
            _broadcast_optimizer_state(self.optimizer, self.is_rank0)

    def _may_resume(self) -> bool:
        job = self.env.run.read_json(self.env.run.job_file) or {}
        return bool(job.get("resume")) or self.env.restart_count > 0

    def save_checkpoint(self) -> None:
        if not self.is_rank0:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
        }
        info = self._checkpoints().save(state, self.step)
        self.checkpoints.append(self.step)
        self.env.run.append("events", {"kind": "checkpoint", "step": self.step,
                                       "path": str(info.path), "sha256": info.sha256})

    # -- training ---------------------------------------------------------------------------

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Seeded by (seed, rank, step): a resumed run sees the batches it would have seen.
        g = torch.Generator().manual_seed(
            self.cfg.train.seed * 1_000_003 + self.env.rank * 7919 + step
        )
        idx = self.shard[torch.randint(len(self.shard), (self.cfg.train.batch_size,), generator=g)]
        return self.data.x_train[idx], self.data.y_train[idx]

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.adversarial is None:
            return torch.nn.functional.cross_entropy(self.ddp(x), y)
        # The attack's extra forward passes go to the bare module, not through DDP's hooks.
        return self.adversarial.loss(self.ddp, x, y, attack_model=self.model)  # type: ignore[no-any-return]

    def train(self) -> None:
        cfg = self.cfg
        tele_every = max(1, cfg.telemetry.every)
        while self.step < cfg.train.steps:
            self._maybe_kill()
            t0 = time.perf_counter()
            tele_step = self.step % tele_every == 0
            observe = tele_step  # update statistics on telemetry steps (all ranks agree)
            self.hook.begin_step(self.step, observe)
            x, y = self._batch(self.step)
            loss = self._loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _grad_norm(self.model) if observe else None
            self.optimizer.step()
            self._after_step(self.hook.finish_step())
            self.step += 1
            if tele_step:
                self._telemetry(loss, grad_norm, time.perf_counter() - t0)
            if cfg.consistency.every and self.step % cfg.consistency.every == 0:
                self._consistency()
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()
            if self.step % tele_every == 0 and self._stop_requested():
                self.save_checkpoint()
                raise SecurityStop("stop-training requested")
        self._consistency()
        if not self.checkpoints or self.checkpoints[-1] != self.step:
            self.save_checkpoint()

    def _after_step(self, stats: Any) -> None:
        if stats is None:
            return
        for r in self.monitor.observe(stats):
            self.flagged[r] = self.step
            cos = stats.cosine[r]
            evidence = {"rank": r, "step": self.step,
                        "cosine": None if cos != cos else round(cos, 4),
                        "norm_ratio": round(stats.norm_ratio[r], 4),
                        "rule": getattr(self.monitor.rule, "name", "?"),
                        "excluded": self.cfg.aggregation.exclude_flagged}
            self.incident(IncidentKind.BYZANTINE_WORKER, Severity.HIGH, evidence)
            if self.cfg.aggregation.exclude_flagged:
                self.hook.excluded.add(r)

    def _telemetry(self, loss: torch.Tensor, grad_norm: float | None, step_time: float) -> None:
        packed = torch.tensor([float(loss.detach())], dtype=torch.float64)
        dist.all_reduce(packed)
        if self.is_rank0:
            self.env.run.append("telemetry", {
                "step": self.step, "loss": float(packed[0]) / self.env.world_size,
                "grad_norm": grad_norm, "step_time": step_time,
            })

    def _consistency(self) -> None:
        try:
            check_replicas(self.model)
        except ReplicaDivergence as exc:
            self.incident(IncidentKind.REPLICA_DIVERGENCE, Severity.CRITICAL,
                          {"step": self.step, "reason": exc.message})
            raise SecurityStop("replica-divergence") from exc

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1 if self.is_rank0 and self._stop_file_applies() else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0])

    def _stop_file_applies(self) -> bool:
        """A stop request from the agent's stop-training action, made after this job started
        and naming this job (or no job)."""
        request = self.env.run.read_json(self.env.stop_file) if self.env.stop_file.exists() else None
        if not request:
            return False
        job = self.env.run.read_json(self.env.run.job_file) or {}
        fresh = float(request.get("time", 0)) >= float(job.get("created", 0))
        return fresh and request.get("job") in (None, self.env.job_id)

    def _maybe_kill(self) -> None:
        sim = self.cfg.simulate  # TEST FACILITY: a worker dies on the first attempt only
        if (sim.kill_rank == self.env.rank and self.step == sim.kill_at_step
                and self.env.restart_count == 0):
            os.kill(os.getpid(), signal.SIGKILL)

    def evaluate(self) -> float:
        self.model.eval()
        with torch.no_grad():
            pred = self.model(self.data.x_test).argmax(dim=1)
        self.model.train()
        return float((pred == self.data.y_test).float().mean())

    # -- reporting --------------------------------------------------------------------------

    def incident(self, kind: IncidentKind, severity: Severity, evidence: dict[str, Any]) -> None:
        evidence = {"job": self.env.job_id, **evidence}
        record = {"kind": kind.value, "severity": severity.value, "evidence": evidence,
                  "rank": self.env.rank, "attempt": self.env.restart_count}
        self.incidents.append(record)
        if self.writes_local:
            self.env.run.append("incidents", record)

    def write_result(self, status: str, reason: str | None = None, accuracy: float | None = None) -> None:
        if not (self.is_rank0 or (status != "completed" and self.writes_local)):
            return
        self.env.run.write_json(self.env.run.result_file, {
            "status": status, "reason": reason, "final_accuracy": accuracy,
            "steps": self.step, "resumed_from_step": self.resumed_from,
            "checkpoints_this_attempt": self.checkpoints,
            "flagged_ranks": sorted(self.flagged),
            "excluded_ranks": sorted(getattr(getattr(self, "hook", None), "excluded", set())),
            "attempt": self.env.restart_count, "world_size": self.env.world_size,
            "aggregation": self.cfg.aggregation.method.value,
            "timing": self.timing,
        })

    def cleanup(self) -> None:
        if dist.is_initialized():
            # Leave together: a rank that tears gloo down while rank 0 still writes its final
            # checkpoint makes rank 0 abort in C++ ("terminate called without an active
            # exception"), and torchrun then restarts a job that had finished.
            try:
                dist.barrier()
            except RuntimeError as exc:  # a peer already died: nothing left to wait for
                log.warning("barrier before shutdown failed: %s", exc)
            dist.destroy_process_group()


def _grad_norm(model: torch.nn.Module) -> float:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _broadcast_optimizer_state(optimizer: torch.optim.Optimizer, is_src: bool) -> None:
    """Give every rank rank 0's optimizer state, tensor by tensor (no pickled objects).

    Non-zero ranks create the state's structure with one zero-gradient step (parameters are
    restored), rank 0 sends how many state tensors each parameter has, and then the tensors."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not is_src:
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
                p.grad = None

    def tensors(p: torch.Tensor) -> list[torch.Tensor]:
        st = optimizer.state[p]
        return [st[k] for k in sorted(st) if isinstance(st[k], torch.Tensor)]

    counts = torch.tensor([len(tensors(p)) for p in params], dtype=torch.int64)
    dist.broadcast(counts, src=0)
    for p, n in zip(params, counts.tolist(), strict=True):
        if n == 0:
            optimizer.state.pop(p, None)  # rank 0 has no state for p (e.g. momentum 0)
            continue
        mine = tensors(p)
        if len(mine) != n:
            raise TrainguardError("optimizer state in the checkpoint does not match the config")
        for value in mine:
            dist.broadcast(value, src=0)


def _adversarial_step(cfg: TrainConfig, rank: int) -> Any:
    """trainguard.adversarial's step component, or None for plain training."""
    adv = cfg.adversarial
    if adv.method is AdversarialMethod.NONE:
        return None
    try:
        from trainguard.adversarial.training import AdversarialStep
    except ImportError as exc:
        raise TrainguardError(
            "adversarial training is not built into this install",
            tip='set adversarial.method = "none"',
        ) from exc
    return AdversarialStep(adv.method.value, adv.eps, steps=adv.steps, seed=cfg.train.seed + rank)


def run(cfg: TrainConfig, env: WorkerEnv) -> int:
    recipe = Recipe(cfg, env)
    try:
        recipe.setup()
        t0 = time.perf_counter()
        start = recipe.step
        recipe.train()
        recipe.timing = {"train_seconds": time.perf_counter() - t0, "steps_this_attempt": recipe.step - start}
        accuracy = recipe.evaluate()
        recipe.write_result("completed", accuracy=accuracy)
        return 0
    except SecurityStop as stop:
        recipe.write_result("aborted", reason=stop.reason,
                            accuracy=recipe.evaluate() if hasattr(recipe, "data") else None)
        return 0
    finally:
        recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s rank%(process)d %(name)s: %(message)s")
    run_dir = Path(args[0])
    env = WorkerEnv.from_environ(run_dir, dict(os.environ))
    job = env.run.read_json(env.run.job_file) or {}
    cfg = build_config(job["config"], source=str(job.get("config_path")), base_dir=Path(job["base_dir"]))
    return run(cfg, env)


if __name__ == "__main__":
    code = main()
    # Everything is written and the process group destroyed. Skip interpreter teardown: torch's
    # C++ side can abort there now and then ("terminate called without an active exception"),
    # and torchrun would read that as a crash and restart a job that had finished.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
