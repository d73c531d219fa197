"""A signed manifest is bound to the artifact it was made for (issue 21, section 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trainguard.crypto.manifest import ManifestMisplaced, sign_path, verify_path
from trainguard.crypto.signing import SigningKey, canonical_json

KEY = SigningKey.generate()


def _run(root: Path, name: str, weights: bytes) -> Path:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "final.pt").write_bytes(weights)
    (run / "config.json").write_text('{"lr": 0.1}')
    return run


def test_manifest_copied_to_another_path_is_refused(tmp_path: Path) -> None:
    """The finding: run-1's folder and manifest copied over run-2 verified as run-2."""
    run1 = _run(tmp_path, "run-1", b"weights of run 1")
    sign_path(run1, KEY)
    verify_path(run1, KEY.public_key())
    run2 = tmp_path / "runs" / "run-2"
    shutil.copytree(run1, run2)
    shutil.copy(tmp_path / "runs" / "run-1.tgsig.json", tmp_path / "runs" / "run-2.tgsig.json")
    with pytest.raises(ManifestMisplaced, match="signed for 'run-1', not for 'run-2'") as err:
        verify_path(run2, KEY.public_key())
    assert err.value.exit_code == 1 and "trainguard sign" in (err.value.tip or "")


def test_single_file_copied_into_another_runs_folder_is_refused(tmp_path: Path) -> None:
    run1, run2 = _run(tmp_path, "run-1", b"one"), _run(tmp_path, "run-2", b"two")
    sign_path(run1 / "final.pt", KEY)
    shutil.copy(run1 / "final.pt", run2 / "final.pt")
    shutil.copy(run1 / "final.pt.tgsig.json", run2 / "final.pt.tgsig.json")
    with pytest.raises(ManifestMisplaced, match="run-1/final.pt"):
        verify_path(run2 / "final.pt", KEY.public_key())


def test_moved_run_folder_still_verifies_and_custom_binding_round_trips(tmp_path: Path) -> None:
    run1 = _run(tmp_path, "run-1", b"one")
    sign_path(run1, KEY)
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.move(run1, archive / "run-1")
    shutil.move(tmp_path / "runs" / "run-1.tgsig.json", archive / "run-1.tgsig.json")
    verify_path(archive / "run-1", KEY.public_key())
    sign_path(archive / "run-1", KEY, binding="project-x/run-1")
    verify_path(archive / "run-1", KEY.public_key(), binding="project-x/run-1")
    with pytest.raises(ManifestMisplaced):
        verify_path(archive / "run-1", KEY.public_key())


def test_format_1_manifest_is_refused_with_a_tip_to_re_sign(tmp_path: Path) -> None:
    """Format 1 signed only the base name, which two runs' `final.pt` share: not safe."""
    import base64

    run1 = _run(tmp_path, "run-1", b"one")
    out = sign_path(run1, KEY)
    doc = json.loads(out.read_text())
    body = {k: v for k, v in doc["manifest"].items() if k != "binding"} | {"format": 1}
    doc["manifest"] = body
    doc["signature"] = base64.b64encode(KEY.sign(canonical_json(body))).decode()
    out.write_text(json.dumps(doc))
    with pytest.raises(ManifestMisplaced, match="format 1") as err:
        verify_path(run1, KEY.public_key())
    assert "re-sign" in (err.value.tip or "")


def test_binding_is_signed(tmp_path: Path) -> None:
    from trainguard.crypto.errors import BadSignature

    run1 = _run(tmp_path, "run-1", b"one")
    run2 = _run(tmp_path, "run-2", b"one")
    sign_path(run1, KEY)
    doc = json.loads((tmp_path / "runs" / "run-1.tgsig.json").read_text())
    doc["manifest"]["binding"] = "run-2"
    (tmp_path / "runs" / "run-2.tgsig.json").write_text(json.dumps(doc))
    shutil.rmtree(run2)
    shutil.copytree(run1, run2)
    with pytest.raises(BadSignature):
        verify_path(run2, KEY.public_key())
