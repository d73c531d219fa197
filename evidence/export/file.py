"""A JSON-lines file that rotates by size: ``PATH`` is written, ``PATH.1`` ... ``PATH.<keep>``
are the older ones (``.1`` the newest), and the oldest beyond `keep` is deleted.

Each record is appended as one line with a single ``write`` on an ``O_APPEND`` descriptor and
flushed to disk (``fsync``) before `send` returns, so a record the queue marks delivered is on
disk; a full or read-only disk raises `ExportUnavailable` and the record stays queued. Files are
created 0600 (audit entries can name users and paths).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from trainguard.evidence.audit_chain import AuditEntry
from trainguard.evidence.export.interface import Exporter, ExportUnavailable

__all__ = ["RotatingFileExporter"]


class RotatingFileExporter(Exporter):
    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be >= 1 and keep >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.name = f"file:{path}"
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def _rotate(self) -> None:
        self.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def frame(self, record: bytes, entry: AuditEntry) -> bytes:
        return record + b"\n"

    def send(self, payload: bytes) -> None:
        line = payload
        try:
            fd = self._open()
            size = os.fstat(fd).st_size
            if size and size + len(line) > self.max_bytes:
                self._rotate()
                fd = self._open()
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            self.close()
            raise ExportUnavailable(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
