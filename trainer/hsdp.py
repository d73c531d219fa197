"""Robust aggregation across the replicate dimension of HSDP (FSDP2 on a 2-D device mesh).

FSDP2's native HSDP reduce-scatters each gradient inside the shard group, then all-reduces the
shard across the replicate group (one rank per replica of the model): the second step is the
data-parallel mean, the place a Byzantine replica pulls the model wherever it likes. `Guard.wrap`
swaps that replicate process group, in every FSDP parameter group of the module, for a
`RobustReplicateGroup`: a `torch.distributed.ProcessGroup` whose all-reduce all-gathers the
replicas' shards over the real group and applies the job's aggregation rule (`[aggregation]
method`: median, trimmed mean, Krum, centered clipping, or the plain mean) with the same code
as the DDP hook (`trainguard.trainer.aggregation`), records each replica's norm and cosine for
the rank monitor, and drops excluded replicas. Everything else FSDP does (the reduce-scatter,
the divide factors, its streams) is unchanged; only ``SUM`` and ``AVG`` reductions are accepted
(anything else raises, never silently averages).

Scope, stated plainly: this covers the replicate dimension only. Inside a shard group every
rank is trusted (each holds a different slice of the same replica, so there is nothing to vote
with); membership, telemetry and sealed checkpoints apply there as everywhere. With two
replicas a median cannot out-vote anyone: robust rules need at least three.

Relies on FSDP2's per-group ``mesh_info.replicate_process_group`` (torch 2.13, pinned); a
torch that lays this out differently makes `Guard.wrap` raise rather than train unprotected.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from trainguard.trainer.aggregation import HookState, _gather, aggregate_rows
from trainguard.trainer.config import Aggregation
from trainguard.trainer.errors import TrainerError
from trainguard.trainer.testing.simulate import AttackPlan

__all__ = ["RobustReplicateGroup", "hsdp_replicate_groups", "protect_hsdp"]


class _Done(dist.Work):
    """A finished all-reduce (the work was done synchronously)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self._future: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future()
        self._future.set_result(tensors)

    def wait(self, timeout: Any = None) -> bool:
        return True

    def get_future(self) -> torch.futures.Future[list[torch.Tensor]]:
        return self._future


class RobustReplicateGroup(dist.ProcessGroup):
    """The replicate group of HSDP with a robust all-reduce (see the module docstring).

    `state` is a `HookState` whose `rank` / `world_size` are this rank's index and the size
    of the replicate group and whose `group` is the real one; `global_ranks[i]` is the global
    rank of replica i (for incidents). Calls within one step are numbered (FSDP reduces its
    parameter groups in a fixed order), which keys centered clipping's per-group center.
    """

    def __init__(self, inner: dist.ProcessGroup, state: HookState, global_ranks: list[int],
                 plan: AttackPlan | None = None) -> None:
        super().__init__(inner.rank(), inner.size())
        self.inner = inner
        self.state = state
        self.global_ranks = global_ranks
        self._plan = plan
        self._call = 0
        self._step = -1

    def getBackendName(self) -> str:  # noqa: N802 - torch's name
        return "trainguard-robust"

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        if len(tensors) != 1:
            raise TrainerError("the robust replicate group reduces one tensor per call")
        op = getattr(opts, "reduceOp", dist.ReduceOp.SUM)
        op = getattr(op, "op", op)  # a ReduceOp holds its RedOpType (PREMUL_SUM: with a factor)
        if op not in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
            raise TrainerError(f"HSDP asked the robust replicate group for {op}; only SUM and AVG "
                               "are aggregated robustly", tip="report this with your torch version")
        state, t = self.state, tensors[0]
        if state.step != self._step:
            self._step, self._call = state.step, 0
        key, self._call = self._call, self._call + 1
        flat = t.view(-1)
        plan = self._plan
        if plan is not None and plan.step_active(state):  # a simulated Byzantine replica
            if plan.omniscient:
                true_rows = _gather(flat, state)
                if state.rank in plan.ranks:
                    flat.copy_(plan.omniscient_row(true_rows))
            elif state.rank in plan.ranks:
                flat.copy_(plan.local(flat))
        rows = _gather(flat, state)
        keep = [i for i in range(state.world_size) if i not in state.excluded]
        kept = rows[keep] if len(keep) < state.world_size else rows
        agg = aggregate_rows(kept, state.cfg, state._centers.get(key))  # noqa: SLF001
        if state.cfg.method is Aggregation.CENTERED_CLIP:
            state._centers[key] = agg.detach().clone()  # noqa: SLF001
        state._record_rows(rows, agg)  # noqa: SLF001
        flat.copy_(agg * state.world_size if op == dist.ReduceOp.SUM else agg)
        return _Done(tensors)


def hsdp_replicate_groups(model: torch.nn.Module) -> list[Any]:
    """The FSDP2 mesh infos of `model` that all-reduce across a replicate group (native HSDP),
    each once; [] for a model with no HSDP parameter groups."""
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
    except ImportError:  # pragma: no cover - a torch without FSDP2
        return []
    seen: dict[int, Any] = {}
    for module in model.modules():
        get_state = getattr(module, "_get_fsdp_state", None)
        if get_state is None:
            continue
        fsdp_state = get_state()
        if not isinstance(fsdp_state, FSDPState):
            continue
        for group in getattr(fsdp_state, "_fsdp_param_groups", None) or []:
            info = group.mesh_info
            if getattr(group, "_is_hsdp", False) and id(info) not in seen:
                if not hasattr(info, "replicate_process_group"):
                    raise TrainerError("this torch's HSDP has no replicate process group to protect",
                                       tip="use the pinned torch (constraints.txt)")
                seen[id(info)] = info
    return list(seen.values())


def protect_hsdp(model: torch.nn.Module, state_for: Any) -> RobustReplicateGroup | None:
    """Swap the replicate group of every HSDP parameter group of `model` for a robust one.
    `state_for(inner_group)` returns the `HookState` (and its attack plan) for that group.
    Returns the robust group (one per rank: all parameter groups share one mesh), or None
    when `model` has no HSDP parameter groups."""
    infos = hsdp_replicate_groups(model)
    robust: dict[int, RobustReplicateGroup] = {}
    for info in infos:
        inner = info.replicate_process_group
        if isinstance(inner, RobustReplicateGroup):
            robust[id(inner.inner)] = inner
            continue
        if id(inner) not in robust:
            hook_state, plan = state_for(inner)
            robust[id(inner)] = RobustReplicateGroup(
                inner, hook_state, dist.get_process_group_ranks(inner), plan)
        info.replicate_process_group = robust[id(inner)]
    if len(robust) > 1:
        raise TrainerError("HSDP parameter groups on different replicate meshes",
                           tip="shard the whole model over one 2-D mesh")
    return next(iter(robust.values()), None)
