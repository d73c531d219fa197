"""Sealed, signed checkpoints through the key service: round trip of every dtype, tamper
refusal and fallback, signatures that only verify as checkpoint manifests, malicious pickles."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.core.home import Home
from trainguard.trainer.checkpoint import CheckpointStore, manifest_path
from trainguard.trainer.errors import CheckpointTampered
from trainguard.trainer.launcher import trust_for


def _store(home: Home, keys, directory: Path, **kw) -> CheckpointStore:
    return CheckpointStore(directory, keys, trust_for(home), **kw)


def _payload(step: int) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"step": step, "state": {"model": model.state_dict(), "optimizer": opt.state_dict()}}


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_is_sealed_and_signed_as_a_manifest(home: Home, keys, tmp_path: Path) -> None:
    store = _store(home, keys, tmp_path / "ck")
    payload = _payload(10)
    info = store.save(payload, 10)
    raw = info.path.read_bytes()
    assert raw.startswith(b"TGSEAL")
    assert b"data.pkl" not in raw and b"weight" not in raw  # nothing readable on disk
    assert oct(info.path.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(manifest_path(info.path).read_text())
    assert doc["manifest"]["kind"] == "file" and doc["manifest"]["name"] == info.path.name
    assert doc["manifest"]["files"][0]["sha256"] == info.sha256
    loaded, got = store.load(info.path)
    assert got.step == 10 and got.signer.startswith("node-key:")
    assert torch.equal(loaded["state"]["model"]["weight"], payload["state"]["model"]["weight"])


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int8, torch.uint8,
          torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128]


@given(dtype=st.sampled_from(DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
       seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_dtype_and_shape_round_trips(home: Home, keys, tmp_path: Path, dtype, shape, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 50
    if dtype.is_complex:
        tensor = torch.complex(base, -base).to(dtype)
    elif dtype is torch.bool:
        tensor = base > 0
    else:
        tensor = base.to(dtype)
    store = _store(home, keys, tmp_path / f"dt-{seed}")
    info = store.save({"step": 1, "state": {"t": tensor, "n": 3}}, 1)
    loaded, _ = store.load(info.path)
    out = loaded["state"]["t"]
    assert out.dtype == dtype and out.shape == tensor.shape
    assert torch.equal(out, tensor)


def test_bf16_model_and_optimizer_state_resume_in_place(home: Home, keys, tmp_path: Path) -> None:
    from trainguard.trainer.guard import _load_in_place, _state_dict

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 8, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    store = _store(home, keys, tmp_path / "ck")
    store.save({"step": 5, "state": _state_dict({"model": model, "optim": opt})}, 5)

    fresh = torch.nn.Linear(8, 4).to(torch.bfloat16)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    loaded, _ = store.load(store.path_for(5))
    _load_in_place({"model": fresh, "optim": fresh_opt}, loaded["state"])
    assert fresh.weight.dtype == torch.bfloat16
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_flipped_byte_in_newest_falls_back_to_previous(home: Home, keys, tmp_path: Path) -> None:
    store = _store(home, keys, tmp_path / "ck")
    for step in (10, 20, 30):
        store.save(_payload(step), step)
    _flip(store.path_for(30))
    outcome = store.load_newest()
    assert outcome.info is not None and outcome.info.step == 20
    assert [p.name for p, _ in outcome.refused] == ["step-00000030.tgseal"]


def test_swapped_or_forged_manifest_is_refused(home: Home, keys, tmp_path: Path) -> None:
    store = _store(home, keys, tmp_path / "ck")
    store.save(_payload(10), 10)
    store.save(_payload(20), 20)
    sig20, sig10 = manifest_path(store.path_for(20)), manifest_path(store.path_for(10))
    sig20.write_bytes(sig10.read_bytes())  # a valid signature, but for another file
    with pytest.raises(CheckpointTampered, match="signature|another file"):
        store.load(store.path_for(20))
    doc = json.loads(sig10.read_text())
    doc["manifest"]["files"][0]["sha256"] = "0" * 64
    sig10.write_text(json.dumps(doc))
    assert store.load_newest().state is None


def test_checkpoint_signature_never_verifies_as_a_plain_manifest(home: Home, keys, tmp_path: Path) -> None:
    from trainguard.crypto.errors import BadSignature
    from trainguard.crypto.manifest import load_signed
    from trainguard.crypto.signing import VerifyKey

    store = _store(home, keys, tmp_path / "ck")
    info = store.save(_payload(1), 1)
    with pytest.raises(BadSignature):  # domain-separated: not a signing oracle for artifacts
        load_signed(manifest_path(info.path), VerifyKey.load(home.node_verify_key))


def test_key_service_signs_only_checkpoint_manifests(keys) -> None:
    from trainguard.trainer.keys import KeyServiceUnavailable

    policy = {"format": 1, "kind": "file", "name": "policy.toml", "created_at": 0,
              "files": [{"path": "policy.toml", "size": 1, "sha256": "0" * 64}]}
    with pytest.raises(KeyServiceUnavailable, match="only the manifest of one checkpoint"):
        keys.sign(policy)


def test_checkpoint_sealed_under_another_keyring_is_refused(home: Home, keys, tmp_path: Path) -> None:
    from trainguard.crypto.keyring import Keyring

    store = _store(home, keys, tmp_path / "ck")
    store.save(_payload(10), 10)
    other = tmp_path / "otherkeys"
    other.mkdir(mode=0o700)
    store._keys = Keyring.create(other)
    with pytest.raises(CheckpointTampered, match="cannot be unsealed"):
        store.load(store.path_for(10))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_sealed_and_signed_pickle_with_a_code_global_is_refused_by_the_scanner(
        home: Home, keys, tmp_path: Path) -> None:
    """Even a checkpoint the service signed is scanned before torch.load sees it."""
    from trainguard.crypto.manifest import FileEntry, Manifest
    from trainguard.crypto.sealed.stream import SealedWriter
    from trainguard.trainer.checkpoint import _HashingFile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"step": 7, "x": _Evil()}, protocol=2))
    store = _store(home, keys, tmp_path / "ck")
    store.directory.mkdir(mode=0o700)
    path = store.path_for(7)
    with path.open("wb") as raw:
        hashing = _HashingFile(raw)
        with SealedWriter(hashing, keys.data_key()) as sealed:  # type: ignore[arg-type]
            sealed.write(buf.getvalue())
    body = Manifest("file", path.name, (FileEntry(path.name, hashing.size, hashing.sha.hexdigest()),)).to_json()
    signed = keys.sign(body)
    manifest_path(path).write_text(json.dumps({"format": 1, "manifest": body, **signed}))
    with pytest.raises(CheckpointTampered, match="scanner refused"):
        store.load(path)


def test_keep_prunes_old_checkpoints(home: Home, keys, tmp_path: Path) -> None:
    store = _store(home, keys, tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        store.save(_payload(step), step)
    assert [s for s, _ in store.list()] == [3, 2]
    assert not manifest_path(store.path_for(1)).exists()


def _with_node_cert(home: Home, cluster: str = "c1"):
    from trainguard.core.fs import write_private
    from trainguard.crypto.pki import ClusterCA

    ca = ClusterCA.create(home.pki_dir, cluster)
    cert, key = ca.issue("node-a", "node")
    write_private(home.pki_dir / "node.crt", cert, mode=0o644)
    write_private(home.pki_dir / "node.key", key)
    ca.write_crl()
    return ca


def test_node_certificate_signatures_verify_on_another_node_until_revoked(
        home: Home, tmp_path: Path) -> None:
    """A cluster node signs with its certificate key; another node (other Ed25519 key, same CA
    and CRL) verifies it; once the certificate is revoked, the CRL refuses it."""
    import dataclasses
    import threading
    import time

    from support import make_home
    from trainguard.agent.api.keys import serve
    from trainguard.trainer.keys import KeyClient

    ca = _with_node_cert(home)
    sock = tmp_path / "k.sock"
    stop = threading.Event()
    threading.Thread(target=serve, args=(home, sock), kwargs={"until": stop.is_set}, daemon=True).start()
    while not sock.exists():
        time.sleep(0.01)
    client = KeyClient(sock)
    try:
        info = _store(home, client, tmp_path / "ck").save(_payload(4), 4)
        other = make_home(tmp_path / "node-b")  # its own node key: only the CA can vouch
        trust = dataclasses.replace(trust_for(other), ca_pem=(home.pki_dir / "ca.crt").read_text(),
                                    crl_pem=(home.pki_dir / "crl.pem").read_text())
        remote = CheckpointStore(tmp_path / "ck", client, trust)
        assert remote.verify(info.path).signer == "spiffe://c1/node/node-a"
        ca.revoke("node-a")
        ca.write_crl()
        revoked = dataclasses.replace(trust, crl_pem=(home.pki_dir / "crl.pem").read_text())
        with pytest.raises(CheckpointTampered, match="signature does not verify"):
            CheckpointStore(tmp_path / "ck", client, revoked).verify(info.path)
        foreign = dataclasses.replace(trust, ca_pem=None)
        with pytest.raises(CheckpointTampered):
            CheckpointStore(tmp_path / "ck", client, foreign).verify(info.path)
    finally:
        client.close()
        stop.set()
