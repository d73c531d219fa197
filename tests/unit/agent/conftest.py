"""Fixtures for agent tests: a private home with a node key, built directly (no CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey


def make_home(root: Path, *, node: str = "node-1") -> Home:
    home = Home(root)
    home.create_dirs()
    home.config_path.write_text(f'[node]\nname = "{node}"\n')
    home.config_path.chmod(0o600)
    SigningKey.generate().save(home.node_signing_key)
    return home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@pytest.fixture
def signer(home: Home) -> SigningKey:
    return SigningKey.load(home.node_signing_key)
