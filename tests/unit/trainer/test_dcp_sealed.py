"""Sealed, signed DCP checkpoints on a 1-process gloo group: round trips of every dtype and of
DTensors and Stateful objects, nothing readable on disk, and refusal of each tamper class with
the previous step still loading."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import (
    DcpCheckpoints,
    LocalKeys,
    manifest_path,
    newest_verified,
    signing_key_signer,
    trust_verifier,
)
from trainguard.trainer.errors import CheckpointTampered, TrainerError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def group() -> Iterator[None]:
    if dist.is_initialized():  # another module's test left one: use it only if world size 1
        assert dist.get_world_size() == 1
        yield
        return
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


class Env:
    def __init__(self, root: Path) -> None:
        self.keyring = Keyring.create(root / "keys")
        self.key = SigningKey.generate()
        self.trust = Trust(verify_key_pem=self.key.public_key().to_pem().decode())
        self.dir = root / "ck"

    def store(self, **kw: object) -> DcpCheckpoints:
        return DcpCheckpoints(self.dir, LocalKeys(self.keyring), signing_key_signer(self.key),
                              trust_verifier(self.trust), sync_files=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path, group: None) -> Env:
    return Env(tmp_path)


class Counter:
    """A Stateful object (DCP calls state_dict / load_state_dict)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def state_dict(self) -> dict[str, object]:
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, sd: dict[str, object]) -> None:
        self.n = int(sd["n"])  # type: ignore[call-overload]


def _state(seed: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fp32": torch.randn(64, 8, generator=g),
        "bf16": torch.randn(33, generator=g).to(torch.bfloat16),
        "int8": torch.randint(-128, 127, (17,), generator=g, dtype=torch.int8),
        "bool": torch.rand(9, generator=g) > 0.5,
        "counter": Counter(seed),
    }


def _blank() -> dict[str, object]:
    s = _state(0)
    for k, v in s.items():
        if isinstance(v, torch.Tensor):
            s[k] = torch.zeros_like(v)
    s["counter"] = Counter(-1)
    return s


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            w = b[k]
            assert isinstance(w, torch.Tensor)
            if v.dtype != w.dtype or not torch.equal(v, w):
                return False
        elif isinstance(v, Counter) and v.n != b[k].n:  # type: ignore[attr-defined]
            return False
    return True


def test_round_trip_of_every_dtype_sealed_and_signed(env: Env) -> None:
    store = env.store()
    saved = _state(7)
    store.save(7, saved)
    folder = store.path_for(7)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".metadata", "__0_0.distcp"]
    for p in folder.iterdir():
        raw = p.read_bytes()
        assert raw.startswith(b"TGSEAL") and b"fp32" not in raw and b"Metadata" not in raw
        assert oct(p.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(manifest_path(folder).read_text())
    assert doc["manifest"]["kind"] == "directory"
    assert sorted(f["path"] for f in doc["manifest"]["files"]) == names
    state = _blank()
    info, refused = store.resume(state)
    assert info is not None and info.step == 7 and refused == []
    assert info.signer.startswith("node-key:")
    assert _same(saved, state) and state["counter"].n == 7  # type: ignore[attr-defined]


def test_dtensor_round_trip(env: Env) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    store = env.store()
    store.save(1, {"w": distribute_tensor(full, mesh, [Shard(0)])})
    target = {"w": distribute_tensor(torch.zeros(6, 4), mesh, [Shard(0)])}
    store.resume(target)
    assert torch.equal(target["w"].full_tensor(), full)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _tamper_flip_shard(env: Env, folder: Path) -> None:
    _flip(folder / "__0_0.distcp")


def _tamper_flip_metadata(env: Env, folder: Path) -> None:
    _flip(folder / ".metadata")


def _tamper_missing_shard(env: Env, folder: Path) -> None:
    (folder / "__0_0.distcp").unlink()


def _tamper_shard_of_other_step(env: Env, folder: Path) -> None:
    other = env.store().path_for(1) / "__0_0.distcp"
    (folder / "__0_0.distcp").write_bytes(other.read_bytes())


def _tamper_swapped_metadata(env: Env, folder: Path) -> None:
    other = env.store().path_for(1) / ".metadata"
    (folder / ".metadata").write_bytes(other.read_bytes())


def _tamper_unsigned_extra(env: Env, folder: Path) -> None:
    (folder / "__1_0.distcp").write_bytes(b"extra")


def _tamper_no_manifest(env: Env, folder: Path) -> None:
    manifest_path(folder).unlink()


def _tamper_foreign_signature(env: Env, folder: Path) -> None:
    doc = json.loads(manifest_path(folder).read_text())
    foreign = signing_key_signer(SigningKey.generate())(doc["manifest"])
    doc.update(foreign)
    manifest_path(folder).write_text(json.dumps(doc))


@pytest.mark.parametrize("tamper", [
    _tamper_flip_shard, _tamper_flip_metadata, _tamper_missing_shard,
    _tamper_shard_of_other_step, _tamper_swapped_metadata, _tamper_unsigned_extra,
    _tamper_no_manifest, _tamper_foreign_signature,
], ids=lambda f: f.__name__.removeprefix("_tamper_"))
def test_tampered_step_is_refused_and_the_previous_one_loads(env: Env, tamper) -> None:  # type: ignore[no-untyped-def]
    store = env.store()
    store.save(1, _state(1))
    store.save(2, _state(2))
    folder = store.path_for(2)
    tamper(env, folder)
    with pytest.raises(CheckpointTampered) as err:
        store.load(folder, _blank())
    assert "step-00000002.dcp" in err.value.message and err.value.tip
    best, refused = newest_verified(env.dir, trust_verifier(env.trust))
    if tamper in (_tamper_flip_shard, _tamper_flip_metadata):
        # a body byte: the signed tag digest (header, tags, length) still matches; the
        # segment's AES-GCM tag refuses it when it is unsealed (load above, resume below)
        assert best is not None and best.step == 2 and refused == []
    else:
        assert best is not None and best.step == 1
        if tamper is not _tamper_no_manifest:  # an unfinished step is not even a candidate
            assert [p for p, _ in refused] == [folder]
    state = _blank()
    info, refused = store.resume(state)
    assert info is not None and info.step == 1 and _same(_state(1), state)
    if tamper is not _tamper_no_manifest:
        assert [p for p, _ in refused] == [folder]


def test_keep_prunes_old_steps_and_never_overwrites_a_signed_one(env: Env) -> None:
    store = env.store(keep=2)
    for step in (1, 2, 3):
        store.save(step, _state(step))
    assert sorted(p.name for p in env.dir.iterdir() if p.is_dir()) == [
        "step-00000002.dcp", "step-00000003.dcp"]
    with pytest.raises(TrainerError, match="already a signed checkpoint"):
        store.save(3, _state(9))
    info, _ = store.resume(_blank())
    assert info is not None and info.step == 3


def test_nothing_verifies_means_no_resume(env: Env) -> None:
    store = env.store()
    store.save(5, _state(5))
    os.remove(manifest_path(store.path_for(5)))
    info, refused = store.resume(_blank())
    assert info is None and refused == []


def test_export_gathers_a_verified_step_into_one_sealed_signed_file(env: Env, tmp_path: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from trainguard.trainer.checkpoint import CheckpointStore
    from trainguard.trainer.dcp import export_single

    mesh = init_device_mesh("cpu", (1,))
    full = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    store = env.store()
    store.save(4, {"model": {"w": distribute_tensor(full, mesh, [Shard(0)]),
                             "b": torch.ones(2, dtype=torch.bfloat16)}})
    keys, sign = LocalKeys(env.keyring), signing_key_signer(env.key)
    out = tmp_path / "export"
    info = export_single(store.path_for(4), out, keys, sign, trust_verifier(env.trust))
    assert info.path.read_bytes().startswith(b"TGSEAL")

    class Keys(LocalKeys):
        def sign(self, body: dict) -> dict:  # type: ignore[type-arg]
            return sign(body)

    payload, got = CheckpointStore(out, Keys(env.keyring), env.trust).load(info.path)
    assert got.step == 4 and payload["step"] == 4
    assert torch.equal(payload["state"]["model"]["w"], full)
    assert payload["state"]["model"]["b"].dtype == torch.bfloat16
    _flip(store.path_for(4) / "__0_0.distcp")
    with pytest.raises(CheckpointTampered):
        export_single(store.path_for(4), tmp_path / "export2", keys, sign, trust_verifier(env.trust))
    assert not (tmp_path / "export2").exists()


def test_through_the_real_key_service(home, keys, tmp_path: Path, group: None) -> None:  # type: ignore[no-untyped-def]
    """Workers' path: data keys, unwrapping and the manifest signature from the key service
    (the launcher's key process / the agent); verified with the node's public material."""
    from trainguard.trainer.keys import KeyServiceUnavailable
    from trainguard.trainer.launcher import trust_for

    store = DcpCheckpoints(tmp_path / "ck", keys, keys.sign, trust_verifier(trust_for(home)),
                           sync_files=False)
    saved = _state(3)
    store.save(3, saved)
    state = _blank()
    info, _ = store.resume(state)
    assert info is not None and info.step == 3 and _same(saved, state)
    body = json.loads(manifest_path(store.path_for(3)).read_text())["manifest"]
    body["files"].append({"path": "notes.txt", "size": 1, "sha256": "0" * 64})
    with pytest.raises(KeyServiceUnavailable, match="only the manifest of one checkpoint"):
        keys.sign(body)  # the service signs DCP steps, not arbitrary folders


def test_a_step_signed_for_another_job_or_for_no_job_is_refused(env: Env, tmp_path: Path) -> None:
    """DCP manifests carry the job like single-file ones: a validly signed step copied in from
    another job's folder (or one that names no job) is never resumed into this job."""
    import dataclasses
    import shutil

    mine = dataclasses.replace(env.trust, job="job-a")
    other = dataclasses.replace(env.trust, job="job-b")

    def store(trust: Trust, directory: Path) -> DcpCheckpoints:
        return DcpCheckpoints(directory, LocalKeys(env.keyring), signing_key_signer(env.key),
                              trust_verifier(trust), sync_files=False, binding=trust.job)

    ours = store(mine, env.dir)
    ours.save(1, _state(1))
    theirs = store(other, tmp_path / "other")
    theirs.save(2, _state(2))
    unbound = DcpCheckpoints(tmp_path / "old", LocalKeys(env.keyring), signing_key_signer(env.key),
                             trust_verifier(env.trust), sync_files=False)
    unbound.save(3, _state(3))
    for src in (theirs.path_for(2), unbound.path_for(3)):  # copied into this job's folder
        shutil.copytree(src, env.dir / src.name)
        shutil.copy(src.with_name(src.name + ".tgsig.json"), env.dir / (src.name + ".tgsig.json"))

    best, refused = newest_verified(env.dir, trust_verifier(mine))
    assert best is not None and best.step == 1
    reasons = dict((p.name, why) for p, why in refused)
    assert "signed for another job (job-b), not this one (job-a)" in reasons["step-00000002.dcp"]
    assert "names no job" in reasons["step-00000003.dcp"]
    state = _blank()
    info, _ = ours.resume(state)
    assert info is not None and info.step == 1 and _same(_state(1), state)
    # outside a job (a tool given one folder) the binding is not checked
    assert newest_verified(env.dir, trust_verifier(env.trust))[0].step == 3  # type: ignore[union-attr]
