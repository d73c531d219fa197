"""Sealed, signed checkpoints: round trip, tamper refusal, fallback, malicious pickles."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from trainguard.core.home import Home
from trainguard.trainer.checkpoint import CheckpointStore, scan_torch_zip
from trainguard.trainer.errors import CheckpointTampered


def _store(home: Home, directory: Path, **kw) -> CheckpointStore:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey, VerifyKey

    return CheckpointStore(
        directory,
        Keyring.open(home.keys_dir),
        SigningKey.load(home.node_signing_key),
        VerifyKey.load(home.node_verify_key),
        job_id="job-1",
        **kw,
    )


def _state(step: int) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_is_sealed_and_loads_weights(home: Home, tmp_path: Path) -> None:
    store = _store(home, tmp_path / "ck")
    state = _state(10)
    info = store.save(state, 10)
    raw = info.path.read_bytes()
    assert raw.startswith(b"TGSEAL")
    assert b"data.pkl" not in raw and b"weight" not in raw  # nothing readable on disk
    assert oct(info.path.stat().st_mode & 0o777) == "0o600"
    loaded, got = store.load(info.path)
    assert got.step == 10
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])


def test_flipped_byte_in_newest_falls_back_to_previous(home: Home, tmp_path: Path) -> None:
    store = _store(home, tmp_path / "ck")
    for step in (10, 20, 30):
        store.save(_state(step), step)
    _flip(store.path_for(30))
    outcome = store.load_newest()
    assert outcome.info is not None and outcome.info.step == 20
    assert [p.name for p, _ in outcome.refused] == ["step-00000030.tgseal"]


def test_forged_signature_and_swapped_manifest_are_refused(home: Home, tmp_path: Path) -> None:
    store = _store(home, tmp_path / "ck")
    store.save(_state(10), 10)
    store.save(_state(20), 20)
    sig20 = store.path_for(20).with_name("step-00000020.tgseal.sig")
    sig10 = store.path_for(10).with_name("step-00000010.tgseal.sig")
    sig20.write_bytes(sig10.read_bytes())  # a valid signature, but for another file
    with pytest.raises(CheckpointTampered):
        store.load(store.path_for(20))
    _flip(sig10, 0.9)
    assert store.load_newest().state is None


def test_checkpoint_sealed_under_another_keyring_is_refused(home: Home, tmp_path: Path) -> None:
    from trainguard.crypto.keyring import Keyring

    store = _store(home, tmp_path / "ck")
    store.save(_state(10), 10)
    other = tmp_path / "otherkeys"
    other.mkdir(mode=0o700)
    store._keyring = Keyring.create(other)
    with pytest.raises(CheckpointTampered):
        store.load(store.path_for(10))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_pickle_with_a_code_global_is_refused_before_loading() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"step": 1, "x": _Evil()}, protocol=2))
    buf.seek(0)
    with pytest.raises(CheckpointTampered, match="forbidden global"):
        scan_torch_zip(buf)


def test_keep_prunes_old_checkpoints(home: Home, tmp_path: Path) -> None:
    store = _store(home, tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        store.save(_state(step), step)
    assert [s for s, _ in store.list()] == [3, 2]
