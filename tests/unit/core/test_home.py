from __future__ import annotations

import os
import stat
from pathlib import Path

from trainguard.core.fs import write_private
from trainguard.core.home import Home


def test_resolve_precedence(tmp_path: Path) -> None:
    assert Home.resolve(tmp_path / "a", {"TRAINGUARD_HOME": "/x"}).root == tmp_path / "a"
    assert Home.resolve(None, {"TRAINGUARD_HOME": str(tmp_path / "b")}).root == tmp_path / "b"


def test_resolve_records_the_systemd_credentials_folder(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "h", {"CREDENTIALS_DIRECTORY": "/run/credentials/tg.service"})
    assert home.credentials_dir == Path("/run/credentials/tg.service")
    assert Home.resolve(tmp_path / "h", {}).credentials_dir is None
    assert home == Home(tmp_path / "h")  # the same home, whoever holds its keys


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
