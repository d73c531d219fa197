"""File helpers used by every area: atomic writes, private (key) files, the hash of a file.

- `write_private` writes bytes atomically (temporary file in the same folder, fsync, rename,
  fsync of the folder) with a private mode, so a reader never sees a partial file and a crash
  leaves the old or the new content.
- `atomic_output` is the same guarantee for writers that need a path (``torch.save``, a
  renderer): the file appears only if the block succeeds.
- `read_private` reads a key file without following symlinks and refuses one readable by
  group or others.
- `hash_file` / `hash_fd` / `sha256_file` are the one way to hash a file
  (``hashlib.file_digest``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.home import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, RESTORE_KEY_TIP, HomeError

__all__ = [
    "FileHash",
    "atomic_output",
    "hash_fd",
    "hash_file",
    "read_private",
    "sha256_file",
    "write_private",
]


@dataclass(frozen=True)
class FileHash:
    """The SHA-256 (hex) of a file's content and the number of bytes hashed."""

    sha256: str
    size: int


def hash_file(path: Path | str, *, follow_symlinks: bool = True) -> FileHash:
    """SHA-256 and size of the file at `path`, read once.

    Args:
        follow_symlinks: False opens with O_NOFOLLOW, so a symlink raises OSError (ELOOP)
            instead of hashing whatever it points at.
    Raises:
        OSError: the file cannot be opened or read.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int) -> FileHash:
    """SHA-256 and size of the whole file open as `fd` (read from its start; `fd` stays open).

    For callers that must hash exactly the file they opened (no second lookup by name).
    """
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
        digest = hashlib.file_digest(f, "sha256")
        return FileHash(digest.hexdigest(), f.tell())


def sha256_file(path: Path | str) -> str:
    """The SHA-256 (hex) of the file at `path` (follows symlinks; OSError if unreadable)."""
    return hash_file(path).sha256


def write_private(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` atomically: a 0600 temporary file in the same folder, fsync, rename.

    A reader never sees a partial file, and a crash leaves either the old or the new content.
    """
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def read_private(path: Path) -> bytes:
    """Read a key file without following symlinks; refuses group/other-readable files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        # `trainguard init` would refuse an existing home (and --force starts a new one whose
        # keys cannot open what the old ones sealed), so the fix is the backup.
        raise HomeError(f"missing key file {path}", tip=RESTORE_KEY_TIP) from exc
    except OSError as exc:
        tip = (
            "replace the symlink with the key file itself (mode 600): key files are never "
            "followed through links"
            if exc.errno == errno.ELOOP
            else RESTORE_KEY_TIP
        )
        raise HomeError(f"cannot open key file {path} safely: {exc.strerror}", tip=tip) from exc
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise HomeError(
                f"key file {path} has mode {mode:04o}, readable by others",
                tip=f"chmod 600 {path}",
            )
        return f.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it into place only if the block succeeds.

    On any exception the temporary file is removed, so no partial output is ever left behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    os.close(fd)
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
