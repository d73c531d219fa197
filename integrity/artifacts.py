"""Verify-then-scan for model and checkpoint artifacts, before anything is loaded.

`require_verified_artifact(path, verify_key)` checks the signed manifest of a file or folder
(`trainguard.crypto.manifest`), then scans every file (`trainguard.integrity.scanner`). A
torch.distributed.checkpoint folder (it holds a pickled `.metadata`) is refused unless that
`.metadata` is a regular file listed in a manifest whose signature verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainguard.core.errors import CryptoError, IntegrityError
from trainguard.crypto.manifest import Manifest, verify_path
from trainguard.crypto.signing import VerifyKey
from trainguard.integrity.scanner import ScanReport, require_safe

__all__ = ["UnsignedCheckpoint", "VerifiedArtifact", "is_dcp_folder", "require_verified_artifact"]

DCP_METADATA = ".metadata"


class UnsignedCheckpoint(IntegrityError):
    """A distributed checkpoint whose `.metadata` is not covered by a valid signature (exit 1)."""

    default_tip = (
        "sign the checkpoint folder with `trainguard sign PATH` where it was written, or restore "
        "a signed copy; an unsigned .metadata is a pickle that runs code when loaded"
    )


@dataclass(frozen=True)
class VerifiedArtifact:
    path: Path
    manifest: Manifest
    scan: ScanReport


def is_dcp_folder(path: Path) -> bool:
    """A torch.distributed.checkpoint folder: a directory with a `.metadata` entry."""
    meta = path / DCP_METADATA
    return path.is_dir() and (meta.exists() or meta.is_symlink())


def require_verified_artifact(
    path: Path | str, verify_key: VerifyKey, manifest: Path | None = None
) -> VerifiedArtifact:
    """Verify the signed manifest of `path`, then require every file to scan safe.

    Raises:
        BadSignature, ManifestError, ManifestMismatch: the signature or the content check failed.
        UnsignedCheckpoint: a distributed checkpoint's `.metadata` is not covered.
        UnsafeArtifact: a file is unsafe or could not be judged.
    """
    path = Path(path)
    dcp = is_dcp_folder(path)
    if dcp and (path / DCP_METADATA).is_symlink():
        raise UnsignedCheckpoint(f"{path / DCP_METADATA} is a symbolic link; refusing to load it")
    try:
        signed = verify_path(path, verify_key, manifest)
    except (CryptoError, IntegrityError) as exc:
        if dcp:
            raise UnsignedCheckpoint(
                f"distributed checkpoint {path}: {DCP_METADATA} is not covered by a valid "
                f"signature ({exc.message})"
            ) from exc
        raise
    if dcp and not any(e.path == DCP_METADATA and e.link is None for e in signed.files):
        raise UnsignedCheckpoint(f"distributed checkpoint {path}: {DCP_METADATA} is not signed")
    return VerifiedArtifact(path, signed, require_safe(path))
