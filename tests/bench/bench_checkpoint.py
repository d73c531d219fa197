"""Checkpoint benchmarks (issue 16 "Performance"). Prints one JSON object on stdout.

Every metric is a ratio against a baseline measured in the same run, alternating the two and
taking the median of `--runs` rounds:

- sealed DCP save vs plain DCP save (`FileSystemWriter`) of the same state, both fsyncing
  (target <= 1.15x); sealed DCP load (signature, digests, unsealing) vs plain DCP load
  (target <= 1.15x), and vs plain DCP load given the one-thread copies trainguard's load uses
  (`dcp_sealed_vs_plain_load_one_thread`: what sealing itself costs);
- asynchronous sealed save: how long the step loop stalls (`save(..., async_=True)` returning:
  staging to CPU) vs the synchronous sealed save (target <= 0.2x);
- `seal_file` / `unseal_file` of one large file (`--file-mib`, default 1 GiB) vs `dd bs=1M`,
  without and with fsync (`conv=fsync` for dd, an fsync of the output for trainguard, which
  does not fsync by itself; target >= 0.9x); plus the CPU seconds each needs (user + sys, which
  load on a shared machine does not change) and how much a fresh process's peak RSS (VmHWM)
  grows while it seals / unseals (O(segment): a few MiB, not the file size).

The state is `--mib` MiB of fp32 in 16 tensors (default 256 MiB, sized for a 2-core machine)
on a 1-process gloo group, or with `--world-size N` on N processes (gloo), each holding 1/N of
every tensor as a DTensor sharded along dim 0, as FSDP2 leaves it; a timing then runs from a
common start (barrier) to the last rank's end. The issue's case: `--mib 1024 --world-size 2`.

Usage: python tests/bench/bench_checkpoint.py [--mib 256] [--world-size 1] [--runs 3]
       [--file-mib 1024] [--only dcp,files] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    """Wall seconds of `fn`; on several ranks, from a common start to the last rank's end."""
    many = dist.is_initialized() and dist.get_world_size() > 1
    if many:
        dist.barrier()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    if many:
        slowest = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        elapsed = float(slowest.item())
    return elapsed


def _alternating(fns: dict[str, Callable[[], Any]], runs: int,
                 before: Callable[[], None] = lambda: None) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            before()
            times[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _state(mib: int, world: int = 1) -> dict[str, Any]:
    """`mib` MiB of fp32 in 16 tensors; on several ranks, DTensors sharded along dim 0 (this
    rank holds 1/world of each, as FSDP2 would)."""
    per = mib * (1 << 20) // 16 // 4
    if world == 1:
        return {f"layer{i}": torch.randn(per) for i in range(16)}
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world,))
    return {f"layer{i}": DTensor.from_local(torch.randn(per // world), mesh, [Shard(0)])
            for i in range(16)}


def _empty_like(state: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    return {k: DTensor.from_local(torch.empty_like(v.to_local()), v.device_mesh, v.placements)
            if isinstance(v, DTensor) else torch.empty_like(v) for k, v in state.items()}


def _local(t: Any) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def bench_dcp(work: Path, mib: int, runs: int, keyring: Keyring, key: SigningKey) -> dict[str, Any]:
    world, rank = dist.get_world_size(), dist.get_rank()
    trust = Trust(verify_key_pem=key.public_key().to_pem().decode())
    # as Guard does: DCP's collectives on their own gloo group, so an async save's upload
    # thread never queues behind the caller's collectives (here: the timing's all-reduce)
    group = dist.new_group(backend="gloo") if world > 1 else None
    store = DcpCheckpoints(work / "sealed", LocalKeys(keyring), signing_key_signer(key),
                           trust_verifier(trust), keep=1, process_group=group)
    state = _state(mib, world)
    step = iter(range(1, 10_000))
    plain_dir = work / "plain"

    def plain_save() -> None:
        if rank == 0:
            shutil.rmtree(plain_dir, ignore_errors=True)
        if world > 1:
            dist.barrier()
        dcp.save(state, storage_writer=dcp.FileSystemWriter(plain_dir, sync_files=True))

    def sealed_save() -> None:
        store.save(next(step), state)

    saves = _alternating({"plain": plain_save, "sealed": sealed_save}, runs)
    target = _empty_like(state)

    def plain_load() -> None:
        dcp.load(target, storage_reader=dcp.FileSystemReader(plain_dir))

    def sealed_load() -> None:
        info, _ = store.resume(target)
        assert info is not None

    def plain_load_one_thread() -> None:  # plain DCP with the copy setting trainguard uses
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            plain_load()
        finally:
            torch.set_num_threads(threads)

    loads = _alternating({"plain": plain_load, "sealed": sealed_load,
                          "plain_one_thread": plain_load_one_thread}, runs)
    assert all(torch.equal(_local(target[k]), _local(state[k])) for k in state)

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
        # what sealing itself costs: plain DCP given trainguard's one-thread copies too
        "dcp_plain_load_one_thread_s": round(loads["plain_one_thread"], 3),
        "dcp_sealed_vs_plain_load_one_thread": round(loads["sealed"] / loads["plain_one_thread"], 3),
        "async_stall_s": round(stall, 3), "sync_sealed_save_s": round(sync, 3),
        "async_stall_vs_sync_save": round(stall / sync, 3),
    }


def _dcp_rank(rank: int, world: int, port: int, work: Path, mib: int, runs: int) -> None:
    """One rank of a `--world-size N` run (torch.multiprocessing.spawn); rank 0 writes the
    result for the parent."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = bench_dcp(work, mib, runs, Keyring.open(work / "keys"), SigningKey.load(work / "sign.pem"))
        if rank == 0:
            (work / "dcp.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_dcp(work: Path, mib: int, runs: int, world: int) -> dict[str, Any]:
    keyring = Keyring.create(work / "keys")
    key = SigningKey.generate()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if world == 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        try:
            return bench_dcp(work, mib, runs, keyring, key)
        finally:
            dist.destroy_process_group()
    import torch.multiprocessing as mp

    key.save(work / "sign.pem")
    mp.spawn(_dcp_rank, args=(world, port, work, mib, runs), nprocs=world, join=True)
    result: dict[str, Any] = json.loads((work / "dcp.json").read_text())
    return result


_RSS_SCRIPT = """
import sys
from pathlib import Path
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import seal_file, unseal_file
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
src, sealed, out, keys = map(Path, sys.argv[1:5])
ring = Keyring.open(keys)
base = hwm()
(seal_file if sys.argv[5] == "seal" else unseal_file)(src if sys.argv[5] == "seal" else sealed,
                                                     out, ring)
print(base, hwm())
"""


def _peak_rss(src: Path, sealed: Path, out: Path, keys: Path, op: str) -> float:
    """MiB the peak RSS of a fresh process grows by while it seals or unseals the file."""
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(sealed), str(out),
                          str(keys), op], capture_output=True, text=True, check=True)
    base, peak = map(float, res.stdout.split())
    out.unlink(missing_ok=True)
    return round(peak - base, 1)


def bench_files(work: Path, mib: int, runs: int) -> dict[str, Any]:
    """`seal_file` / `unseal_file` (what `trainguard seal` / `unseal` run) vs `dd bs=1M` on the
    same file, in-process timing, dd/seal/unseal alternating, median of `runs`."""
    keys = work / "fkeys"
    keyring = Keyring.create(keys)
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

    def before() -> None:  # the previous output's writeback must not land on the next clock
        out.unlink(missing_ok=True)
        os.sync()

    res: dict[str, Any] = {"file_mib": mib}
    for sync in (False, True):
        t = _alternating({"dd": dd(sync), "seal": seal(sync), "unseal": unseal(sync)}, runs,
                         before=before)
        tag = "fsync" if sync else "nofsync"
        res[f"dd_{tag}_mib_s"] = round(mib / t["dd"], 1)
        res[f"seal_{tag}_mib_s"] = round(mib / t["seal"], 1)
        res[f"unseal_{tag}_mib_s"] = round(mib / t["unseal"], 1)
        res[f"seal_{tag}_vs_dd"] = round(t["dd"] / t["seal"], 3)
        res[f"unseal_{tag}_vs_dd"] = round(t["dd"] / t["unseal"], 3)
    # CPU seconds per run (user + sys), load-independent: what a core has to do
    cpu: dict[str, float] = {}
    for name, fn, who in (("dd", dd(False), resource.RUSAGE_CHILDREN),
                          ("seal", seal(False), resource.RUSAGE_SELF),
                          ("unseal", unseal(False), resource.RUSAGE_SELF)):
        before()
        r0 = resource.getrusage(who)
        fn()
        r1 = resource.getrusage(who)
        cpu[name] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    res["peak_rss_growth_mib"] = {op: _peak_rss(src, sealed, out, keys, op)
                                  for op in ("seal", "unseal")}
    for p in (src, sealed, out):
        p.unlink(missing_ok=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--world-size", type=int, default=1,
                    help="ranks (processes) holding the DCP state, sharded as DTensors; --mib is the total")
    ap.add_argument("--file-mib", type=int, default=1024, help="seal/unseal vs dd file size")
    ap.add_argument("--only", default="dcp,files", help="dcp,files")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tg-bench-ckpt-", dir=args.dir))
    try:
        result: dict[str, Any] = {
            "state_mib": args.mib, "world_size": args.world_size, "runs": args.runs,
            "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2), "dir": str(work),
        }
        only = set(args.only.split(","))
        if "dcp" in only:
            result.update(run_dcp(work, args.mib, args.runs, args.world_size))
        if "files" in only:
            result["seal_unseal_vs_dd"] = bench_files(work, args.file_mib, args.runs)
        result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        met: dict[str, bool] = {}
        if "dcp" in only:
            met["sealed_save<=1.15x"] = result["dcp_sealed_vs_plain_save"] <= 1.15
            met["sealed_load<=1.15x"] = result["dcp_sealed_vs_plain_load"] <= 1.15
            met["async_stall<=0.2x"] = result["async_stall_vs_sync_save"] <= 0.2
        if "files" in only:
            f = result["seal_unseal_vs_dd"]
            met["seal/unseal>=0.9x_dd"] = min(f[k] for k in f if k.endswith("_vs_dd")) >= 0.9
        result["targets_met"] = met
        json.dump(result, sys.stdout, indent=1)
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
