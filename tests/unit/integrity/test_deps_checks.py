"""The supply-chain posture checks: deps-lock and model-artifacts, with their incidents."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from support import scanner_corpus as corpus
from support.dists import make_dist
from trainguard.agent.checks import Status, run_checks
from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.embedded import open_embedded_log
from trainguard.integrity.deps.lock import build_lock, default_lock_path, write_lock


def _incidents(home: Home) -> list[dict]:
    config = load_config(home.config_path, {})
    with open_embedded_log(home, config) as log:
        return [e.data for e in log.entries(kind="incident")]


def _run(home: Home, check: str):
    [result] = run_checks(home, load_config(home.config_path, {}), [check])
    return result


@pytest.fixture
def locked_site(home: Home, tmp_path: Path) -> Path:
    site = tmp_path / "site"
    make_dist(site, "alpha", "1.0", {"alpha/__init__.py": b"A = 1\n"})
    key = SigningKey.load(home.node_signing_key)
    write_lock(build_lock(paths=[str(site)]), default_lock_path(home.state_dir), key)
    return site


def test_deps_lock_warns_without_a_lock(home: Home) -> None:
    assert _run(home, "deps-lock").status is Status.WARN


def test_deps_lock_passes_then_fails_on_drift_with_an_incident(
    home: Home, locked_site: Path
) -> None:
    assert _run(home, "deps-lock").status is Status.PASS
    (locked_site / "alpha" / "__init__.py").write_text("import os\n")
    result = _run(home, "deps-lock")
    assert result.status is Status.FAIL
    assert str(locked_site / "alpha" / "__init__.py") in result.evidence["files"]
    kinds = [i["kind"] for i in _incidents(home)]
    assert "dependency-drift" in kinds


def test_tampered_lock_fails_the_check(home: Home, locked_site: Path) -> None:
    lock = default_lock_path(home.state_dir)
    lock.write_bytes(lock.read_bytes().replace(b'"1.0"', b'"9.9"'))
    result = _run(home, "deps-lock")
    assert result.status is Status.FAIL and "signature" in result.summary


def _configure_dirs(home: Home, models: Path) -> None:
    home.config_path.write_text(
        home.config_path.read_text() + f'\n[checks]\nmodel_dirs = ["{models}"]\n'
    )


def test_model_artifacts_not_applicable_without_folders(home: Home) -> None:
    assert _run(home, "model-artifacts").status is Status.NOT_APPLICABLE


def test_model_artifacts_fails_on_an_unsafe_file_and_reports_its_path(
    home: Home, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ok.pkl").write_bytes(pickle.dumps({"w": [1.0]}))
    _configure_dirs(home, models)
    assert _run(home, "model-artifacts").status is Status.PASS
    evil = models / "evil.pt"
    evil.write_bytes(corpus.stack_global("webbrowser", "open", "http://x"))
    result = _run(home, "model-artifacts")
    assert result.status is Status.FAIL
    assert result.evidence["unsafe"] == [str(evil)]
    incidents = [i for i in _incidents(home) if i["kind"] == "unsafe-artifact"]
    assert incidents and incidents[0]["evidence"]["path"] == str(evil)
