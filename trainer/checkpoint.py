"""Sealed, signed checkpoints and the search for the newest one that verifies.

Layout in the checkpoint folder::

    step-00000100.tgseal             sealed stream (trainguard.crypto.sealed) holding a torch.save
                                     zip of {"step": N, "state": {...}}
    step-00000100.tgseal.tgsig.json  a trainguard.crypto.manifest signed manifest of that file
                                     (kind "file", its name, size and tag digest, and as
                                     its "binding" the job it belongs to), plus "algorithm"
                                     and, on a cluster, the signing node's "certificate"

Keys: the data key of each checkpoint and the signature come from the key service (the agent,
or the launcher's key process: `trainguard.trainer.keys`); this process never holds a KEK or a
signing key. The signature covers ``DOMAIN ‖ canonical_json(manifest)`` (see
`trainguard.agent.api.keys`), so it can never pass for another kind of signed document.

Writing: torch.save goes straight into a `SealedWriter` over a temporary file (no plaintext on
disk, no in-memory copy of the whole checkpoint): this thread encrypts while a background
thread writes. The manifest records the stream's tag digest (`trainguard.crypto.sealed.stream.
TagTranscript`: header and every segment's AES-GCM tag, so nothing hashes the body; a KEK
rewrap keeps it valid), is signed, and both files are renamed into place (the signature last, so
a half-written pair is ignored). Checkpoints signed with a SHA-256 of the file (before the tag
digest) still verify. Loading: signature (this node's key, or a node certificate that chains to
the cluster CA and is not revoked), then size and digest (16 bytes read per 1 MiB segment),
then the sealed stream authenticates every segment against those tags while it is read; the decrypted stream is judged by the
supply-chain scanner's allowlist (`trainguard.integrity.scanner`) and only then
`torch.load(weights_only=True)` reads it. Every tensor dtype round-trips (bf16, fp16, int8,
uint8, bool, complex...).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import torch
from cryptography.exceptions import InvalidSignature
from trainguard.core.errors import TrainguardError
from trainguard.core.fs import atomic_output
from trainguard.trainer.context import Trust
from trainguard.trainer.errors import CheckpointTampered

__all__ = ["CheckpointInfo", "CheckpointStore", "LoadOutcome", "manifest_path", "require_job"]

log = logging.getLogger(__name__)

DOMAIN = b"trainguard/checkpoint-manifest/v1\x00"  # = trainguard.agent.api.keys.DOMAIN
_NAME = re.compile(r"^step-(\d{8})\.tgseal$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    sha256: str
    signer: str = ""


@dataclass(frozen=True)
class LoadOutcome:
    """What `load_newest` found: the payload (None when nothing verified) and what it refused."""

    state: dict[str, Any] | None
    info: CheckpointInfo | None
    refused: list[tuple[Path, str]]


def manifest_path(path: Path) -> Path:
    from trainguard.crypto.manifest import default_manifest_path

    return default_manifest_path(path)


def _torch_save_sealed(obj: Any, sealed: Any) -> None:
    """`torch.save` into a sealed stream, without the zip's CRC-32 of every record.

    AES-GCM tags and the signed SHA-256 already cover every byte, and the CRC-32 is a third of
    plain torch.save's CPU time. The archive is what ``torch.serialization.set_crc32_options(
    False)`` writes (torch.load and the scanner read it), but without flipping that
    process-wide switch under other threads. A torch without this writer signature gets a
    plain torch.save."""
    import pickle

    from torch import serialization as ts

    try:
        writer = torch._C.PyTorchFileWriter(sealed, False, ts._get_storage_alignment())  # noqa: SLF001
    except (AttributeError, TypeError):
        torch.save(obj, sealed)
        return
    ts._save(obj, writer, pickle, ts.DEFAULT_PROTOCOL, False)  # noqa: SLF001
    writer.write_end_of_file()
    sealed.flush()


class _HashingFile:
    """Hashes what is written through it, inline (tests build hand-made checkpoints with it;
    `CheckpointStore.save` hashes on a background thread through `SealedWriter(digest=)`)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data))
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


class CheckpointStore:
    """Writes and loads the checkpoints of one folder. `keys` is a `KeyClient` (or anything
    with `data_key()`, `unwrap_dek()` and `sign()`)."""

    def __init__(
        self,
        directory: Path,
        keys: Any,
        trust: Trust,
        *,
        keep: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._keys = keys
        self._trust = trust
        self._keep = keep
        self._clock = clock

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.tgseal"

    def list(self) -> list[tuple[int, Path]]:
        """Checkpoints that have a signed manifest, newest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and manifest_path(p).exists():
                out.append((int(m.group(1)), p))
        return sorted(out, reverse=True)

    def save(self, payload: dict[str, Any], step: int) -> CheckpointInfo:
        from trainguard.crypto.manifest import FileEntry, Manifest
        from trainguard.crypto.sealed.stream import TAGS_DIGEST, SealedWriter

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(step)
        data_key = self._keys.data_key()
        with atomic_output(path, mode=0o600) as tmp:
            with tmp.open("wb") as raw:
                # torch.save serializes and encrypts on this thread; a background thread writes
                # the ciphertext (see SealedWriter). The signed digest is the stream's tag
                # digest (TAGS_DIGEST): no thread hashes the body
                with SealedWriter(cast(BinaryIO, raw), data_key) as sealed:
                    _torch_save_sealed(payload, sealed)
                size, digest = sealed.tag_digest
        del data_key  # sealed: the data key is not needed again in this process
        entry = FileEntry(path.name, size, digest, digest=TAGS_DIGEST)
        # binding: the job these checkpoints belong to (`context.job_identity`; None outside a job)
        body = Manifest("file", path.name, (entry,), self._clock(), self._trust.job).to_json()
        signed = self._keys.sign(body)
        doc = {"format": 1, "manifest": body, "key_id": signed.get("key_id"),
               "algorithm": signed["algorithm"], "certificate": signed.get("certificate"),
               "signature": signed["signature"]}
        with atomic_output(manifest_path(path), mode=0o600) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        self._prune()
        return CheckpointInfo(step, path, entry.sha256)

    def _prune(self) -> None:
        """Drop checkpoints beyond `keep`: the manifest is renamed aside first (the step stops
        being a candidate at once), then the data file, and both are deleted on a background
        thread: freeing a large file's pages takes as long as writing a fair part of it, and
        even the small manifest's unlink took ~17 ms on ext4 here, against 0.1 ms for a
        rename. Leftovers of a process killed meanwhile are swept by the next prune."""
        doomed: list[Path] = []
        for _step, p in self.list()[self._keep :]:
            with contextlib.suppress(FileNotFoundError):
                tag = os.urandom(4).hex()
                signed = manifest_path(p)
                signed_aside = signed.with_name(f".{signed.name}.{tag}{_DELETING}")
                signed.rename(signed_aside)
                doomed.append(signed_aside)
                aside = p.with_name(f".{p.name}.{tag}{_DELETING}")
                p.rename(aside)
                doomed.append(aside)
        doomed += [p for p in self.directory.iterdir()
                   if p.name.endswith(_DELETING) and p not in doomed]
        if doomed:
            threading.Thread(target=_unlink_all, args=(doomed,), name="checkpoint-prune").start()

    def verify(self, path: Path) -> CheckpointInfo:
        """Check the signature, size and hash of one checkpoint; raises CheckpointTampered."""
        from trainguard.crypto.manifest import Manifest, file_digest
        from trainguard.crypto.signing import canonical_json

        try:
            doc = json.loads(manifest_path(path).read_bytes())
            body = doc["manifest"]
            signature = base64.b64decode(doc["signature"], validate=True)
            signer = _verify_signature(self._trust, doc, signature, DOMAIN + canonical_json(body))
            manifest = Manifest.from_json(body)
        except (OSError, ValueError, KeyError, TypeError, InvalidSignature, TrainguardError) as exc:
            raise CheckpointTampered(f"checkpoint {path.name}: signature does not verify") from exc
        entry = manifest.files[0] if len(manifest.files) == 1 else None
        if manifest.kind != "file" or manifest.name != path.name or entry is None or entry.path != path.name:
            raise CheckpointTampered(f"checkpoint {path.name}: manifest names another file")
        require_job(self._trust, path.name, manifest.binding)
        try:  # the tag digest (header and segment tags) of new checkpoints, or a SHA-256
            size, digest = file_digest(path, entry.digest)
        except (OSError, TrainguardError) as exc:
            raise CheckpointTampered(f"checkpoint {path.name}: cannot be read as a sealed stream") from exc
        if size != entry.size or digest != entry.sha256:
            raise CheckpointTampered(f"checkpoint {path.name}: content does not match its signature")
        m = _NAME.match(path.name)
        return CheckpointInfo(int(m.group(1)) if m else -1, path, entry.sha256, signer)

    def load(self, path: Path) -> tuple[dict[str, Any], CheckpointInfo]:
        """Verify, scan and load one checkpoint (weights only) onto the CPU."""
        from trainguard.crypto.errors import SealedStreamError
        from trainguard.crypto.sealed.stream import SealedReader
        from trainguard.integrity.scanner import UnsafeArtifact, require_safe_fileobj

        info = self.verify(path)
        try:
            with path.open("rb") as raw, SealedReader(raw, self._keys, what=path.name) as sealed:
                require_safe_fileobj(cast(IO[bytes], sealed), sealed.size, path.name)
                payload = torch.load(cast(IO[bytes], sealed), map_location="cpu", weights_only=True)
        except UnsafeArtifact as exc:
            raise CheckpointTampered(f"checkpoint {path.name}: the scanner refused it") from exc
        except SealedStreamError as exc:  # a body byte changed under the signed tags, or a key
            raise CheckpointTampered(f"checkpoint {path.name}: cannot be unsealed: its content "
                                     "does not match its signature, or it was sealed under "
                                     "another keyring") from exc
        except (TrainguardError, RuntimeError, OSError, ValueError, EOFError) as exc:
            raise CheckpointTampered(
                f"checkpoint {path.name}: cannot be unsealed or read ({type(exc).__name__})"
            ) from exc
        if not isinstance(payload, dict) or payload.get("step") != info.step:
            raise CheckpointTampered(f"checkpoint {path.name}: content is not this step's state")
        return payload, info

    def load_newest(self) -> LoadOutcome:
        """The newest checkpoint that verifies; every refused one is listed with its reason."""
        refused: list[tuple[Path, str]] = []
        for _step, path in self.list():
            try:
                payload, info = self.load(path)
            except CheckpointTampered as exc:
                log.warning("refusing %s: %s", path, exc.message)
                refused.append((path, exc.message))
                continue
            return LoadOutcome(payload, info, refused)
        return LoadOutcome(None, None, refused)


def require_job(trust: Trust, name: str, binding: str | None) -> None:
    """Inside a job (`trust.job`), a checkpoint's signed binding must name this job: one validly
    signed but made for another job (copied in), or unbound (a manifest from before checkpoints
    named their job), is never resumed into it. Single-file and DCP checkpoints alike."""
    if trust.job is None or binding == trust.job:
        return
    raise CheckpointTampered(
        f"checkpoint {name}: " + ("its manifest names no job" if binding is None
                                  else f"signed for another job ({binding})")
        + f", not this one ({trust.job})",
        tip="a checkpoint is resumed only by the job that wrote it (same project, script "
            "and checkpoint folder name); start without --resume or use that job's folder")


_DELETING = ".deleting"


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _verify_signature(trust: Trust, doc: dict[str, Any], signature: bytes, message: bytes) -> str:
    """Verify with this node's key, or with a node certificate of this cluster; returns who
    signed. Raises TrainguardError (or ValueError) on any failure."""
    algorithm = doc.get("algorithm")
    if algorithm == "ed25519":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from trainguard.crypto.signing import VerifyKey

        if not trust.verify_key_pem:
            raise ValueError("no node key to verify with")
        public = serialization.load_pem_public_key(trust.verify_key_pem.encode())
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("the node key is not Ed25519")
        key = VerifyKey(public)
        key.verify(signature, message, what="checkpoint manifest")
        return f"node-key:{key.key_id}"
    if algorithm == "ecdsa-p256-sha256":
        return _verify_with_certificate(trust, str(doc.get("certificate") or ""), signature, message,
                                        float(doc["manifest"].get("created_at", 0.0)))
    raise ValueError("unknown signature algorithm")


def _verify_with_certificate(trust: Trust, cert_pem: str, signature: bytes, message: bytes,
                             signed_at: float) -> str:
    """The certificate must be issued by the cluster CA, name a node of this cluster, be valid
    when the manifest was signed and not be on the CA's CRL; then its key must verify."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from trainguard.crypto.pki import Identity, IdentityKind

    if not trust.ca_pem or not trust.crl_pem or not cert_pem:
        raise ValueError("no cluster CA and CRL to verify a node certificate with")
    ca = x509.load_pem_x509_certificate(trust.ca_pem.encode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.verify_directly_issued_by(ca)
    crl = x509.load_pem_x509_crl(trust.crl_pem.encode())
    if not crl.is_signature_valid(cast(Any, ca.public_key())):
        raise ValueError("the CRL is not signed by the cluster CA")
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise ValueError("the signing node's certificate is revoked")
    when = dt.datetime.fromtimestamp(signed_at, dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise ValueError("the node certificate was not valid when the checkpoint was signed")
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    idents = [Identity.parse(u) for u in uris.get_values_for_type(x509.UniformResourceIdentifier)]
    node = next((i for i in idents if i.kind is IdentityKind.NODE
                 and (trust.cluster is None or i.cluster == trust.cluster)), None)
    if node is None:
        raise ValueError("the certificate does not name a node of this cluster")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("the node certificate key is not ECDSA")
    public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    return node.uri
