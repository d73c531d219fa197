"""The `quarantine` action: move one verified unsafe artifact aside, race-free.

The path in an incident's evidence is only a name to look at. The file is opened from a
configured artifact folder component by component with ``O_NOFOLLOW`` (a symlink anywhere on the
way is refused, so is ``..``), must be a regular file with a single link (a hard link to a file
outside the folder would otherwise be made mode 000), and is scanned through that open file
descriptor. It is then renamed into ``<home>/quarantine/`` relative to the same folder
descriptors, and the moved inode is compared with the scanned one: if the name was swapped in
between, the other file is put back and the action refuses. Mode 000 is set on the scanned inode
through its descriptor, never by name.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Any

from trainguard.core.fs import hash_fd
from trainguard.evidence.response.verify import ArtifactDir, LocalVerifier

__all__ = ["QuarantineRefused", "quarantine_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_NAME = 200


class QuarantineRefused(Exception):
    """The file is not one this agent may move; the message says why (it starts "refused")."""


def _folder_of(path: PurePosixPath, folders: list[ArtifactDir]) -> tuple[Path, tuple[str, ...]]:
    for folder in folders:
        for name in (folder.configured, PurePosixPath(folder.resolved)):
            try:
                rel = path.relative_to(name)
            except ValueError:
                continue
            if rel.parts:
                return folder.resolved, rel.parts
    raise QuarantineRefused("refused: not inside a configured artifact folder")


def _open_below(folder: Path, parts: tuple[str, ...], stack: ExitStack) -> tuple[int, int, str]:
    """(parent dir fd, file fd, file name), opened without following any symlink."""
    try:
        cur = os.open(folder, _DIR_FLAGS)  # resolved at load: a symlink now is a swap
    except OSError as exc:
        raise QuarantineRefused(f"refused: artifact folder unusable: {exc.strerror}") from exc
    stack.callback(os.close, cur)
    for part in parts[:-1]:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise QuarantineRefused("refused: a symlink or non-folder on the path") from exc
            raise QuarantineRefused(f"refused: cannot open the path: {exc.strerror}") from exc
        stack.callback(os.close, nxt)
        cur = nxt
    try:
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=cur)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise QuarantineRefused("refused: the file is a symlink") from exc
        raise QuarantineRefused(f"refused: cannot open: {exc.strerror}") from exc
    stack.callback(os.close, fd)
    return cur, fd, parts[-1]


def quarantine_file(
    raw: object, incident_id: str, verifier: LocalVerifier, quarantine_dir: Path, home_root: Path
) -> dict[str, Any]:
    """Move the verified unsafe file named `raw` into `quarantine_dir` (mode 000).

    Returns the audit data (path, sha256, size, quarantined_as).

    Raises:
        QuarantineRefused: anything that is not a verified unsafe artifact, with the reason.
    """
    if not isinstance(raw, str) or not raw or "\0" in raw or not raw.startswith("/"):
        raise QuarantineRefused("refused: evidence path is not an absolute path")
    path = PurePosixPath(raw)
    if ".." in path.parts or "." in raw.split("/"):
        raise QuarantineRefused("refused: '..' or '.' in the path")
    home = home_root.resolve()
    folders = [f for f in verifier.artifact_dirs() if not f.resolved.is_relative_to(home)]
    folder, parts = _folder_of(path, folders)
    with ExitStack() as stack:
        parent, fd, name = _open_below(folder, parts, stack)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise QuarantineRefused("refused: not a regular file")
        if st.st_nlink != 1:
            raise QuarantineRefused("refused: the file has other hard links")
        with os.fdopen(os.dup(fd), "rb") as f:
            verdict = verifier.scan_verdict(f, st.st_size)
        if verdict != "unsafe":
            raise QuarantineRefused(f"refused: this agent's scan calls it {verdict}")
        digest = hash_fd(fd).sha256
        quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        qfd = os.open(quarantine_dir, _DIR_FLAGS)
        stack.callback(os.close, qfd)
        dst = f"{incident_id}-{name}"[:_MAX_NAME]
        _move(parent, name, qfd, dst, fd, st)
        os.fchmod(fd, 0)
    return {
        "path": raw,
        "sha256": digest,
        "size": st.st_size,
        "quarantined_as": str(quarantine_dir / dst),
    }


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _move(parent: int, name: str, qfd: int, dst: str, fd: int, scanned: os.stat_result) -> None:
    if not _same(os.stat(name, dir_fd=parent, follow_symlinks=False), scanned):
        raise QuarantineRefused("refused: the file changed while it was scanned")
    try:
        os.rename(name, dst, src_dir_fd=parent, dst_dir_fd=qfd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise QuarantineRefused(f"refused: cannot move: {exc.strerror}") from exc
        _copy_across(parent, name, qfd, dst, fd, scanned)
        return
    moved = os.stat(dst, dir_fd=qfd, follow_symlinks=False)
    if not _same(moved, scanned):  # swapped between the check and the rename: put it back
        try:
            os.link(dst, name, src_dir_fd=qfd, dst_dir_fd=parent, follow_symlinks=False)
            os.unlink(dst, dir_fd=qfd)
        except OSError:
            pass  # the name was taken again meanwhile: the stranger stays in quarantine, audited
        raise QuarantineRefused("refused: the file was replaced during the move")


def _copy_across(
    parent: int, name: str, qfd: int, dst: str, fd: int, scanned: os.stat_result
) -> None:
    """The quarantine is on another file system: copy the scanned inode, then unlink its name
    if it still names that inode."""
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o000, dir_fd=qfd)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 20):
            os.write(out, chunk)
        os.fsync(out)
    finally:
        os.close(out)
    if not _same(os.stat(name, dir_fd=parent, follow_symlinks=False), scanned):
        os.unlink(dst, dir_fd=qfd)
        raise QuarantineRefused("refused: the file was replaced during the copy")
    os.unlink(name, dir_fd=parent)
