"""Guard.save / Guard.resume with sharded state, across a real 2-process gloo group (no
torchrun): DTensor state goes to sealed DCP steps (sync and async), per-rank (pipeline-like)
state too, replicated state stays one sealed file; resume takes the newest step of either kind
that verifies and reports refused ones as checkpoint-tampered."""

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

WORLD = 2


def _environ(tmp: Path, key_socket: Path, rank: int, port: int, *, resume: bool, tag: str,
             ck: str) -> dict[str, str]:
    from trainguard.trainer.launcher import trust_for

    run = tmp / f"run-{tag}"
    run.mkdir(mode=0o700, exist_ok=True)
    ctx = LaunchContext(job_id="j", run_dir=run, job_key=b"k" * 32, key_socket=key_socket,
                        checkpoint_dir=tmp / ck, resume=resume, created=time.time(),
                        stop_file=tmp / "stop-training.json",
                        settings={"checkpoint": {"keep": 10}, "telemetry": {"every": 1}},
                        trust=trust_for(Home(tmp / "home")), kind="script")
    path = tmp / f"ctx-{tag}-{rank}.json"
    ctx.write(path)
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), ENV_CONTEXT: str(path)}


def _sharded(value: float):  # type: ignore[no-untyped-def]
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4) + value
    return {"w": distribute_tensor(full, mesh, [Shard(0)]),
            "b": distribute_tensor((full[:, 0] / 3).to(torch.bfloat16), mesh, [Shard(0)])}


def _full(state: dict) -> list[float]:  # type: ignore[type-arg]
    return [float(v.full_tensor().float().sum()) for _, v in sorted(state.items())]


def _worker(rank: int, tmp: str, port: int, key_socket: str, phase: str, ck: str) -> None:
    from trainguard.trainer.guard import Guard

    torch.set_num_threads(1)
    root = Path(tmp)
    out: dict[str, object] = {}
    resume = phase != "save"
    with Guard.from_env(environ=_environ(root, Path(key_socket), rank, port, resume=resume,
                                         tag=phase, ck=ck)) as guard:
        if phase == "save":
            state = _sharded(0.0)
            guard.save(2, state)
            live = _sharded(4.0)
            guard.save(4, live, async_=True)
            for v in live.values():  # the loop runs on and changes the live state
                v.to_local().add_(1000)
            guard.step(1)
            per_rank = {f"stage{rank}": torch.full((3,), float(rank))}  # keys differ by rank
            guard.save(6, per_rank)
            guard.save(8, {"replicated": torch.ones(5)})
            out["checkpoints"] = guard.checkpoints
        elif phase == "resume-replicated":
            replicated = {"replicated": torch.zeros(5)}
            out["step"] = guard.resume(replicated)
            out["replicated"] = replicated["replicated"].tolist()
        else:
            state = _sharded(-1.0)
            out["step"] = guard.resume(state)
            out["sums"] = _full(state)
    (root / f"{phase}-{rank}.json").write_text(json.dumps(out))


def _run(tmp_path: Path, key_socket: Path, phase: str, ck: str = "ck") -> list[dict]:  # type: ignore[type-arg]
    from support.trainer_jobs import free_port

    spawn(_worker, (str(tmp_path), free_port(), str(key_socket), phase, ck), WORLD)
    return [json.loads((tmp_path / f"{phase}-{r}.json").read_text()) for r in range(WORLD)]


def _events(tmp_path: Path, phase: str, name: str) -> list[dict]:  # type: ignore[type-arg]
    path = tmp_path / f"run-{phase}" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sharded_state_is_saved_as_sealed_dcp_and_resumed_newest_first(
        home: Home, key_socket: Path, tmp_path: Path) -> None:
    import shutil

    from trainguard.crypto.sealed.format import MAGIC

    _run(tmp_path, key_socket, "save")
    ck = tmp_path / "ck"
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["step-00000002.dcp", "step-00000002.dcp.tgsig.json",
                     "step-00000004.dcp", "step-00000004.dcp.tgsig.json",
                     "step-00000006.dcp", "step-00000006.dcp.tgsig.json",
                     "step-00000008.tgseal", "step-00000008.tgseal.tgsig.json"]
    for shard in (ck / "step-00000004.dcp").iterdir():  # every DCP file is a sealed stream
        assert shard.read_bytes()[:6] == MAGIC
    events = _events(tmp_path, "save", "events")
    assert [(e["step"], e["format"]) for e in events if e["kind"] == "checkpoint"] == [
        (2, "dcp"), (4, "dcp"), (6, "dcp"), (8, "file")]

    # Either kind counts: the single file of step 8 is newer than the DCP steps.
    for rep in _run(tmp_path, key_socket, "resume-replicated"):
        assert rep["step"] == 8 and rep["replicated"] == [1.0] * 5
    assert _events(tmp_path, "resume-replicated", "incidents") == []

    # Without steps 6 and 8 (other layouts), the DTensor state resumes from step 4 as it was
    # staged when the asynchronous save() returned (the loop changed the live tensors after).
    _remove_steps(ck, 6, 8)
    shutil.copytree(ck, tmp_path / "ck-tampered")
    for rep in _run(tmp_path, key_socket, "resume"):
        assert rep["step"] == 4
        assert rep["sums"] == pytest.approx(_full_expected(4.0))

    # A flipped byte in one shard of step 4: refused on every rank, reported, step 2 loads.
    shard = next((tmp_path / "ck-tampered" / "step-00000004.dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-40] ^= 0x01
    shard.write_bytes(bytes(data))
    for rep in _run(tmp_path, key_socket, "resume-after-tamper", "ck-tampered"):
        assert rep["step"] == 2
        assert rep["sums"] == pytest.approx(_full_expected(0.0))
    incidents = _events(tmp_path, "resume-after-tamper", "incidents")
    assert [i["kind"] for i in incidents] == ["checkpoint-tampered"]
    assert "step-00000004.dcp" in incidents[0]["evidence"]["checkpoint"]


def _remove_steps(ck: Path, *steps: int) -> None:
    for step in steps:
        for p in ck.glob(f"step-{step:08d}*"):
            if p.is_dir():
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
            else:
                p.unlink()


def _full_expected(value: float) -> list[float]:
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4) + value
    return [float((full[:, 0] / 3).to(torch.bfloat16).float().sum()), float(full.sum())]
