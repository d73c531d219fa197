"""Helpers for the trainer's integration tests and benchmarks: prepare and run real jobs."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from trainguard.core.home import Home
from trainguard.evidence.sink import NullSink

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "trainer" / "examples" / "digits.toml"
EXAMPLES = REPO / "trainer" / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(home: Home, overrides: list[str], *, script: Path | None = None,
            script_args: list[str] | None = None, checkpoint_dir: Path | None = None,
            **options: Any):
    from trainguard.crypto.keyring import open_keyring
    from trainguard.trainer.launcher import LaunchOptions, prepare_job

    keyring = open_keyring(home)
    opts = LaunchOptions(**{"nproc": 3, "max_restarts": 1, **options})
    return prepare_job(home, None if script else DIGITS, overrides, opts,
                       lambda j: keyring.derive_key("job:" + j), script=script,
                       script_args=script_args or [], checkpoint_dir=checkpoint_dir)


def run_job(home: Home, overrides: list[str], **options: Any) -> tuple[dict[str, Any], NullSink]:
    """Launch through the library (the CLI adds only the preflight, tested separately)."""
    from trainguard.trainer.launcher import launch

    plan = prepare(home, overrides, **options)
    sink = NullSink()
    reported: list[tuple[str, str]] = []
    result = launch(plan, sink, lambda k, s, e: reported.append((k, s)), timeout=240)
    result["reported"] = reported
    return result, sink
