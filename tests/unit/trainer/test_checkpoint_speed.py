"""The fast checkpoint save path: a large state through the pipelined sealed writer (signed by
its tag digest, so nothing hashes the body), the CRC-less archive the scanner and torch.load accept, pruning that
deletes old data files off the caller's clock, and a write error that leaves nothing."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from trainguard.core.home import Home
from trainguard.crypto.sealed.stream import HEADER_SIZE, TAGS_DIGEST, tag_digest
from trainguard.trainer.checkpoint import CheckpointStore, manifest_path
from trainguard.trainer.errors import CheckpointTampered
from trainguard.trainer.launcher import trust_for


def _state(step: int) -> dict:
    torch.manual_seed(step)
    # several segments per tensor, plus odd sizes and dtypes that end mid-segment
    return {"step": step, "state": {"w": torch.randn(700, 1031), "b": torch.randn(17).bfloat16(),
                                    "i": torch.arange(9999, dtype=torch.int8)}}


def _join_pruning() -> None:
    for t in threading.enumerate():
        if t.name == "checkpoint-prune":
            t.join(timeout=120)


def test_large_state_round_trips_and_manifest_digest_is_the_files(home: Home, keys, tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home))
    payload = _state(3)
    info = store.save(payload, 3)
    entry = json.loads(manifest_path(info.path).read_text())["manifest"]["files"][0]
    assert entry["digest"] == TAGS_DIGEST
    assert (entry["size"], info.sha256) == tag_digest(info.path) == (info.path.stat().st_size, entry["sha256"])
    loaded, got = store.load(info.path)  # the scanner, then torch.load(weights_only=True)
    assert got.step == 3
    for k, v in payload["state"].items():
        assert torch.equal(loaded["state"][k], v)


def test_prune_removes_old_steps_and_leaves_no_aside_files(home: Home, keys, tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home), keep=2)
    for step in (1, 2, 3, 4):
        store.save(_state(step), step)
    assert [s for s, _ in store.list()] == [4, 3]  # at once, before the background delete
    _join_pruning()
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == sorted([store.path_for(3).name, manifest_path(store.path_for(3)).name,
                            store.path_for(4).name, manifest_path(store.path_for(4)).name])


def test_leftover_aside_file_from_a_killed_prune_is_swept(home: Home, keys, tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home), keep=1)
    store.save(_state(1), 1)
    leftover = tmp_path / "ck" / ".step-00000000.tgseal.dead.deleting"
    leftover.write_bytes(b"x" * 100)
    store.save(_state(2), 2)
    _join_pruning()
    assert not leftover.exists()
    assert [s for s, _ in store.list()] == [2]


def test_a_write_error_leaves_no_checkpoint(home: Home, keys, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.crypto.sealed import stream

    real = stream.SealedWriter.__init__

    def failing_init(self, fileobj, *a, **kw):  # type: ignore[no-untyped-def]
        class Full:
            def __init__(self) -> None:
                self.n = 0

            def write(self, b):  # type: ignore[no-untyped-def]
                self.n += 1
                if self.n > 3:  # header and two segments, then the disk is full
                    raise OSError(28, "No space left on device")
                return fileobj.write(b)

            def flush(self) -> None:
                fileobj.flush()

        real(self, Full(), *a, **kw)

    monkeypatch.setattr(stream.SealedWriter, "__init__", failing_init)
    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home))
    with pytest.raises((OSError, RuntimeError)):
        store.save(_state(5), 5)
    assert list((tmp_path / "ck").iterdir()) == []


def test_a_body_byte_changed_under_a_valid_tag_digest_is_refused_on_load(
    home: Home, keys, tmp_path: Path
) -> None:
    """The tag digest does not cover ciphertext bytes: the segment's tag does, on unseal."""
    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home))
    store.save(_state(1), 1)
    info = store.save(_state(2), 2)
    raw = bytearray(info.path.read_bytes())
    raw[HEADER_SIZE + (2 << 20)] ^= 1  # inside the third 1 MiB segment
    info.path.write_bytes(bytes(raw))
    store.verify(info.path)  # header, tags and length are as signed ...
    outcome = store.load_newest()  # ... but the segment does not authenticate
    assert outcome.info is not None and outcome.info.step == 1
    assert [p.name for p, _ in outcome.refused] == [info.path.name]


def test_a_checkpoint_signed_with_a_file_sha256_still_verifies(home: Home, keys, tmp_path: Path) -> None:
    """Manifests written before the tag digest name no digest: a SHA-256 of the whole file."""
    from trainguard.crypto.manifest import FileEntry, Manifest

    store = CheckpointStore(tmp_path / "ck", keys, trust_for(home))
    info = store.save(_state(5), 5)
    body = Manifest("file", info.path.name, (FileEntry(info.path.name, info.path.stat().st_size,
                    hashlib.sha256(info.path.read_bytes()).hexdigest()),), 0.0, None).to_json()
    assert "digest" not in body["files"][0]
    signed = keys.sign(body)
    doc = json.loads(manifest_path(info.path).read_text())
    doc.update(manifest=body, signature=signed["signature"])
    manifest_path(info.path).write_text(json.dumps(doc))
    assert store.load(info.path)[1].step == 5
    raw = bytearray(info.path.read_bytes())
    raw[-1] ^= 1
    info.path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointTampered, match="does not match its signature"):
        store.verify(info.path)
