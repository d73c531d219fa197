"""Checkpoint benchmarks (issue 16 "Performance"). Prints one JSON object on stdout.

Every metric is a ratio against a baseline measured in the same run, alternating the two and
taking the median of `--runs` rounds:

- sealed DCP save vs plain DCP save (`FileSystemWriter`) of the same state, both fsyncing
  (target <= 1.15x); sealed DCP load (signature, hashes, unsealing) vs plain DCP load
  (target <= 1.15x);
- asynchronous sealed save: how long the step loop stalls (`save(..., async_=True)` returning:
  staging to CPU) vs the synchronous sealed save (target <= 0.2x);
- `seal_file` / `unseal_file` of one large file vs `dd bs=1M`, without and with fsync
  (`conv=fsync` for dd, an fsync of the output for trainguard; target >= 0.9x).

The state is `--mib` MiB of fp32 in 16 tensors (default 256 MiB, sized for a 2-core machine)
on a 1-process gloo group (world size 1: the per-rank cost; on N ranks each rank writes 1/N).

Usage: python tests/bench/bench_checkpoint.py [--mib 256] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import seal_file, unseal_file
from trainguard.crypto.signing import SigningKey
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import DcpCheckpoints, LocalKeys, signing_key_signer, trust_verifier


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternating(fns: dict[str, Callable[[], Any]], runs: int,
                 before: Callable[[], None] = lambda: None) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            before()
            times[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _state(mib: int) -> dict[str, torch.Tensor]:
    per = mib * (1 << 20) // 16 // 4
    return {f"layer{i}": torch.randn(per) for i in range(16)}


def bench_dcp(work: Path, mib: int, runs: int) -> dict[str, Any]:
    keyring = Keyring.create(work / "keys")
    key = SigningKey.generate()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    store = DcpCheckpoints(work / "sealed", LocalKeys(keyring), signing_key_signer(key),
                           trust_verifier(trust), keep=1)
    state = _state(mib)
    step = iter(range(1, 10_000))
    plain_dir = work / "plain"

    def plain_save() -> None:
        shutil.rmtree(plain_dir, ignore_errors=True)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(plain_dir, sync_files=True))

    def sealed_save() -> None:
        store.save(next(step), state)

    saves = _alternating({"plain": plain_save, "sealed": sealed_save}, runs)
    target = {k: torch.empty_like(v) for k, v in state.items()}

    def plain_load() -> None:
        dcp.load(target, storage_reader=dcp.FileSystemReader(plain_dir))

    def sealed_load() -> None:
        info, _ = store.resume(target)
        assert info is not None

    loads = _alternating({"plain": plain_load, "sealed": sealed_load}, runs)
    assert all(torch.equal(target[k], state[k]) for k in state)

    stalls, syncs = [], []
    for _ in range(runs):
        syncs.append(_timed(lambda: store.save(next(step), state)))
        stalls.append(_timed(lambda: store.save(next(step), state, async_=True)))
        store.wait()
    stall, sync = statistics.median(stalls), statistics.median(syncs)
    return {
        "dcp_plain_save_s": round(saves["plain"], 3), "dcp_sealed_save_s": round(saves["sealed"], 3),
        "dcp_sealed_vs_plain_save": round(saves["sealed"] / saves["plain"], 3),
        "dcp_plain_load_s": round(loads["plain"], 3), "dcp_sealed_load_s": round(loads["sealed"], 3),
        "dcp_sealed_vs_plain_load": round(loads["sealed"] / loads["plain"], 3),
        "async_stall_s": round(stall, 3), "sync_sealed_save_s": round(sync, 3),
        "async_stall_vs_sync_save": round(stall / sync, 3),
    }


def bench_files(work: Path, mib: int, runs: int) -> dict[str, Any]:
    keyring = Keyring.create(work / "fkeys")
    src, sealed, out = work / "src.bin", work / "src.tgseal", work / "out.bin"
    with src.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    seal_file(src, sealed, keyring)

    def fsynced(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def dd(sync: bool) -> Callable[[], None]:
        extra = ["conv=fsync"] if sync else []
        return lambda: subprocess.run(["dd", f"if={src}", f"of={out}", "bs=1M", "status=none",
                                       *extra], check=True)

    def seal(sync: bool) -> Callable[[], None]:
        def run() -> None:
            seal_file(src, out, keyring)
            if sync:
                fsynced(out)
        return run

    def unseal(sync: bool) -> Callable[[], None]:
        def run() -> None:
            unseal_file(sealed, out, keyring)
            if sync:
                fsynced(out)
        return run

    res: dict[str, Any] = {}
    for sync in (False, True):
        t = _alternating({"dd": dd(sync), "seal": seal(sync), "unseal": unseal(sync)}, runs,
                         before=lambda: out.unlink(missing_ok=True))
        tag = "fsync" if sync else "nofsync"
        res[f"dd_{tag}_mib_s"] = round(mib / t["dd"], 1)
        res[f"seal_{tag}_vs_dd"] = round(t["dd"] / t["seal"], 3)
        res[f"unseal_{tag}_vs_dd"] = round(t["dd"] / t["unseal"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tg-bench-ckpt-", dir=args.dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        result: dict[str, Any] = {
            "state_mib": args.mib, "world_size": 1, "runs": args.runs, "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2), "dir": str(work),
            **bench_dcp(work, args.mib, args.runs), **bench_files(work, args.mib, args.runs),
        }
        result["targets_met"] = {
            "sealed_save<=1.15x": result["dcp_sealed_vs_plain_save"] <= 1.15,
            "sealed_load<=1.15x": result["dcp_sealed_vs_plain_load"] <= 1.15,
            "async_stall<=0.2x": result["async_stall_vs_sync_save"] <= 0.2,
            "seal/unseal>=0.9x_dd": min(result[k] for k in result if k.endswith("_vs_dd")) >= 0.9,
        }
        json.dump(result, sys.stdout, indent=1)
        print()
    finally:
        dist.destroy_process_group()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
