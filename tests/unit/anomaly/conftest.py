"""Fixtures for the anomaly tests: the shared NAB subset (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NAB_DIR = REPO.parent / "shared" / "data" / "nab"


@pytest.fixture
def nab_dir() -> Path:
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        pytest.skip("the shared NAB subset is not present")
    return NAB_DIR
