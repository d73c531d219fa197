"""Authenticated membership: every rank proves knowledge of the job key before any data flows.

torch.distributed's TCPStore and rendezvous accept anyone who can reach the port. Right after
`init_process_group`, every rank draws a fresh 32-byte nonce; the nonces are all-gathered as
uint8 tensors; each rank computes HMAC-SHA256(job_key, "trainguard-membership-v1" ‖ job_id ‖
rank ‖ world_size ‖ nonce_0 ‖ ... ‖ nonce_{n-1}) and the MACs are all-gathered; every rank checks
every MAC in constant time. Binding all nonces makes a MAC useless outside this round; binding
the rank stops one member from answering for another. The job key never touches the store: it
reaches workers in the 0600 launch context named by an environment variable
(`trainguard.trainer.context`). The round's tensors live on the process group's device.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from trainguard.trainer.errors import MembershipError

__all__ = ["NONCE_BYTES", "membership_mac", "prove_membership"]

NONCE_BYTES = 32
_DOMAIN = b"trainguard-membership-v1"


def membership_mac(key: bytes, job_id: str, rank: int, world_size: int, nonces: bytes) -> bytes:
    msg = b"\x00".join(
        [_DOMAIN, job_id.encode(), str(rank).encode(), str(world_size).encode(), nonces]
    )
    return hmac.new(key, msg, hashlib.sha256).digest()


def _all_gather_bytes(
    data: bytes, world_size: int, group: Any, device: torch.device
) -> list[bytes]:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t, group=group)
    return [bytes(o.cpu().tolist()) for o in out]


def prove_membership(
    key: bytes,
    job_id: str,
    *,
    group: Any = None,
    device: torch.device | None = None,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> None:
    """Run the membership round on the default (or given) process group.

    Returns nothing when every rank proved the key; raises MembershipError naming the ranks
    that failed otherwise (on every honest rank).
    """
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    nonce = randbytes(NONCE_BYTES)
    device = device or torch.device("cpu")
    nonces = _all_gather_bytes(nonce, world, group, device)
    if nonces[rank] != nonce:
        raise MembershipError("membership round corrupted: own nonce not echoed")
    joined = b"".join(nonces)
    mine = membership_mac(key, job_id, rank, world, joined)
    macs = _all_gather_bytes(mine, world, group, device)
    bad = [
        r
        for r, mac in enumerate(macs)
        if not hmac.compare_digest(mac, membership_mac(key, job_id, r, world, joined))
    ]
    if bad:
        raise MembershipError(f"ranks {bad} did not prove knowledge of the job key")
