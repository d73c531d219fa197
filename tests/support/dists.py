"""A synthetic installed distribution (wheel layout with RECORD) for dependency tests."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

__all__ = ["make_dist"]

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_dist(
    site: Path, name: str, version: str, files: dict[str, bytes], *, wrong: str = ""
) -> None:
    """A wheel-style install: package files plus NAME-VERSION.dist-info with RECORD."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    rows = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        recorded = b"something else" if rel == wrong else data
        rows.append(f"{rel},{_record_hash(recorded)},{len(data)}")
    rows += [f"{info.name}/METADATA,,", f"{info.name}/INSTALLER,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
