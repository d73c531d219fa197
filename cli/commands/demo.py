"""`trainguard demo`: run the whole product for real on this machine (a few minutes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo in a fresh home (a few minutes on 2 CPU cores)",
        description=(
            "Create a home, start the agent, run the posture checks, lock and verify dependencies, "
            "log in with TOTP, seal and sign data, train on digits with 3 workers (adversarial "
            "training, robust aggregation, one Byzantine worker), refuse a tampered checkpoint on "
            "resume, catch and quarantine a malicious pickle, evaluate robustness and write the "
            "audit report. Every step runs the real CLI. --home is ignored: the demo makes its own."
        ),
    )
    p.add_argument("--dir", type=Path, default=None, help="empty folder for the demo (default: a new temp folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.cli.demo.run import clean_env, prepare_workdir
    from trainguard.cli.demo.steps import Demo, run_demo

    workdir = prepare_workdir(args.dir)
    ctx.info(f"trainguard demo in {workdir}")
    demo = Demo(workdir, progress=ctx.info, env=clean_env())
    result = run_demo(demo)
    result["operations"] = _deploy_files()

    def text(d: dict[str, Any]) -> str:
        lines = ["", "What the demo showed:"]
        lines += [f"  {i}. {s['title']}: {s['summary']}" for i, s in enumerate(d["steps"], 1)]
        lines += ["", "Report:"] + [f"  {k:6} {v}" for k, v in d["report"].items()]
        lines += ["", f"Demo home: {d['home']} (try: trainguard --home {d['home']} audit log)"]
        ops = d["operations"]
        lines += ["", "Operating it (README: Operating trainguard):",
                  f"  Prometheus alert rules: {ops['prometheus_rules']}",
                  f"  Grafana dashboard:      {ops['grafana_dashboard']}",
                  "  Metrics: set [agent] metrics_listen = \"127.0.0.1:9839\" and scrape /metrics"]
        return "\n".join(lines)

    ctx.emit(result, text)
    return 0


def _deploy_files() -> dict[str, str]:
    """Where the shipped alert rules and dashboard are: the checkout's deploy/ folder (a source
    install, as `make demo` runs), else where to find them in the source distribution."""
    root = Path(__file__).resolve().parents[2]
    found = {
        "prometheus_rules": root / "deploy" / "prometheus" / "trainguard.rules.yml",
        "grafana_dashboard": root / "deploy" / "grafana" / "trainguard.json",
    }
    return {k: str(v) if v.is_file() else f"deploy/{v.parent.name}/{v.name} in the trainguard source"
            for k, v in found.items()}
