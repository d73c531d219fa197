"""Telemetry and posture-check cost (issue 4 "Footprint"). Prints one JSON object on stdout.

The agent samples telemetry every cycle (15 s default) and runs the checks every 5 minutes, so
what matters is the CPU time of one cycle relative to the interval. Every figure is compared with
a baseline measured in the same run:

- `sample()` with 8 fake GPUs (each with 4 processes) and the real /proc, vs the baseline of
  reading /proc/stat, /proc/meminfo and /proc/net/dev raw (the floor of any /proc collector);
- `AgentMetrics.update()+render()` of that sample, vs the same baseline;
- `run_checks()` on a fresh home (all checks, real machine, subprocesses such as
  systemd-analyze included), reported as CPU seconds and as a
  share of one core over the default 300 s check interval;
- the telemetry CPU share of one core at the default 15 s cycle (target: far below the 2 % budget).

Usage: python tests/bench/bench_telemetry.py [--samples N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainguard.agent.checks import run_checks
from trainguard.agent.metrics import AgentMetrics
from trainguard.agent.telemetry.collector import TelemetryCollector
from trainguard.agent.telemetry.nvml import FakeNvml
from trainguard.core.config import load_config
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey


def cpu_per_call(fn: Callable[[], object], n: int) -> float:
    """Median CPU seconds per call over 5 batches of n calls."""
    out = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        out.append((time.process_time() - t0) / n)
    return statistics.median(out)


def baseline() -> None:
    for name in ("/proc/stat", "/proc/meminfo", "/proc/net/dev"):
        with open(name, "rb") as f:
            f.read()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    fake = FakeNvml(8)
    for i in range(8):
        fake.set(
            i, util_pct=90.0, processes=[(1000 + i * 4 + j, 4 << 30, "python3") for j in range(4)]
        )
    collector = TelemetryCollector(nvml=fake)
    metrics = AgentMetrics("bench")
    sample = collector.sample()

    def render() -> None:
        metrics.update(sample)
        metrics.render()

    base = cpu_per_call(baseline, args.samples)
    samp = cpu_per_call(collector.sample, args.samples)
    rend = cpu_per_call(render, max(1, args.samples // 4))
    with tempfile.TemporaryDirectory() as d:
        home = Home(Path(d) / "home")
        home.create_dirs()
        home.config_path.write_text("")
        SigningKey.generate().save(home.node_signing_key)
        config = load_config(home.config_path, {})
        run_checks(home, config)  # warm imports
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, w0 = time.process_time(), time.perf_counter()
        results = run_checks(home, config)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        checks_wall = time.perf_counter() - w0
        checks_cpu = (
            time.process_time()
            - t0
            + (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime)
        )
    cycle = samp + rend
    report = {
        "baseline_proc_read_cpu_s": base,
        "sample_cpu_s": samp,
        "sample_vs_baseline": samp / base,
        "metrics_render_cpu_s": rend,
        "render_vs_baseline": rend / base,
        "checks_run_cpu_s": checks_cpu,
        "checks_run_wall_s": checks_wall,
        "checks_count": len(results),
        "checks_core_share_at_300s": checks_cpu / 300.0,
        "telemetry_core_share_at_15s": cycle / 15.0,
        "telemetry_share_vs_2pct_budget": (cycle / 15.0) / 0.02,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_imported": "torch" in sys.modules,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
