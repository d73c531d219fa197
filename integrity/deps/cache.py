"""The verified-hash cache of `deps verify`: path -> (inode, size, mtime_ns, ctime_ns, sha256).

A hit needs all four stat fields to match; writing a file always moves its ctime, which user
space cannot set back, so a modified file always misses. The cache lives in the home's state
folder (0700) as one JSON file and is rewritten atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trainguard.core.fs import write_private

__all__ = ["HashCache"]

log = logging.getLogger(__name__)
_VERSION = 1


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list[object]] = {}
        self._dirty = False
        try:
            data = json.loads(path.read_bytes())
            if data.get("version") == _VERSION and isinstance(data.get("entries"), dict):
                self._entries = data["entries"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable hash cache %s: %s", path, exc)

    def get(self, path: str, key: tuple[int, int, int, int]) -> str | None:
        entry = self._entries.get(path)
        if entry is not None and len(entry) == 5 and tuple(entry[:4]) == key:
            return str(entry[4])
        return None

    def put(self, path: str, key: tuple[int, int, int, int], sha256: str) -> None:
        self._entries[path] = [*key, sha256]
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        body = json.dumps({"version": _VERSION, "entries": self._entries}, separators=(",", ":"))
        write_private(self.path, body.encode())
        self._dirty = False
