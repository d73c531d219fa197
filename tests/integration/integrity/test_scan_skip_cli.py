"""`scan` of a folder: files no loader reads as a model are listed as skipped, not as errors;
the same file named on the command line is still judged."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_non_model_files_in_a_folder_are_skipped_and_models_still_judged(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "README").write_text("a model folder\n")  # 'a' is APPEND: fails at once
    (folder / "data.csv").write_text("patient,label\n1,0\n")
    (folder / "ok.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    r = cli("scan", folder, "--format", "json")
    assert r.code == 0, r.stdout + r.stderr
    out = r.json()
    assert sorted(Path(s["path"]).name for s in out["skipped"]) == ["README", "data.csv"]
    assert [Path(f["path"]).name for f in out["files"]] == ["ok.pkl"]
    assert "2 skipped" in r.stderr
    # an unsafe pickle next to them still fails the scan
    (folder / "evil.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    r = cli("scan", folder, "--format", "json")
    assert r.code == 1 and any(f["verdict"] == "unsafe" for f in r.json()["files"])
    # named explicitly, a non-model file is judged (error), never skipped
    r = cli("scan", folder / "data.csv", "--format", "json")
    assert r.code == 1 and r.json()["files"][0]["verdict"] == "error" and not r.json()["skipped"]
