"""Settings of the crypto area: the ``[crypto]`` section of trainguard.toml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["CryptoConfig"]

MAX_SEGMENT_SIZE = 1 << 28


@dataclass(frozen=True)
class CryptoConfig:
    """Defaults live here and nowhere else.

    segment_size: plaintext bytes per AES-GCM segment of a sealed stream (memory per stream).
    kek_rotation_days: a posture check warns when the current KEK is older than this.
    hash_workers: threads that hash files for manifests; 0 means one per CPU.
    """

    SECTION: ClassVar[str] = "crypto"

    segment_size: int = 1 << 20
    kek_rotation_days: int = 90
    hash_workers: int = 0

    def validate(self) -> list[str]:
        problems = []
        if not 16 <= self.segment_size <= MAX_SEGMENT_SIZE:
            problems.append(f"segment_size must be between 16 and {MAX_SEGMENT_SIZE} bytes")
        if self.kek_rotation_days < 1:
            problems.append("kek_rotation_days must be at least 1")
        if self.hash_workers < 0:
            problems.append("hash_workers must be 0 (one per CPU) or more")
        return problems
