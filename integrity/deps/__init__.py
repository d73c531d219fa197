"""trainguard.integrity.deps: what is installed, byte for byte, locked and signed with the node key."""

from __future__ import annotations

from trainguard.integrity.deps.cache import (
    HashCache,
)
from trainguard.integrity.deps.lock import (
    DepsLockError,
    build_lock,
    default_lock_path,
    read_lock,
    write_lock,
)
from trainguard.integrity.deps.verify import (
    DistDrift,
    VerifyResult,
    verify_lock,
)

__all__ = [
    "DepsLockError",
    "DistDrift",
    "HashCache",
    "VerifyResult",
    "build_lock",
    "default_lock_path",
    "read_lock",
    "verify_lock",
    "write_lock",
]
