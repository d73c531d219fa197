"""Fixtures for the trainer's unit tests: a minimal home with a keyring and a node key."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.core.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey

    h = Home(tmp_path / "home")
    h.create_dirs()
    h.config_path.write_text("")
    Keyring.create(h.keys_dir)
    key = SigningKey.generate()
    key.save(h.node_signing_key)
    if not h.node_verify_key.exists():
        key.public_key().save(h.node_verify_key)
    return h
