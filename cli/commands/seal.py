"""`trainguard seal IN OUT` and `trainguard unseal IN OUT` (``-`` for stdin/stdout).

A file output appears only once the whole stream is sealed or verified (temporary file, then
rename). Unsealing to stdout emits one verified segment at a time: if the stream turns out to be
damaged the output stops short and the command exits 1, so check the exit status in pipelines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, BinaryIO

from trainguard.cli.context import Context
from trainguard.core.config import apply_flags
from trainguard.core.errors import UsageError
from trainguard.crypto.config import CryptoConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "seal",
        help="encrypt a file into a sealed stream under this home's keyring",
        description="Encrypt IN into OUT (AES-256-GCM segments, DEK wrapped by the current "
        "KEK). Use - for stdin or stdout.",
    )
    p.add_argument("input", metavar="IN", help="file to seal, - for stdin")
    p.add_argument("output", metavar="OUT", help="sealed output (appears only when complete), - for stdout")
    p.add_argument(
        "--segment-size",
        type=int,
        default=None,
        help="plaintext bytes per segment ([crypto] segment_size)",
    )
    p.set_defaults(func=run_seal)
    u = sub.add_parser(
        "unseal",
        help="verify and decrypt a sealed stream",
        description="Verify and decrypt IN into OUT. Use - for stdin or stdout; on stdout the "
        "output can stop short if the stream is damaged (exit 1).",
    )
    u.add_argument("input", metavar="IN", help="sealed file, - for stdin")
    u.add_argument("output", metavar="OUT", help="plaintext output (written only once verified), - for stdout")
    u.set_defaults(func=run_unseal)


def _endpoints(args: argparse.Namespace) -> tuple[Path | BinaryIO, Path | BinaryIO]:
    src: Path | BinaryIO = sys.stdin.buffer if args.input == "-" else Path(args.input)
    dst: Path | BinaryIO = sys.stdout.buffer if args.output == "-" else Path(args.output)
    if isinstance(src, Path) and not src.is_file():
        raise UsageError(
            f"input {src} is not a readable file", tip="pass a file path or - for stdin"
        )
    if isinstance(dst, Path) and dst.is_dir():
        raise UsageError(f"output {dst} is a directory", tip="pass a file path or - for stdout")
    if isinstance(dst, Path) and not dst.absolute().parent.is_dir():
        raise UsageError(f"output folder {dst.parent} does not exist", tip="create it first")
    return src, dst


def _report(ctx: Context, args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.output == "-":
        ctx.info(text)  # stdout carries the data itself
    else:
        ctx.emit(data, text)


def run_seal(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.sealed.stream import seal_file

    src, dst = _endpoints(args)
    if args.output == "-" and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a sealed stream to a terminal", tip="redirect stdout: > FILE"
        )
    crypto = apply_flags(
        ctx.config.section(CryptoConfig), source="--segment-size", segment_size=args.segment_size
    )
    seg = crypto.segment_size
    ring = ctx.keyring()
    n = seal_file(src, dst, ring, segment_size=seg)
    data = {
        "input": args.input,
        "output": args.output,
        "bytes": n,
        "kek_id": ring.kek_id,
        "kek_version": ring.current_version,
        "segment_size": seg,
    }
    _report(
        ctx,
        args,
        data,
        f"sealed {args.input} -> {args.output} ({n} bytes, KEK v{ring.current_version})",
    )
    return 0


def run_unseal(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.crypto.sealed.stream import unseal_file

    src, dst = _endpoints(args)
    ring = ctx.keyring()
    n = unseal_file(src, dst, ring)
    data = {"input": args.input, "output": args.output, "bytes": n, "verified": True}
    _report(ctx, args, data, f"unsealed {args.input} -> {args.output} ({n} bytes, verified)")
    return 0
