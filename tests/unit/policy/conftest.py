"""Fixtures for the policy area: a bootstrapped home, a fake clock, in-memory audit events."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.policy_env import Env, FakeClock
from trainguard.core.home import Home
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.sink import NullSink
from trainguard.policy.access import AccessControl
from trainguard.policy.bootstrap import bootstrap_policy


@pytest.fixture
def env(tmp_path: Path) -> Env:
    home = Home(tmp_path / "home")
    home.create_dirs()
    home.config_path.write_text("")
    clock = FakeClock()
    keyring = Keyring.create(home.keys_dir, clock=clock)
    key = SigningKey.generate()
    key.save(home.node_signing_key)
    audit = NullSink()
    info = bootstrap_policy(home, keyring, key, "root", audit, clock=clock)
    return Env(home, keyring, key, clock, audit, info["otpauth_uri"], tmp_path)


@pytest.fixture
def admin(env: Env) -> AccessControl:
    """An AccessControl with the admin `root` logged in (step-up fresh)."""
    ac = env.ac()
    ac.login("root", env.fresh_code(env.admin_uri))
    return ac
