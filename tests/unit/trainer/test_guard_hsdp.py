"""Robust aggregation across HSDP's replicate dimension, through `Guard.wrap` on a real
3-process gloo group (a 3x1 mesh: three replicas, each one shard group of one rank): with one
sign-flipping replica the gradient every rank ends up with is the coordinate median of the three
replicas' gradients (checked against gradients computed here without FSDP), the flipped replica
is flagged as a byzantine worker by its global rank and then excluded; with the mean the flip
drags the gradient, which is what the median prevents."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from support.dist_group import spawn
from trainguard.core.home import Home
from trainguard.trainer.context import ENV_CONTEXT, LaunchContext

pytestmark = pytest.mark.slow

WORLD, STEPS, FLIP = 3, 4, 2


def _environ(tmp: Path, key_socket: Path, rank: int, port: int, method: str) -> dict[str, str]:
    from trainguard.trainer.launcher import trust_for

    run = tmp / f"run-{method}"
    run.mkdir(mode=0o700, exist_ok=True)
    ctx = LaunchContext(job_id="j", run_dir=run, job_key=b"k" * 32, key_socket=key_socket,
                        checkpoint_dir=tmp / f"ck-{method}", resume=False, created=time.time(),
                        stop_file=tmp / "stop-training.json",
                        settings={"telemetry": {"every": 1},
                                  "aggregation": {"method": method, "flag_after": 2},
                                  "simulate": {"byzantine_ranks": [FLIP], "attack": "sign-flip",
                                               "strength": 3.0}},
                        trust=trust_for(Home(tmp / "home")), kind="script")
    path = tmp / f"ctx-{method}-{rank}.json"
    ctx.write(path)
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), ENV_CONTEXT: str(path)}


def _data(replica: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + replica)
    return torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _worker(rank: int, tmp: str, port: int, key_socket: str, method: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from trainguard.trainer.guard import Guard

    torch.set_num_threads(1)
    root = Path(tmp)
    out: dict[str, object] = {"grads": []}
    with Guard.from_env(environ=_environ(root, Path(key_socket), rank, port, method)) as guard:
        mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))
        model = _model()
        fully_shard(model, mesh=mesh)
        model = guard.wrap(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(1, STEPS + 1):
            x, y = _data(mesh.get_local_rank("replicate"), step)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            out["grads"].append([p.grad.full_tensor().flatten().tolist() for p in model.parameters()])
            params = [p.full_tensor().detach().clone() for p in model.parameters()]
            out.setdefault("params", []).append([p.flatten().tolist() for p in params])
            opt.step()
            guard.step(step)
        out["flagged"] = {str(k): v for k, v in guard.flagged.items()}
    (root / f"{method}-{rank}.json").write_text(json.dumps(out))


def _run(tmp_path: Path, key_socket: Path, method: str) -> list[dict]:  # type: ignore[type-arg]
    from support.trainer_jobs import free_port

    spawn(_worker, (str(tmp_path), free_port(), str(key_socket), method), WORLD)
    return [json.loads((tmp_path / f"{method}-{r}.json").read_text()) for r in range(WORLD)]


def _replica_grads(params: list[list[float]], step: int) -> list[list[torch.Tensor]]:
    """Each replica's own gradient at the parameters every rank had at `step`, without FSDP,
    the flipping replica's as it sends it (-3x)."""
    out = []
    for replica in range(WORLD):
        model = _model()
        with torch.no_grad():
            for p, v in zip(model.parameters(), params, strict=True):
                p.copy_(torch.tensor(v).view_as(p))
        x, y = _data(replica, step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads = [p.grad.flatten().clone() for p in model.parameters()]
        out.append([-3.0 * g for g in grads] if replica == FLIP else grads)
    return out


def test_median_over_hsdp_replicas_outvotes_a_sign_flipping_replica_and_flags_it(
        home: Home, key_socket: Path, tmp_path: Path) -> None:
    reps = _run(tmp_path, key_socket, "median")
    first = reps[0]
    for rep in reps[1:]:  # every replica applies the same aggregate, bit for bit
        assert rep["grads"] == first["grads"]
    flagged_at = int(first["flagged"][str(FLIP)])
    assert set(first["flagged"]) == {str(FLIP)} and flagged_at <= 2
    for step in range(1, STEPS + 1):
        rows = _replica_grads(first["params"][step - 1], step)
        for i, got in enumerate(first["grads"][step - 1]):
            stacked = torch.stack([rows[r][i] for r in range(WORLD)])
            if step <= flagged_at:  # before the flag: the coordinate median of all three
                want = stacked.median(dim=0).values
            else:  # flagged and excluded: the two honest replicas (median of two = mean)
                want = stacked[[r for r in range(WORLD) if r != FLIP]].mean(dim=0)
            assert torch.tensor(got) == pytest.approx(want, rel=1e-4, abs=1e-6), (step, i)


def test_with_the_mean_the_flipped_replica_drags_the_gradient(
        home: Home, key_socket: Path, tmp_path: Path) -> None:
    first = _run(tmp_path, key_socket, "mean")[0]
    rows = _replica_grads(first["params"][0], 1)
    for i, got in enumerate(first["grads"][0]):
        stacked = torch.stack([rows[r][i] for r in range(WORLD)])
        assert torch.tensor(got) == pytest.approx(stacked.mean(dim=0), rel=1e-4, abs=1e-6)
        assert not torch.allclose(torch.tensor(got), stacked.median(dim=0).values, atol=1e-6)
