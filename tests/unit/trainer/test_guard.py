"""The Guard API across a real 2-process gloo group (no torchrun): every call on every rank,
every collective on guard.device, no pickle-based collective, resume in place, stop requests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from support.dist_group import spawn
from trainguard.core.home import Home
from trainguard.trainer.context import ENV_CONTEXT, LaunchContext, LaunchContextMissing

WORLD = 2
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "gather", "scatter", "send", "recv", "isend", "irecv")
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object",
                      "scatter_object_list", "send_object_list", "recv_object_list")


def _context(tmp: Path, key_socket: Path, settings: dict, *, resume: bool, job: str) -> LaunchContext:
    from trainguard.trainer.launcher import trust_for

    run = tmp / f"run-{job}"
    run.mkdir(mode=0o700, exist_ok=True)
    return LaunchContext(job_id=job, run_dir=run, job_key=b"k" * 32, key_socket=key_socket,
                         checkpoint_dir=tmp / f"ck-{job}", resume=resume, created=time.time(),
                         stop_file=tmp / "stop-training.json", settings=settings,
                         trust=trust_for(Home(tmp / "home")), kind="script")


def _spy(calls: list[tuple[str, list[str]]]) -> None:
    """Record the device of every tensor handed to a torch.distributed collective."""

    def devices(args: tuple, kwargs: dict) -> list[str]:
        out = []
        for a in [*args, *kwargs.values()]:
            items = a if isinstance(a, (list, tuple)) else [a]
            out += [str(t.device) for t in items if isinstance(t, torch.Tensor)]
        return out

    for name in COLLECTIVES:
        real = getattr(dist, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, devices(args, kwargs)))
            return _real(*args, **kwargs)

        setattr(dist, name, wrapper)
    for name in OBJECT_COLLECTIVES:
        setattr(dist, name, lambda *a, _n=name, **k: calls.append((_n, ["object"])))


def _worker(rank: int, tmp: str, port: int, key_socket: str, world: int = WORLD,
            meta: bool = True) -> None:
    from trainguard.trainer.guard import Guard

    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    calls: list[tuple[str, list[str]]] = []
    _spy(calls)
    report: dict = {}
    settings = {"aggregation": {"method": "median", "compress": "bf16"},
                "telemetry": {"every": 1}, "consistency": {"every": 2}}
    for attempt, resume in enumerate((False, True)):
        ctx = _context(tmp_path, Path(key_socket), settings, resume=resume, job="j1")
        ctx_file = tmp_path / f"ctx-{rank}-{attempt}.json"
        ctx.write(ctx_file)
        environ = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port + attempt),
                   ENV_CONTEXT: str(ctx_file)}
        # Anything trainguard creates without an explicit device lands on "meta" and shows up
        # (on a GPU the real CUDA device does the same job).
        if meta:
            torch.set_default_device("meta")
        with Guard.from_env(environ=environ) as guard:
            torch.manual_seed(attempt)  # a different init on the second attempt: resume must fix it
            model = torch.nn.Sequential(torch.nn.Linear(6, 8, device="cpu"), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 3, device="cpu"))
            ddp = guard.wrap(model)
            opt = torch.optim.AdamW(ddp.parameters(), lr=0.01)
            counter = torch.zeros(1, device=guard.device)
            state = {"model": ddp, "optim": opt, "counter": counter}
            start = guard.resume(state) or 0
            report[f"resumed_{attempt}"] = start
            report[f"weights_after_resume_{attempt}"] = model[0].weight.detach().sum().item()
            g = torch.Generator(device="cpu").manual_seed(rank)
            for step in range(start + 1, start + 5):
                x = torch.randn(4, 6, generator=g, device="cpu").to(guard.device)
                y = torch.randint(3, (4,), generator=g, device="cpu").to(guard.device)
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                counter += 1
                guard.step(step, loss=loss)
            guard.save(start + 4, state)
            report[f"weights_saved_{attempt}"] = model[0].weight.detach().sum().item()
            report["device"] = str(guard.device)
            report["bytes"] = guard.bytes_sent
        torch.set_default_device("cpu")
    report["calls"] = calls
    (tmp_path / f"report-{rank}.json").write_text(json.dumps(report))


def test_every_collective_runs_on_the_guard_device_and_resume_loads_in_place(
        home: Home, key_socket: Path, tmp_path: Path) -> None:
    from support.trainer_jobs import free_port

    spawn(_worker, (str(tmp_path), free_port(), str(key_socket)), WORLD)
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(WORLD)]
    for rep in reports:
        names = {name for name, _ in rep["calls"]}
        assert not names & set(OBJECT_COLLECTIVES)
        # membership and replica hash (all_gather), telemetry, stop flag, hook (all_reduce /
        # all_gather), resume step (broadcast)
        assert {"all_gather", "all_reduce", "broadcast"} <= names
        devices = {d for _, ds in rep["calls"] for d in ds}
        assert devices == {rep["device"]} == {"cpu"}, rep["calls"]
        assert rep["resumed_0"] == 0 and rep["resumed_1"] == 4
        # the second attempt started from other weights; resume put the saved ones back
        assert rep["weights_after_resume_1"] == pytest.approx(rep["weights_saved_0"])
        assert rep["bytes"] > 0
    assert reports[0]["weights_saved_1"] == reports[1]["weights_saved_1"]  # replicas agree


def test_from_env_outside_trainguard_train_is_refused_clearly() -> None:
    from trainguard.trainer import Guard

    with pytest.raises(LaunchContextMissing, match="not started by `trainguard train`") as err:
        Guard.from_env(environ={"RANK": "0", "WORLD_SIZE": "1"})
    assert err.value.exit_code == 2
    assert "trainguard train --script" in (err.value.tip or "")


def test_stop_training_exits_quietly_with_status_zero() -> None:
    from trainguard.trainer import StopTraining

    stop = StopTraining("replica-divergence")
    assert isinstance(stop, SystemExit) and stop.code == 0
    assert "replica-divergence" in str(stop)


def test_launch_context_is_private_and_holds_no_kek(home: Home, tmp_path: Path) -> None:
    ctx = _context(tmp_path, tmp_path / "keys.sock", {}, resume=False, job="j")
    path = tmp_path / "ctx.json"
    ctx.write(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    kek = (home.keys_dir / "kek-v1.key").read_bytes()
    body = path.read_bytes()
    assert kek.hex().encode() not in body and kek not in body
    assert LaunchContext.read(path) == ctx
    assert "kkkk" not in repr(ctx) and "6b6b" not in repr(ctx)
