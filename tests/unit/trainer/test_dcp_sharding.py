"""Which checkpoint path a state takes (`trainer.dcp.sharding`), and DCP's non-tensor entries:
plain values round-trip, anything that would need a pickle of a foreign class is refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support.dist_group import single_rank_group
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import (
    AppState,
    DcpCheckpoints,
    LocalKeys,
    holds_dtensors,
    is_sharded_state,
    signing_key_signer,
    trust_verifier,
)
from trainguard.trainer.dcp.sharding import layout_of
from trainguard.trainer.errors import CheckpointTampered

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def group() -> Iterator[None]:
    with single_rank_group():
        yield


def test_layout_names_shapes_and_dtypes_of_every_entry_stateful_ones_expanded() -> None:
    model = torch.nn.Linear(3, 2)
    base = layout_of({"model": model, "step": 3})
    assert base == layout_of({"model": torch.nn.Linear(3, 2), "step": 4})  # values do not count
    assert base[0] is False
    assert base != layout_of({"model": torch.nn.Linear(4, 2), "step": 3})  # a shape
    assert base != layout_of({"model": torch.nn.Linear(3, 2).to(torch.bfloat16), "step": 3})
    assert base != layout_of({"stage1": torch.nn.Linear(3, 2), "step": 3})  # a name


def test_dtensor_state_is_sharded_and_a_plain_one_is_not(group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    cpu = torch.device("cpu")
    assert not is_sharded_state({"w": torch.ones(4), "model": torch.nn.Linear(2, 2)}, cpu)
    assert is_sharded_state({"w": distribute_tensor(torch.ones(4), mesh, [Shard(0)])}, cpu)
    from torch.distributed.fsdp import fully_shard

    model = torch.nn.Linear(4, 4)
    assert not holds_dtensors(model)
    fully_shard(model, mesh=mesh)
    assert holds_dtensors(model)
    assert is_sharded_state({"app": AppState(model, torch.optim.AdamW(model.parameters()))}, cpu)


class _Payload:
    """Not plain data: pickling it records a class that a weights-only load refuses."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/trainguard-pwned-by-dcp-bytes",))


class _Holder:
    def __init__(self, value: object) -> None:
        self.value = value

    def state_dict(self) -> dict[str, object]:
        return {"value": self.value}

    def load_state_dict(self, sd: dict[str, object]) -> None:
        self.value = sd["value"]


def _store(tmp_path: Path) -> DcpCheckpoints:
    key = SigningKey.generate()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    return DcpCheckpoints(tmp_path / "ck", LocalKeys(Keyring.create(tmp_path / "keys")),
                          signing_key_signer(key), trust_verifier(trust), sync_files=False)


def test_plain_non_tensor_entries_round_trip(group: None, tmp_path: Path) -> None:
    store = _store(tmp_path)
    plain = {"lr": 0.1, "betas": (0.9, 0.99), "name": "adamw", "milestones": [1, 2]}
    store.save(1, {"w": torch.ones(3), "h": _Holder(plain)})
    holder = _Holder({"lr": 0.0, "betas": (0.0, 0.0), "name": "", "milestones": [0, 0]})
    info, refused = store.resume({"w": torch.zeros(3), "h": holder})
    assert info is not None and info.step == 1 and not refused
    assert holder.value == plain


def test_a_non_tensor_entry_that_needs_a_foreign_class_is_refused_and_never_runs(
        group: None, tmp_path: Path) -> None:
    marker = Path("/tmp/trainguard-pwned-by-dcp-bytes")
    marker.unlink(missing_ok=True)
    store = _store(tmp_path)
    store.save(1, {"w": torch.ones(3), "h": _Holder(0)})
    store.save(2, {"w": torch.ones(3) * 2, "h": _Holder(_Payload())})  # a signed step
    assert not marker.exists()
    holder = _Holder(-1)
    with pytest.raises(CheckpointTampered):
        store.load(store.path_for(2), {"w": torch.zeros(3), "h": holder})
    assert not marker.exists()
    state = {"w": torch.zeros(3), "h": holder}
    info, refused = store.resume(state)
    assert info is not None and info.step == 1 and [p.name for p, _ in refused] == ["step-00000002.dcp"]
    assert holder.value == 0 and torch.equal(state["w"], torch.ones(3))  # type: ignore[arg-type]
    assert not marker.exists()


@pytest.mark.parametrize("flip", ["metadata-tag", "shard-body"])
def test_a_refused_step_is_set_aside_when_training_comes_back_to_its_number(
        group: None, tmp_path: Path, flip: str) -> None:
    """Whether the manifest check refuses the step (a changed tag) or only its load does (a
    body byte under intact tags), reaching its number again sets it aside, never crashes."""
    from trainguard.trainer.errors import TrainerError

    store = _store(tmp_path)
    store.save(1, {"w": torch.ones(3)})
    store.save(2, {"w": torch.ones(3) * 2})
    if flip == "metadata-tag":
        meta = store.path_for(2) / ".metadata"
        meta.write_bytes(meta.read_bytes()[:-1] + bytes([meta.read_bytes()[-1] ^ 1]))
    else:
        shard = next(store.path_for(2).glob("*.distcp"))
        data = bytearray(shard.read_bytes())
        data[200] ^= 1  # past the 157-byte header: ciphertext of the first segment
        shard.write_bytes(bytes(data))
    info, refused = store.resume({"w": torch.zeros(3)})
    assert info is not None and info.step == 1 and len(refused) == 1
    store.save(2, {"w": torch.ones(3) * 5})  # resumed at 1, trained on to step 2 again
    aside = sorted(p.name for p in store.directory.iterdir() if ".refused-" in p.name)
    assert len(aside) == 2 and aside[1] == aside[0] + ".tgsig.json"  # kept for forensics
    state = {"w": torch.zeros(3)}
    info, refused = store.resume(state)
    assert info is not None and info.step == 2 and not refused
    assert torch.equal(state["w"], torch.ones(3) * 5)
    with pytest.raises(TrainerError, match="already a signed checkpoint"):  # a good one stays
        store.save(2, {"w": torch.ones(3)})
