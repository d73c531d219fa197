"""Inventory of an installed Python environment for the dependency lock: distributions from
their RECORD files, the startup files that run at every interpreter start, and parallel sha256.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

from trainguard.core.fs import hash_file

_STARTUP_NAMES = ("sitecustomize.py", "usercustomize.py")
StatKey = tuple[int, int, int, int]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256_or_none(path: str) -> tuple[str, int] | None:
    try:
        digest = hash_file(path)
    except OSError:
        return None
    return digest.sha256, digest.size


def hash_files(
    paths: Sequence[str], workers: int | None = None
) -> dict[str, tuple[str, int] | None]:
    """sha256 and size of each path (None when unreadable), hashed in parallel threads."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(_sha256_or_none, paths, chunksize=64), strict=True))


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Dist:
    name: str
    version: str
    installer: str
    files: dict[str, str | None] = field(default_factory=dict)  # path -> RECORD sha256 (hex)


def record_hash(value: str | None) -> str | None:
    if not value or not value.startswith("sha256="):
        return None
    raw = value.split("=", 1)[1]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    except ValueError:
        return None


def inventory(paths: Sequence[str]) -> dict[str, Dist]:
    dists: dict[str, Dist] = {}
    for dist in metadata.distributions(path=list(paths)):
        name = dist.metadata["Name"] or ""
        key = normalize(name)
        if not key or key in dists:
            continue  # the first one on sys.path is what imports see
        installer = (dist.read_text("INSTALLER") or "").strip()
        entry = Dist(name, dist.version, installer)
        entry.files = dist_files(dist)
        dists[key] = entry
    return dists


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    dist: metadata.Distribution


def headers(dist: metadata.Distribution) -> tuple[str, str]:
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


def installed(paths: Sequence[str]) -> dict[str, Installed]:
    found: dict[str, Installed] = {}
    for dist in metadata.distributions(path=list(paths)):
        name, version = headers(dist)
        key = normalize(name)
        if key and key not in found:
            found[key] = Installed(name, version, dist)
    return found


def dist_files(dist: metadata.Distribution) -> dict[str, str | None]:
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
            files[path] = record_hash(row[1] if len(row) > 1 else None)
    return files


def startup_files(paths: Iterable[str]) -> list[str]:
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


def package_dirs(files: Iterable[str], roots: set[str]) -> list[str]:
    """Folders holding a distribution's files, except shared roots (site-packages, bin)."""
    dirs = {os.path.dirname(p) for p in files}
    return sorted(d for d in dirs if d not in roots and not d.endswith("/bin"))


def search_roots(paths: Sequence[str]) -> set[str]:
    return {os.path.abspath(p) for p in paths} | {os.path.abspath(sys.prefix)}


def extra_files(dirs: Iterable[str], known: set[str], locked_dirs: set[str]) -> list[str]:
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
