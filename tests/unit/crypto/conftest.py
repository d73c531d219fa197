"""Fixtures of the crypto tests: a keyring and a home built directly (no `trainguard init`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainguard.crypto.keyring import Keyring


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys")


