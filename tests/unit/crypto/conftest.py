"""Fixtures of the crypto tests: a keyring and a home built directly (no `trainguard init`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


def make_home(root: Path) -> Home:
    home = Home(root)
    home.create_dirs()
    home.config_path.write_text("")
    Keyring.create(home.keys_dir)
    SigningKey.generate().save(home.node_signing_key)
    return home
