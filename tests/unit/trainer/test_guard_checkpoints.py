"""`GuardCheckpoints` on a 1-process gloo group: asynchronous saves of both kinds hold the state
as it was when save() returned, are recorded once their manifest exists, and resume loads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support.dist_group import single_rank_group
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import LocalKeys, signing_key_signer
from trainguard.trainer.guard_checkpoints import GuardCheckpoints
from trainguard.trainer.rundir import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def group() -> Iterator[None]:
    with single_rank_group():
        yield


class _Keys(LocalKeys):
    """The key service's three calls, in this process (the test holds the keyring)."""

    def __init__(self, keyring: Keyring, key: SigningKey) -> None:
        super().__init__(keyring)
        self.sign = signing_key_signer(key)


def _checkpoints(tmp_path: Path, refused: list[tuple[Path, str]]) -> GuardCheckpoints:
    key = SigningKey.generate()
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    return GuardCheckpoints(tmp_path / "ck", _Keys(Keyring.create(tmp_path / "keys"), key),
                            Trust(verify_key_pem=key.public_key().to_pem().decode()), keep=5,
                            is_main=True, device=torch.device("cpu"), run=run,
                            refused=lambda p, r: refused.append((p, r)))


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_async_saves_of_both_kinds_hold_the_state_as_staged(group: None, tmp_path: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    refused: list[tuple[Path, str]] = []
    ck = _checkpoints(tmp_path, refused)
    replicated = {"w": torch.arange(6, dtype=torch.float32), "step": 3}
    ck.save(3, replicated, async_=True)
    replicated["w"].add_(100)  # the loop runs on
    mesh = init_device_mesh("cpu", (1,))
    sharded = {"w": distribute_tensor(torch.arange(6, dtype=torch.float32), mesh, [Shard(0)])}
    ck.save(5, sharded, async_=True)  # waits for the file save, then stages the DCP step
    sharded["w"].to_local().add_(100)
    ck.settle(block=True)
    assert [(e["step"], e["format"]) for e in _events(tmp_path)] == [(3, "file"), (5, "dcp")]

    into = {"w": distribute_tensor(torch.zeros(6), mesh, [Shard(0)])}
    got = ck.resume(into, may_resume=True)
    assert got is not None and got.step == 5 and not refused
    assert torch.equal(into["w"].full_tensor(), torch.arange(6, dtype=torch.float32))
    ck.close()


def test_nothing_is_loaded_unless_the_job_may_resume(group: None, tmp_path: Path) -> None:
    ck = _checkpoints(tmp_path, [])
    ck.save(1, {"w": torch.ones(2)})
    state = {"w": torch.zeros(2)}
    assert ck.resume(state, may_resume=False) is None
    assert torch.equal(state["w"], torch.zeros(2))
    got = ck.resume(state, may_resume=True)
    assert got is not None and got.step == 1 and torch.equal(state["w"], torch.ones(2))
