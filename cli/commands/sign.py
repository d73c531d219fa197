"""`trainguard sign PATH [--out MANIFEST]` and `trainguard verify PATH [--manifest MANIFEST]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import UsageError
from trainguard.crypto.config import CryptoConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sign",
        help="sign a file or directory with the node key (a manifest of sha256 per file)",
        description="Write a manifest of {path, size, sha256} for every file under PATH, signed "
        "with the node's Ed25519 key (default: PATH.tgsig.json next to PATH).",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="file or folder to sign")
    p.add_argument("--out", type=Path, default=None, metavar="MANIFEST",
                   help="manifest to write (default: PATH.tgsig.json next to PATH)")
    p.set_defaults(func=run_sign)
    v = sub.add_parser(
        "verify",
        help="verify a file or directory against its signed manifest",
        description="Check the manifest's signature, re-hash PATH and name missing, extra and "
        "changed files (exit 1).",
    )
    v.add_argument("path", type=Path, metavar="PATH", help="file or folder to verify")
    v.add_argument("--manifest", type=Path, default=None, metavar="MANIFEST",
                   help="signed manifest (default: PATH.tgsig.json next to PATH)")
    v.add_argument(
        "--key", type=Path, default=None, help="Ed25519 public key PEM (default: this node's)"
    )
    v.set_defaults(func=run_verify)


def _check_sign_args(path: Path, out: Path | None) -> None:
    """Refuse what would otherwise fail only after hashing everything (or crash on rename)."""
    if not path.exists():
        raise UsageError(f"{path} does not exist", tip="pass the file or folder to sign")
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory", tip="pass a file path for the manifest")
    if not out.absolute().parent.is_dir():
        raise UsageError(f"folder {out.parent} for --out does not exist", tip="create it first")


def run_sign(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.manifest import load_signed, sign_path
    from trainguard.crypto.signing import SigningKey

    key = SigningKey.load(ctx.home.require().node_signing_key)
    _check_sign_args(args.path, args.out)
    workers = ctx.config.section(CryptoConfig).hash_workers
    out = sign_path(args.path, key, args.out, workers=workers)
    m = load_signed(out, key.public_key())  # counts for the summary, without re-hashing
    data = {
        "path": args.path,
        "manifest": out,
        "key_id": key.key_id,
        "files": len(m.files),
        "bytes": m.total_bytes,
    }
    ctx.emit(data, f"signed {args.path} ({len(m.files)} files, {m.total_bytes} bytes) -> {out}")
    return 0


def run_verify(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.errors import ManifestMismatch
    from trainguard.crypto.manifest import default_manifest_path, verify_path
    from trainguard.crypto.signing import VerifyKey

    key = (
        VerifyKey.load(args.key) if args.key else VerifyKey.load(ctx.home.require().node_verify_key)
    )
    workers = ctx.config.section(CryptoConfig).hash_workers
    manifest = args.manifest or default_manifest_path(args.path)
    try:
        m = verify_path(args.path, key, manifest, workers=workers)
    except ManifestMismatch as exc:
        if ctx.json:  # machine-readable findings, then the usual error on stderr
            ctx.emit(
                {
                    "path": args.path,
                    "ok": False,
                    "missing": exc.missing,
                    "extra": exc.extra,
                    "changed": exc.changed,
                }
            )
        raise
    data: dict[str, Any] = {
        "path": args.path,
        "ok": True,
        "manifest": manifest,
        "key_id": key.key_id,
        "files": len(m.files),
        "bytes": m.total_bytes,
    }
    ctx.emit(
        data,
        f"verified {args.path}: {len(m.files)} files match the manifest signed by {key.key_id}",
    )
    return 0
