"""Supply-chain benchmarks; prints one JSON object with ratios measured in the same run.

* full `deps verify` of this environment (torch included) vs `sha256sum` over the same files
  with two parallel jobs (`xargs -0 -P2`): target ratio <= 1.3;
* a second, cached verify of the unchanged environment: target <= 1 s (and its ratio to full);
* the scanner on a large real torch.save checkpoint vs a raw sequential read of the same file
  (target >= 200 MB/s; the scanner reads the pickles and zip indexes, not the tensor data).

Usage: python tests/bench/bench_integrity.py [--ckpt-mb 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_deps(repeat: int) -> dict[str, object]:
    from trainguard.integrity.deps.cache import HashCache
    from trainguard.integrity.deps.lock import build_lock, verify_lock

    lock = build_lock()
    files = sorted(
        {p for d in lock["distributions"].values() for p in d["files"]} | set(lock["startup"])
    )
    total = sum(os.path.getsize(p) for p in files if os.path.exists(p))
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files"
        listing.write_bytes(b"\0".join(p.encode() for p in files))

        def sha256sum() -> None:
            with open(listing, "rb") as f:
                subprocess.run(
                    ["xargs", "-0", "-P2", "-n", "256", "sha256sum"],
                    stdin=f, stdout=subprocess.DEVNULL, check=True,
                )  # fmt: skip

        def full() -> None:
            assert not verify_lock(lock, cache=None).drift

        cache_path = Path(tmp) / "cache.json"
        verify_lock(lock, cache=HashCache(cache_path))  # fill

        def cached() -> None:
            result = verify_lock(lock, cache=HashCache(cache_path))
            assert result.files_hashed == 0 and not result.drift

        sha256sum()  # warm the page cache for both sides
        t_sum = _best(sha256sum, repeat)
        t_full = _best(full, repeat)
        t_cached = _best(cached, repeat)
    return {
        "files": len(files),
        "bytes": total,
        "sha256sum_P2_s": round(t_sum, 3),
        "verify_full_s": round(t_full, 3),
        "verify_full_vs_sha256sum_P2": round(t_full / t_sum, 3),
        "verify_cached_s": round(t_cached, 3),
        "verify_cached_vs_full": round(t_cached / t_full, 3),
        "targets": {"full_ratio_max": 1.3, "cached_s_max": 1.0},
    }


def _make_checkpoint(path: Path, mb: int) -> None:
    import torch

    torch.set_num_threads(1)
    n = mb * (1 << 20) // 4
    # a realistic mix: a few large matrices and many small tensors (norms, biases)
    state = {f"layer{i}.weight": torch.zeros(n // 8 // 1024, 1024) for i in range(8)}
    state.update({f"layer{i}.norm.{j}": torch.ones(64) for i in range(200) for j in range(4)})
    torch.save(state, path)


def bench_scan(mb: int, repeat: int) -> dict[str, object]:
    from trainguard.integrity.scanner import Verdict, scan_path

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        ckpt = Path(tmp) / "big.pt"
        _make_checkpoint(ckpt, mb)
        size = ckpt.stat().st_size

        def raw_read() -> None:
            with open(ckpt, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass

        def scan() -> None:
            assert scan_path(ckpt).files[0].verdict is Verdict.SAFE

        raw_read()  # page cache warm for both
        t_read = _best(raw_read, repeat)
        t_scan = _best(scan, repeat)

        def drop_cache() -> None:  # clean pages of our own file: no privileges needed
            fd = os.open(ckpt, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

        def cold(fn):  # type: ignore[no-untyped-def]
            def run() -> None:
                drop_cache()
                fn()

            return run

        t_read_cold = _best(cold(raw_read), repeat) - _best(drop_cache, repeat)
        t_scan_cold = _best(cold(scan), repeat) - _best(drop_cache, repeat)
    return {
        "checkpoint_bytes": size,
        "raw_read_s": round(t_read, 4),
        "scan_s": round(t_scan, 4),
        "scan_MBps": round(size / t_scan / 1e6, 1),
        "raw_read_MBps": round(size / t_read / 1e6, 1),
        "scan_vs_raw_read_time": round(t_scan / t_read, 4),
        "cold_raw_read_s": round(t_read_cold, 4),
        "cold_scan_s": round(t_scan_cold, 4),
        "cold_scan_MBps": round(size / max(t_scan_cold, 1e-6) / 1e6, 1),
        "cold_scan_vs_raw_read_time": round(t_scan_cold / max(t_read_cold, 1e-6), 4),
        "targets": {"scan_MBps_min": 200},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-deps", action="store_true")
    args = parser.parse_args()
    out: dict[str, object] = {"cpus": os.cpu_count()}
    if not args.skip_deps:
        out["deps_verify"] = bench_deps(args.repeat)
    out["scanner"] = bench_scan(args.ckpt_mb, args.repeat)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
