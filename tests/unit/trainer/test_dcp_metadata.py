"""DCP `.metadata` is unpickled only after the manifest verified, and then only into DCP's own
classes: a `.metadata` whose pickle would run code is refused whether its manifest entry was
re-signed by a foreign key, carries no signature, or was even signed by the trusted key; no
code runs. Hypothesis round trips of the sealing stream DCP writes through."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.dist_group import single_rank_group
from trainguard.core.fs import hash_file
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.manifest import FileEntry, Manifest
from trainguard.crypto.sealed.stream import SealedReader, SealedWriter, tag_digest
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import (
    DcpCheckpoints,
    LocalKeys,
    load_metadata,
    manifest_path,
    signing_key_signer,
    trust_verifier,
)
from trainguard.trainer.dcp.signed import _Refused
from trainguard.trainer.dcp.storage import _SealedFileSystem
from trainguard.trainer.errors import CheckpointTampered


@pytest.fixture(scope="module")
def group() -> Iterator[None]:
    with single_rank_group():
        yield


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil_pickles(marker: Path) -> list[bytes]:
    direct = pickle.dumps(_RunsCode(marker), protocol=2)
    hidden = pickle.dumps({"state": [1, _RunsCode(marker)]}, protocol=4)  # deep inside
    via_eval = (b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode()
                + b"')\ntR.")
    return [direct, hidden, via_eval]


def test_restricted_unpickler_refuses_code_and_reads_real_metadata(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for data in _evil_pickles(marker):
        with pytest.raises(_Refused):
            load_metadata(io.BytesIO(data))
    assert not marker.exists()
    with pytest.raises(_Refused, match="not a Metadata"):
        load_metadata(io.BytesIO(pickle.dumps({"a": torch.Size([2])})))
    with pytest.raises(_Refused, match="malformed"):
        load_metadata(io.BytesIO(b"\x80\x04garbage"))


@pytest.fixture
def planted(tmp_path: Path, group: None):  # type: ignore[no-untyped-def]
    keyring = Keyring.create(tmp_path / "keys")
    key = SigningKey.generate()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    store = DcpCheckpoints(tmp_path / "ck", LocalKeys(keyring), signing_key_signer(key),
                           trust_verifier(trust), sync_files=False)
    store.save(1, {"w": torch.ones(3)})
    store.save(2, {"w": torch.full((3,), 2.0)})
    folder = store.path_for(2)
    marker = tmp_path / "pwned"
    with (folder / ".metadata").open("wb") as f, SealedWriter(f, keyring) as w:
        w.write(_evil_pickles(marker)[0])
    return store, folder, key, marker


def _resign(folder: Path, signer) -> None:  # type: ignore[no-untyped-def]
    entries = tuple(FileEntry(p.name, *(lambda d: (d.size, d.sha256))(hash_file(p)))
                    for p in sorted(folder.iterdir()))
    body = Manifest("directory", folder.name, entries, 1.0).to_json()
    doc = {"format": 1, "manifest": body, **(signer(body) if signer else
           {"algorithm": "ed25519", "key_id": None, "certificate": None, "signature": ""})}
    manifest_path(folder).write_text(json.dumps(doc))


@pytest.mark.parametrize("who", ["foreign-key", "no-signature", "trusted-key"])
def test_malicious_metadata_is_refused_and_runs_nothing(planted, who: str) -> None:  # type: ignore[no-untyped-def]
    store, folder, key, marker = planted
    signer = {"foreign-key": signing_key_signer(SigningKey.generate()), "no-signature": None,
              "trusted-key": signing_key_signer(key)}[who]
    _resign(folder, signer)
    state = {"w": torch.zeros(3)}
    with pytest.raises(CheckpointTampered) as err:
        store.load(folder, state)
    reason = "signature does not verify" if who != "trusted-key" else "not a metadata class"
    assert reason in err.value.message
    assert not marker.exists()
    info, refused = store.resume(state)  # the previous step is used
    assert info is not None and info.step == 1 and [p for p, _ in refused] == [folder]
    assert torch.equal(state["w"], torch.ones(3)) and not marker.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=3000), max_size=12),
       seg=st.sampled_from([1, 7, 256, 4096]))
def test_sealing_stream_round_trips(tmp_path: Path, chunks: list[bytes], seg: int) -> None:
    keyring = _ring(tmp_path)
    fs = _SealedFileSystem(LocalKeys(keyring), sync=False, segment_size=seg)
    path = tmp_path / f"__0_{seg}.distcp"
    offsets = []
    with fs.create_stream(path, "wb") as stream:
        for c in chunks:
            offsets.append(stream.tell())
            stream.write(c)
    plain = b"".join(chunks)
    assert offsets == [sum(map(len, chunks[:i])) for i in range(len(chunks))]
    assert fs.digests[path.name] == tag_digest(path) == (path.stat().st_size, tag_digest(path)[1])
    with path.open("rb") as raw, SealedReader(raw, keyring) as r:
        assert r.read() == plain
        for off, c in zip(offsets, chunks, strict=True):  # DCP reads items by offset
            r.seek(off)
            assert r.read(len(c)) == c


_RINGS: dict[str, Keyring] = {}


def _ring(tmp_path: Path) -> Keyring:
    key = str(tmp_path)
    if key not in _RINGS:
        _RINGS[key] = Keyring.create(tmp_path / "keys")
    return _RINGS[key]
