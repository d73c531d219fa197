"""Node detector benchmark (JSON on stdout): false alarms per day against the stated budget on
held-out simulated days, detection and delay of injected anomalies, fit and score time, and the
RSS a fresh agent process pays for the detector.

* ``evaluation``: `trainguard.anomaly.node_eval.evaluate` with the defaults (k-NN) on seeds the
  defaults were not chosen on (`DEV_SEEDS`): false alarms per day with a 95 % bootstrap
  interval over seeds, detection per anomaly.
* ``without_coupling_columns``: the same seeds and settings without ``gpu_util_no_job`` (GPU
  work no registered job holds) and ``net_tx_excess_log`` (bytes sent beyond those received),
  for what those couplings add.
* ``iforest``: the same calibration with an IsolationForest, on fewer seeds (it is slow), with
  the k-NN run on the same seeds interleaved for the ratio.
* ``rss``: fresh processes, interleaved off / on (medians): (a) the real `agent run` daemon,
  node detector off and on; (b) a process that imports the agent's scorer and feeds the
  detector two simulated days (fitted state included), k-NN and IsolationForest.

Usage: python tests/bench/bench_node_detector.py [--seeds 100-129] [--anomaly-seeds 100-111]
       [--days 4] [--interval 30] [--iforest-seeds 100-101] [--reps 2] [--skip-rss]
       [--skip-iforest] [--skip-eval] [--skip-ablation]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from trainguard.anomaly.node import NodeTelemetryConfig
from trainguard.anomaly.node_eval import COLUMNS, evaluate

_COUPLING = ("gpu_util_no_job", "net_tx_excess_log")

_FEED = """
import sys, json
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024
from trainguard.agent.detection import Scorer
from trainguard.anomaly.config import AnomalyConfig
before = rss()
model = sys.argv[1]
if model != 'off':
    from dataclasses import replace
    from trainguard.anomaly.node import NodeTelemetryConfig, NodeTelemetryDetector
    from trainguard.anomaly.node_eval import COLUMNS, simulate
    cfg = NodeTelemetryConfig(interval_s=30.0, model=model)
    det = NodeTelemetryDetector(COLUMNS, cfg)
    rows, _ = simulate(5, 2.0, 30.0)
    for i, row in enumerate(rows.tolist()):
        det.observe(30.0 * i, row)
    assert det.fits >= 2
print(json.dumps({'before': before, 'after': rss()}))
"""


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _agent_rss(tmp: Path, node: bool, seconds: float) -> float:
    """Peak RSS of a fresh `agent run` over `seconds` after it answers, in MB."""
    from trainguard.agent.api.client import AgentClient
    from trainguard.core.home import Home

    home = tmp / f"h{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env["HOME"] = str(tmp)
    cli = [sys.executable, "-m", "trainguard.cli.main"]
    subprocess.run([*cli, "init", "--home", str(home), "--admin", "bench"], env=env, check=True,
                   capture_output=True)
    if node:
        with Home(home).config_path.open("a") as f:
            f.write("\n[anomaly]\nnode_telemetry = true\n")
    proc = subprocess.Popen([*cli, "agent", "run", "--home", str(home)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if AgentClient(Home(home), timeout=2).ping():
                break
            time.sleep(0.1)
        peak, end = 0.0, time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, _rss_mb(proc.pid))
            time.sleep(0.5)
        return peak
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def bench_rss(reps: int, seconds: float) -> dict[str, object]:
    agent: dict[str, list[float]] = {"off": [], "on": []}
    feed: dict[str, list[float]] = {"off": [], "knn": [], "iforest": []}
    with tempfile.TemporaryDirectory(prefix="tgnode") as d:
        for _ in range(reps):  # interleaved: off, on, off, on ...
            for node in (False, True):
                agent["on" if node else "off"].append(_agent_rss(Path(d), node, seconds))
            for model in feed:
                out = subprocess.run([sys.executable, "-c", _FEED, model], capture_output=True,
                                     text=True, check=True)
                feed[model].append(json.loads(out.stdout)["after"])
    med = {k: round(statistics.median(v), 1) for k, v in agent.items()}
    fed = {k: round(statistics.median(v), 1) for k, v in feed.items()}
    return {
        "agent_run_peak_rss_mb": {**med, "delta_mb": round(med["on"] - med["off"], 1),
                                  "ratio_on_vs_off": round(med["on"] / med["off"], 2)},
        "scorer_plus_two_fed_days_rss_mb": {
            **fed, "knn_delta_mb": round(fed["knn"] - fed["off"], 1),
            "iforest_delta_mb": round(fed["iforest"] - fed["off"], 1)},
        "previous_session": "agent 164 MB with the IsolationForest detector, 53 MB without",
    }


def bench_iforest(seeds: list[int], days: float, interval: float) -> dict[str, object]:
    """k-NN and IsolationForest on the same seeds, interleaved per seed."""
    out: dict[str, list[dict[str, object]]] = {"knn": [], "iforest": []}
    for seed in seeds:
        for model in ("knn", "iforest"):
            cfg = replace(NodeTelemetryConfig(), model=model)
            out[model].append(evaluate([seed], [seed], days=days, interval_s=interval,
                                       config=cfg))
    summary = {}
    for model, runs in out.items():
        summary[model] = {
            "false_alarms_per_day_mean": round(statistics.mean(
                r["false_alarms_per_day"]["mean"] for r in runs), 3),  # type: ignore[index]
            "detected": {k: sum(int(r["detection"][k]["detected"].split("/")[0])  # type: ignore
                                for r in runs) for k in runs[0]["detection"]},  # type: ignore
            "score_us_per_sample": statistics.median(r["score_us_per_sample"] for r in runs),
            "fit_s_mean": statistics.median(r["fit_s_mean"] for r in runs),
        }
    summary["seeds"] = seeds  # type: ignore[assignment]
    summary["score_time_ratio_iforest_vs_knn"] = round(
        summary["iforest"]["score_us_per_sample"] / summary["knn"]["score_us_per_sample"], 1)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="100-129", help="held-out seeds for clean days, LO-HI")
    p.add_argument("--anomaly-seeds", default="100-111", help="held-out seeds for anomalies")
    p.add_argument("--days", type=float, default=4.0, help="days per clean run (1 is warm-up)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--iforest-seeds", default="100-101")
    p.add_argument("--reps", type=int, default=2, help="RSS repetitions (interleaved)")
    p.add_argument("--rss-seconds", type=float, default=20.0)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--skip-iforest", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-ablation", action="store_true")
    args = p.parse_args()
    seeds, anomaly_seeds = _seeds(args.seeds), _seeds(args.anomaly_seeds)
    result: dict[str, object] = {}
    if not args.skip_eval:
        result["evaluation"] = evaluate(seeds, anomaly_seeds, days=args.days,
                                        interval_s=args.interval)
    if not args.skip_ablation:
        result["without_coupling_columns"] = evaluate(
            seeds, anomaly_seeds, days=args.days, interval_s=args.interval,
            columns=[c for c in COLUMNS if c not in _COUPLING])
    if not args.skip_iforest:
        result["iforest"] = bench_iforest(_seeds(args.iforest_seeds), args.days, args.interval)
    if not args.skip_rss:
        result["rss"] = bench_rss(args.reps, args.rss_seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
