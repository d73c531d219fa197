"""`trainguard hooks list | hooks test KIND`."""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.evidence.incidents import IncidentKind


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("hooks", help="list and test incident hooks")
    hooks_sub = p.add_subparsers(dest="hooks_command", metavar="COMMAND", required=True)
    ls = hooks_sub.add_parser(
        "list", help="hooks in hooks.d, built-in actions per kind, webhook queue"
    )
    ls.set_defaults(func=_list)
    test = hooks_sub.add_parser(
        "test",
        help="fire a synthetic incident of KIND through the configured hooks",
        description=(
            'Record a synthetic incident (evidence {"test": true}, audit entry marked '
            '"synthetic": true) and run every hook in hooks.d and the actions configured for KIND. '
            "kill, quarantine, revoke and stop-training only report what they would do; webhooks "
            "are really sent. The audit report leaves synthetic incidents out of its evidence, "
            "incident table and score (it counts them in its header). "
            "Exit 1 if a hook or action failed."
        ),
    )
    test.add_argument("kind", choices=[k.value for k in IncidentKind], metavar="KIND",
                      help="incident kind to simulate: " + ", ".join(k.value for k in IncidentKind))
    test.add_argument("--severity", default="low", choices=["low", "medium", "high", "critical"],
                      help="severity of the test incident (default %(default)s)")
    test.set_defaults(func=_test)


def _list(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.evidence.response.config import HooksConfig
    from trainguard.evidence.response.hooks import discover_hooks
    from trainguard.evidence.response.queue import DeliveryQueue

    home = ctx.home.require()
    cfg = ctx.config.section(HooksConfig)
    run, skipped = discover_hooks(home.hooks_dir)
    with _queue_errors(home.queue_db):
        queue = DeliveryQueue(home.queue_db)
        try:
            counts = queue.counts()
        finally:
            queue.close()
    data = {
        "hooks_dir": str(home.hooks_dir),
        "hooks": [p.name for p in run],
        "skipped": [{"hook": p.name, "reason": r} for p, r in skipped],
        "actions": cfg.actions,
        "webhook_url": cfg.webhook_url or None,
        "webhook_signed": bool(cfg.webhook_secret_file),
        "timeout_seconds": cfg.timeout_seconds,
        "webhook_queue": counts,
    }
    ctx.emit(data, _list_text)
    return 0


@contextlib.contextmanager
def _queue_errors(path: Path) -> Iterator[None]:
    """A garbled state/queue.db is a damaged home (exit 2 with a tip), not a bug (exit 3)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise UsageError(
            f"{path} is not a usable webhook queue ({exc})",
            tip="restore state/queue.db from a backup of this home, or move it aside to start "
            "an empty queue (webhooks still waiting in it are then not retried)",
        ) from exc


def _list_text(d: dict[str, Any]) -> str:
    lines = [f"hooks in {d['hooks_dir']} (timeout {d['timeout_seconds']} s):"]
    lines += [f"  {h}" for h in d["hooks"]] or ["  (none)"]
    lines += [f"  skipped {s['hook']}: {s['reason']}" for s in d["skipped"]]
    lines.append("built-in actions:")
    lines += [f"  {k}: {', '.join(v)}" for k, v in sorted(d["actions"].items())] or [
        "  (none configured)"
    ]
    lines.append(
        f"webhook: {d['webhook_url'] or '-'} (signed: {d['webhook_signed']}); queue {d['webhook_queue']}"
    )
    return "\n".join(lines)


def _test(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.evidence.embedded import open_embedded_log
    from trainguard.evidence.response.engine import IncidentEngine

    home = ctx.home.require()
    evidence = {
        "test": True,
        "synthetic": True,
        "test_id": uuid.uuid4().hex[:12],
        "requested_at": time.time(),
        "note": "fired by `trainguard hooks test`",
    }
    with open_embedded_log(home, ctx.config) as log:
        with _queue_errors(home.queue_db):  # the engine opens the webhook queue
            engine = IncidentEngine.from_config(home, ctx.config, log)
        try:
            incident = engine.report(
                args.kind, args.severity, evidence, actor="hooks-test", respond=False,
                synthetic=True,
            )
            outcomes = engine.respond(incident) if incident.status == "new" else []
        finally:
            engine.close()
    failed = [
        o
        for o in outcomes
        if o.get("ok") is False
        or ("exit_code" in o and (o["exit_code"] != 0 or o.get("timed_out") or o.get("error")))
    ]
    ctx.emit(
        {"incident": incident.to_dict(), "outcomes": outcomes, "failed": len(failed)}, _test_text
    )
    return 1 if failed or incident.status != "new" else 0


def _test_text(d: dict[str, Any]) -> str:
    inc = d["incident"]
    lines = [f"incident {inc['id']} ({inc['kind']}, {inc['severity']}): {inc['status']}"]
    for o in d["outcomes"]:
        if "hook" in o:
            state = "timed out" if o["timed_out"] else f"exit {o['exit_code']}"
            lines.append(f"  hook {o['hook']}: {state} {o['error']}".rstrip())
        else:
            lines.append(f"  action {o['action']}: {'ok' if o['ok'] else 'FAILED'} - {o['detail']}")
    if not d["outcomes"]:
        lines.append("  no hooks in hooks.d and no actions configured for this kind")
    return "\n".join(lines)
