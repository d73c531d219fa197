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
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from trainguard.agent.deps_cache import HashCache
from trainguard.core.errors import IntegrityError
from trainguard.core.home import write_private
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json

__all__ = [
    "DepsDrift",
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
CHUNK = 1 << 20
_STARTUP_NAMES = ("sitecustomize.py", "usercustomize.py")
StatKey = tuple[int, int, int, int]


class DepsLockError(IntegrityError):
    """The lock is missing, malformed or its signature does not verify (exit 1)."""


class DepsDrift(IntegrityError):
    """The environment no longer matches the lock (exit 1)."""


def default_lock_path(state_dir: Path) -> Path:
    return state_dir / "deps.lock.json"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- hashing ---------------------------------------------------------------------------------


def _sha256(path: str) -> tuple[str, int] | None:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(CHUNK):
                h.update(block)
                size += len(block)
    except OSError:
        return None
    return h.hexdigest(), size


def hash_files(
    paths: Sequence[str], workers: int | None = None
) -> dict[str, tuple[str, int] | None]:
    """sha256 and size of each path (None when unreadable), hashed in parallel threads."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(_sha256, paths, chunksize=64), strict=True))


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- inventory -------------------------------------------------------------------------------


@dataclass
class _Dist:
    name: str
    version: str
    installer: str
    files: dict[str, str | None] = field(default_factory=dict)  # path -> RECORD sha256 (hex)


def _record_hash(value: str | None) -> str | None:
    if not value or not value.startswith("sha256="):
        return None
    raw = value.split("=", 1)[1]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    except ValueError:
        return None


def _inventory(paths: Sequence[str]) -> dict[str, _Dist]:
    dists: dict[str, _Dist] = {}
    for dist in metadata.distributions(path=list(paths)):
        name = dist.metadata["Name"] or ""
        key = _normalize(name)
        if not key or key in dists:
            continue  # the first one on sys.path is what imports see
        installer = (dist.read_text("INSTALLER") or "").strip()
        entry = _Dist(name, dist.version, installer)
        entry.files = _dist_files(dist)
        dists[key] = entry
    return dists


@dataclass(frozen=True)
class _Installed:
    name: str
    version: str
    dist: metadata.Distribution


def _headers(dist: metadata.Distribution) -> tuple[str, str]:
    """Name and Version from the metadata headers, without the email parser (verify is hot)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = ""
    for line in text.splitlines():
        if not line:
            break
        if line.startswith("Name:") and not name:
            name = line[5:].strip()
        elif line.startswith("Version:") and not version:
            version = line[8:].strip()
    return name, version


def _installed(paths: Sequence[str]) -> dict[str, _Installed]:
    found: dict[str, _Installed] = {}
    for dist in metadata.distributions(path=list(paths)):
        name, version = _headers(dist)
        key = _normalize(name)
        if key and key not in found:
            found[key] = _Installed(name, version, dist)
    return found


def _dist_files(dist: metadata.Distribution) -> dict[str, str | None]:
    """path -> RECORD sha256; RECORD parsed directly (importlib's PackagePath objects cost
    more than hashing a cached environment)."""
    record = dist.read_text("RECORD")
    if record is None:  # egg-info and friends: importlib's own fallbacks, without hashes
        return {os.path.abspath(str(dist.locate_file(f))): None for f in dist.files or []}
    base = str(dist.locate_file(""))
    files: dict[str, str | None] = {}
    for row in csv.reader(record.splitlines()):
        if row:
            path = os.path.normpath(os.path.join(base, row[0]))
            files[path] = _record_hash(row[1] if len(row) > 1 else None)
    return files


def _startup_files(paths: Iterable[str]) -> list[str]:
    """.pth files and sitecustomize/usercustomize anywhere on the path: code run at startup."""
    found: list[str] = []
    for entry in paths:
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            if name.endswith(".pth") or name in _STARTUP_NAMES:
                found.append(os.path.join(os.path.abspath(entry), name))
        for name in ("sitecustomize", "usercustomize"):
            init = os.path.join(entry, name, "__init__.py")
            if os.path.isfile(init):
                found.append(os.path.abspath(init))
    return sorted(set(found))


def _package_dirs(files: Iterable[str], roots: set[str]) -> list[str]:
    """Folders holding a distribution's files, except shared roots (site-packages, bin)."""
    dirs = {os.path.dirname(p) for p in files}
    return sorted(d for d in dirs if d not in roots and not d.endswith("/bin"))


def _roots(paths: Sequence[str]) -> set[str]:
    return {os.path.abspath(p) for p in paths} | {os.path.abspath(sys.prefix)}


# -- lock ------------------------------------------------------------------------------------


def build_lock(
    *, paths: Sequence[str] | None = None, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Inventory and hash the environment on `paths` (default: sys.path).

    Files found in a distribution's folders but not in its RECORD (bytecode written later, a
    planted module) are locked too, listed under ``unrecorded``, so verify reports only change.
    """
    search = list(paths) if paths is not None else list(sys.path)
    dists = _inventory(search)
    startup = _startup_files(search)
    roots = _roots(search)
    dirs = {key: _package_dirs(d.files, roots) for key, d in dists.items()}
    owned = {p for d in dists.values() for p in d.files}
    all_dirs = {x for v in dirs.values() for x in v}
    unrecorded: dict[str, list[str]] = {}
    for key in sorted(dists):
        extra = [p for p in _extra_files(dirs[key], owned, all_dirs) if os.path.isfile(p)]
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


# -- verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistDrift:
    name: str
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    version: tuple[str, str] | None = None  # (locked, installed) when it changed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": list(self.changed),
            "missing": list(self.missing),
            "extra": list(self.extra),
            "version": list(self.version) if self.version else None,
        }


@dataclass(frozen=True)
class VerifyResult:
    distributions: tuple[DistDrift, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    startup_new: tuple[str, ...]
    startup_changed: tuple[str, ...]
    startup_missing: tuple[str, ...]
    files_checked: int
    files_hashed: int

    @property
    def drift(self) -> bool:
        return bool(
            self.distributions or self.added or self.removed or self.startup_new
            or self.startup_changed or self.startup_missing
        )  # fmt: skip

    def drifted_files(self) -> list[str]:
        out = [p for d in self.distributions for p in (*d.changed, *d.missing, *d.extra)]
        return out + list(self.startup_new + self.startup_changed + self.startup_missing)

    def to_json(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "distributions": [d.to_json() for d in self.distributions],
            "added": list(self.added),
            "removed": list(self.removed),
            "startup": {
                "new": list(self.startup_new),
                "changed": list(self.startup_changed),
                "missing": list(self.startup_missing),
            },
            "files_checked": self.files_checked,
            "files_hashed": self.files_hashed,
        }


def _stat_chunk(paths: Sequence[str]) -> list[StatKey | None]:
    out: list[StatKey | None] = []
    for p in paths:
        try:
            out.append(_stat_key(os.stat(p)))
        except OSError:
            out.append(None)
    return out


def _stat_all(paths: Sequence[str], workers: int = 4) -> list[StatKey | None]:
    """stat() every path on a few threads (the syscall releases the GIL)."""
    size = max(1, -(-len(paths) // workers))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [k for part in pool.map(_stat_chunk, chunks) for k in part]


def _current_hashes(paths: list[str], cache: HashCache | None) -> tuple[dict[str, str | None], int]:
    """sha256 of each path (None if missing), from the cache where the stat key still matches."""
    result: dict[str, str | None] = {}
    todo: list[str] = []
    keys: dict[str, StatKey] = {}
    for p, key in zip(paths, _stat_all(paths), strict=True):
        if key is None:
            result[p] = None
            continue
        keys[p] = key
        cached = cache.get(p, key) if cache is not None else None
        if cached is None:
            todo.append(p)
        else:
            result[p] = cached
    for p, got in hash_files(todo).items():
        result[p] = got[0] if got else None
        if got and cache is not None:
            cache.put(p, keys[p], got[0])
    return result, len(todo)


def _extra_files(dirs: Iterable[str], known: set[str], locked_dirs: set[str]) -> list[str]:
    """Files in a package folder that no distribution owns, including inside new folders."""
    extra: list[str] = []
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.path not in locked_dirs and e.name != "__pycache__":
                    for root, _dirs, names in os.walk(e.path):
                        extra.extend(os.path.join(root, n) for n in names)
                elif e.name == "__pycache__" and e.path not in locked_dirs:
                    extra.extend(x.path for x in os.scandir(e.path))
            elif e.path not in known:
                extra.append(e.path)
    return sorted(set(extra) - known)


def verify_lock(
    lock: dict[str, Any], *, paths: Sequence[str] | None = None, cache: HashCache | None = None
) -> VerifyResult:
    """Compare the environment with `lock`; `cache=None` re-hashes every file."""
    search = list(paths) if paths is not None else list(lock.get("paths") or sys.path)
    locked: dict[str, Any] = lock["distributions"]
    current = _installed(search)
    startup_now = _startup_files(search)
    wanted = sorted(
        {p for d in locked.values() for p in d["files"]} | set(startup_now) | set(lock["startup"])
    )
    hashes, hashed = _current_hashes(wanted, cache)
    # RECORD files are themselves locked, so the locked lists stand for unchanged distributions;
    # only a new distribution's RECORD needs reading.
    owned = {p for d in locked.values() for p in d["files"]}
    for key in set(current) - set(locked):
        owned.update(_dist_files(current[key].dist))
    locked_dirs = {x for d in locked.values() for x in d["dirs"]}
    drifts = []
    for key, entry in sorted(locked.items()):
        if key not in current:
            continue
        changed = tuple(
            p for p, (h, _s) in entry["files"].items() if hashes.get(p) not in (None, h)
        )
        missing = tuple(p for p in entry["files"] if hashes.get(p) is None)
        extra = tuple(_extra_files(entry["dirs"], owned, locked_dirs))
        version = None
        if current[key].version != entry["version"]:
            version = (entry["version"], current[key].version)
        if changed or missing or extra or version:
            drifts.append(DistDrift(entry["name"], changed, missing, extra, version))
    locked_startup: dict[str, str] = lock["startup"]
    if cache is not None:
        cache.save()
    return VerifyResult(
        distributions=tuple(drifts),
        added=tuple(sorted(current[k].name for k in set(current) - set(locked))),
        removed=tuple(sorted(locked[k]["name"] for k in set(locked) - set(current))),
        startup_new=tuple(p for p in startup_now if p not in locked_startup),
        startup_changed=tuple(
            p for p, h in sorted(locked_startup.items()) if hashes.get(p) not in (None, h)
        ),
        startup_missing=tuple(p for p in sorted(locked_startup) if hashes.get(p) is None),
        files_checked=len(wanted),
        files_hashed=hashed,
    )
