"""Replica consistency: all ranks agree on a SHA-256 of their parameters every K steps."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from trainguard.trainer.errors import ReplicaDivergence

__all__ = ["check_replicas", "parameter_digest"]


def parameter_digest(module: torch.nn.Module) -> bytes:
    """SHA-256 over the raw bytes of every parameter and buffer, in state_dict order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        h.update(name.encode() + b"\x00" + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def check_replicas(
    module: torch.nn.Module, *, group: Any = None, device: torch.device | None = None
) -> str:
    """All-gather the digest as a uint8 tensor; raise ReplicaDivergence on any disagreement.

    Returns the agreed digest (hex).
    """
    digest = parameter_digest(module)
    world = dist.get_world_size(group)
    mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8).to(device or "cpu")
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    digests = [bytes(t.cpu().tolist()) for t in out]
    groups: dict[bytes, list[int]] = {}
    for r, d in enumerate(digests):
        groups.setdefault(d, []).append(r)
    if len(groups) > 1:
        summary = {d.hex()[:16]: ranks for d, ranks in groups.items()}
        raise ReplicaDivergence(f"replicas disagree on the parameters: {summary}")
    return digest.hex()
