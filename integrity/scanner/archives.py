"""Compressed streams (gzip, zlib, bz2, xz: joblib's compressors) and tar archives, unpacked in
memory for scanning and never written to disk or extracted."""

from __future__ import annotations

import bz2
import lzma
import tarfile
import zlib
from typing import IO, Any

from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = ["MAX_INFLATE", "decompressor", "inflate", "is_tar", "scan_tar"]

MAX_INFLATE = 1 << 30  # decompressed bytes scanned per member or file


def decompressor(head: bytes) -> tuple[str, Any] | None:
    if head[:2] == b"\x1f\x8b":
        return "gzip", zlib.decompressobj(16 + zlib.MAX_WBITS)
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib", zlib.decompressobj()
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "bz2", bz2.BZ2Decompressor()
    if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
        return "xz", lzma.LZMADecompressor()
    return None


def inflate(stream: Any, decomp: Any, skip: int = 0) -> bytes:
    stream.read(skip)
    chunks, total = [], 0
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        data = decomp.decompress(block, MAX_INFLATE + 1 - total)
        chunks.append(data)
        total += len(data)
        if total > MAX_INFLATE:
            raise ValueError("decompresses to more than 1 GiB")
        if getattr(decomp, "eof", False):
            break
    return b"".join(chunks)


def is_tar(f: IO[bytes]) -> bool:
    f.seek(257)
    magic = f.read(5)
    f.seek(0)
    return magic == b"ustar"


def scan_tar(f: IO[bytes], location: str, out: list[Finding]) -> str:
    """Every regular member judged by content (read through tarfile, never extracted)."""
    from trainguard.integrity.scanner.formats import MAX_NESTING, nesting, scan_stream

    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                where = f"{location}:{member.name}" if location else member.name
                data = tar.extractfile(member)
                if data is None or nesting(where) > MAX_NESTING:
                    continue
                fmt, inner = scan_stream(data, member.size, where)
                if fmt not in ("text", "unknown"):
                    out.extend(inner)
                elif fmt == "unknown" and member.name.endswith((".pkl", ".pt", ".pth", ".bin")):
                    out.extend(inner)
    except (tarfile.TarError, EOFError) as exc:
        out.append(Finding(FindingKind.PARSE_ERROR, f"tar archive unreadable: {exc}", location))
    return "tar"
