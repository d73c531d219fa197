"""`trainguard pki issue|revoke|list`: certificates of the cluster CA in this home."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.core.fs import write_private


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("pki", help="issue, revoke and list cluster certificates")
    s = p.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    issue = s.add_parser("issue", help="issue a node or user certificate (mTLS identity)")
    issue.add_argument("name", metavar="NAME", help="node or user name (the SPIFFE id's last part)")
    issue.add_argument("--kind", choices=["node", "user"], required=True,
                       help="node (agents, trainers, FL sites) or user (people, API clients)")
    issue.add_argument(
        "--out", type=Path, default=Path("."), help="folder for NAME.crt, NAME.key, ca.crt"
    )
    issue.add_argument("--hours", type=float, default=24.0, help="lifetime in hours (default 24)")
    issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN (node certs)")
    issue.set_defaults(func=run_issue)

    revoke = s.add_parser("revoke", help="revoke every certificate of NAME and rewrite the CRL")
    revoke.add_argument("name", metavar="NAME", help="whose certificates to revoke")
    revoke.add_argument("--kind", choices=["node", "user"], default=None,
                        help="only this kind (default: both)")
    revoke.set_defaults(func=run_revoke)

    lst = s.add_parser("list", help="list issued certificates")
    lst.set_defaults(func=run_list)


def _ca(ctx: Context):  # type: ignore[no-untyped-def]
    from trainguard.crypto.pki import ClusterCA

    pki_dir = ctx.home.require().pki_dir
    ctx.config  # noqa: B018 - a broken trainguard.toml is refused even where no setting is read
    return ClusterCA.open(pki_dir)


def _prepare_out(out: Path) -> None:
    """Make the output folder before the CA issues anything, so a bad --out never leaves a
    certificate in the index whose key went nowhere."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot use {out} as the output folder: {exc.strerror or exc}",
            tip="pass --out with a writable folder",
        ) from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(
            f"output folder {out} is not writable", tip="pass --out with a writable folder"
        )


def run_issue(args: argparse.Namespace, ctx: Context) -> int:
    ca = _ca(ctx)
    audit = ctx.audit  # opened first: no certificate is issued that the audit log cannot record
    out: Path = args.out
    _prepare_out(out)
    cert, key = ca.issue(
        args.name, args.kind, lifetime=dt.timedelta(hours=args.hours), dns_names=tuple(args.dns)
    )
    write_private(out / f"{args.name}.crt", cert, mode=0o644)
    write_private(out / f"{args.name}.key", key)
    write_private(out / "ca.crt", ca.ca_path.read_bytes(), mode=0o644)
    entry = ca.certificates()
    issued = next(c for c in entry if c.name == args.name and c.kind == args.kind)
    audit.record(
        "cert-issued", "cli", {"name": args.name, "kind": args.kind, "serial": str(issued.serial)}
    )
    data: dict[str, Any] = {
        "identity": f"spiffe://{ca.cluster}/{args.kind}/{args.name}",
        "cert": out / f"{args.name}.crt",
        "key": out / f"{args.name}.key",
        "ca": out / "ca.crt",
        "not_after": issued.not_after,
    }
    ctx.emit(
        data,
        lambda d: (
            f"issued {d['identity']} until {d['not_after']}\n  {d['cert']}\n  {d['key']}\n  {d['ca']}"
        ),
    )
    return 0


def run_revoke(args: argparse.Namespace, ctx: Context) -> int:
    ca = _ca(ctx)
    audit = ctx.audit
    revoked = ca.revoke(args.name, args.kind)
    audit.record(
        "cert-revoked", "cli", {"name": args.name, "serials": [str(c.serial) for c in revoked]}
    )
    data = {"revoked": [asdict(c) | {"serial": str(c.serial)} for c in revoked], "crl": ca.crl_path}
    ctx.emit(
        data, lambda d: f"revoked {len(d['revoked'])} certificate(s) of {args.name}; CRL {d['crl']}"
    )
    return 0


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    ca = _ca(ctx)
    rows = [asdict(c) | {"serial": str(c.serial)} for c in ca.certificates()]

    def text(rs: list[dict[str, Any]]) -> str:
        if not rs:
            return "no certificates issued"
        lines = [f"{'KIND':5} {'NAME':20} {'NOT AFTER':26} STATUS"]
        for r in rs:
            lines.append(
                f"{r['kind']:5} {r['name']:20} {r['not_after']:26} {'revoked' if r['revoked'] else 'valid'}"
            )
        return "\n".join(lines)

    ctx.emit(rows, text)
    return 0
