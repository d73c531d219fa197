"""`trainguard user ...`: add, enrol, list, unlock, remove users; recovery codes.

Every command but `list` needs `user:manage` (privileged: step-up MFA with `--otp` or a login
within the step-up window) in every project the target user belongs to.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from trainguard.cli.context import Context, project_flag


def _ac(ctx: Context) -> Any:
    from trainguard.policy.access import AccessControl

    ac: AccessControl = ctx.access()
    return ac


def _otp_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")


def register(sub: Any) -> None:
    p = sub.add_parser("user", help="manage users, their roles and second factors")
    s = p.add_subparsers(dest="user_command", metavar="COMMAND", required=True)

    a = s.add_parser("add", help="add a user with a role in a project")
    a.add_argument("name", metavar="NAME", help="the new user's name")
    a.add_argument("--role", required=True, metavar="ROLE",
                   help="admin, ml-engineer, researcher, auditor, or a role of the policy")
    project_flag(a, help="project (default: the config's default_domain; '*' = all)")
    a.add_argument("--uid", type=int, metavar="UID",
                   help="the OS account (numeric uid) that may log in as this user through the "
                        "agent; without one the user can log in only where the home is readable")
    _otp_flag(a)
    a.set_defaults(func=_add)

    m = s.add_parser("map", help="map a user to the OS account (uid) that may log in as it")
    m.add_argument("name", metavar="NAME", help="the user to map")
    g = m.add_mutually_exclusive_group(required=True)
    g.add_argument("--uid", type=int, metavar="UID", help="numeric uid, e.g. from `id -u NAME`")
    g.add_argument("--unmap", action="store_true", help="remove the mapping")
    _otp_flag(m)
    m.set_defaults(func=_map)

    e = s.add_parser("enrol", help="create a TOTP secret; prints the otpauth URI and a QR code")
    e.add_argument("name", metavar="NAME", help="the user to enrol")
    _otp_flag(e)
    e.set_defaults(func=_enrol)

    ls = s.add_parser("list", help="users, roles, MFA and lock state")
    ls.set_defaults(func=_list)

    for name, fn, text in (
        ("unlock", _unlock, "lift a lockout after failed attempts"),
        ("remove", _remove, "remove a user, its roles and sessions"),
        ("recovery-codes", _recovery, "issue 10 new single-use recovery codes (shown once)"),
    ):
        c = s.add_parser(name, help=text)
        c.add_argument("name", metavar="NAME", help="the user")
        _otp_flag(c)
        c.set_defaults(func=fn)


def _add(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.policy.rules import check_name

    ac = _ac(ctx)
    check_name("user", args.name)  # else it surfaces as "invalid resource '/users/...'"
    domain = args.domain or ac.config.default_domain
    decision = ac.require(
        "user:manage", f"/users/{args.name}", domain, otp=args.otp, new_domain=True
    )
    rec = ac.add_user(args.name, args.role, domain, actor=decision.principal, os_uid=args.uid)
    data = {"name": rec.name, "role": args.role, "domain": domain, "mfa_enrolled": rec.mfa_enrolled,
            "uid": ac.users.os_uid(rec.name)}
    ctx.emit(data, lambda d: f"added {d['name']} as {d['role']} in {d['domain']}")
    if not rec.mfa_enrolled:
        ctx.info(f"next: `trainguard user enrol {rec.name}` so the user can log in")
    return 0


def _map(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    decision = ac.require_for_user(args.name, otp=args.otp)
    os_uid = None if args.unmap else args.uid
    ac.map_user(args.name, os_uid, actor=decision.principal)
    ctx.emit({"name": args.name, "uid": os_uid},
             lambda d: f"{d['name']} unmapped" if d["uid"] is None
             else f"{d['name']} maps to OS uid {d['uid']}")
    return 0


def _enrol(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.policy.mfa import qr_text

    ac = _ac(ctx)
    decision = ac.require_for_user(args.name, otp=args.otp)
    enrolment = ac.enrol(args.name, actor=decision.principal)
    if ctx.json:
        ctx.emit({"name": args.name, "otpauth_uri": enrolment.otpauth_uri})
    else:
        ctx.emit(
            None,
            f"{qr_text(enrolment.otpauth_uri)}\n{enrolment.otpauth_uri}\n\n"
            f"Scan the code (or enter the URI) in an authenticator app, then log in with "
            f"`trainguard login --user {args.name}`. Keep the URI secret.",
        )
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    ac.require("audit:read", "/users", "*")
    users = ac.users.list_users()
    data = [
        {
            "name": u.name,
            "roles": [f"{r}@{d}" for r, d in u.assignments],
            "mfa_enrolled": u.mfa_enrolled,
            "locked": u.locked,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(u.created_at)),
        }
        for u in users
    ]

    def text(rows: list[dict[str, Any]]) -> str:
        lines = [f"{'NAME':<20} {'MFA':<4} {'LOCKED':<6} ROLES"]
        for r in rows:
            lines.append(
                f"{r['name']:<20} {'yes' if r['mfa_enrolled'] else 'NO':<4} "
                f"{'yes' if r['locked'] else 'no':<6} {', '.join(r['roles']) or '-'}"
            )
        return "\n".join(lines)

    ctx.emit(data, text)
    return 0


def _unlock(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    decision = ac.require_for_user(args.name, otp=args.otp)
    ac.unlock(args.name, actor=decision.principal)
    ctx.emit({"name": args.name, "locked": False}, f"unlocked {args.name}")
    return 0


def _remove(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.policy.errors import UnknownName

    ac = _ac(ctx)
    decision = ac.require_for_user(args.name, otp=args.otp)
    if args.name == decision.principal:
        raise UnknownName("refusing to remove the logged-in user", tip="ask another admin")
    ac.remove_user(args.name, actor=decision.principal)
    ctx.emit({"name": args.name, "removed": True}, f"removed {args.name}")
    return 0


def _recovery(args: argparse.Namespace, ctx: Context) -> int:
    ac = _ac(ctx)
    session = ac.current_session()
    if args.name == session.user:
        # Self-service: any user may replace their own codes with a fresh second factor.
        ac.self_step_up(session, otp=args.otp)
        actor = session.user
    else:
        actor = ac.require_for_user(args.name, otp=args.otp).principal
    codes = ac.mfa.new_recovery_codes(args.name, actor=actor)
    ctx.emit(
        {"name": args.name, "recovery_codes": codes},
        lambda d: (
            "\n".join(d["recovery_codes"])
            + "\n\nEach code works once, in place of a TOTP code. Store them offline; "
            "they replace any earlier codes."
        ),
    )
    return 0
