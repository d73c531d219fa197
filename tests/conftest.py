"""Shared fixtures: run the real `trainguard` CLI in a subprocess against a temporary home."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

try:  # no per-example deadline: a shared 2-core CI machine can stall any example (flaky, not a bug)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("trainguard", deadline=None)
    _hypothesis_settings.load_profile("trainguard")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
NAB_DIR = REPO.parent / "shared" / "data" / "nab"


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() and shutil.which("nvidia-smi") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


CLI = Callable[..., Result]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env["HOME"] = str(tmp_path / "user-home")  # login sessions live under the user's config dir
    env["XDG_CONFIG_HOME"] = str(tmp_path / "user-home" / ".config")
    Path(env["HOME"]).mkdir(exist_ok=True)
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> CLI:
    """Run `python -m trainguard.cli.main ARGS` and capture everything."""

    def run(
        *args: str | Path,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> Result:
        full_env = dict(cli_env)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "trainguard.cli.main", *map(str, args)],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=full_env,
            timeout=timeout,
        )
        return Result(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    return run
