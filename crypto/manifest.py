"""Signed manifests: {path, size, sha256} of every file of an artifact, signed with Ed25519.

Manifest file (JSON, default ``<name>.tgsig.json`` next to the artifact)::

    {"format": 1,
     "manifest": {"format": 2, "kind": "file" | "directory", "name": "<artifact name>",
                  "binding": "<where it was signed: see below>", "created_at": <unix s>,
                  "files": [{"path": "a/b.bin", "size": 12, "sha256": "<hex>"},
                            {"path": "latest", "link": "ckpt-3.pt"}, ...]},
     "key_id": "<16 hex>", "signature": "<base64 Ed25519 over canonical_json(manifest)>"}

Paths are relative POSIX paths inside the artifact, sorted; for a single file the one entry's
path is the file's name. Symbolic links are recorded with their target and never followed, so
a link cannot pull a file from outside the tree into the manifest. A manifest file inside the
tree is never listed.

Binding (manifest format 2): the signed ``binding`` names where the artifact lives, so a signed
manifest verifies only the artifact it was made for, never a copy of it (files and manifest)
placed at another artifact's path: a directory artifact is bound to its folder name
(``run-7``), a single file to its parent folder and name (``run-7/final.pt``). Moving a run
folder elsewhere keeps it verifying; copying run 7 over run 8 does not. Callers with another
naming scheme pass their own ``binding`` to both `sign_path` and `verify_path`. Manifests of
format 1 bound only the base name, so a file copied between two runs' folders verified; they
are refused with a tip to re-sign. Hashing runs on a thread pool: hashlib releases the GIL on large
buffers, so the work spreads across cores.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import IntegrityError, TrainguardError
from trainguard.core.fs import FileHash, atomic_output, hash_file
from trainguard.crypto.errors import BadSignature, ManifestError, ManifestMismatch
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json

__all__ = [
    "SHA256",
    "FileEntry",
    "Manifest",
    "ManifestMismatch",
    "ManifestMisplaced",
    "build_manifest",
    "default_binding",
    "default_manifest_path",
    "file_digest",
    "sign_path",
    "verify_path",
]

FORMAT = 1  # of the manifest file
BODY_FORMAT = 2  # of the signed body; 2 added `binding`
SUFFIX = ".tgsig.json"


SHA256 = "sha256"  # the digest of a file entry unless it names another


@dataclass(frozen=True)
class FileEntry:
    """One file (size and digest) or one symbolic link (its target) of an artifact.

    `digest` names what `sha256` holds: ``"sha256"`` (the default, not written to JSON), the
    SHA-256 of the file's bytes; or ``"tgseal-tags-v1"`` (`trainguard.crypto.sealed.stream.
    TAGS_DIGEST`), the digest of a sealed stream's header and segment tags, which sealed
    checkpoints use so that no one hashes their body (see `TagTranscript` for what it binds).
    Any other name is refused when the manifest is read."""

    path: str
    size: int = 0
    sha256: str = ""
    link: str | None = None
    digest: str = SHA256

    def to_json(self) -> dict[str, Any]:
        if self.link is not None:
            return {"path": self.path, "link": self.link}
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.digest != SHA256:
            out["digest"] = self.digest
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileEntry:
        if "link" in d:
            return cls(path=str(d["path"]), link=str(d["link"]))
        digest = str(d.get("digest", SHA256))
        if digest not in _DIGESTS:
            raise ManifestError(f"manifest entry {d.get('path')!r} uses an unknown digest {digest!r}")
        return cls(path=str(d["path"]), size=int(d["size"]), sha256=str(d["sha256"]), digest=digest)


def file_digest(path: Path, digest: str = SHA256) -> tuple[int, str]:
    """(size, hex digest of kind `digest`) of the file at `path`, links not followed. Raises
    `OSError`, or `SealedStreamError` when a sealed-stream digest is asked of another file."""
    if digest == SHA256:
        h = hash_file(path, follow_symlinks=False)
        return h.size, h.sha256
    from trainguard.crypto.sealed.stream import tag_digest

    return tag_digest(path, Path(path).name)


_DIGESTS = (SHA256, "tgseal-tags-v1")


class ManifestMisplaced(IntegrityError):
    """A correctly signed manifest made for another artifact, or one that binds no place
    (exit 1)."""


@dataclass(frozen=True)
class Manifest:
    """What an artifact held when it was signed, and where (`binding`)."""

    kind: str  # "file" or "directory"
    name: str
    files: tuple[FileEntry, ...]
    created_at: float = 0.0
    binding: str | None = None  # None only in a format-1 manifest (refused by verify_path)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": BODY_FORMAT,
            "kind": self.kind,
            "name": self.name,
            "binding": self.binding,
            "created_at": self.created_at,
            "files": [f.to_json() for f in self.files],
        }
        if self.binding is None:  # a caller that binds the place itself (the trainer's store)
            del body["binding"]
            body["format"] = 1
        return body

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        fmt = d.get("format")
        if fmt not in (1, BODY_FORMAT) or d.get("kind") not in ("file", "directory"):
            raise ManifestError("not a trainguard manifest of format 1 or 2")
        if fmt == BODY_FORMAT and not isinstance(d.get("binding"), str):
            raise ManifestError("a format-2 manifest without its binding")
        return cls(
            kind=str(d["kind"]),
            name=str(d["name"]),
            files=tuple(FileEntry.from_json(f) for f in d["files"]),
            created_at=float(d.get("created_at", 0.0)),
            binding=str(d["binding"]) if fmt == BODY_FORMAT else None,
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def default_binding(path: Path) -> str:
    """Where an artifact lives, as its manifest binds it: a folder's own name, or a file's
    parent folder and name (`os.path.abspath`, so links on the way are not resolved)."""
    p = Path(os.path.abspath(path))
    if p.is_dir() and not p.is_symlink():
        return p.name
    return f"{p.parent.name}/{p.name}"


def default_manifest_path(path: Path) -> Path:
    """``<name>.tgsig.json`` next to the artifact (outside a directory artifact)."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _hash_file(path: Path) -> FileHash:
    return hash_file(path, follow_symlinks=False)  # a link swapped in after the walk: refused


def _walk(root: Path, skip: set[Path]) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, lstat) of every file and link under `root`, links not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        names = list(filenames)
        for d in list(dirnames):  # links to folders show up as dirnames: record, don't enter
            if (base / d).is_symlink():
                dirnames.remove(d)
                names.append(d)
        for name in names:
            p = base / name
            if p.absolute() in skip:
                continue
            st = p.lstat()
            yield p.relative_to(root).as_posix(), p, st


def build_manifest(
    path: Path,
    *,
    workers: int = 0,
    exclude: tuple[Path, ...] = (),
    clock: Callable[[], float] = time.time,
) -> Manifest:
    """Hash `path` (a file or a directory) into a `Manifest`.

    Args:
        workers: hashing threads; 0 means one per CPU.
        exclude: files never listed (the manifest itself when it sits inside the tree).
    Raises:
        ManifestError: `path` is missing or holds something other than files, folders, links.
    """
    path = Path(path)
    skip = {Path(p).absolute() for p in exclude}
    try:
        st = path.lstat()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        kind, items = "directory", list(_walk(path, skip))
    elif stat.S_ISREG(st.st_mode):
        kind, items = "file", [(path.name, path, st)]
    else:
        raise ManifestError(f"{path} is not a regular file or a directory")
    links = {
        rel: FileEntry(rel, link=os.readlink(p)) for rel, p, s in items if stat.S_ISLNK(s.st_mode)
    }
    bad = [rel for rel, _, s in items if not (stat.S_ISREG(s.st_mode) or stat.S_ISLNK(s.st_mode))]
    if bad:
        raise ManifestError(
            f"{path} holds special files that cannot be signed: {', '.join(bad[:5])}"
        )
    files = [(rel, p) for rel, p, s in items if stat.S_ISREG(s.st_mode)]
    n = workers or os.cpu_count() or 1
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(n, len(files) or 1))) as pool:
            digests = list(pool.map(_hash_file, [p for _, p in files]))
    except OSError as exc:
        raise ManifestError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    entries = [
        FileEntry(rel, digest.size, digest.sha256)
        for (rel, _), digest in zip(files, digests, strict=True)
    ]
    entries.extend(links.values())
    return Manifest(
        kind, path.name, tuple(sorted(entries, key=lambda e: e.path)), clock(),
        default_binding(path),
    )


def sign_path(
    path: Path,
    key: SigningKey,
    out: Path | None = None,
    *,
    workers: int = 0,
    clock: Callable[[], float] = time.time,
    binding: str | None = None,
) -> Path:
    """Build and sign the manifest of `path`, bound to `binding` (default `default_binding`);
    write it to `out` (default beside it)."""
    out = Path(out) if out is not None else default_manifest_path(path)
    manifest = build_manifest(path, workers=workers, exclude=(out,), clock=clock)
    if binding is not None:
        manifest = dataclasses.replace(manifest, binding=binding)
    body = manifest.to_json()
    doc = {
        "format": FORMAT,
        "manifest": body,
        "key_id": key.key_id,
        "signature": base64.b64encode(key.sign(canonical_json(body))).decode(),
    }
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def load_signed(manifest_path: Path, verify_key: VerifyKey) -> Manifest:
    """Read a manifest file and check its signature; raises `BadSignature` or `ManifestError`."""
    try:
        doc = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        body, sig = doc["manifest"], base64.b64decode(doc["signature"], validate=True)
    except FileNotFoundError as exc:
        raise ManifestError(
            f"no manifest at {manifest_path}",
            tip="sign the artifact with `trainguard sign PATH`, or pass --manifest",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadSignature(f"manifest {manifest_path}") from exc
    verify_key.verify(sig, canonical_json(body), what=f"manifest {manifest_path}")
    return Manifest.from_json(body)


def verify_path(
    path: Path,
    verify_key: VerifyKey,
    manifest: Path | None = None,
    *,
    workers: int = 0,
    binding: str | None = None,
) -> Manifest:
    """Check the signature of `path`'s manifest and that it was made for `path` (its binding,
    default `default_binding(path)`), then re-hash `path` against it.

    Returns the signed manifest. Raises `BadSignature` (manifest not signed by `verify_key`),
    `ManifestMisplaced` (signed for another artifact, or format 1 that binds no place) or
    `ManifestMismatch` naming the missing, extra and changed files.
    """
    mpath = Path(manifest) if manifest is not None else default_manifest_path(path)
    signed = load_signed(mpath, verify_key)
    expected = binding if binding is not None else default_binding(path)
    if signed.binding is None:
        raise ManifestMisplaced(
            f"manifest {mpath} is of format 1, which does not bind the artifact's place, so a "
            "copy of it verifies at another artifact's path",
            tip=f"review {path}, then re-sign it with `trainguard sign {path}`",
        )
    if signed.binding != expected:
        raise ManifestMisplaced(
            f"manifest {mpath} was signed for {signed.binding!r}, not for {expected!r}: it "
            "belongs to another artifact (copied or moved in place of this one)",
            tip="do not use this artifact; restore the right one from a trusted copy, or "
            f"re-sign it after review with `trainguard sign {path}`",
        )
    if not Path(path).exists() and not Path(path).is_symlink():
        raise ManifestMismatch([e.path for e in signed.files], [], [], what=str(path))
    current = build_manifest(path, workers=workers, exclude=(mpath,))
    want = {e.path: e for e in signed.files}
    have = {e.path: e for e in current.files}
    for p, e in want.items():  # entries signed with another digest are recomputed with it
        if e.digest != SHA256 and p in have and have[p].link is None:
            try:
                size, hexd = file_digest(Path(path) / p if current.kind == "directory" else Path(path),
                                         e.digest)
            except (OSError, TrainguardError):  # unreadable or not a sealed stream: changed
                size, hexd = -1, ""
            have[p] = FileEntry(p, size, hexd, digest=e.digest)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    changed = sorted(p for p in set(want) & set(have) if want[p] != have[p])
    if current.kind != signed.kind:
        changed = sorted(set(changed) | {"."})
    if missing or extra or changed:
        raise ManifestMismatch(missing, extra, changed, what=str(path))
    return signed
