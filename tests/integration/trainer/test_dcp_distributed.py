"""Sealed DCP checkpoints across real processes on gloo: DTensor state saved at world size 2
resumes at world sizes 1 and 3, and saved at 4 resumes at 2 and 3 (DCP resharding); an FSDP2
model with its optimizer resumes at 2 and 1 ranks; an asynchronous save lets the step loop run on
and signs only when every rank finished; a rank killed during an asynchronous save leaves the
previous step as the newest that verifies.

Each rank is this file run as a script (``python test_dcp_distributed.py ROLE RANK WORLD PORT
ROOT``), so the workers import nothing of pytest's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROWS, COLS = 12, 6  # divisible by 2 and 3


def _expected(step: int):  # type: ignore[no-untyped-def]
    import torch

    base = torch.arange(ROWS * COLS, dtype=torch.float32).reshape(ROWS, COLS) + step
    return {"fp32": base, "bf16": (base / 7).to(torch.bfloat16)}


# ---- the worker -------------------------------------------------------------------------------


def _worker(role: str, rank: int, world: int, port: int, root: Path) -> None:
    import datetime as dt

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey
    from trainguard.trainer.context import Trust
    from trainguard.trainer.dcp import (
        DcpCheckpoints,
        LocalKeys,
        signing_key_signer,
        trust_verifier,
    )

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=dt.timedelta(seconds=20))
    mesh = init_device_mesh("cpu", (world,))
    key = SigningKey.load(root / "sign.key")
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    store = DcpCheckpoints(root / "ck", LocalKeys(Keyring.open(root / "keys")),
                           signing_key_signer(key), trust_verifier(trust), keep=5)

    def sharded(step: int) -> dict[str, object]:
        return {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in _expected(step).items()}

    out: dict[str, object] = {"rank": rank}
    if role == "save":
        store.save(1, sharded(1))
        state = sharded(2)
        t0 = time.perf_counter()
        store.save(2, state, async_=True)
        out["returned_s"] = time.perf_counter() - t0
        out["manifest_at_return"] = (root / "ck" / "step-00000002.dcp.tgsig.json").exists()
        for v in state.values():  # the step loop runs on and changes the live state
            v.to_local().add_(1000)  # type: ignore[attr-defined]
        store.wait()
        out["manifest_after_wait"] = (root / "ck" / "step-00000002.dcp.tgsig.json").exists()
    elif role == "load":
        state = {k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(0)])
                 for k, v in _expected(0).items()}
        info, refused = store.resume(state)
        full = {k: v.full_tensor() for k, v in state.items()}  # type: ignore[attr-defined]
        out["step"] = info.step if info else None
        out["refused"] = [p.name for p, _ in refused]
        want = _expected(info.step if info else -1)
        out["equal"] = all(torch.equal(full[k], want[k]) and full[k].dtype == want[k].dtype
                           for k in want)
    elif role in ("fsdp-save", "fsdp-load"):
        fsdp = DcpCheckpoints(root / "fsdp", LocalKeys(Keyring.open(root / "keys")),
                              signing_key_signer(key), trust_verifier(trust))
        app = _FsdpApp(mesh, seed=0 if role == "fsdp-save" else 99)
        if role == "fsdp-save":
            for step in range(3):
                g = torch.Generator().manual_seed(step * 100 + rank)
                app.model(torch.randn(4, 8, generator=g)).sum().backward()
                app.optim.step()
                app.optim.zero_grad()
            fsdp.save(3, {"app": app})
        else:
            info, _ = fsdp.resume({"app": app})
            out["step"] = info.step if info else None
        out["fingerprint"] = app.fingerprint()
    elif role == "crash":
        store.save(3, sharded(3))
        big = {f"t{i}": distribute_tensor(torch.randn(512, 1024), mesh, [Shard(0)])
               for i in range(8)}
        store.save(4, big, async_=True)
        if rank == 1:
            os._exit(17)  # killed while its upload thread writes shards
        try:
            store.wait()
            out["save"] = "finished"
        except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
            out["save"] = f"failed: {type(exc).__name__}"
        print(json.dumps(out), flush=True)
        os._exit(0)  # the group lost a rank: no orderly teardown
    dist.barrier()
    dist.destroy_process_group()
    print(json.dumps(out), flush=True)


class _FsdpApp:
    """An FSDP2 (`fully_shard`) model and its optimizer as one DCP `Stateful` (DCP's recipe)."""

    def __init__(self, mesh, seed: int) -> None:  # type: ignore[no-untyped-def]
        import torch
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                         torch.nn.Linear(16, 4))
        for layer in self.model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=1e-2)

    def state_dict(self) -> dict:  # type: ignore[type-arg]
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.optim)
        return {"model": model, "optim": optim}

    def load_state_dict(self, sd: dict) -> None:  # type: ignore[type-arg]
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optim, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"])

    def fingerprint(self) -> list[float]:
        """Sums of every full parameter and Adam moment (collectives: all ranks call it)."""
        out = [round(float(p.full_tensor().double().sum()), 6) for p in self.model.parameters()]
        for p in self.model.parameters():
            st = self.optim.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq"):
                if k in st:
                    out.append(round(float(st[k].full_tensor().double().sum()), 6))
        return out


# ---- the tests --------------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(role: str, world: int, root: Path) -> list[dict]:
    port = _port()
    procs = [subprocess.Popen([sys.executable, __file__, role, str(r), str(world), str(port),
                               str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if role != "crash":
            assert p.returncode == 0, err[-3000:]
        if lines:
            results.append(json.loads(lines[-1]))
    return results


@pytest.fixture
def root(tmp_path: Path) -> Path:
    from trainguard.crypto.keyring import Keyring
    from trainguard.crypto.signing import SigningKey

    Keyring.create(tmp_path / "keys")
    SigningKey.generate().save(tmp_path / "sign.key")
    return tmp_path


def test_saved_at_two_ranks_resumes_at_one_and_three_and_async_save_signs_last(root: Path) -> None:
    saved = _run("save", 2, root)
    assert len(saved) == 2
    coordinator = next(r for r in saved if r["rank"] == 0)
    assert coordinator["manifest_after_wait"] is True
    folder = root / "ck" / "step-00000002.dcp"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    for world in (1, 3):
        loaded = _run("load", world, root)
        assert [r["step"] for r in loaded] == [2] * world
        # step 2 holds the state as it was when save() returned, not the +1000 the loop added
        assert all(r["equal"] for r in loaded), loaded


def test_saved_at_four_ranks_resumes_at_two_and_three(root: Path) -> None:
    """The issue's resharding case: world size 4 down to 2 and to 3 (uneven shards)."""
    assert len(_run("save", 4, root)) == 4
    folder = root / "ck" / "step-00000002.dcp"
    assert sorted(p.name for p in folder.iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"]
    for world in (2, 3):
        loaded = _run("load", world, root)
        assert [r["step"] for r in loaded] == [2] * world
        assert all(r["equal"] for r in loaded), loaded


def test_rank_killed_during_async_save_leaves_the_previous_step_newest(root: Path) -> None:
    from trainguard.crypto.signing import SigningKey
    from trainguard.trainer.context import Trust
    from trainguard.trainer.dcp import newest_verified, trust_verifier

    results = _run("crash", 2, root)
    assert [r["save"] for r in results if r["rank"] == 0] != ["finished"]
    assert not (root / "ck" / "step-00000004.dcp.tgsig.json").exists()
    key = SigningKey.load(root / "sign.key")
    best, _ = newest_verified(root / "ck", trust_verifier(
        Trust(verify_key_pem=key.public_key().to_pem().decode())))
    assert best is not None and best.step == 3
    loaded = _run("load", 1, root)
    assert loaded[0]["step"] == 3 and loaded[0]["equal"]


def test_fsdp2_model_and_optimizer_resume_at_two_and_one_ranks(root: Path) -> None:
    saved = _run("fsdp-save", 2, root)
    want = saved[0]["fingerprint"]
    assert len(want) == 12  # 4 parameters, each with 2 Adam moments
    assert all(r["fingerprint"] == want for r in saved)
    for world in (2, 1):
        loaded = _run("fsdp-load", world, root)
        assert [r["step"] for r in loaded] == [3] * world
        assert all(r["fingerprint"] == want for r in loaded), (world, loaded, want)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    # done and the group destroyed: leave without interpreter teardown, where torch's C++ side
    # can abort now and then (see tests/support/dist_group.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
