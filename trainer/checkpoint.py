"""Sealed, signed checkpoints and the search for the newest one that verifies.

Layout in ``checkpoint.dir``::

    step-00000100.tgseal      sealed stream (trainguard.crypto.sealed.stream) holding a torch.save zip
    step-00000100.tgseal.sig  JSON {"manifest": {...}, "signature": hex}: Ed25519 by the node key
                              over canonical JSON of {format, file, size, sha256, step, job_id, key_id}

Writing: torch.save goes straight into a `SealedWriter` over a temporary file (no plaintext on
disk, no in-memory copy of the whole checkpoint); the sealed file is then hashed, the manifest
signed, and both renamed into place (the signature last, so a half-written pair is ignored).
Loading: signature, then hash, then the sealed stream authenticates every segment while it is
read; the pickle inside the zip is scanned straight from the decrypted stream by the supply-chain scanner and by a strict allowlist of tensor-rebuild
globals, and only then `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickletools
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch
from trainguard.core.errors import TrainguardError
from trainguard.core.home import atomic_output
from trainguard.trainer.errors import CheckpointTampered

__all__ = ["CheckpointInfo", "CheckpointStore", "LoadOutcome"]

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^step-(\d{8})\.tgseal$")
# Globals a weights-only checkpoint of a model + optimizer may reference.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "BoolStorage"),
    ("torch", "float32"),
    ("torch", "int64"),
}


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    sha256: str


@dataclass(frozen=True)
class LoadOutcome:
    """What `load_newest` found: the state (None when nothing verified) and what it refused."""

    state: dict[str, Any] | None
    info: CheckpointInfo | None
    refused: list[tuple[Path, str]]


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def scan_torch_zip(stream: Any) -> None:
    """Refuse a torch.save zip whose pickle references anything but tensor-rebuild globals.

    Reads the pickle member from `stream` (a readable, seekable file object, e.g. a
    SealedReader) without writing anything to disk; raises CheckpointTampered.
    """
    try:
        with zipfile.ZipFile(stream) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise CheckpointTampered("checkpoint archive has no single pickle member")
            data = z.read(pkl[0])
    except zipfile.BadZipFile as exc:
        raise CheckpointTampered("checkpoint is not a torch archive") from exc
    strings: list[str] = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif op.name == "GLOBAL":
            mod, _, name = str(arg).partition(" ")
            _check_global(mod, name)
        elif op.name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise CheckpointTampered("checkpoint pickle has an unresolvable global")
            _check_global(strings[-2], strings[-1])
        elif op.name in ("REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"):
            continue  # only reachable through an allowed global
    stream.seek(0)


def scan_sealed(stream: Any, name: str) -> None:
    """The supply-chain scanner over the decrypted stream (nothing is written to disk)."""
    from trainguard.integrity.scanner.formats import scan_stream
    from trainguard.integrity.scanner.report import FileVerdict, Verdict

    fmt, findings = scan_stream(stream, stream.size)
    verdict = FileVerdict.from_findings(name, fmt, findings)
    stream.seek(0)
    if verdict.verdict is not Verdict.SAFE:
        detail = "; ".join(str(f) for f in findings[:3])
        raise CheckpointTampered(f"checkpoint {name}: the scanner refused it ({detail})")


def _check_global(module: str, name: str) -> None:
    if (module, name) not in _ALLOWED_GLOBALS:
        raise CheckpointTampered(f"checkpoint pickle references a forbidden global {module}.{name}")


class CheckpointStore:
    """Writes and loads the checkpoints of one job folder (rank 0 only)."""

    def __init__(
        self,
        directory: Path,
        keyring: Any,
        signing_key: Any,
        verify_key: Any,
        *,
        job_id: str,
        keep: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._keyring = keyring
        self._signing_key = signing_key
        self._verify_key = verify_key
        self._job_id = job_id
        self._keep = keep
        self._clock = clock

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.tgseal"

    def list(self) -> list[tuple[int, Path]]:
        """Checkpoints that have a signature file, newest first."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and p.with_name(p.name + ".sig").exists():
                out.append((int(m.group(1)), p))
        return sorted(out, reverse=True)

    def save(self, state: dict[str, Any], step: int) -> CheckpointInfo:
        from trainguard.crypto.sealed.stream import SealedWriter

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(step)
        with atomic_output(path, mode=0o600) as tmp:
            with tmp.open("wb") as raw, SealedWriter(raw, self._keyring) as sealed:
                torch.save(state, cast(IO[bytes], sealed))  # a file object: torch writes into it
            digest = _sha256_file(tmp)
            size = tmp.stat().st_size
        manifest = {
            "format": FORMAT,
            "file": path.name,
            "size": size,
            "sha256": digest,
            "step": step,
            "job_id": self._job_id,
            "key_id": self._signing_key.key_id,
            "time": self._clock(),
        }
        self._write_signature(path, manifest)
        self._prune()
        return CheckpointInfo(step, path, digest)

    def _write_signature(self, path: Path, manifest: dict[str, Any]) -> None:
        from trainguard.crypto.signing import canonical_json

        sig = self._signing_key.sign(canonical_json(manifest))
        body = json.dumps({"manifest": manifest, "signature": sig.hex()}, indent=1).encode()
        sig_path = path.with_name(path.name + ".sig")
        with atomic_output(sig_path, mode=0o600) as tmp:
            tmp.write_bytes(body)

    def _prune(self) -> None:
        for _step, p in self.list()[self._keep :]:
            with contextlib.suppress(FileNotFoundError):
                p.with_name(p.name + ".sig").unlink()
                p.unlink()

    def verify(self, path: Path) -> CheckpointInfo:
        """Check the signature and the hash of one checkpoint; raises CheckpointTampered."""
        from trainguard.crypto.signing import canonical_json

        try:
            doc = json.loads(path.with_name(path.name + ".sig").read_bytes())
            manifest, sig = doc["manifest"], bytes.fromhex(doc["signature"])
            self._verify_key.verify(sig, canonical_json(manifest), what="checkpoint manifest")
        except (OSError, ValueError, KeyError, TypeError, TrainguardError) as exc:
            raise CheckpointTampered(f"checkpoint {path.name}: signature does not verify") from exc
        if manifest.get("file") != path.name or manifest.get("format") != FORMAT:
            raise CheckpointTampered(f"checkpoint {path.name}: manifest names another file")
        if _sha256_file(path) != manifest["sha256"]:
            raise CheckpointTampered(f"checkpoint {path.name}: content does not match its signature")
        return CheckpointInfo(int(manifest["step"]), path, manifest["sha256"])

    def load(self, path: Path) -> tuple[dict[str, Any], CheckpointInfo]:
        """Verify, scan and load one checkpoint (weights only)."""
        from trainguard.crypto.sealed.stream import SealedReader

        info = self.verify(path)
        try:
            with path.open("rb") as raw, SealedReader(raw, self._keyring) as sealed:
                scan_sealed(sealed, path.name)
                scan_torch_zip(sealed)
                state = torch.load(cast(IO[bytes], sealed), map_location="cpu", weights_only=True)
        except CheckpointTampered:
            raise
        except (TrainguardError, RuntimeError, OSError, ValueError) as exc:
            raise CheckpointTampered(
                f"checkpoint {path.name}: cannot be unsealed or read ({type(exc).__name__})"
            ) from exc
        if not isinstance(state, dict) or int(state.get("step", -1)) != info.step:
            raise CheckpointTampered(f"checkpoint {path.name}: content is not this step's state")
        return state, info

    def load_newest(self) -> LoadOutcome:
        """The newest checkpoint that verifies; every refused one is listed with its reason."""
        refused: list[tuple[Path, str]] = []
        for _step, path in self.list():
            try:
                state, info = self.load(path)
            except CheckpointTampered as exc:
                log.warning("refusing %s: %s", path, exc.message)
                refused.append((path, exc.message))
                continue
            return LoadOutcome(state, info, refused)
        return LoadOutcome(None, None, refused)
