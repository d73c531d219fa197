"""Federated learning benchmark on Flower's deployment engine; prints one JSON object. Ratios
against baselines measured in the same run, repetitions interleaved (ABC ABC ...), medians.

Round time (rounds 2..R: round 1 includes admission and the sites' start-up) of 3 sites on
digits, all on the same engine (SuperLink + 3 SuperNodes as separate processes on 127.0.0.1):

- trainguard: TLS from the cluster CA, admission, a robust rule (`--method`, default median)
  with the per-site monitor, server-side evaluation, one audit record per round;
- Flower's own FedAvg on the same sites, data and model over plaintext HTTP (the baseline;
  target: trainguard / baseline <= 1.3);
- SecAgg+: trainguard with `federation.secure_aggregation` (mean, monitor off) against the
  same trainguard config without it (the SecAgg+ overhead, reported).

    .venv/bin/python tests/bench/bench_fl.py [--reps 2] [--rounds 5] [--method median]
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
    return [r["seconds"] for r in recs if "round" in r and "seconds" in r and r["round"] > 1]


def run_trainguard(home, overrides: list[str]) -> float:  # type: ignore[no-untyped-def]
    from trainguard.evidence.sink import NullSink
    from trainguard.trainer.federated.run import launch_federation, prepare_federation

    sink = NullSink()
    plan = prepare_federation(home, FL, overrides, 3, sink)
    result = launch_federation(plan, sink, lambda *a: None, principal="bench", timeout=900)
    assert result["status"] == "completed", result
    return statistics.median(_round_times(plan.run_dir / "rounds.jsonl"))


def run_baseline(tmp: Path, overrides: list[str]) -> float:
    """BENCHMARK BASELINE: Flower's FedAvg (serverapp/procs `baseline`), plaintext, no
    admission, no monitor, the same SuperLink/SuperNode processes."""
    from trainguard.trainer.federated.config import site_names
    from trainguard.trainer.federated.run import _free_port, _spawn, _stop

    port = _free_port()
    run = tmp / f"baseline-{time.monotonic_ns()}"
    (run / "logs").mkdir(parents=True)
    base = {"config": str(FL), "overrides": overrides, "baseline": True}
    (run / "server.json").write_text(json.dumps({**base, "address": f"127.0.0.1:{port}",
                                                 "rounds_log": str(run / "rounds.jsonl")}))
    server = _spawn("server", run / "server.json", run / "logs" / "server.log")
    sites = []
    for s in site_names(3):
        (run / f"{s}.json").write_text(json.dumps({**base, "site": s, "address": f"127.0.0.1:{port}",
                                                   "work": str(run / s)}))
        sites.append(_spawn("site", run / f"{s}.json", run / "logs" / f"{s}.log"))
    try:
        server.wait(timeout=900)
    finally:
        _stop([server, *sites])
    assert server.returncode == 0, (run / "logs" / "server.log").read_text()[-3000:]
    return statistics.median(_round_times(run / "rounds.jsonl"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--method", default="median")
    args = ap.parse_args()
    from support import make_home
    from trainguard.crypto.pki import ClusterCA

    rounds = [f"federation.rounds={args.rounds}"]
    robust = [*rounds, f'aggregation.method="{args.method}"']
    plain_mean = [*rounds, 'aggregation.method="mean"', "federation.monitor=false"]
    secagg = [*plain_mean, "federation.secure_aggregation=true"]
    runs: dict[str, list[float]] = {"flower_fedavg": [], "trainguard": [],
                                    "trainguard_mean": [], "trainguard_secagg": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = make_home(tmp / "home")
        ClusterCA.create(home.pki_dir, "bench")
        for _ in range(args.reps):
            runs["flower_fedavg"].append(run_baseline(tmp, rounds))
            runs["trainguard"].append(run_trainguard(home, robust))
            runs["trainguard_mean"].append(run_trainguard(home, plain_mean))
            runs["trainguard_secagg"].append(run_trainguard(home, secagg))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "engine": "flwr deployment engine (SuperLink + 3 SuperNodes)",
        "round_time": {"trainguard_s": round(med["trainguard"], 4),
                       "flower_fedavg_s": round(med["flower_fedavg"], 4),
                       "ratio": round(med["trainguard"] / med["flower_fedavg"], 3), "target": 1.3,
                       "method": args.method},
        "secagg_overhead": {"secagg_s": round(med["trainguard_secagg"], 4),
                            "without_s": round(med["trainguard_mean"], 4),
                            "ratio": round(med["trainguard_secagg"] / med["trainguard_mean"], 3)},
        "runs": runs, "rounds": args.rounds, "reps": args.reps,
    }, indent=2))


if __name__ == "__main__":
    main()
