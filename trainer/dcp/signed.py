"""Who signs and verifies a DCP step, and what a verified step is: key and signer adapters,
the signed manifest of a step folder, its verification and the search for the newest one."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainguard.crypto.keyring import Keyring, WrappedDek
from trainguard.crypto.manifest import FileEntry, Manifest
from trainguard.crypto.sealed.stream import (
    DataKey,
)
from trainguard.crypto.signing import SigningKey, canonical_json
from trainguard.trainer.checkpoint import DOMAIN, _verify_signature, require_job
from trainguard.trainer.context import Trust
from trainguard.trainer.errors import CheckpointTampered

log = logging.getLogger(__name__)

_STEP = re.compile(r"^step-(\d{8})\.dcp$")
_SUFFIX = ".tgsig.json"
_DIGESTS = "__trainguard_digests__"  # the fqn of the write result that carries a rank's digests
_METADATA = ".metadata"


class SealingKeys(Protocol):
    """Data keys for sealing and unwrapping: the key service client (`trainer.keys.KeyClient`)."""

    def data_key(self) -> DataKey: ...

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes: ...


Signer = Callable[[dict[str, Any]], dict[str, Any]]
"""Signs a manifest body: returns {"algorithm", "key_id", "certificate", "signature" (base64)}
over ``DOMAIN ‖ canonical_json(body)`` (`KeyClient.sign`)."""

Verifier = Callable[[dict[str, Any], bytes, bytes], str]
"""(manifest document, signature, signed message) -> who signed; raises on any failure."""


class LocalKeys:
    """`SealingKeys` on a keyring held in this process (single-node tools such as `checkpoint
    export`, and tests); workers of a job use the key service client instead."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def data_key(self) -> DataKey:
        dek = os.urandom(32)
        return DataKey(dek, self._keyring.wrap_dek(dek))

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes:
        return self._keyring.unwrap_dek(wrapped, what=what)

    def __repr__(self) -> str:
        return "LocalKeys(...)"


def trust_verifier(trust: Trust) -> Verifier:
    """Verify with this node's key or a cluster node certificate (as single-file checkpoints),
    and, inside a job (`trust.job`), that the signed manifest names this job: a validly signed
    step copied in from another job's folder, or one that names no job, is refused."""

    def verify(doc: dict[str, Any], signature: bytes, message: bytes) -> str:
        signer = _verify_signature(trust, doc, signature, message)
        body = doc["manifest"] if isinstance(doc.get("manifest"), dict) else {}
        require_job(trust, str(body.get("name", "?")), body.get("binding"))
        return signer

    return verify


def signing_key_signer(key: SigningKey) -> Signer:
    """A `Signer` on an Ed25519 key held in this process (single-node tools and tests; workers
    of a job sign through the key service instead)."""

    def sign(body: dict[str, Any]) -> dict[str, Any]:
        sig = key.sign(DOMAIN + canonical_json(body))
        return {"algorithm": "ed25519", "key_id": key.key_id, "certificate": None,
                "signature": base64.b64encode(sig).decode()}

    return sign


class _Refused(Exception):
    """Raised inside DCP's steps (it may cross ranks pickled); becomes CheckpointTampered."""


def manifest_path(folder: Path) -> Path:
    return folder.with_name(folder.name + _SUFFIX)



def _hash(path: Path, digest: str = "sha256") -> tuple[int, str]:
    """(size, digest of kind `digest`: the tag digest of sealed files, or a SHA-256)."""
    from trainguard.core.errors import TrainguardError
    from trainguard.crypto.manifest import file_digest

    try:
        return file_digest(path, digest)
    except (OSError, TrainguardError) as exc:
        raise _Refused(f"{path.name} cannot be read as a sealed stream") from exc



# ---- the signed manifest of one step ----------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    """A verified step folder: its step, path and who signed it."""

    step: int
    path: Path
    signer: str
    files: Mapping[str, FileEntry]


def _read_signed(folder: Path, verify: Verifier) -> tuple[Manifest, str]:
    mpath = manifest_path(folder)
    try:
        doc = json.loads(mpath.read_bytes())
        body = doc["manifest"]
        signature = base64.b64decode(doc["signature"], validate=True)
        signer = verify(doc, signature, DOMAIN + canonical_json(body))
        manifest = Manifest.from_json(body)
    except FileNotFoundError as exc:
        raise CheckpointTampered(f"checkpoint {folder.name}: no signed manifest (unfinished)") from exc
    except CheckpointTampered:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted document is a refusal
        raise CheckpointTampered(f"checkpoint {folder.name}: signature does not verify") from exc
    if manifest.kind != "directory" or manifest.name != folder.name:
        raise CheckpointTampered(f"checkpoint {folder.name}: manifest names another checkpoint")
    return manifest, signer


def _check_listing(folder: Path, files: Mapping[str, FileEntry]) -> None:
    """Exactly the signed files, as regular files of the signed sizes (no links, no extras)."""
    try:
        present = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(folder)}
    except OSError as exc:
        raise CheckpointTampered(f"checkpoint {folder.name}: folder cannot be read") from exc
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    if missing or extra:
        raise CheckpointTampered(
            f"checkpoint {folder.name}: missing {missing or 'none'}, unsigned {extra or 'none'}")
    for name, st in present.items():
        if not stat.S_ISREG(st.st_mode) or st.st_size != files[name].size:
            raise CheckpointTampered(f"checkpoint {folder.name}: {name} does not match its manifest")


def verify_step(folder: Path, verify: Verifier, *, hash_all: bool = True) -> StepInfo:
    """Check a step folder against its signed manifest (signature, file set, sizes and, with
    `hash_all`, every file's digest: the tag digest, 16 bytes read per segment). Raises
    `CheckpointTampered`."""
    manifest, signer = _read_signed(folder, verify)
    files = {e.path: e for e in manifest.files}
    if any(e.link is not None or "/" in e.path for e in files.values()) or _METADATA not in files:
        raise CheckpointTampered(f"checkpoint {folder.name}: manifest is not a DCP checkpoint's")
    _check_listing(folder, files)
    for name in sorted(files) if hash_all else [_METADATA]:
        try:
            got = _hash(folder / name, files[name].digest)
        except _Refused as exc:
            raise CheckpointTampered(f"checkpoint {folder.name}: {exc}") from exc
        if got != (files[name].size, files[name].sha256):
            raise CheckpointTampered(f"checkpoint {folder.name}: {name} does not match its manifest")
    m = _STEP.match(folder.name)
    return StepInfo(int(m.group(1)) if m else -1, folder, signer, files)


def list_steps(directory: Path) -> list[tuple[int, Path]]:
    """Step folders that have a manifest, newest first (not yet verified)."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _STEP.match(p.name)
        if m and manifest_path(p).exists():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def newest_verified(directory: Path, verify: Verifier) -> tuple[StepInfo | None, list[tuple[Path, str]]]:
    """The newest step folder that fully verifies, and every newer one refused with its reason."""
    refused: list[tuple[Path, str]] = []
    for _step, folder in list_steps(directory):
        try:
            return verify_step(folder, verify), refused
        except CheckpointTampered as exc:
            log.warning("refusing %s: %s", folder, exc.message)
            refused.append((folder, exc.message))
    return None, refused
