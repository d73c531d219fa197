"""`deps verify`: compare the environment with a signed lock, per distribution and startup file.

Unchanged files are skipped through `HashCache`, keyed by (inode, size, mtime_ns, ctime_ns).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trainguard.integrity.deps.cache import HashCache
from trainguard.integrity.deps.inventory import (
    StatKey,
    dist_files,
    extra_files,
    hash_files,
    installed,
    startup_files,
    stat_key,
)

__all__ = ["DistDrift", "VerifyResult", "verify_lock"]


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
            out.append(stat_key(os.stat(p)))
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


def verify_lock(
    lock: dict[str, Any], *, paths: Sequence[str] | None = None, cache: HashCache | None = None
) -> VerifyResult:
    """Compare the environment with `lock`; `cache=None` re-hashes every file."""
    search = list(paths) if paths is not None else list(lock.get("paths") or sys.path)
    locked: dict[str, Any] = lock["distributions"]
    current = installed(search)
    startup_now = startup_files(search)
    wanted = sorted(
        {p for d in locked.values() for p in d["files"]} | set(startup_now) | set(lock["startup"])
    )
    hashes, hashed = _current_hashes(wanted, cache)
    # RECORD files are themselves locked, so the locked lists stand for unchanged distributions;
    # only a new distribution's RECORD needs reading.
    owned = {p for d in locked.values() for p in d["files"]}
    for key in set(current) - set(locked):
        owned.update(dist_files(current[key].dist))
    locked_dirs = {x for d in locked.values() for x in d["dirs"]}
    drifts = []
    for key, entry in sorted(locked.items()):
        if key not in current:
            continue
        changed = tuple(
            p for p, (h, _s) in entry["files"].items() if hashes.get(p) not in (None, h)
        )
        missing = tuple(p for p in entry["files"] if hashes.get(p) is None)
        extra = tuple(extra_files(entry["dirs"], owned, locked_dirs))
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
