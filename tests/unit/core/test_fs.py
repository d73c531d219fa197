from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from trainguard.core.fs import (
    atomic_output,
    hash_fd,
    hash_file,
    read_private,
    sha256_file,
    write_private,
)
from trainguard.core.home import HomeError


def test_hash_file_matches_hashlib_and_counts_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**18 + 17)  # several of file_digest's buffers plus a tail
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    got = hash_file(path)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.size == len(data)
    assert sha256_file(str(path)) == got.sha256
    (tmp_path / "empty").write_bytes(b"")
    assert hash_file(tmp_path / "empty").size == 0


def test_hash_file_can_refuse_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"x")
    link = tmp_path / "l"
    link.symlink_to(target)
    assert hash_file(link).sha256 == hash_file(target).sha256
    with pytest.raises(OSError):
        hash_file(link, follow_symlinks=False)


def test_read_private_refuses_symlink_and_loose_mode(tmp_path: Path) -> None:
    target = tmp_path / "t"
    write_private(target, b"x")
    link = tmp_path / "l"
    link.symlink_to(target)
    with pytest.raises(HomeError):
        read_private(link)
    os.chmod(target, 0o644)
    with pytest.raises(HomeError, match="readable by others"):
        read_private(target)


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_hash_fd_hashes_the_open_file_from_its_start_and_leaves_it_open(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 10)  # a caller that already read part of it
        path.rename(tmp_path / "moved")  # the name no longer matters
        got = hash_fd(fd)
        assert got.sha256 == hashlib.sha256(b"abc" * 1000).hexdigest() and got.size == 3000
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
