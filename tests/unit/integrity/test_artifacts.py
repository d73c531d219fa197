"""Signed model manifests: verify, then scan; distributed checkpoints need a signed .metadata."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
from support import scanner_corpus as corpus
from trainguard.crypto.errors import BadSignature, ManifestError, ManifestMismatch
from trainguard.crypto.manifest import sign_path
from trainguard.crypto.signing import SigningKey
from trainguard.integrity.artifacts import UnsignedCheckpoint, require_verified_artifact
from trainguard.integrity.scanner import UnsafeArtifact

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _dcp(folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(3), "step": 1}, checkpoint_id=folder)
    return folder


def test_signed_safe_checkpoint_passes(tmp_path: Path, key: SigningKey) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, ckpt)
    sign_path(ckpt, key)
    verified = require_verified_artifact(ckpt, key.public_key())
    assert verified.scan.clean and verified.manifest.files[0].path == "model.pt"


def test_signed_but_malicious_file_is_still_refused(tmp_path: Path, key: SigningKey) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(corpus.stack_global("os", "system", "id"))
    sign_path(ckpt, key)  # a trusted key signed something bad: the scan still refuses it
    with pytest.raises(UnsafeArtifact):
        require_verified_artifact(ckpt, key.public_key())


def test_modified_or_wrongly_signed_file_is_refused(tmp_path: Path, key: SigningKey) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(pickle.dumps({"a": 1}))
    sign_path(ckpt, key)
    with pytest.raises(BadSignature):
        require_verified_artifact(ckpt, SigningKey.generate().public_key())
    ckpt.write_bytes(pickle.dumps({"a": 2}))
    with pytest.raises(ManifestMismatch):
        require_verified_artifact(ckpt, key.public_key())


def test_signed_distributed_checkpoint_passes(tmp_path: Path, key: SigningKey) -> None:
    folder = _dcp(tmp_path / "dcp")
    sign_path(folder, key)
    assert require_verified_artifact(folder, key.public_key()).scan.clean


def test_unsigned_distributed_checkpoint_is_refused(tmp_path: Path, key: SigningKey) -> None:
    folder = _dcp(tmp_path / "dcp")
    with pytest.raises(UnsignedCheckpoint, match=".metadata"):
        require_verified_artifact(folder, key.public_key())


def test_metadata_swapped_after_signing_is_refused(tmp_path: Path, key: SigningKey) -> None:
    folder = _dcp(tmp_path / "dcp")
    sign_path(folder, key)
    (folder / ".metadata").write_bytes(corpus.call_global_p2("os", "system", "id"))
    with pytest.raises(UnsignedCheckpoint):
        require_verified_artifact(folder, key.public_key())


def test_metadata_added_to_a_signed_plain_folder_is_refused(
    tmp_path: Path, key: SigningKey
) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"\x93NUMPY")
    sign_path(folder, key)
    (folder / ".metadata").write_bytes(pickle.dumps({}))
    with pytest.raises(UnsignedCheckpoint):
        require_verified_artifact(folder, key.public_key())


def test_missing_manifest_is_an_error(tmp_path: Path, key: SigningKey) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(pickle.dumps(1))
    with pytest.raises(ManifestError):
        require_verified_artifact(ckpt, key.public_key())
