"""`trainguard authz check`: would this request be allowed? Exit 0 allow, 1 deny.

For the logged-in user the full decision is made (session, step-up MFA for privileged actions,
policy). For another user it is a policy-only what-if, which needs `audit:read` in the project.
"""

from __future__ import annotations

import argparse
from typing import Any

from trainguard.cli.context import Context, project_flag


def register(sub: Any) -> None:
    p = sub.add_parser("authz", help="check access decisions")
    s = p.add_subparsers(dest="authz_command", metavar="COMMAND", required=True)
    c = s.add_parser("check", help="decide one request; exit 0 allow, 1 deny")
    c.add_argument("--user", required=True, metavar="NAME",
                   help="whose request (yourself, or another user as a policy-only what-if)")
    c.add_argument("--action", required=True, metavar="ACTION", help="e.g. train:launch")
    c.add_argument("--resource", required=True, metavar="RESOURCE", help="e.g. /checkpoints/run-1")
    project_flag(c, help="project (default: the config's default_domain)")
    c.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.core.errors import UsageError
    from trainguard.policy.errors import Denied

    ac = ctx.gate()  # this process for a readable home, else the agent
    remote = not ctx.home_readable
    if remote and not args.domain:
        raise UsageError("--domain is required when the agent decides",
                         tip="name the project, e.g. --domain default")
    domain = args.domain or ac.config.default_domain
    data: dict[str, Any] = {
        "user": args.user,
        "action": args.action,
        "resource": args.resource,
        "domain": domain,
        "mode": "session",
    }
    try:
        session = ac.current_session()
        if args.user == session.user:
            ac.require(args.action, args.resource, domain, otp=args.otp)
        elif remote:
            raise Denied("through the agent you can only check your own requests",
                         reason="what-if through the agent")
        else:
            data["mode"] = "policy-only"
            ac.require("audit:read", "/policy", domain, otp=args.otp)
            ac.what_if(args.user, args.action, args.resource, domain, actor=session.user)
    except Denied as exc:
        data["allowed"] = False
        ctx.emit(
            data, lambda d: f"deny: {d['user']} {d['action']} {d['resource']} in {d['domain']}"
        )
        ctx.info(exc.diagnostics())
        return 1
    data["allowed"] = True
    ctx.emit(data, lambda d: f"allow: {d['user']} {d['action']} {d['resource']} in {d['domain']}")
    return 0
