"""Authenticated membership: every rank proves knowledge of the job key before any data flows.

torch.distributed's TCPStore and rendezvous accept anyone who can reach the port. Right after
`init_process_group`, every rank draws a fresh 32-byte nonce; the nonces are all-gathered as
uint8 tensors; each rank computes HMAC-SHA256(job_key, "trainguard-membership-v1" ‖ job_id ‖
rank ‖ world_size ‖ nonce_0 ‖ ... ‖ nonce_{n-1}) and the MACs are all-gathered; every rank checks
every MAC in constant time. Binding all nonces makes a MAC useless outside this round; binding
the rank stops one member from answering for another. The job key never touches the store: it
reaches workers through a 0600 file named by an environment variable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from trainguard.core.home import read_private, write_private
from trainguard.trainer.errors import MembershipError

__all__ = ["NONCE_BYTES", "membership_mac", "prove_membership", "read_job_key", "write_job_key"]

NONCE_BYTES = 32
_DOMAIN = b"trainguard-membership-v1"


def membership_mac(key: bytes, job_id: str, rank: int, world_size: int, nonces: bytes) -> bytes:
    msg = b"\x00".join(
        [_DOMAIN, job_id.encode(), str(rank).encode(), str(world_size).encode(), nonces]
    )
    return hmac.new(key, msg, hashlib.sha256).digest()


def write_job_key(path: Path, key: bytes) -> None:
    """Write the job key as a 0600 file (atomic, in a 0700 folder)."""
    write_private(path, key.hex().encode())


def read_job_key(path: Path) -> bytes:
    """Read the job key file (refuses group/other-readable files and symlinks)."""
    raw = read_private(path).strip()
    try:
        key = bytes.fromhex(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MembershipError("the job key file is malformed") from exc
    if len(key) < 32:
        raise MembershipError("the job key file is malformed")
    return key


def _all_gather_bytes(data: bytes, world_size: int, group: Any) -> list[bytes]:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t, group=group)
    return [bytes(o.tolist()) for o in out]


def prove_membership(
    key: bytes,
    job_id: str,
    *,
    group: Any = None,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> None:
    """Run the membership round on the default (or given) process group.

    Returns nothing when every rank proved the key; raises MembershipError naming the ranks
    that failed otherwise (on every honest rank).
    """
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    nonce = randbytes(NONCE_BYTES)
    nonces = _all_gather_bytes(nonce, world, group)
    if nonces[rank] != nonce:
        raise MembershipError("membership round corrupted: own nonce not echoed")
    joined = b"".join(nonces)
    mine = membership_mac(key, job_id, rank, world, joined)
    macs = _all_gather_bytes(mine, world, group)
    bad = [
        r
        for r, mac in enumerate(macs)
        if not hmac.compare_digest(mac, membership_mac(key, job_id, r, world, joined))
    ]
    if bad:
        raise MembershipError(f"ranks {bad} did not prove knowledge of the job key")


def job_key_from_env(environ: dict[str, str] | os._Environ[str], var: str) -> bytes:
    """Entry-point helper: read the key file named by `var`."""
    path = environ.get(var)
    if not path:
        raise MembershipError(f"no job key: ${var} is not set", tip="launch with `trainguard train`")
    return read_job_key(Path(path))
