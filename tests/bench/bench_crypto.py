"""Crypto benchmarks (issue 2 "Performance"). Prints one JSON object on stdout.

Every metric is compared with a baseline measured in the same run, as a ratio:

- seal / unseal of a 256 MiB file vs `dd bs=1M` copying the same file on the same filesystem
  (median of 5 alternating runs; target ratio >= 0.85)
- torch.save of a 512 MiB state dict into a SealedWriter vs plain torch.save to a file
  (median of 3 alternating runs; target ratio <= 1.3)
- in-memory segment encryption, one core, reused buffers (target >= 6 GB/s; memcpy of the same
  buffer is reported as the baseline)
- key rewrap of 2,000 small sealed files (target >= 1,000 files/s; a 157-byte write + fsync
  per file is the baseline floor)

Usage: python tests/bench/bench_crypto.py [--quick] [--dir DIR]
(--quick or TG_BENCH_QUICK=1 shrinks every size 16x for a smoke run.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import (
    SealedReader,
    SealedWriter,
    rewrap_files,
    seal_file,
    unseal_file,
)

MiB = 1 << 20


def _median_alternating(
    fns: dict[str, Callable[[], None]],
    runs: int,
    prepare: Callable[[], None] = lambda: None,
    best: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median seconds per function, runs interleaved so drift hits all of them alike.

    `prepare` runs untimed before every run (remove outputs, flush dirty pages), so one run's
    writeback does not land on the next one's clock.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            prepare()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    if best is not None:  # fastest run: the cost without other load on a shared machine
        best.update({k: min(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def bench_files(work: Path, ring: Keyring, size: int, runs: int) -> dict[str, Any]:
    src = work / "plain.bin"
    with open(src, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
    sealed = work / "sealed.tgs"
    seal_file(src, sealed, ring)
    dd_out, seal_out, unseal_out = work / "dd.out", work / "seal.out", work / "unseal.out"

    def dd() -> None:
        subprocess.run(["dd", f"if={src}", f"of={dd_out}", "bs=1M", "status=none"], check=True)

    def seal() -> None:
        seal_file(src, seal_out, ring)

    def unseal() -> None:
        unseal_file(sealed, unseal_out, ring)

    def prepare() -> None:
        for p in (dd_out, seal_out, unseal_out):
            p.unlink(missing_ok=True)
        os.sync()

    med = _median_alternating({"dd": dd, "seal": seal, "unseal": unseal}, runs, prepare)
    mbps = {k: size / v / MiB for k, v in med.items()}
    unseal()
    assert unseal_out.read_bytes() == src.read_bytes()
    for p in (src, sealed, dd_out, seal_out, unseal_out):
        p.unlink(missing_ok=True)
    return {
        "file_mib": size // MiB,
        "runs": runs,
        "dd_bs1M_mib_s": round(mbps["dd"], 1),
        "seal_mib_s": round(mbps["seal"], 1),
        "unseal_mib_s": round(mbps["unseal"], 1),
        "seal_vs_dd": round(mbps["seal"] / mbps["dd"], 3),
        "unseal_vs_dd": round(mbps["unseal"] / mbps["dd"], 3),
        "target_ratio_min": 0.85,
    }


def bench_memory(ring: Keyring, total: int, reps: int = 5) -> dict[str, Any]:
    """One core, 1 MiB segments, reused buffers; each metric timed `reps` times alternately
    (median, and the fastest pass: the machine's capability without other load)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    seg = MiB
    aead = AESGCM(os.urandom(32))
    plain = bytearray(os.urandom(seg))
    out = bytearray(seg + 16)
    copy = bytearray(seg)
    aad = os.urandom(91)
    prefix = os.urandom(7)
    n = max(1, total // seg)

    def encrypt() -> None:
        for i in range(n):
            aead.encrypt_into(prefix + i.to_bytes(4, "big") + b"\0", plain, aad, out)

    def decrypt() -> None:
        aead.encrypt_into(prefix + b"\0\0\0\0\0", plain, aad, out)
        for _ in range(n):
            aead.decrypt_into(prefix + b"\0\0\0\0\0", out, aad, copy)

    def memcpy() -> None:
        for _ in range(n):
            copy[:] = plain

    def writer() -> None:  # the real SealedWriter path into a null sink
        with SealedWriter(_NullSink(), ring) as w:
            for _ in range(n):
                w.write(plain)

    fns = {"encrypt": encrypt, "decrypt": decrypt, "memcpy": memcpy, "writer": writer}
    fastest: dict[str, float] = {}
    med = _median_alternating(fns, reps, best=fastest)
    gbs = {k: n * seg / v / 1e9 for k, v in med.items()}
    best = {k: n * seg / v / 1e9 for k, v in fastest.items()}
    return {
        "segment_mib": 1,
        "mib_per_pass": n,
        "encrypt_gb_s": round(gbs["encrypt"], 2),
        "decrypt_gb_s": round(gbs["decrypt"], 2),
        "sealed_writer_gb_s": round(gbs["writer"], 2),
        "memcpy_gb_s": round(gbs["memcpy"], 2),
        "encrypt_vs_memcpy": round(gbs["encrypt"] / gbs["memcpy"], 3),
        "encrypt_vs_target_6gb_s": round(gbs["encrypt"] / 6.0, 3),
        "best_pass_encrypt_gb_s": round(best["encrypt"], 2),
        "best_pass_decrypt_gb_s": round(best["decrypt"], 2),
    }


class _NullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(memoryview(b))


def bench_torch(work: Path, ring: Keyring, size: int, runs: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    n_tensors = 8
    per = size // n_tensors // 4
    state = {f"layer{i}.weight": torch.randn(per) for i in range(n_tensors)}
    plain_p, sealed_p = work / "plain.pt", work / "sealed.pt.tgs"

    def plain() -> None:
        torch.save(state, plain_p)

    def plain_fileobj() -> None:  # the same bytes through a Python file object
        with open(plain_p, "wb") as f:
            torch.save(state, f)

    def sealed() -> None:
        with open(sealed_p, "wb") as f, SealedWriter(f, ring) as w:
            torch.save(state, w)

    def prepare() -> None:
        plain_p.unlink(missing_ok=True)
        sealed_p.unlink(missing_ok=True)
        os.sync()

    fns = {"plain": plain, "plain_fileobj": plain_fileobj, "sealed": sealed}
    med = _median_alternating(fns, runs, prepare)
    sealed()
    with open(sealed_p, "rb") as f:
        back = torch.load(SealedReader(f, ring), weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    plain_p.unlink(missing_ok=True)
    sealed_p.unlink()
    return {
        "state_dict_mib": size // MiB,
        "runs": runs,
        "plain_torch_save_s": round(med["plain"], 3),
        "sealed_torch_save_s": round(med["sealed"], 3),
        "sealed_vs_plain_time": round(med["sealed"] / med["plain"], 3),
        "target_ratio_max": 1.3,
        "plain_torch_save_fileobj_s": round(med["plain_fileobj"], 3),
        "sealed_vs_plain_fileobj_time": round(med["sealed"] / med["plain_fileobj"], 3),
    }


def bench_rewrap(work: Path, ring: Keyring, count: int, cli_home: Path | None) -> dict[str, Any]:
    folder = work / "many"
    folder.mkdir()
    for i in range(count):
        with (
            open(folder / f"f{i:05d}.tgs", "wb") as f,
            SealedWriter(f, ring, segment_size=4096) as w,
        ):
            w.write(os.urandom(1024))
    files = sorted(folder.iterdir())
    ring.rotate()
    t = time.perf_counter()
    results = rewrap_files(files, ring)
    lib_rate = count / (time.perf_counter() - t)
    assert all(r.rewrapped for r in results)
    # baseline: read the 157-byte header, write it back unchanged, fsync, one file after
    # another (what a naive loop costs here; the ratio shows what the thread pool buys)
    t = time.perf_counter()
    for p in files:
        fd = os.open(p, os.O_RDWR)
        os.pwrite(fd, os.pread(fd, 157, 0), 0)
        os.fsync(fd)
        os.close(fd)
    floor_rate = count / (time.perf_counter() - t)
    out: dict[str, Any] = {
        "files": count,
        "rewrap_files_s": round(lib_rate, 1),
        "serial_header_fsync_files_s": round(floor_rate, 1),
        "rewrap_vs_serial_fsync": round(lib_rate / floor_rate, 3),
        "rewrap_vs_target_1000": round(lib_rate / 1000, 3),
    }
    if (
        cli_home is not None
    ):  # the same through `trainguard key rewrap DIR` (process start included)
        ring2 = Keyring.open(cli_home / "keys")
        ring2.rotate()
        cli_folder = work / "cli"
        shutil.move(str(folder), cli_folder)
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainguard.cli.main",
                "key",
                "rewrap",
                str(cli_folder),
                "--home",
                str(cli_home),
                "--format",
                "json",
            ],
            check=True,
            capture_output=True,
        )
        out["cli_rewrap_files_s"] = round(count / (time.perf_counter() - t), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", default=os.environ.get("TG_BENCH_QUICK") == "1")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--only", default="files,memory,torch,rewrap")
    args = ap.parse_args()
    scale = 16 if args.quick else 1
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        home = work / "home"
        (home / "keys").mkdir(parents=True, mode=0o700)
        (home / "trainguard.toml").write_text("")
        ring = Keyring.create(home / "keys")
        result: dict[str, Any] = {
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the host
        }
        if "memory" in only:
            result["in_memory"] = bench_memory(ring, 512 * MiB // scale)
        if "files" in only:
            result["seal_unseal_file"] = bench_files(work, ring, 256 * MiB // scale, 5)
        if "torch" in only:
            result["torch_save"] = bench_torch(work, ring, 512 * MiB // scale, 3)
        if "rewrap" in only:
            result["key_rewrap"] = bench_rewrap(
                work, Keyring.open(home / "keys"), 2000 // scale, home
            )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
