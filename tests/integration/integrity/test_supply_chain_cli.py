"""`trainguard deps lock/verify` and `trainguard scan` through the real CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from support import scanner_corpus as corpus
from support.dists import make_dist

pytestmark = pytest.mark.integration


@pytest.fixture
def home(cli, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = cli("init", "--home", home, "--node", "n1", "--admin", "alice")
    assert result.code == 0, result.stderr
    return home


def test_scan_cli_json_and_exit_codes(cli, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ok.pkl").write_bytes(pickle.dumps({"a": 1}))
    (models / "bad.bin").write_bytes(corpus.memo_trick("os", "system", "id"))
    (models / "broken.pkl").write_bytes(pickle.dumps([1, 2, 3])[:-4])
    result = cli("scan", models, "--format", "json")
    assert result.code == 1
    files = {Path(f["path"]).name: f for f in result.json()["files"]}
    assert files["ok.pkl"]["verdict"] == "safe"
    assert files["bad.bin"]["verdict"] == "unsafe"
    assert files["bad.bin"]["findings"][0]["global"] == "os.system"
    assert files["broken.pkl"]["verdict"] == "error"
    assert "1 safe, 1 unsafe, 1 error" in result.stderr
    assert cli("scan", models / "ok.pkl").code == 0
    assert cli("scan", models / "broken.pkl").code == 1  # an error is never clean
    assert cli("scan").code == 2


def test_deps_lock_verify_drift_and_tampered_lock(
    cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python -m` puts the working directory on sys.path; run from an empty one so the lock
    # does not cover this checkout's sources, which other work may be editing meanwhile.
    monkeypatch.chdir(tmp_path)
    site = tmp_path / "site"
    make_dist(site, "plantme", "1.0", {"plantme/__init__.py": b"X = 1\n"})
    env = {"PYTHONPATH": str(site)}  # the fake distribution joins the real environment
    locked = cli("deps", "lock", "--home", home, "--format", "json", env=env)
    assert locked.code == 0, locked.stderr
    info = locked.json()
    assert info["distributions"] > 10 and Path(info["lock"]).exists()
    assert Path(info["signature"]).exists()

    ok = cli("deps", "verify", "--home", home, "--format", "json", env=env)
    assert ok.code == 0, ok.stdout + ok.stderr
    assert ok.json()["drift"] is False
    cached = cli("deps", "verify", "--home", home, "--format", "json", env=env)
    assert cached.json()["files_hashed"] < ok.json()["files_checked"]

    (site / "plantme" / "__init__.py").write_text("import os; os.system('id')\n")
    (site / "zz-evil.pth").write_text("import os\n")
    drift = cli("deps", "verify", "--home", home, env=env)
    assert drift.code == 1
    assert str(site / "plantme" / "__init__.py") in drift.stdout
    assert "zz-evil.pth" in drift.stdout
    full = cli("deps", "verify", "--home", home, "--full", "--format", "json", env=env)
    assert full.code == 1 and full.json()["files_hashed"] == full.json()["files_checked"]

    lock = Path(info["lock"])
    data = json.loads(lock.read_bytes())
    data["startup"].clear()
    lock.write_text(json.dumps(data))
    refused = cli("deps", "verify", "--home", home, env=env)
    assert refused.code == 1
    assert "signature verification" in refused.stderr and "Tip:" in refused.stderr
