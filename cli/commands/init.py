"""`trainguard init`: create a home for this node."""

from __future__ import annotations

import argparse
import getpass
import re
import socket
from dataclasses import asdict
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError


def _default_node() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]) or "node-1"


def _default_admin() -> str:
    try:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", getpass.getuser()) or "admin"
    except (KeyError, OSError):
        return "admin"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init",
        help="create a trainguard home (keys, CA, config, admin user)",
        description=(
            "Create a home: KEK v1, the node's Ed25519 signing key, a cluster CA and node "
            "certificate, default config, the signed default policy and the admin user with "
            "TOTP enrolment. Folders are 0700 and key files 0600."
        ),
    )
    p.add_argument("--cluster", default="trainguard", help="cluster name (default: trainguard)")
    p.add_argument("--node", default=None, help="node name (default: short host name)")
    p.add_argument("--admin", default=None, help="admin user name (default: your login name)")
    p.add_argument(
        "--force",
        action="store_true",
        help="move an existing home aside (to HOME.bak-TIMESTAMP) and create a new one",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.api.client import open_sink
    from trainguard.cli.bootstrap import init_home

    for flag in ("cluster", "node", "admin"):
        if getattr(args, flag) == "":  # '' would silently mean "the default" (or no admin)
            raise UsageError(f"--{flag} needs a name", tip=f"pass --{flag} NAME or leave it out")
    result = init_home(
        ctx.home,
        cluster=args.cluster,
        node=args.node or _default_node(),
        admin=args.admin or _default_admin(),
        force=args.force,
        audit_factory=lambda home: open_sink(home, ctx.config),
        environ=ctx.environ,
    )
    data: dict[str, Any] = asdict(result)
    ctx.emit(data, _text)
    if result.moved_aside:
        ctx.info(f"warning: the previous home was moved to {result.moved_aside}")
    return 0


def _text(data: dict[str, Any]) -> str:
    lines = [f"Created trainguard home {data['home']}"]
    lines.append(f"  cluster {data['cluster']}, node {data['node']} ({data['node_identity']})")
    lines.append(f"  KEK {data['kek_id']} v{data['kek_version']}; node key {data['node_key_id']}")
    lines.append(f"  node certificate valid until {data['node_cert_not_after']}")
    admin = data.get("admin")
    if admin:
        lines.append("")
        lines.append(f"Admin user {admin['name']!r}: add this to an authenticator app now:")
        lines.append(f"  {admin['otpauth_uri']}")
        from trainguard.policy.mfa import qr_text

        lines.append(qr_text(admin["otpauth_uri"]))
        lines.append("Then log in with `trainguard login --user " + admin["name"] + "`.")
    return "\n".join(lines)
