"""Format detection by content and the per-format scans.

Formats: raw pickles (protocols 0-5, several in a row), legacy torch files (five pickles after a
magic number), zip archives (torch zip checkpoints and .npz: every member judged by content),
.npy (object arrays hold a pickle), joblib (a pickle with arrays interleaved, possibly
compressed), safetensors (header validated) and plain text. Anything else is an error.
"""

from __future__ import annotations

import ast
import bz2
import io
import lzma
import math
import re
import struct
import zlib
from typing import IO, Any

from trainguard.crypto.sealed import MAGIC as SEALED_MAGIC
from trainguard.integrity.scanner import zipscan
from trainguard.integrity.scanner.archives import decompressor, inflate, is_tar, scan_tar
from trainguard.integrity.scanner.keras import HDF5_MAGIC, scan_hdf5, scan_json_config
from trainguard.integrity.scanner.pickle_walk import PickleParseError, dtype_layout, walk_pickle
from trainguard.integrity.scanner.report import Finding, FindingKind
from trainguard.integrity.scanner.safetensors import is_safetensors, scan_safetensors

__all__ = ["scan_stream"]

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_NPY_MAGIC = b"\x93NUMPY"
_IN_MEMORY = 16 << 20
_VALID_FIRST = {op.code.encode("latin-1") for op in __import__("pickletools").opcodes}


class _Slice:
    """A read-only window [start, start+length) of a file, for stored zip members."""

    def __init__(self, f: IO[bytes], start: int, length: int) -> None:
        self._f, self._start, self._len, self._pos = f, start, length, 0

    def read(self, n: int = -1) -> bytes:
        left = self._len - self._pos
        n = left if n is None or n < 0 or n > left else n
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        left = self._len - self._pos
        limit = left if limit < 0 or limit > left else limit
        self._f.seek(self._start + self._pos)
        data = self._f.readline(limit)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = max(0, base + offset)
        return self._pos


def _err(kind: FindingKind, message: str, location: str) -> Finding:
    return Finding(kind, message, location)


# -- pickles ---------------------------------------------------------------------------------


def _looks_like_proto(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _scan_pickles(stream: Any, location: str, out: list[Finding], *, strict: bool) -> str | None:
    """Walk the first pickle, then any further pickles (legacy torch: exactly five).

    Returns the format, or None when the first pickle does not parse (a parse error is added
    when `strict`, or when anything unsafe was seen before the failure).
    """
    try:
        first = walk_pickle(stream, location)
    except PickleParseError as exc:
        out.extend(exc.findings)
        if strict or exc.findings:
            out.append(_err(FindingKind.PARSE_ERROR, str(exc), location))
        return None
    out.extend(first.findings)
    if isinstance(first.value, int) and first.value == LEGACY_TORCH_MAGIC:
        for index in range(4):
            try:
                out.extend(walk_pickle(stream, f"{location}#pickle{index + 2}").findings)
            except PickleParseError as exc:
                out.extend(exc.findings)
                out.append(_err(FindingKind.PARSE_ERROR, str(exc), location))
                break
        return "torch-legacy"
    fmt = "joblib" if any(g.startswith("joblib.") for g in first.globals) else "pickle"
    # Whatever follows is data to pickle.load, but a loader that calls load() again would run
    # the next pickle: walk every further pickle that starts with a PROTO opcode.
    count = 1
    while count < 64:
        here = stream.tell()
        head = stream.read(2)
        stream.seek(here)
        if not _looks_like_proto(head):
            break
        count += 1
        try:
            out.extend(walk_pickle(stream, f"{location}#pickle{count}").findings)
        except PickleParseError as exc:
            out.extend(_plausible(exc.findings))
            break
    return fmt


# -- npy -------------------------------------------------------------------------------------


def _descr_layout(descr: Any) -> tuple[int, bool]:
    if isinstance(descr, str):
        return dtype_layout(descr)
    if isinstance(descr, list):
        size, obj = 0, False
        for field in descr:
            if not isinstance(field, tuple) or len(field) not in (2, 3):
                raise ValueError("bad structured dtype")
            sub_size, sub_obj = _descr_layout(field[1])
            if len(field) == 3:
                sub_size *= math.prod(field[2]) if isinstance(field[2], tuple) else int(field[2])
            size, obj = size + int(sub_size), obj or sub_obj
        return size, obj
    raise ValueError("bad dtype description")


def _scan_npy(stream: Any, location: str, out: list[Finding], remaining: int) -> str:
    head = stream.read(10)
    major = head[6] if len(head) > 6 else 0
    if major == 1:
        (hlen,), start = struct.unpack_from("<H", head, 8), 10
    elif major in (2, 3):
        head += stream.read(2)
        (hlen,), start = struct.unpack_from("<I", head, 8), 12
    else:
        out.append(_err(FindingKind.BAD_HEADER, f"unknown .npy version {major}", location))
        return "npy"
    try:
        raw = stream.read(min(hlen, 1 << 20))
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin-1"))
        descr, shape = header["descr"], header["shape"]
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError("bad shape")
        itemsize, has_object = _descr_layout(descr)
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        out.append(_err(FindingKind.BAD_HEADER, f".npy header unreadable: {exc}", location))
        return "npy"
    if has_object:
        _scan_pickles(stream, f"{location}:object-array", out, strict=True)
        return "npy"
    need = math.prod(shape) * itemsize
    if remaining - start - hlen < need:
        out.append(_err(FindingKind.BAD_HEADER, ".npy data shorter than its header says", location))
    return "npy"


# -- zip -------------------------------------------------------------------------------------


def _member_stream(f: IO[bytes], member: zipscan.ZipMember) -> Any:
    if member.method == 0:
        if member.compressed_size <= _IN_MEMORY:
            f.seek(member.data_offset)
            return io.BytesIO(f.read(member.compressed_size))
        return _Slice(f, member.data_offset, member.compressed_size)
    window = _Slice(f, member.data_offset, member.compressed_size)
    decomp: Any
    if member.method == 8:
        decomp = zlib.decompressobj(-15)
    elif member.method == 12:
        decomp = bz2.BZ2Decompressor()
    else:  # lzma-in-zip carries its own header; neither torch nor numpy writes it
        raise ValueError(f"compression method {member.method} not supported")
    return io.BytesIO(inflate(window, decomp))


def _scan_zip(f: IO[bytes], location: str, out: list[Finding], size: int) -> str:
    members, problems = zipscan.list_members(f, size)
    if not members:
        out.append(_err(FindingKind.PARSE_ERROR, "zip with no readable members", location))
        return "zip"
    for problem in problems:
        out.append(_err(FindingKind.BAD_HEADER, f"zip: {problem}", location))
    kinds: set[str] = set()
    names = {m.name for m in members}
    keras = "config.json" in names and bool(names & {"metadata.json", "model.weights.h5"})
    for member in members:
        where = f"{location}:{member.name}" if location else member.name
        if member.encrypted:
            out.append(_err(FindingKind.UNSUPPORTED, "encrypted zip member", where))
            continue
        try:
            stream = _member_stream(f, member)
        except (ValueError, zlib.error, OSError, EOFError) as exc:
            out.append(_err(FindingKind.UNSUPPORTED, f"member unreadable: {exc}", where))
            continue
        if keras and member.name == "config.json":
            out.extend(scan_json_config(stream.read(64 << 20), where))
            kinds.add("keras")
            continue
        kinds.add(_scan_member(stream, member, where, out))
    if "keras" in kinds:
        return "keras"
    if "pickle" in kinds:
        return "torch-zip"
    return "npz" if kinds == {"npy"} else "zip"


MAX_NESTING = 4


def nesting(location: str) -> int:
    return location.count(":") + location.count("[")


def _scan_member(stream: Any, member: zipscan.ZipMember, where: str, out: list[Finding]) -> str:
    head = stream.read(8)
    stream.seek(0)
    if head.startswith(_NPY_MAGIC):
        return _scan_npy(stream, where, out, member.uncompressed_size)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) and nesting(where) < MAX_NESTING:
        fmt, inner = scan_stream(stream, member.uncompressed_size or member.compressed_size, where)
        out.extend(inner)
        return "pickle" if fmt == "torch-zip" else fmt
    if head[:1] not in _VALID_FIRST:
        if member.name.endswith(".pkl"):
            out.append(_err(FindingKind.PARSE_ERROR, "pickle member is not a pickle", where))
        return "data"
    strict = member.name.endswith(".pkl")
    found: list[Finding] = []
    pickled = _scan_pickles(stream, where, found, strict=strict)
    if pickled is None and not strict:
        # Tensor bytes often start like an opcode or two. A member that does not parse counts
        # only if it opens with PROTO and names a real-looking module before failing.
        found = _plausible(found) if _looks_like_proto(head) else []
    out.extend(found)
    return "data" if pickled is None else "pickle"


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _plausible(findings: list[Finding], *, ext: bool = False) -> list[Finding]:
    """Findings of a partial walk over what may be random data or text: keep those naming a
    real-looking global (imported or called), and with `ext` the extension-code lookups."""
    named = (FindingKind.DISALLOWED_GLOBAL, FindingKind.CALLED_REFERENCE)
    return [
        f
        for f in findings
        if (f.kind in named and _DOTTED.fullmatch(f.global_name or ""))
        or (ext and f.kind is FindingKind.EXTENSION_CODE)
    ]


# -- entry -----------------------------------------------------------------------------------


def _is_text(f: IO[bytes]) -> bool:
    f.seek(0)
    sample = f.read(1 << 16)
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multibyte character cut at the end of a full sample
        return len(sample) == 1 << 16 and exc.start > len(sample) - 4
    return True


def _harmless_text(f: IO[bytes]) -> bool:
    """Text that fails as a pickle on its content (not by running out of bytes, which is what a
    truncated pickle does) and names no importable-looking global: a config file or a README."""
    f.seek(0)
    try:
        walk_pickle(f)
    except PickleParseError as exc:
        truncated = f.read(1) == b""
        return not truncated and not _plausible(exc.findings, ext=True)
    return False


def scan_stream(f: IO[bytes], size: int, location: str = "") -> tuple[str, list[Finding]]:
    """Judge one seekable binary stream of `size` bytes by its content: (format, findings)."""
    out: list[Finding] = []
    head = f.read(16)
    f.seek(0)
    if size == 0:
        return "empty", [_err(FindingKind.PARSE_ERROR, "empty file", location)]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _scan_zip(f, location, out, size), out
    if head.startswith(_NPY_MAGIC):
        return _scan_npy(f, location, out, size), out
    if is_safetensors(head, size):
        return scan_safetensors(f, location, out, size), out
    if head.startswith(HDF5_MAGIC):
        return scan_hdf5(f, size, location, out), out
    if head.startswith(SEALED_MAGIC):
        out.append(
            _err(
                FindingKind.UNSUPPORTED,
                "sealed stream: unseal it to scan it (the "
                "trainer scans checkpoints after decryption, before loading)",
                location,
            )
        )
        return "sealed", out
    if size > 262 and is_tar(f):
        return scan_tar(f, location, out), out
    fmt = _scan_head(f, head, size, location, out)
    if zipscan.find_eocd(f, size) is not None:  # a pickle/zip polyglot: judge the zip side too
        f.seek(0)
        side: list[Finding] = []
        _scan_zip(f, location, side, size)
        out.extend(x for x in side if not x.kind.is_error)
    return fmt, out


def _scan_head(f: IO[bytes], head: bytes, size: int, location: str, out: list[Finding]) -> str:
    comp = decompressor(head)
    data: bytes | None = None
    if comp is not None:
        name, decomp = comp
        try:
            data = inflate(f, decomp)
        except (ValueError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            if head[:1] not in _VALID_FIRST:
                out.append(_err(FindingKind.PARSE_ERROR, f"{name} stream: {exc}", location))
                return name
            data = None  # looked compressed but is not: judge it as a pickle below
            f.seek(0)
    if data is not None:
        inner_fmt, inner = scan_stream(io.BytesIO(data), len(data), f"{location}[{name}]")
        out.extend(inner)
        return f"{name}+{inner_fmt}"
    if head.startswith(b"ZF0x"):  # joblib < 0.10 zlib format: "ZF" + hex length + zlib
        try:
            data = inflate(f, zlib.decompressobj(), skip=21)  # "ZF" + hex length padded to 19
        except (ValueError, zlib.error) as exc:
            out.append(_err(FindingKind.PARSE_ERROR, f"joblib zlib stream: {exc}", location))
            return "joblib-zlib"
        inner_fmt, inner = scan_stream(io.BytesIO(data), len(data), f"{location}[zlib]")
        out.extend(inner)
        return f"joblib-zlib+{inner_fmt}"
    if head[:1] in _VALID_FIRST:
        found: list[Finding] = []
        fmt = _scan_pickles(f, location, found, strict=True)
        if fmt is None and _is_text(f) and _harmless_text(f):
            return "text"
        out.extend(found)
        return fmt or "pickle"
    if _is_text(f):
        return "text"
    out.append(
        _err(
            FindingKind.PARSE_ERROR,
            "unrecognised format (not a pickle, zip, npy, joblib or safetensors file)",
            location,
        )
    )
    return "unknown"
