"""Helpers for the trainer's integration tests (not collected: no test_ prefix)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from trainguard.core.audit import NullSink
from trainguard.core.home import Home

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "trainer" / "examples" / "digits.toml"


def make_home(root: Path) -> Home:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey

    home = Home(root)
    home.create_dirs()
    home.config_path.write_text("")
    Keyring.create(home.keys_dir)
    key = SigningKey.generate()
    key.save(home.node_signing_key)
    if not home.node_verify_key.exists():
        key.public_key().save(home.node_verify_key)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(home: Home, overrides: list[str], **options: Any):
    from trainguard.crypto.keyring import Keyring
    from trainguard.trainer.launcher import LaunchOptions, prepare_job

    keyring = Keyring.open(home.keys_dir)
    opts = LaunchOptions(**{"nproc": 3, "max_restarts": 1, **options})
    return prepare_job(home, DIGITS, overrides, opts, lambda j: keyring.derive_key("job:" + j))


def run_job(home: Home, overrides: list[str], **options: Any) -> tuple[dict[str, Any], NullSink]:
    """Launch through the library (the CLI adds only the preflight, tested separately)."""
    from trainguard.trainer.launcher import launch

    plan = prepare(home, overrides, **options)
    sink = NullSink()
    reported: list[tuple[str, str]] = []
    result = launch(plan, sink, lambda k, s, e: reported.append((k, s)), timeout=240)
    result["reported"] = reported
    return result, sink
