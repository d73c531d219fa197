from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from trainguard.core.home import Home, HomeError, atomic_output, read_private, write_private


def test_resolve_precedence(tmp_path: Path) -> None:
    assert Home.resolve(tmp_path / "a", {"TRAINGUARD_HOME": "/x"}).root == tmp_path / "a"
    assert Home.resolve(None, {"TRAINGUARD_HOME": str(tmp_path / "b")}).root == tmp_path / "b"


def test_create_dirs_private_and_check_modes(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.create_dirs()
    assert home.check_modes() == []
    for d in home.private_dirs():
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    write_private(home.keys_dir / "k", b"secret")
    assert stat.S_IMODE((home.keys_dir / "k").stat().st_mode) == 0o600
    os.chmod(home.keys_dir / "k", 0o644)
    os.chmod(home.state_dir, 0o755)
    problems = {p.path for p in home.check_modes()}
    assert problems == {home.keys_dir / "k", home.state_dir}


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
