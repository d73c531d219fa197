"""Is a training state sharded (or partitioned) across ranks? Decides which checkpoint path
`Guard.save` takes: sealed DCP for sharded state, the single sealed file for replicated state.

A state is *replicated* when every rank holds the same entries with the same shapes and dtypes
and none of them is a DTensor or ShardedTensor: then rank 0's copy is the whole state and one
file holds it. Anything else is sharded: FSDP2 (`fully_shard`), HSDP and tensor parallelism
hold DTensors; a pipeline stage holds plain tensors under names the other stages do not have.
The decision is collective (one small all-reduce on `device`), so every rank takes the same
path; it looks at the state, never at module or variable names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["AppState", "holds_dtensors", "is_sharded_state", "layout_of"]


def _is_distributed_tensor(value: object) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    return isinstance(value, (DTensor, ShardedTensor))


def _leaves(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _leaves(item, f"{path}/{i}")
    elif not isinstance(obj, torch.Tensor) and hasattr(obj, "state_dict") \
            and hasattr(obj, "load_state_dict"):
        yield from _leaves(obj.state_dict(), path)
    else:
        yield path, obj


def layout_of(state: Mapping[str, Any]) -> tuple[bool, int]:
    """(any DTensor/ShardedTensor in `state`, a 62-bit digest of its names, shapes and dtypes).

    Stateful entries are expanded through their ``state_dict()``, as DCP does."""
    sha = hashlib.sha256()
    distributed = False
    for path, leaf in _leaves(state, ""):
        if isinstance(leaf, torch.Tensor):
            distributed = distributed or _is_distributed_tensor(leaf)
            sha.update(f"{path}:{tuple(leaf.shape)}:{leaf.dtype}\n".encode())
        else:
            sha.update(f"{path}:{type(leaf).__name__}\n".encode())
    return distributed, int.from_bytes(sha.digest()[:8], "big") >> 2


def is_sharded_state(state: Mapping[str, Any], device: torch.device, group: Any = None) -> bool:
    """True on every rank when any rank's `state` holds distributed tensors or the ranks'
    layouts differ (collective: every rank of `group` calls it)."""
    distributed, digest = layout_of(state)
    packed = torch.tensor([int(distributed), digest, -digest], dtype=torch.int64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=group)
    return bool(packed[0]) or int(packed[1]) != digest or -int(packed[2]) != digest


def holds_dtensors(module: torch.nn.Module) -> bool:
    """True for a module already sharded by FSDP2, HSDP or tensor parallelism."""
    return any(_is_distributed_tensor(p) for p in module.parameters())


def _OPTIONS() -> Any:  # noqa: N802 - a constant, built lazily
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Hyper-parameters keyed per parameter name too: the param_groups *list* of a plain
    # optimizer state dict has the same keys on every pipeline stage and would collide.
    return StateDictOptions(flatten_optimizer_state_dict=True)


class AppState:
    """A model and its optimizer as one DCP `Stateful`, keyed by parameter names (DCP's own
    recipe: `get_state_dict` / `set_state_dict`, with the optimizer flattened per parameter
    name as torchtitan does). Use it for sharded and pipeline models, where a plain
    ``optimizer.state_dict()`` is keyed by parameter index and group position (it collides
    across pipeline stages) and is empty before the first step (a resume would not restore
    the moments)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.optimizer, options=_OPTIONS())
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=_OPTIONS())

    def __repr__(self) -> str:
        return f"AppState({type(self.model).__name__}, {type(self.optimizer).__name__})"
