"""`trainguard deps lock [--out FILE]`, `deps verify [--lock FILE] [--full]`, `deps audit [--osv-dir DIR]`.

`lock` inventories every installed distribution and startup file, hashes them and signs the lock
with the node key (default `<home>/state/deps.lock.json`, signature next to it as `.sig`).
`verify` refuses a lock whose signature fails (exit 1), then reports drift and exits 1 naming
the files; unpinned requirement files (no `--hash`) are warnings only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context

ACTOR = "cli"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("deps", help="lock, verify and audit the installed Python dependencies")
    inner = p.add_subparsers(dest="deps_command", metavar="COMMAND", required=True)
    lock = inner.add_parser("lock", help="hash every installed file into a signed lock")
    lock.add_argument("--out", type=Path, help="lock file (default: <home>/state/deps.lock.json)")
    lock.set_defaults(func=run_lock)
    verify = inner.add_parser("verify", help="compare the environment with the signed lock")
    verify.add_argument(
        "--lock", type=Path, help="lock file (default: <home>/state/deps.lock.json)"
    )
    verify.add_argument("--full", action="store_true", help="re-hash everything (ignore the cache)")
    verify.add_argument(
        "--requirements", type=Path, action="append", metavar="FILE",
        help="requirement files to check for --hash pins (default: requirements*.txt here)",
    )  # fmt: skip
    verify.set_defaults(func=run_verify)
    _register_audit(inner)


def _register_audit(inner: Any) -> None:
    audit = inner.add_parser(
        "audit",
        help="check the locked distributions against known vulnerabilities (OSV)",
        description="Match every distribution of the signed lock against the OSV database: "
        "offline against an OSV export folder (--osv-dir, for air-gapped clusters), else online "
        "through pip-audit. Each finding is a dependency-vulnerable incident. Exit 1 on findings.",
    )
    audit.add_argument("--lock", type=Path, metavar="FILE",
                       help="the signed lock (default: the home's state/deps.lock.json)")
    audit.add_argument("--osv-dir", type=Path, metavar="DIR",
                       help="folder of OSV JSON records (the OSV PyPI export, unzipped)")
    audit.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.api.client import report_incident
    from trainguard.crypto.signing import VerifyKey
    from trainguard.integrity.deps.audit import audit_offline, audit_online, locked_versions
    from trainguard.integrity.deps.lock import default_lock_path, read_lock

    ctx.home.require()
    path = args.lock or default_lock_path(ctx.home.state_dir)
    lock = read_lock(path, VerifyKey.load(ctx.home.node_verify_key))
    installed = locked_versions(lock)
    if args.osv_dir is not None:
        findings, records = audit_offline(installed, args.osv_dir)
        source = f"osv-dir:{args.osv_dir}"
    else:
        findings, records, source = audit_online(installed), None, "pip-audit"
    data = {
        "lock": str(path), "source": source, "distributions": len(installed),
        "records": records, "vulnerable": len(findings),
        "findings": [f.to_json() for f in findings],
    }
    ctx.audit.record("deps-audited", ACTOR, {
        "lock": str(path), "source": source, "distributions": len(installed),
        "vulnerable": len(findings),
        "findings": [{"id": f.id, "package": f.package, "version": f.version,
                      "fixed_in": list(f.fixed_in)} for f in findings[:100]],
    })
    for f in findings:
        report_incident(ctx.home, ctx.config, "dependency-vulnerable", f.severity, {
            "id": f.id, "package": f.package, "version": f.version, "aliases": list(f.aliases),
            "fixed_in": list(f.fixed_in), "dedup_key": f"{f.package}:{f.id}",
        })
    ctx.emit(data, _audit_text)
    return 1 if findings else 0


def _audit_text(d: dict[str, Any]) -> str:
    lines = [f"{d['distributions']} distributions checked against {d['source']}: "
             f"{d['vulnerable']} known vulnerabilit{'y' if d['vulnerable'] == 1 else 'ies'}"]
    if d["findings"]:
        lines.append(f"{'PACKAGE':24} {'VERSION':12} {'ID':22} FIXED IN")
        for f in d["findings"]:
            lines.append(f"{f['package']:24} {f['version']:12} {f['id']:22} "
                         f"{', '.join(f['fixed_in']) or '-'}")
    return "\n".join(lines)


def _signing_key(ctx: Context) -> Any:
    from trainguard.crypto.signing import SigningKey

    ctx.home.require()
    return SigningKey.load(ctx.home.node_signing_key)


def run_lock(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.integrity.deps.lock import build_lock, default_lock_path, write_lock

    key = _signing_key(ctx)
    out = args.out or default_lock_path(ctx.home.state_dir)
    started = time.monotonic()
    lock = build_lock()
    write_lock(lock, out, key)
    dists = lock["distributions"]
    data = {
        "lock": str(out),
        "signature": str(out) + ".sig",
        "key_id": key.key_id,
        "distributions": len(dists),
        "files": sum(len(d["files"]) for d in dists.values()),
        "startup_files": sorted(lock["startup"]),
        "record_mismatch": {
            d["name"]: d["record_mismatch"] for d in dists.values() if d["record_mismatch"]
        },
        "seconds": round(time.monotonic() - started, 3),
    }
    ctx.audit.record(
        "deps-locked", ACTOR, {k: data[k] for k in ("lock", "key_id", "distributions", "files")}
    )
    ctx.emit(data, lambda d: (
        f"locked {d['distributions']} distributions, {d['files']} files -> {d['lock']}"
        + "".join(f"\nnote: RECORD of {n} already wrong for {len(p)} file(s)" for n, p in d["record_mismatch"].items())
    ))  # fmt: skip
    return 0


def run_verify(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.signing import VerifyKey
    from trainguard.integrity.deps.cache import HashCache
    from trainguard.integrity.deps.lock import (
        default_lock_path,
        read_lock,
        requirement_warnings,
        verify_lock,
    )

    ctx.home.require()
    path = args.lock or default_lock_path(ctx.home.state_dir)
    lock = read_lock(path, VerifyKey.load(ctx.home.node_verify_key))
    cache = None if args.full else HashCache(ctx.home.state_dir / "deps.cache.json")
    started = time.monotonic()
    result = verify_lock(lock, cache=cache)
    reqs = args.requirements or sorted(Path.cwd().glob("requirements*.txt"))
    data = result.to_json() | {
        "lock": str(path),
        "warnings": requirement_warnings(reqs),
        "seconds": round(time.monotonic() - started, 3),
    }
    ctx.audit.record(
        "deps-verified", ACTOR,
        {"lock": str(path), "drift": result.drift, "files": result.drifted_files()[:50],
         "added": list(result.added), "removed": list(result.removed)},
    )  # fmt: skip
    ctx.emit(data, _verify_text)
    for w in data["warnings"]:
        ctx.info(f"warning: {w['file']}: {len(w['unpinned'])} requirement(s) without --hash pins")
    if result.drift:
        ctx.info(f"error: dependency drift in {len(result.drifted_files())} file(s); see above")
        return 1
    return 0


def _verify_text(d: dict[str, Any]) -> str:
    lines = []
    for dist in d["distributions"]:
        if dist["version"]:
            lines.append(f"{dist['name']}: version {dist['version'][0]} -> {dist['version'][1]}")
        for kind in ("changed", "missing", "extra"):
            lines.extend(f"{dist['name']}: {kind} {p}" for p in dist[kind])
    lines += [f"added distribution {n}" for n in d["added"]]
    lines += [f"removed distribution {n}" for n in d["removed"]]
    for kind, paths in d["startup"].items():
        lines.extend(f"startup file {kind}: {p}" for p in paths)
    if not d["drift"]:
        lines.append(f"ok: {d['files_checked']} files match the lock ({d['files_hashed']} hashed)")
    return "\n".join(lines)
