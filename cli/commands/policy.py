"""`trainguard policy ...`: show, grant, revoke and sign the signed casbin policy.

Changes need `policy:edit` (privileged: step-up MFA) in the project; each change re-signs the
file with the node key and is audited. `policy sign` accepts a reviewed hand edit.
"""

from __future__ import annotations

import argparse
from typing import Any

from trainguard.cli.context import Context, project_flag


def _ac(ctx: Context) -> Any:
    from trainguard.policy.access import AccessControl

    ac: AccessControl = ctx.access()
    return ac


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="show and edit the signed access policy")
    s = p.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    show = s.add_parser("show", help="rules and role links (of one project and '*')")
    project_flag(show, help="project; default: every project")
    show.set_defaults(func=_show)

    for name, fn in (("grant", _grant), ("revoke", _revoke)):
        c = s.add_parser(name, help=f"{name} ROLE ACTION RESOURCE in a project")
        c.add_argument("role", metavar="ROLE", help="a role (a new name creates a role) or a user")
        c.add_argument("action", metavar="ACTION", help="an action, 'area:*' or '*'")
        c.add_argument("resource", metavar="RESOURCE", help="a path, '*' allowed at the end")
        project_flag(c, required=True, help="project, or '*' for every project")
        c.add_argument("--deny", action="store_true", help="an explicit deny (deny wins)")
        c.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")
        c.set_defaults(func=fn)

    sign = s.add_parser("sign", help="re-sign the policy file after reviewing a hand edit")
    sign.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")
    sign.set_defaults(func=_sign)


def _show(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    ac.require("audit:read", "/policy", args.domain or "*")
    rules = ac.rules

    def keep(domain: str) -> bool:
        return not args.domain or domain in (args.domain, "*")

    data = {
        "grants": [
            {
                "subject": g.subject,
                "domain": g.domain,
                "resource": g.resource,
                "action": g.action,
                "effect": g.effect,
            }
            for g in rules.grants
            if keep(g.domain)
        ],
        "links": [
            {"member": lk.member, "role": lk.role, "domain": lk.domain}
            for lk in rules.links
            if keep(lk.domain)
        ],
        "privileged_actions": list(ac.config.privileged_actions),
    }

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"{g['effect']:<5} {g['subject']:<16} {g['action']:<18} {g['resource']:<24} in {g['domain']}"
            for g in d["grants"]
        ]
        lines += [
            f"role  {lk['member']:<16} has {lk['role']:<14} in {lk['domain']}" for lk in d["links"]
        ]
        return "\n".join(lines) or "(no rules: everything is denied)"

    ctx.emit(data, text)
    return 0


def _change(args: argparse.Namespace, ctx: Context, *, revoke: bool) -> int:
    ac = _ac(ctx)
    decision = ac.require(
        "policy:edit", "/policy", args.domain, otp=args.otp, new_domain=not revoke
    )
    rule = ac.grant(
        args.role,
        args.action,
        args.resource,
        args.domain,
        deny=args.deny,
        actor=decision.principal,
        revoke=revoke,
    )
    verb = "revoked" if revoke else "granted"
    ctx.emit({"op": "revoke" if revoke else "grant", "rule": rule.line()}, f"{verb}: {rule.line()}")
    return 0


def _grant(args: argparse.Namespace, ctx: Context) -> int:
    return _change(args, ctx, revoke=False)


def _revoke(args: argparse.Namespace, ctx: Context) -> int:
    return _change(args, ctx, revoke=True)


def _sign(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    decision, added, removed = ac.sign_current(otp=args.otp)
    data = {
        "signed": str(ac.policy_file.path),
        "by": decision.principal,
        "added": added,
        "removed": removed,
    }

    def text(d: dict[str, Any]) -> str:
        lines = [f"signed {d['signed']}"]
        lines += [f"  + {x}" for x in d["added"]] + [f"  - {x}" for x in d["removed"]]
        return "\n".join(lines)

    ctx.emit(data, text)
    return 0
