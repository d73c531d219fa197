"""GPU checks (`-m gpu`, skipped without an NVIDIA GPU): the NCCL path of the same code.

One GPU, one rank each: both examples end to end under NCCL through the launcher, a bf16
checkpoint round trip of CUDA tensors, and the robust hook (median, bf16 on the wire) with every
collective on the CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import EXAMPLES, run_job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.gpu]

PROBE = Path(__file__).parent / "scripts" / "probe_keys.py"


@pytest.mark.parametrize("example", ["digits_plain.py", "digits_accelerate.py"])
def test_examples_run_under_nccl_on_one_gpu(tmp_path: Path, example: str) -> None:
    home = make_home(tmp_path / "home")
    result, _ = run_job(home, ['aggregation.method="median"', 'aggregation.compress="bf16"'],
                        script=EXAMPLES / example, nproc=1, checkpoint_dir=tmp_path / "ck",
                        script_args=["--epochs", "3", "--checkpoint-every", "25"])
    assert result["status"] == "completed", result
    assert result["backend"] == "nccl" and result["device"] == "cuda:0"
    assert result["final_accuracy"] >= 0.85
    assert result["checkpoints"][-1]["step"] == result["steps"]


def test_bf16_cuda_checkpoint_round_trip_and_resume(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    out = tmp_path / "out"
    out.mkdir()
    ck = tmp_path / "ck"
    first, _ = run_job(home, [], script=PROBE, script_args=[str(out)], checkpoint_dir=ck, nproc=1)
    second, _ = run_job(home, [], script=PROBE, script_args=[str(out)], checkpoint_dir=ck, nproc=1,
                        resume=True)
    assert first["status"] == second["status"] == "completed"
    assert first["device"] == "cuda:0" and second["resumed_from_step"] == 3
    saved = json.loads((out / "probe-0-None.json").read_text())
    resumed = json.loads((out / "probe-0-3.json").read_text())
    assert resumed["dtype"] == "torch.bfloat16" and resumed["weight_sum"] == saved["weight_sum"]


def test_robust_hook_under_nccl_keeps_every_collective_on_the_gpu(tmp_path: Path) -> None:
    """The unit test's device spy, with a real CUDA device instead of the meta trick."""
    import torch
    import torch.multiprocessing as mp
    from support.trainer_jobs import free_port

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    home = make_home(tmp_path / "home")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "trainer"))
    import threading
    import time

    import test_guard as tg
    from trainguard.agent.api.keys import serve

    sock = tmp_path / "k.sock"
    stop = threading.Event()
    threading.Thread(target=serve, args=(home, sock), kwargs={"until": stop.is_set}, daemon=True).start()
    while not sock.exists():
        time.sleep(0.01)
    try:
        mp.spawn(tg._worker, args=(str(tmp_path), free_port(), str(sock), 1, False), nprocs=1,
                 join=True)
    finally:
        stop.set()
    rep = json.loads((tmp_path / "report-0.json").read_text())
    assert rep["device"] == "cuda:0"
    assert {d for _, ds in rep["calls"] for d in ds} == {"cuda:0"}
