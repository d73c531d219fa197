"""Federated learning benchmark; prints one JSON object. Ratios against a baseline measured in
the same run.

Round time (rounds 2..R: round 1 includes the sites' start-up) of 3 sites on digits:
trainguard (TLS from the cluster CA, a robust rule, the per-site monitor, server-side
evaluation and one audit record per round) vs Flower's own FedAvg over plaintext gRPC on the
same sites, data and model. Median round time of each run, best of `--reps` interleaved runs.
Target: ratio <= 1.3.

    .venv/bin/python tests/bench/bench_fl.py [--reps 2] [--method median]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
FL = REPO / "trainer" / "examples" / "fl-digits.toml"


def _round_times(rounds_log: Path) -> list[float]:
    recs = [json.loads(x) for x in rounds_log.read_text().splitlines() if x.strip()]
    return [r["seconds"] for r in recs if "round" in r and r["round"] > 1]


def run_trainguard(home, method: str) -> float:  # type: ignore[no-untyped-def]
    from trainguard.evidence.sink import NullSink
    from trainguard.trainer.federated.run import launch_federation, prepare_federation

    sink = NullSink()
    plan = prepare_federation(home, FL, [f'aggregation.method="{method}"'], 3, sink)
    result = launch_federation(plan, sink, lambda *a: None, principal="bench", timeout=300)
    assert result["status"] == "completed", result
    return statistics.median(_round_times(plan.run_dir / "rounds.jsonl"))


def run_baseline(home, tmp: Path) -> float:  # type: ignore[no-untyped-def]
    from trainguard.trainer.federated.config import site_names
    from trainguard.trainer.federated.run import _free_port, _spawn, _stop

    address = f"127.0.0.1:{_free_port()}"
    run = tmp / f"baseline-{time.monotonic_ns()}"
    run.mkdir()
    base = {"config": str(FL), "overrides": [], "address": address, "baseline": True}
    (run / "server.json").write_text(json.dumps({**base, "rounds_log": str(run / "rounds.jsonl")}))
    server = _spawn("server", run / "server.json", run / "server.log")
    sites = []
    for s in site_names(3):
        (run / f"{s}.json").write_text(json.dumps({**base, "site": s}))
        sites.append(_spawn("site", run / f"{s}.json", run / f"{s}.log"))
    try:
        server.wait(timeout=300)
    finally:
        _stop([server, *sites])
    return statistics.median(_round_times(run / "rounds.jsonl"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--method", default="median")
    args = ap.parse_args()
    from support import make_home
    from trainguard.crypto.pki import ClusterCA

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = make_home(tmp / "home")
        ClusterCA.create(home.pki_dir, "bench")
        ours, base = [], []
        for _ in range(args.reps):
            base.append(run_baseline(home, tmp))
            ours.append(run_trainguard(home, args.method))
    best_ours, best_base = min(ours), min(base)
    print(json.dumps({
        "round_time": {"trainguard_s": round(best_ours, 4), "flower_fedavg_s": round(best_base, 4),
                       "ratio": round(best_ours / best_base, 3), "target": 1.3,
                       "method": args.method, "runs": {"trainguard": ours, "flower": base}},
        "secagg_overhead": None,  # SecAgg+ not built yet (issue 17)
    }, indent=2))


if __name__ == "__main__":
    main()
