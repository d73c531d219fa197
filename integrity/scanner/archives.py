"""Compressed streams, tar and 7z archives, unpacked in memory for scanning (never extracted).

Compressed streams are recognised and read as ``joblib.load`` reads them (the only loader here
that decompresses): by joblib's prefixes (``ZF`` before ``x`` zlib, gzip, ``BZ`` bz2, ``]\\0``
lzma, xz, lz4); zlib and gzip as one stream (joblib's own reader never goes past the first),
bz2/lzma/xz through Python's multi-stream readers, the pre-0.10 ``ZF`` format as
``read_zfile`` does. A tar archive is one ``tarfile`` opens (a valid first header checksum; no
``ustar`` magic needed, as for torch's legacy tar loader). Archive nesting is counted by depth.
"""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable
from typing import IO, Any

from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = [
    "MAX_INFLATE",
    "SEVEN_ZIP_MAGIC",
    "decompress",
    "is_tar",
    "joblib_compressor",
    "scan_7z",
    "scan_tar",
]

MAX_INFLATE = 1 << 30  # decompressed bytes scanned per member or file
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_ZF_HEADER = 2 + 19  # "ZF" + the hex length field padded to len(hex(2**64))

# joblib.compressor prefixes, in the order joblib's _detect_compressor tries them.
_JOBLIB_PREFIXES = (
    (b"ZF", "joblib-zlib"),
    (b"\x78", "zlib"),
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"\x5d\x00", "lzma"),
    (b"\xfd\x37\x7a\x58\x5a", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


class DecompressError(Exception):
    """The stream is not what its prefix says (joblib.load fails on it too)."""


class TooLarge(Exception):
    """Decompresses to more than the scanner reads."""


def joblib_compressor(head: bytes) -> str | None:
    for prefix, name in _JOBLIB_PREFIXES:
        if head.startswith(prefix):
            return name
    return None


def _zlib_stream(f: IO[bytes], wbits: int) -> bytes:
    decomp = zlib.decompressobj(wbits)
    f.seek(0)
    chunks, total = [], 0
    while not decomp.eof:
        block = decomp.unconsumed_tail or f.read(1 << 20)
        if not block:
            raise DecompressError("compressed stream ends early")
        data = decomp.decompress(block, MAX_INFLATE + 1 - total)
        chunks.append(data)
        total += len(data)
        if total > MAX_INFLATE:
            raise TooLarge("decompresses to more than 1 GiB")
    return b"".join(chunks)


def _multi_stream(f: IO[bytes], reader: Callable[[IO[bytes]], Any]) -> bytes:
    f.seek(0)
    with reader(f) as stream:
        data = stream.read(MAX_INFLATE + 1)
    if len(data) > MAX_INFLATE:
        raise TooLarge("decompresses to more than 1 GiB")
    return bytes(data)


def _zf_compat(f: IO[bytes]) -> bytes:
    f.seek(0)
    header = f.read(_ZF_HEADER)
    try:
        length = int(header[2:], 16)
    except ValueError as exc:
        raise DecompressError("joblib ZF header without a hex length") from exc
    start = _ZF_HEADER + 1 if f.read(1) == b" " else _ZF_HEADER
    f.seek(start)
    decomp = zlib.decompressobj()
    data = decomp.decompress(f.read(), MAX_INFLATE + 1)
    if len(data) > MAX_INFLATE:
        raise TooLarge("decompresses to more than 1 GiB")
    if not decomp.eof:
        raise DecompressError("ZF zlib stream ends early")
    del length  # joblib asserts the length, but not under python -O: not a reason to skip
    return data


def decompress(f: IO[bytes], name: str) -> bytes:
    """The bytes joblib.load unpickles from a stream it detects as `name`.

    Raises:
        DecompressError: joblib cannot decompress it either.
        TooLarge: more than MAX_INFLATE bytes.
    """
    try:
        if name == "joblib-zlib":
            return _zf_compat(f)
        if name == "zlib":
            return _zlib_stream(f, zlib.MAX_WBITS)
        if name == "gzip":
            return _zlib_stream(f, 16 + zlib.MAX_WBITS)
        if name == "bz2":
            return _multi_stream(f, lambda s: bz2.BZ2File(s, "rb"))
        if name in ("lzma", "xz"):
            return _multi_stream(f, lambda s: lzma.LZMAFile(s, "rb"))
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise DecompressError(f"{name} stream: {exc}") from exc
    raise DecompressError(f"{name} streams need a package that is not installed here")


# -- tar -------------------------------------------------------------------------------------------


def is_tar(f: IO[bytes], size: int) -> bool:
    """Whether tarfile opens this stream (its first header block has a valid checksum)."""
    if size < 512:
        return False
    f.seek(0)
    block = f.read(512)
    f.seek(0)
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


_ScanStream = Callable[..., tuple[str, list[Finding]]]

# torch's legacy tar checkpoints: the element size of each storage class (torch._utils).
_STORAGE_SIZES = {
    "torch.DoubleStorage": 8, "torch.FloatStorage": 4, "torch.HalfStorage": 2,
    "torch.LongStorage": 8, "torch.IntStorage": 4, "torch.ShortStorage": 2,
    "torch.CharStorage": 1, "torch.ByteStorage": 1, "torch.BoolStorage": 1,
    "torch.BFloat16Storage": 2, "torch.ComplexDoubleStorage": 16,
    "torch.ComplexFloatStorage": 8,
}  # fmt: skip


def scan_tar(
    f: IO[bytes], location: str, out: list[Finding], depth: int, scan_stream: _ScanStream
) -> str:
    """Every regular member judged by content (read through tarfile, never extracted), and a
    legacy torch tar checkpoint (``storages``, ``tensors``, ``pickle``) read as torch reads it."""
    names: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                names.setdefault(member.name, member)
                where = f"{location}:{member.name}" if location else member.name
                data = tar.extractfile(member)
                if data is None:
                    continue
                _fmt, inner = scan_stream(data, member.size, where, depth + 1)
                out.extend(inner)
            if {"storages", "tensors", "pickle"} <= set(names):
                _scan_torch_tar(tar, names, location, out)
                return "torch-legacy-tar"
    except (tarfile.TarError, EOFError) as exc:
        out.append(Finding(FindingKind.PARSE_ERROR, f"tar archive unreadable: {exc}", location))
    return "tar"


def _scan_torch_tar(
    tar: tarfile.TarFile, names: dict[str, tarfile.TarInfo], location: str, out: list[Finding]
) -> None:
    """torch.serialization's legacy_load: the pickles interleaved with raw storage and tensor
    records in ``storages`` and ``tensors``, read in the order torch reads them."""
    import struct

    from trainguard.integrity.scanner.pickle_walk import PickleParseError, walk_pickle

    def member(name: str) -> IO[bytes]:
        data = tar.extractfile(names[name])
        assert data is not None
        return io.BytesIO(data.read(MAX_INFLATE))

    def walk(stream: IO[bytes], where: str) -> Any:
        try:
            result = walk_pickle(stream, where)
        except PickleParseError as exc:
            out.extend(exc.findings)
            out.append(Finding(FindingKind.PARSE_ERROR, str(exc), where))
            return None
        out.extend(result.findings)
        return result.value

    base = f"{location}:" if location else ""
    try:
        stream = member("storages")
        count = walk(stream, f"{base}storages")
        for index in range(count if type(count) is int and 0 <= count < 1 << 24 else 0):
            args = walk(stream, f"{base}storages#{index}")
            kind = args[2].full if isinstance(args, tuple) and len(args) == 3 else None
            size = _STORAGE_SIZES.get(getattr(args[2], "full", ""), 0) if kind else 0
            if not size:
                raise ValueError("a storage record the scanner cannot follow")
            (numel,) = struct.unpack("<q", stream.read(8))
            stream.seek(numel * size, io.SEEK_CUR)
        walk(stream, f"{base}storages#views")
        stream = member("tensors")
        count = walk(stream, f"{base}tensors")
        for index in range(count if type(count) is int and 0 <= count < 1 << 24 else 0):
            walk(stream, f"{base}tensors#{index}")
            (ndim,) = struct.unpack("<i", stream.read(4))
            stream.seek(4 + 16 * ndim + 8, io.SEEK_CUR)
        walk(member("pickle"), f"{base}pickle")
    except (ValueError, struct.error, TypeError, IndexError, OverflowError) as exc:
        out.append(Finding(FindingKind.PARSE_ERROR, f"legacy torch tar: {exc}", location))


# -- 7z --------------------------------------------------------------------------------------------


def scan_7z(
    f: IO[bytes], location: str, out: list[Finding], depth: int, scan_stream: _ScanStream
) -> str:
    """Every file in a 7z archive, decompressed in memory with py7zr and judged by content."""
    try:
        import py7zr
        from py7zr.io import BytesIOFactory
    except ImportError:
        out.append(Finding(FindingKind.UNSUPPORTED, "7z archive: py7zr is not installed", location))
        return "7z"
    try:
        f.seek(0)
        with py7zr.SevenZipFile(f, mode="r", max_extract_size=MAX_INFLATE) as archive:
            if archive.needs_password():
                out.append(Finding(FindingKind.UNSUPPORTED, "encrypted 7z archive", location))
                return "7z"
            infos = [i for i in archive.list() if not i.is_directory]
            if sum(i.uncompressed or 0 for i in infos) > MAX_INFLATE:
                raise TooLarge("7z archive decompresses to more than 1 GiB")
            factory = BytesIOFactory(MAX_INFLATE)
            archive.extractall(factory=factory)  # noqa: S202 - into memory, never to disk
        for info in infos:
            where = f"{location}:{info.filename}" if location else info.filename
            try:
                stored = factory.get(info.filename)  # type: ignore[no-untyped-call]
            except KeyError:
                out.append(Finding(FindingKind.PARSE_ERROR, "7z member not extracted", where))
                continue
            stored.seek(0)
            data = stored.read()
            _fmt, inner = scan_stream(io.BytesIO(data), len(data), where, depth + 1)
            out.extend(inner)
    except TooLarge as exc:
        out.append(Finding(FindingKind.UNSUPPORTED, str(exc), location))
    except Exception as exc:  # noqa: BLE001 - a third-party parser: any failure is "not judged"
        out.append(
            Finding(FindingKind.PARSE_ERROR, f"7z archive unreadable: {type(exc).__name__}: {exc}",
                    location)
        )  # fmt: skip
    return "7z"
