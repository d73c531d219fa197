"""`trainguard check [--id ID]... [--list]`: run the posture checks once.

Exit 1 when any check fails or could not run (error); warnings and not-applicable exit 0.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from trainguard.cli.context import Context

_MARK = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "not-applicable": "N/A", "error": "ERROR"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check",
        help="run the posture checks once (exit 1 on a failure)",
        description=(
            "Run the node's posture checks once and print each status with its evidence, the "
            "NIST SP 800-53 controls it evidences and what to do. The training job's "
            "environment (MASTER_ADDR, NCCL_SOCKET_IFNAME, ...) is taken from this shell."
        ),
    )
    p.add_argument(
        "--id", dest="ids", action="append", metavar="ID",
        help="run only this check (repeatable); see --list",
    )
    p.add_argument("--list", action="store_true", help="list the checks without running them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.checks import CheckContext, Status, all_checks, run_checks

    if args.list:
        rows = [
            {"id": c.id, "title": c.title, "severity": c.severity.value,
             "controls": list(c.controls), "atlas": list(c.atlas)}
            for c in all_checks()
        ]
        ctx.emit({"checks": rows}, _list_text)
        return 0
    # Without a home every home-based check would "fail" and exit 1 like real findings; a
    # mistyped --home is a usage error.
    ctx.home.require()
    check_ctx = CheckContext(home=ctx.home, config=ctx.config, environ=dict(ctx.environ))
    results = run_checks(ctx.home, ctx.config, args.ids, context=check_ctx)
    counts = Counter(r.status.value for r in results)
    data: dict[str, Any] = {
        "home": str(ctx.home.root),
        "node": ctx.config.node.name,
        "time": time.time(),
        "summary": {s.value: counts.get(s.value, 0) for s in Status},
        "results": [r.to_dict() for r in results],
    }
    ctx.emit(data, _text)
    bad = counts.get("fail", 0) + counts.get("error", 0)
    if not ctx.json:
        ctx.info(", ".join(f"{n} {s}" for s, n in data["summary"].items() if n) or "no checks ran")
    return 1 if bad else 0


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
            for r in rows]


def _text(data: dict[str, Any]) -> str:
    rows = [["STATUS", "CHECK", "SEVERITY", "CONTROLS", "SUMMARY"]]
    for r in data["results"]:
        rows.append([_MARK[r["status"]], r["id"], r["severity"], ",".join(r["controls"]), r["summary"]])
    lines = _table(rows)
    todo = [r for r in data["results"] if r["status"] in ("fail", "warn", "error") and r["remediation"]]
    if todo:
        lines.append("")
        lines.append("What to do:")
        lines.extend(f"  {r['id']}: {r['remediation']}" for r in todo)
    return "\n".join(lines)


def _list_text(data: dict[str, Any]) -> str:
    rows = [["CHECK", "SEVERITY", "CONTROLS", "TITLE"]]
    for c in data["checks"]:
        rows.append([c["id"], c["severity"], ",".join(c["controls"] + c["atlas"]), c["title"]])
    return "\n".join(_table(rows))
