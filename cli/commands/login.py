"""`trainguard login`: verify a TOTP (or recovery) code and save a signed session token."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("login", help="log in with a second factor; other commands use the session")
    p.add_argument("--user", required=True, metavar="NAME", help="the trainguard user to log in as")
    p.add_argument("--otp", metavar="CODE", help="TOTP or recovery code (prompted when omitted)")
    p.set_defaults(func=_login)


def _login(args: argparse.Namespace, ctx: Context) -> int:
    gate = ctx.gate()  # this process for a readable home, else the agent
    code = args.otp if args.otp is not None else _prompt(args.user)
    session = gate.login(args.user, code)
    data = {
        "user": session.user,
        "node": session.node,
        "cluster": session.cluster,
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.expires_at)),
        "via": "agent" if not ctx.home_readable else "home",
        "session_file": str(gate.sessions.path),
    }
    ctx.emit(data, lambda d: f"logged in as {d['user']} on {d['node']} until {d['expires_at']}")
    return 0


def _prompt(user: str) -> str:
    """Ask on a terminal; otherwise read one line from stdin (`... | trainguard login`), which
    keeps the code out of the process list. Nothing to read is a usage error, not a crash."""
    if sys.stdin is None or not sys.stdin.isatty():
        code = sys.stdin.readline().strip() if sys.stdin is not None else ""
    else:
        try:
            code = getpass.getpass(f"TOTP code for {user}: ")
        except EOFError:
            code = ""
            print(file=sys.stderr)  # the prompt left the cursor mid-line
    if not code:
        raise UsageError(
            "no code given", tip="pass --otp CODE, pipe the code on stdin, or run in a terminal"
        )
    return code
