from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from trainguard.crypto.errors import BadSignature, ManifestError, ManifestMismatch
from trainguard.crypto.manifest import (
    build_manifest,
    default_manifest_path,
    sign_path,
    verify_path,
)
from trainguard.crypto.signing import SigningKey


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "shards").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 2}')
    for i in range(5):
        (root / "shards" / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    return root


def test_sign_and_verify_directory(artifact: Path) -> None:
    key = SigningKey.generate()
    out = sign_path(artifact, key, workers=3)
    assert out == artifact.with_name("model.tgsig.json") == default_manifest_path(artifact)
    m = verify_path(artifact, key.public_key())
    assert [f.path for f in m.files] == ["config.json"] + [f"shards/{i}.bin" for i in range(5)]
    assert m.files[1].size == 1000 and len(m.files[1].sha256) == 64


def test_missing_extra_changed_are_named(artifact: Path) -> None:
    key = SigningKey.generate()
    sign_path(artifact, key)
    (artifact / "shards" / "1.bin").unlink()
    (artifact / "shards" / "evil.pth").write_bytes(b"import os")
    with open(artifact / "shards" / "3.bin", "r+b") as f:
        f.write(b"X")
    with pytest.raises(ManifestMismatch) as exc:
        verify_path(artifact, key.public_key())
    e = exc.value
    assert (e.missing, e.extra, e.changed) == (
        ["shards/1.bin"],
        ["shards/evil.pth"],
        ["shards/3.bin"],
    )
    assert "shards/evil.pth" in e.message and e.exit_code == 1


def test_single_file_and_custom_manifest_inside_tree(artifact: Path, tmp_path: Path) -> None:
    key = SigningKey.generate()
    f = artifact / "config.json"
    sign_path(f, key)
    verify_path(f, key.public_key())
    inside = artifact / "MANIFEST.tgsig.json"
    sign_path(artifact, key, out=inside)
    m = verify_path(artifact, key.public_key(), manifest=inside)
    assert "MANIFEST.tgsig.json" not in [e.path for e in m.files]


def test_wrong_key_and_edited_manifest_fail_signature(artifact: Path) -> None:
    key = SigningKey.generate()
    out = sign_path(artifact, key)
    with pytest.raises(BadSignature):
        verify_path(artifact, SigningKey.generate().public_key())
    doc = json.loads(out.read_text())
    doc["manifest"]["files"][0]["size"] += 1
    out.write_text(json.dumps(doc))
    with pytest.raises(BadSignature):
        verify_path(artifact, key.public_key())


def test_symlinks_are_recorded_not_followed(artifact: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("not part of the model")
    (artifact / "leak").symlink_to(secret)
    (artifact / "dirlink").symlink_to(tmp_path)
    key = SigningKey.generate()
    sign_path(artifact, key)
    m = verify_path(artifact, key.public_key())
    links = {e.path: e.link for e in m.files if e.link is not None}
    assert links == {"leak": str(secret), "dirlink": str(tmp_path)}
    (artifact / "leak").unlink()
    (artifact / "leak").symlink_to("/etc/passwd")
    with pytest.raises(ManifestMismatch) as exc:
        verify_path(artifact, key.public_key())
    assert exc.value.changed == ["leak"]


def test_missing_manifest_and_missing_path(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with pytest.raises(ManifestError):
        build_manifest(tmp_path / "nope")
    (tmp_path / "a").write_text("x")
    with pytest.raises(ManifestError, match="no manifest"):
        verify_path(tmp_path / "a", key.public_key())
