"""`trainguard key list|rotate|rewrap|retire`: the KEK versions of this home's keyring.

Rotation workflow: `key rotate` (new files use the new KEK), `key rewrap PATH...` (old files get
their ~160-byte header rewritten; bodies are not touched), then `key retire --below V PATH...`
(refused while a listed sealed file still needs an older version).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import TrainguardError, UsageError
from trainguard.crypto.config import CryptoConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("key", help="list, rotate, rewrap and retire key-encryption keys")
    s = p.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    s.add_parser("list", help="list KEK versions and whether rotation is due").set_defaults(
        func=run_list
    )
    ro = s.add_parser("rotate", help="add a KEK version and make it current (key:rotate, MFA)")
    _otp_flag(ro)
    ro.set_defaults(func=run_rotate)
    rw = s.add_parser(
        "rewrap", help="rewrap sealed files (or folders of them) under the current KEK"
    )
    rw.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                    help="sealed files, or folders searched for them")
    _otp_flag(rw)
    rw.set_defaults(func=run_rewrap)
    rt = s.add_parser("retire", help="stop decrypting under KEK versions below V and delete them")
    rt.add_argument(
        "--below", type=int, required=True, metavar="V", help="the oldest version that stays usable"
    )
    rt.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="sealed files or folders that must not need a retired version (checked first)",
    )
    _otp_flag(rt)
    rt.set_defaults(func=run_retire)


def _otp_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")


def _authorize(args: argparse.Namespace, ctx: Context) -> str:
    """`key:rotate` is privileged: the logged-in user needs it and a fresh second factor
    (`--otp`, or a login within the step-up window). Returns the acting user."""
    from trainguard.policy.actions import GLOBAL_DOMAIN

    decision = ctx.access().require("key:rotate", "/keys", GLOBAL_DOMAIN, otp=args.otp)
    return str(decision.principal)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    ring = ctx.keyring()
    days = ctx.config.section(CryptoConfig).kek_rotation_days
    cur = ring.current_info()
    age_days = (time.time() - cur.created_at) / 86400
    data: dict[str, Any] = {
        "kek_id": ring.kek_id,
        "current_version": ring.current_version,
        "min_version": ring.min_version,
        "rotation_days": days,
        "rotation_due": age_days > days,
        "versions": [
            {
                "version": v.version,
                "created_at": _iso(v.created_at),
                "current": v.current,
                "retired": v.retired,
            }
            for v in ring.versions()
        ],
    }

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"keyring {d['kek_id']}  (rotate every {days} days)",
            "VERSION  CREATED                    STATUS",
        ]
        for v in d["versions"]:
            status = "current" if v["current"] else "retired" if v["retired"] else "decrypt-only"
            lines.append(f"v{v['version']:<7} {v['created_at']:26} {status}")
        if d["rotation_due"]:
            lines.append(
                f"rotation due: v{d['current_version']} is {age_days:.0f} days old; run `trainguard key rotate`"
            )
        return "\n".join(lines)

    ctx.emit(data, text)
    return 0


def run_rotate(args: argparse.Namespace, ctx: Context) -> int:
    ring = ctx.keyring()
    actor = _authorize(args, ctx)
    info = ring.rotate()
    ctx.audit.record("key-rotated", actor, {"kek_id": ring.kek_id, "version": info.version})
    data = {"kek_id": ring.kek_id, "version": info.version, "created_at": _iso(info.created_at)}
    ctx.emit(data, f"KEK v{info.version} is now current for keyring {ring.kek_id}")
    ctx.info("existing sealed files still use older versions: run `trainguard key rewrap PATH...`")
    return 0


def _sealed_files(paths: list[Path]) -> Iterator[Path]:
    from trainguard.crypto.sealed.stream import is_sealed

    for p in paths:
        if p.is_dir():
            for dirpath, _, names in os.walk(p):
                for n in sorted(names):
                    f = Path(dirpath) / n
                    if not f.is_symlink() and is_sealed(f):
                        yield f
        elif p.is_file():
            yield p
        else:
            raise UsageError(f"{p} does not exist", tip="pass sealed files or folders holding them")


def run_rewrap(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.sealed.stream import rewrap_files

    ring = ctx.keyring()
    actor = _authorize(args, ctx)
    rewrapped: list[str] = []
    current: list[str] = []
    failed: list[dict[str, str]] = []
    for r in rewrap_files(list(_sealed_files(args.paths)), ring):
        if r.error is not None:
            msg = r.error.message if isinstance(r.error, TrainguardError) else str(r.error)
            failed.append({"path": str(r.path), "error": msg})
        else:
            (rewrapped if r.rewrapped else current).append(str(r.path))
    ctx.audit.record(
        "key-rewrapped",
        actor,
        {
            "kek_id": ring.kek_id,
            "version": ring.current_version,
            "rewrapped": len(rewrapped),
            "already_current": len(current),
            "failed": [x["path"] for x in failed],
        },
    )
    data = {
        "version": ring.current_version,
        "rewrapped": rewrapped,
        "already_current": current,
        "failed": failed,
    }

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"rewrapped {len(rewrapped)} file(s) to KEK v{ring.current_version}; {len(current)} already current"
        ]
        lines += [f"FAILED {x['path']}: {x['error']}" for x in failed]
        return "\n".join(lines)

    ctx.emit(data, text)
    return 1 if failed else 0


def run_retire(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.sealed.stream import sealed_kek_version

    ring = ctx.keyring()
    if args.below > ring.current_version:
        raise UsageError(
            f"cannot retire below v{args.below}: the current version is v{ring.current_version}",
            tip="run `trainguard key rotate` and `trainguard key rewrap` first",
        )
    still = [str(f) for f in _sealed_files(args.paths) if sealed_kek_version(f) < args.below]
    if still:
        raise UsageError(
            f"{len(still)} sealed file(s) still need KEK versions below v{args.below}: "
            + ", ".join(still[:10]),
            tip="run `trainguard key rewrap PATH...` on them first",
        )
    actor = _authorize(args, ctx)  # after the checks: a typo should not cost a second factor
    retired = ring.retire_below(args.below)
    ctx.audit.record(
        "key-retired",
        actor,
        {"kek_id": ring.kek_id, "retired": retired, "min_version": ring.min_version},
    )
    data = {"retired": retired, "min_version": ring.min_version}
    ctx.emit(
        data,
        f"retired KEK version(s) {retired or 'none'}; minimum decryption version is v{ring.min_version}",
    )
    return 0
