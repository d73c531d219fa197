"""Fixtures of every unit-test folder: a home built directly (no CLI) and its node key."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_home
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@pytest.fixture
def signer(home: Home) -> SigningKey:
    return SigningKey.load(home.node_signing_key)
