"""`trainguard agent run [--once] | agent status | agent install-unit [--print] [--path P]`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run and manage the node agent")
    agent_sub = p.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)

    run = agent_sub.add_parser(
        "run",
        help="run the agent in the foreground (systemd runs this)",
        description=(
            "Run the node agent: posture checks, telemetry, scoring, incidents and hooks, the API "
            "on <home>/state/agent.sock (and mTLS TCP when [agent] listen is set). SIGHUP reloads "
            "the config, SIGTERM stops cleanly. Refuses to start on loose file modes (exit 2)."
        ),
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="one full cycle (checks, telemetry, scoring), then exit 0",
    )
    run.set_defaults(func=_run)

    status = agent_sub.add_parser(
        "status", help="ask the running agent for its status (exit 1 if not running)"
    )
    status.set_defaults(func=_status)

    unit = agent_sub.add_parser(
        "install-unit",
        help="write (or --print) the hardened systemd unit",
        description=(
            "Write the hardened unit to --path (default /etc/systemd/system/trainguard-agent.service); "
            "then `systemctl daemon-reload && systemctl enable --now trainguard-agent`."
        ),
    )
    unit.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the unit instead of writing it",
    )
    unit.add_argument("--path", type=Path, default=None, help="where to write the unit file")
    unit.add_argument(
        "--unit-home",
        type=Path,
        default=Path("/var/lib/trainguard"),
        help="the agent's home under systemd (default /var/lib/trainguard)",
    )
    unit.add_argument("--user", default="trainguard", help="system user the agent runs as")
    unit.add_argument(
        "--exec",
        dest="exec_start",
        default=None,
        help="command that runs the trainguard CLI (default: this Python -m ...)",
    )
    unit.add_argument(
        "--allow-kill",
        action="store_true",
        help="grant CAP_KILL so the kill action can stop other users' processes",
    )
    unit.add_argument("--watchdog", type=int, default=60, metavar="SECONDS", help="WatchdogSec")
    unit.add_argument(
        "--man-dir", type=Path, default=Path("/usr/local/share/man/man1"), metavar="DIR",
        help="where to install the trainguard(1) man page the unit's Documentation= names",
    )
    unit.add_argument(
        "--credential",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="LoadCredentialEncrypted entry (e.g. the KEK sealed with systemd-creds)",
    )
    unit.set_defaults(func=_install_unit)


def _run(args: argparse.Namespace, ctx: Context) -> int:
    import asyncio

    from trainguard.agent.daemon import Agent, preflight, run_once
    from trainguard.agent.systemd.sdnotify import Notifier
    from trainguard.core.config import load_config

    preflight(ctx.home)
    config = ctx.config
    if args.once:
        summary = run_once(ctx.home, config)
        ctx.emit(summary, _once_text)
        return 0
    notifier = Notifier.from_environ(ctx.environ)
    # sd_notify(unset_environment=1): hooks, checks and every other child must not talk to
    # systemd in the agent's name (a child could otherwise send READY=1 or keep the watchdog
    # alive for a stalled agent).
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
    environ = dict(ctx.environ)
    agent = Agent(
        ctx.home,
        config,
        notifier=notifier,
        config_loader=lambda: load_config(ctx.home.config_path, environ),
        environ=environ,
    )
    # Through logging, not plain stderr: under systemd every line carries its journal priority.
    logging.getLogger("trainguard.agent").info(
        "serving %s (node %s)", agent.socket_path, config.node.name
    )
    try:
        return asyncio.run(agent.run())
    finally:
        agent.close()


def _once_text(d: dict[str, Any]) -> str:
    checks = ", ".join(f"{n} {s}" for s, n in d["checks"].items()) or "none"
    lines = [
        f"checks: {checks}",
        f"failed: {', '.join(d['failed_checks']) or '-'}",
        f"gpus sampled: {d['gpus']}; detections: {d['detections']}; new incidents: {len(d['incidents'])}",
        f"audit log at entry {d['audit_last_seq']}",
    ]
    lines += [f"error: {e}" for e in d["errors"]]
    return "\n".join(lines)


def _status(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.api.client import AgentClient, AgentUnavailable, agent_socket

    ctx.home.require()  # "not running" would send the user looking for a daemon, not a home
    ctx.config  # noqa: B018 - a broken trainguard.toml stops the next (re)start: say so now
    socket_path = str(agent_socket(ctx.home, ctx.environ))
    try:
        with AgentClient(ctx.home, timeout=10, socket_path=Path(socket_path)) as client:
            status = client.status()
    except AgentUnavailable as exc:
        ctx.emit(
            {"running": False, "reason": exc.message, "socket": socket_path},
            f"agent not running: {exc.message}",
        )
        return 1
    ctx.emit({"running": True, "socket": socket_path, **status}, _status_text)
    return 0


def _status_text(d: dict[str, Any]) -> str:
    last = d.get("last_cycle") or {}
    return "\n".join(
        [
            f"running: node {d['node']} (cluster {d['cluster']}), pid {d['pid']}, up {d['uptime_seconds']} s",
            f"cycles: {d['cycles']}; last: {last.get('checks', {})} gpus={last.get('gpus', '-')}",
            f"audit: entry {d['audit']['last_seq']}, last checkpoint at {d['audit']['last_checkpoint']}",
            f"webhook queue: {d['webhook_queue']}",
            f"socket: {d['socket']}",
            "listeners: " + ", ".join(f"{k}={v}" for k, v in d["listeners"].items()),
        ]
    )


def _install_unit(args: argparse.Namespace, ctx: Context) -> int:
    import shlex

    from trainguard.agent.systemd.unit import DEFAULT_UNIT_PATH, UnitOptions, render_unit
    from trainguard.core.fs import write_private

    if args.watchdog < 1:
        raise UsageError(
            f"--watchdog must be at least 1 second, not {args.watchdog}",
            tip="the agent pings systemd every cycle; 60 is a good value",
        )
    try:
        exec_start = tuple(shlex.split(args.exec_start)) if args.exec_start else ()
    except ValueError as exc:
        raise UsageError(
            f"cannot split --exec {args.exec_start!r}: {exc}",
            tip="quote it as one shell word list, e.g. --exec '/opt/tg/bin/trainguard'",
        ) from exc
    creds = []
    for item in args.credential:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"bad --credential {item!r}", tip="use NAME=PATH")
        creds.append((name, path))
    opts = UnitOptions(
        exec_start=exec_start,
        home=args.unit_home,
        user=args.user,
        watchdog_seconds=args.watchdog,
        allow_kill=args.allow_kill,
        credentials=tuple(creds),
    )
    text = render_unit(options=opts)
    if args.print_only:
        ctx.stdout.write(text)
        return 0
    path = args.path or DEFAULT_UNIT_PATH
    if path.is_dir():
        raise UsageError(f"--path {path} is a directory", tip="give the unit file's full path")
    try:
        write_private(path, text.encode(), mode=0o644)
    except PermissionError as exc:
        raise UsageError(
            f"cannot write {path}: permission denied", tip="run as root, or use --print / --path"
        ) from exc
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}", tip="use --print, or another --path"
        ) from exc
    man = _install_manpage(args.man_dir)
    ctx.emit({"path": str(path), "manpage": str(man) if man else None},
             f"wrote {path}" + (f" and {man}" if man else ""))
    ctx.info("next: systemctl daemon-reload && systemctl enable --now trainguard-agent")
    return 0


def _install_manpage(folder: Path) -> Path | None:
    """Write trainguard.1 (generated from this CLI) into `folder`; None with a warning when the
    folder cannot be written (the unit still works; `man trainguard` does not)."""
    from trainguard.cli.main import _version, build_parser
    from trainguard.cli.manpage import render_manpage
    from trainguard.core.fs import write_private

    path = folder / "trainguard.1"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_private(path, render_manpage(build_parser(), version=_version()).encode(), mode=0o644)
    except OSError as exc:
        logging.getLogger("trainguard.agent").warning(
            "man page not installed at %s: %s", path, exc.strerror or exc)
        return None
    return path
