"""trainguard.integrity: dependency inventory, lock and verify; the artifact scanner; signed
artifact checks before anything is loaded."""

from __future__ import annotations

from trainguard.core.errors import (
    IntegrityError,
)
from trainguard.integrity.artifacts import (
    UnsignedCheckpoint,
    VerifiedArtifact,
    require_verified_artifact,
)
from trainguard.integrity.scanner import (
    ScanReport,
    UnsafeArtifact,
    Verdict,
    require_safe,
    require_safe_fileobj,
    scan_path,
)

__all__ = [
    "IntegrityError",
    "ScanReport",
    "UnsafeArtifact",
    "UnsignedCheckpoint",
    "Verdict",
    "VerifiedArtifact",
    "require_safe",
    "require_safe_fileobj",
    "require_verified_artifact",
    "scan_path",
]
