"""The wheel maps every area folder into the trainguard namespace and nothing generic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_holds_only_the_trainguard_namespace(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ next to the sources it builds.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("trainguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"trainguard"}
    for area in ["core", "crypto", "policy", "evidence", "integrity", "agent", "report", "cli",
                 "anomaly", "adversarial", "trainer"]:
        assert f"trainguard/{area}/__init__.py" in names
    for package in ["crypto/sealed", "evidence/response", "integrity/deps", "integrity/scanner",
                    "agent/api", "agent/telemetry", "agent/systemd", "agent/checks",
                    "cli/commands", "cli/demo", "trainer/testing"]:
        assert f"trainguard/{package}/__init__.py" in names
    assert "trainguard/evidence/response/sample_hook.sh" in names
    assert "trainguard/report/controls.toml" in names
    assert "trainguard/trainer/examples/digits.toml" in names or not (REPO / "trainer/examples/digits.toml").exists()
    assert not any(n.startswith(("crypto/", "agent/", "policy/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and b"trainguard = trainguard.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0])
