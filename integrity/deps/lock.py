"""Dependency lock and verify: what is installed, byte for byte, signed with the node key.

Lock format (version 1, canonical JSON, detached Ed25519 signature in ``<lock>.sig``)::

    {"version": 1, "created": float, "python": str, "prefix": str, "key_id": str,
     "distributions": {"<normalized name>": {"name", "version", "installer",
         "files": {"<path>": [sha256_hex, size]},       # hashed from the files themselves
         "record_mismatch": ["<path>", ...],            # RECORD already wrong at lock time
         "dirs": ["<dir>", ...]}},                      # package folders, for extra files
     "startup": {"<path>": sha256_hex}}                 # .pth, sitecustomize, usercustomize

Verification re-hashes in parallel (hashlib releases the GIL) and reports per distribution the
changed, missing and extra files, new or changed startup files, and added or removed
distributions. Unchanged files are skipped through a cache keyed by (inode, size, mtime_ns,
ctime_ns): ctime cannot be set back from user space, so a rewritten file always misses it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from trainguard.core.errors import IntegrityError
from trainguard.core.fs import write_private
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json
from trainguard.integrity.deps.inventory import (
    extra_files,
    hash_files,
    inventory,
    package_dirs,
    search_roots,
    startup_files,
)
from trainguard.integrity.deps.verify import DistDrift, VerifyResult, verify_lock

__all__ = [
    "DepsLockError",
    "DistDrift",
    "LOCK_VERSION",
    "VerifyResult",
    "build_lock",
    "default_lock_path",
    "hash_files",
    "read_lock",
    "requirement_warnings",
    "verify_lock",
    "write_lock",
]

log = logging.getLogger(__name__)
LOCK_VERSION = 1


class DepsLockError(IntegrityError):
    """The lock is missing, malformed or its signature does not verify (exit 1)."""


def default_lock_path(state_dir: Path) -> Path:
    return state_dir / "deps.lock.json"


# -- lock ------------------------------------------------------------------------------------


def build_lock(
    *, paths: Sequence[str] | None = None, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Inventory and hash the environment on `paths` (default: sys.path).

    Files found in a distribution's folders but not in its RECORD (bytecode written later, a
    planted module) are locked too, listed under ``unrecorded``, so verify reports only change.
    """
    search = list(paths) if paths is not None else list(sys.path)
    dists = inventory(search)
    startup = startup_files(search)
    roots = search_roots(search)
    dirs = {key: package_dirs(d.files, roots) for key, d in dists.items()}
    owned = {p for d in dists.values() for p in d.files}
    all_dirs = {x for v in dirs.values() for x in v}
    unrecorded: dict[str, list[str]] = {}
    for key in sorted(dists):
        extra = [p for p in extra_files(dirs[key], owned, all_dirs) if os.path.isfile(p)]
        unrecorded[key] = extra
        owned.update(extra)
    hashes = hash_files(sorted(owned | set(startup)))
    out: dict[str, Any] = {}
    for key, d in sorted(dists.items()):
        files, mismatch = {}, []
        for path, recorded in sorted(d.files.items()):
            got = hashes.get(path)
            if got is None:
                mismatch.append(path)  # listed in RECORD but absent at lock time
                continue
            files[path] = [got[0], got[1]]
            if recorded is not None and recorded != got[0]:
                mismatch.append(path)
        for path in unrecorded[key]:
            if (got := hashes.get(path)) is not None:
                files[path] = [got[0], got[1]]
        out[key] = {
            "name": d.name,
            "version": d.version,
            "installer": d.installer,
            "files": files,
            "record_mismatch": mismatch,
            "unrecorded": unrecorded[key],
            "dirs": dirs[key],
        }
    return {
        "version": LOCK_VERSION,
        "created": clock(),
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
        "paths": search,
        "distributions": out,
        "startup": {p: h[0] for p in startup if (h := hashes.get(p)) is not None},
    }


def write_lock(lock: dict[str, Any], path: Path, key: SigningKey) -> Path:
    """Write the lock and its detached signature (`<path>.sig`)."""
    lock = dict(lock, key_id=key.key_id)
    body = canonical_json(lock)
    sig = {
        "key_id": key.key_id,
        "alg": "ed25519",
        "signature": base64.b64encode(key.sign(body)).decode(),
    }
    write_private(path, body + b"\n", mode=0o644)
    write_private(_sig_path(path), json.dumps(sig).encode() + b"\n", mode=0o644)
    return path


def _sig_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def read_lock(path: Path, verify_key: VerifyKey) -> dict[str, Any]:
    """Load a lock after checking its detached signature.

    Raises:
        DepsLockError: missing, unreadable or unsigned/badly signed lock.
    """
    try:
        body = path.read_bytes()
        sig = json.loads(_sig_path(path).read_bytes())
        signature = base64.b64decode(sig["signature"], validate=True)
    except FileNotFoundError as exc:
        raise DepsLockError(
            f"no dependency lock or signature at {path}",
            tip="create one with `trainguard deps lock` on a known-good environment",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DepsLockError(
            f"dependency lock signature at {_sig_path(path)} is unreadable"
        ) from exc
    from trainguard.crypto.errors import BadSignature

    try:
        verify_key.verify(signature, body.rstrip(b"\n"), what=f"dependency lock {path}")
    except BadSignature as exc:
        raise DepsLockError(
            f"dependency lock {path} failed signature verification; refusing to use it",
            tip="the lock or its .sig was modified; re-create it with `trainguard deps lock` "
            "after checking the environment",
        ) from exc
    lock: dict[str, Any] = json.loads(body)
    if lock.get("version") != LOCK_VERSION:
        raise DepsLockError(f"unsupported lock version {lock.get('version')!r}")
    return lock


# -- requirements ----------------------------------------------------------------------------


def requirement_warnings(files: Iterable[Path]) -> list[dict[str, Any]]:
    """Requirement lines without `--hash` pins (pip then accepts any artifact it is served)."""
    warnings: list[dict[str, Any]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        logical = re.sub(r"\\\n", " ", text).splitlines()
        unpinned = [
            line.split("#", 1)[0].strip()
            for line in logical
            if line.strip() and not line.lstrip().startswith(("#", "-")) and "--hash=" not in line
        ]
        if unpinned:
            warnings.append({"file": str(path), "unpinned": unpinned})
    return warnings
