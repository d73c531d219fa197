"""trainguard.integrity: dependency inventory, lock, verify and audit (`deps/`); the artifact
scanner (`scanner/`); signed artifact checks before anything is loaded.

Public names are loaded on first use (PEP 562): `trainguard.integrity.deps` does not pull in the
scanner, and the scanner does not pull in the dependency tooling.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainguard.core.errors import IntegrityError as IntegrityError  # re-exported

_EXPORTS: dict[str, str] = {
    "UnsignedCheckpoint": "artifacts",
    "VerifiedArtifact": "artifacts",
    "require_verified_artifact": "artifacts",
    "ScanReport": "scanner",
    "UnsafeArtifact": "scanner",
    "Verdict": "scanner",
    "require_safe": "scanner",
    "require_safe_fileobj": "scanner",
    "scan_path": "scanner",
}

__all__ = sorted([*_EXPORTS, "IntegrityError"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainguard.integrity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainguard.integrity.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
