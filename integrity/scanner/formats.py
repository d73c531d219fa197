"""Format detection by content, as the loaders dispatch, and the per-format scans.

A file is judged under every way a loader reads it:

* **as a pickle from byte 0** (``pickle.load``; ``torch.load`` of anything that is not a zip;
  ``numpy.load`` of anything that is neither a zip nor ``.npy``; ``joblib.load`` of anything it
  does not decompress): a plain walk, plus joblib's walk (array data skipped or walked as
  nested pickles) when the stream uses joblib's array wrapper; then every pickle a loader reads
  after the first: torch's legacy format reads five (walked whenever the first pickle's value
  is, or may be, torch's magic number), and consecutive ``pickle.load`` calls read them all;
* **as its container**, recognised by the loaders' own magic: zip (``torch.load``,
  ``numpy.load``: every member any reader finds), ``.npy`` (numpy's own header parser; the data
  is a pickle when ``numpy.dtype(descr).hasobject``), joblib's compressed streams, safetensors,
  HDF5 (Keras), tar (also torch's legacy tar layout) and 7z (py7zr).

A zip file is never read as a pickle (its first opcode, PERSID, fails in every loader), nor is
``.npy`` (STACK_GLOBAL on an empty stack). The verdict is safe only when at least one reading
parses completely and no reading finds anything; a reading that fails *exactly* where the
unpicklers fail only adds what it saw before failing, one the scanner gave up on is an error.
Text whose first byte is not a pickle opcode is the one thing no loader reads at all (they
refuse it at byte 0): it is reported as ``text``. Text that begins with an opcode byte is
judged as the pickle it is (a YAML file that starts with ``c`` names a GLOBAL import).
"""

from __future__ import annotations

import bz2
import io
import lzma
import math
import re
import struct
import tarfile
import tokenize
import zipfile
import zlib
from collections.abc import Iterable
from typing import IO, Any

from trainguard.integrity.scanner import archives, zipscan
from trainguard.integrity.scanner.keras import HDF5_MAGIC, scan_hdf5, scan_json_config
from trainguard.integrity.scanner.pickle_values import PDict, PSet
from trainguard.integrity.scanner.pickle_walk import (
    JOBLIB_WRAPPER,
    OPCODE_BYTES,
    PickleParseError,
    PickleResult,
    walk_pickle,
)
from trainguard.integrity.scanner.report import Finding, FindingKind
from trainguard.integrity.scanner.safetensors import is_safetensors, scan_safetensors

__all__ = ["LEGACY_TORCH_MAGIC", "MAX_DEPTH", "SCAN_ERRORS", "scan_stream"]

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
MAX_DEPTH = 8  # archives and compressed streams inside one another
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_IN_MEMORY = 16 << 20
_MAX_NPY_HEADER = 1 << 20
_MAX_TRAILING = 64  # consecutive pickles walked after the first
_ALL_MODES = ("plain", "joblib")

# Exceptions a malformed input may raise from a parser: the caller reports "could not be
# judged" (an error verdict), never safe. Anything else is a bug in the scanner.
SCAN_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, EOFError, IndexError, KeyError, struct.error, OverflowError,
    MemoryError, RecursionError, zlib.error, lzma.LZMAError, tarfile.TarError,
    zipfile.BadZipFile, NotImplementedError,
)  # fmt: skip


class _Slice:
    """A read-only window [start, start+length) of a file, for large stored zip members."""

    def __init__(self, f: IO[bytes], start: int, length: int) -> None:
        self._f, self._start, self._len, self._pos = f, start, length, 0

    def read(self, n: int | None = -1) -> bytes:
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


def _add(out: list[Finding], findings: Iterable[Finding]) -> None:
    seen = set(out)
    for finding in findings:
        if finding not in seen:
            seen.add(finding)
            out.append(finding)


# -- pickles -----------------------------------------------------------------------------------


def _walk(
    f: Any, start: int, location: str, *, joblib: bool = False
) -> tuple[PickleResult | None, PickleParseError | None]:
    f.seek(start)
    try:
        return walk_pickle(f, location, joblib=joblib, base=0), None
    except PickleParseError as exc:
        return None, exc


def _is_literal(value: Any) -> bool:
    """A value the walk knows exactly (not the result of a call or a persistent id)."""
    return value is None or isinstance(
        value, (bool, int, float, str, bytes, tuple, list, PDict, PSet)
    )


def _scan_pickles(
    f: Any,
    size: int,
    location: str,
    out: list[Finding],
    *,
    primary: bool,
    modes: tuple[str, ...] = _ALL_MODES,
) -> str:
    """Judge the stream as the pickles the loaders read from byte 0 (see the module doc).

    With `primary` (no container format matched) a stream no reading parses is an error.
    """
    completed: list[PickleResult] = []
    failures: list[PickleParseError] = []
    plain: PickleResult | None = None
    wrapper = False
    if "plain" in modes:
        plain, error = _walk(f, 0, location)
        if plain is not None:
            completed.append(plain)
            wrapper = plain.wrapper_seen
        else:
            assert error is not None
            failures.append(error)
            wrapper = JOBLIB_WRAPPER in error.globals
    if "joblib" in modes and (wrapper or "plain" not in modes):
        joblib_result, error = _walk(f, 0, location, joblib=True)
        if joblib_result is not None:
            completed.append(joblib_result)
        else:
            assert error is not None
            failures.append(error)
    joblib_done = next((r for r in completed if r.first_array is not None), None)
    for result in completed:
        _add(out, _beyond_divergence(result.findings, result.positions, joblib_done, result))
    reported = False
    for failure in failures:
        _add(out, _beyond_divergence(failure.findings, failure.positions, joblib_done, None))
        if not reported and (not failure.exact or (primary and not completed)):
            out.append(_err(FindingKind.PARSE_ERROR, f"not a complete pickle: {failure}", location))
            reported = True
    names = set().union(*(r.globals for r in completed)) if completed else set()
    joblib_format = any(n.startswith("joblib.") for n in names)
    if plain is None or joblib_done is not None:
        # joblib's reading covers the whole stream; the plain one stopped inside it
        return "joblib" if joblib_format else "pickle"
    return _scan_following(f, size, location, out, plain, joblib_format)


def _beyond_divergence(
    findings: list[Finding],
    positions: list[int] | None,
    joblib_done: PickleResult | None,
    own: PickleResult | None,
) -> list[Finding]:
    """Where joblib's reading of the stream completes, a plain reading (``pickle.load``) reads
    the bytes after its first array as opcodes. Genuine joblib files then fail on junk (memo
    indices of a nested object-array pickle collide with the outer ones, naming globals such
    as ``NumpyArrayWrapper.dtype``): what the plain reading finds past that point counts only
    when it reads the whole stream to the same end as joblib (a stream built to be read both
    ways); everything before it, and the joblib reading itself, counts in full."""
    if joblib_done is None or own is joblib_done or positions is None:
        return findings
    if own is not None and own.end == joblib_done.end:
        return findings
    limit = joblib_done.first_array
    assert limit is not None
    return [f for f, at in zip(findings, positions, strict=False) if at < limit]


def _scan_following(
    f: Any, size: int, location: str, out: list[Finding], first: PickleResult, joblib_format: bool
) -> str:
    """The pickles after the first: torch's legacy layout reads five (magic, protocol, system
    info, the object, storage keys; raw storage data follows), and a loader calling
    ``pickle.load`` repeatedly reads every consecutive one. With a literal magic number a
    failure among the five is an error; otherwise a failure only ends the walk (the loaders
    fail there too), keeping what was seen before it."""
    value = first.value
    magic = type(value) is int and value == LEGACY_TORCH_MAGIC
    # A computed first value (not a literal) may still compare equal to the magic number:
    # torch reads on, so the walk does too (its later failures count as torch's failures).
    strict_until = 5 if magic else 1
    limit = 5 if magic else _MAX_TRAILING
    pos, count = first.end, 1
    if first.frame_tail is not None and first.frame_tail < size:
        message = "a pickle stops inside its frame: loaders disagree where the next one starts"
        out.append(_err(FindingKind.PARSE_ERROR, message, location))
        return "torch-legacy" if magic else ("joblib" if joblib_format else "pickle")
    while count < limit:
        f.seek(pos)
        head = f.read(1)
        if not head or head[0] not in OPCODE_BYTES:
            if magic and count < strict_until:
                message = f"legacy torch file ends after {count} of its 5 pickles"
                out.append(_err(FindingKind.PARSE_ERROR, message, location))
            break
        count += 1
        result, error = _walk(f, pos, f"{location}#pickle{count}")
        if error is not None:
            _add(out, error.findings)
            if not error.exact or count <= strict_until:
                out.append(_err(FindingKind.PARSE_ERROR, str(error), location))
            break
        assert result is not None
        _add(out, result.findings)
        pos = result.end
    if magic:
        return "torch-legacy"
    return "joblib" if joblib_format else "pickle"


# -- npy ---------------------------------------------------------------------------------------


def _scan_npy(f: Any, location: str, out: list[Finding], size: int) -> str:
    """numpy.lib.format's own header reader (``ast.literal_eval``, never eval), then the data:
    a pickle (walked) when the dtype holds Python objects anywhere, raw bytes otherwise."""
    try:  # numpy >= 2 keeps the implementation (and its private reader) here
        from numpy.lib import _format_impl as npformat
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.lib import format as npformat  # type: ignore[no-redef]

    f.seek(0)
    try:
        version = npformat.read_magic(f)
        shape, _fortran, dtype = npformat._read_array_header(  # type: ignore[attr-defined]
            f, version, max_header_size=_MAX_NPY_HEADER
        )
    except (ValueError, SyntaxError, TypeError, KeyError, EOFError, MemoryError,
            RecursionError, OverflowError, AttributeError, struct.error,
            tokenize.TokenError) as exc:  # fmt: skip
        out.append(_err(FindingKind.BAD_HEADER, f".npy header unreadable: {exc}", location))
        return "npy"
    start = f.tell()
    if dtype.hasobject:
        where = f"{location}:object-array" if location else "object-array"
        result, error = _walk(f, start, where)
        if error is not None:
            _add(out, error.findings)
            out.append(_err(FindingKind.PARSE_ERROR, f"object array: {error}", location))
        elif result is not None:
            _add(out, result.findings)
        return "npy"
    if size - start < math.prod(shape) * dtype.itemsize:
        out.append(_err(FindingKind.BAD_HEADER, ".npy data shorter than its header says", location))
    return "npy"


# -- zip ---------------------------------------------------------------------------------------


def _inflate(window: Any, decomp: Any, *, chunk: int = 1 << 20) -> bytes:
    chunks, total = [], 0
    pending = b""
    while True:
        block = pending or window.read(chunk)
        if not block:
            break
        if isinstance(decomp, zipfile.LZMADecompressor):  # type: ignore[attr-defined]
            data = decomp.decompress(block)
            pending = b""
        else:
            data = decomp.decompress(block, archives.MAX_INFLATE + 1 - total)
            pending = getattr(decomp, "unconsumed_tail", b"")
        chunks.append(data)
        total += len(data)
        if total > archives.MAX_INFLATE:
            raise ValueError("decompresses to more than 1 GiB")
        if getattr(decomp, "eof", False):
            break
    if not getattr(decomp, "eof", True):
        raise ValueError("compressed member ends before its end marker")
    return b"".join(chunks)


def _member_stream(f: IO[bytes], member: zipscan.ZipMember) -> tuple[Any, int]:
    """A member's bytes as the readers return them: decompressed, and no longer than the
    uncompressed size its directory entry declares (miniz and zipfile both stop there)."""
    if member.method == 0:
        length = min(member.compressed_size, member.uncompressed_size)
        if length <= _IN_MEMORY:
            f.seek(member.data_offset)
            data = f.read(length)
            return io.BytesIO(data), len(data)
        return _Slice(f, member.data_offset, length), length
    window = _Slice(f, member.data_offset, member.compressed_size)
    decomp: Any
    if member.method == 8:
        decomp = zlib.decompressobj(-15)
    elif member.method == 12:
        decomp = bz2.BZ2Decompressor()
    elif member.method == 14:  # zipfile's LZMA-in-zip (numpy reads it; miniz does not)
        decomp = zipfile.LZMADecompressor()  # type: ignore[attr-defined]
        data = _inflate(window, decomp, chunk=4096)[: member.uncompressed_size]
        return io.BytesIO(data), len(data)
    else:
        raise ValueError(f"compression method {member.method} not supported")
    data = _inflate(window, decomp)[: member.uncompressed_size]
    return io.BytesIO(data), len(data)


def _scan_zip(f: IO[bytes], location: str, out: list[Finding], size: int, depth: int) -> str:
    members, problems = zipscan.list_members(f, size)
    if not members:
        out.append(_err(FindingKind.PARSE_ERROR, "zip with no readable members", location))
        return "zip"
    for problem in problems:
        out.append(_err(FindingKind.BAD_HEADER, f"zip: {problem}", location))
    kinds: set[str] = set()
    names = {m.name for m in members}
    keras = "config.json" in names and bool(names & {"metadata.json", "model.weights.h5"})
    lowered = {m.raw_name.lower() for m in members}
    if any(n.endswith(b"/constants.pkl") for n in lowered) and any(b"/code/" in n for n in lowered):
        out.append(
            _err(
                FindingKind.UNSUPPORTED,
                "TorchScript archive: torch.load runs its code through torch.jit.load, and "
                "TorchScript code is not judged",
                location,
            )
        )
    for member in members:
        where = f"{location}:{member.name}" if location else member.name
        try:
            stream, length = _member_stream(f, member)
        except (ValueError, zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
            out.append(_err(FindingKind.UNSUPPORTED, f"member unreadable: {exc}", where))
            continue
        if keras and member.name == "config.json":
            out.extend(scan_json_config(stream.read(64 << 20), where))
            kinds.add("keras")
            continue
        kinds.add(_scan_member(stream, length, member, where, out, depth))
    if "keras" in kinds:
        return "keras"
    if "pickle" in kinds:
        return "torch-zip"
    return "npz" if kinds == {"npy"} else "zip"


def _scan_member(
    stream: Any, length: int, member: zipscan.ZipMember, where: str, out: list[Finding], depth: int
) -> str:
    head = stream.read(8)
    stream.seek(0)
    if not head:
        return "data"
    if member.raw_name.lower().endswith(b".pkl"):
        # torch unpickles <archive>/data.pkl (miniz finds names case-insensitively)
        if head[0] not in OPCODE_BYTES:
            out.append(_err(FindingKind.PARSE_ERROR, "pickle member is not a pickle", where))
            return "data"
        _scan_pickles(stream, length, where, out, primary=True, modes=("plain",))
        return "pickle"
    if head.startswith(_NPY_MAGIC):
        return _scan_npy(stream, where, out, length)
    if (
        head.startswith(_ZIP_MAGICS)
        or head.startswith(archives.SEVEN_ZIP_MAGIC)
        or archives.is_tar(stream, length)
    ):
        fmt, inner = scan_stream(stream, length, where, depth + 1)
        out.extend(inner)
        return "pickle" if fmt == "torch-zip" else fmt
    if head[0] not in OPCODE_BYTES:
        return "data"
    # Tensor data and other members no loader unpickles: a complete pickle counts; a partial
    # walk over what may be random data counts only if it opens with PROTO and names a
    # real-looking global before failing.
    result, error = _walk(stream, 0, where)
    if result is not None:
        _add(out, result.findings)
        return "pickle"
    if error is not None and head[0] == 0x80:
        _add(out, _plausible(error.findings))
    return "data"


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _plausible(findings: list[Finding]) -> list[Finding]:
    named = (FindingKind.DISALLOWED_GLOBAL, FindingKind.CALLED_REFERENCE)
    return [f for f in findings if f.kind in named and _DOTTED.fullmatch(f.global_name or "")]


# -- entry -------------------------------------------------------------------------------------


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


def _scan_compressed(
    f: IO[bytes], name: str, location: str, out: list[Finding], depth: int
) -> str | None:
    """What joblib.load unpickles from a stream with one of its compressor prefixes; None when
    the stream does not decompress (joblib fails on it too)."""
    try:
        data = archives.decompress(f, name)
    except archives.DecompressError:
        return None
    except archives.TooLarge as exc:
        out.append(_err(FindingKind.UNSUPPORTED, str(exc), location))
        return name
    if not data:
        out.append(_err(FindingKind.PARSE_ERROR, f"{name} stream holds nothing", location))
        return name
    inner_fmt, inner = scan_stream(
        io.BytesIO(data), len(data), f"{location}[{name}]", depth + 1, modes=("joblib",)
    )
    out.extend(inner)
    return f"{name}+{inner_fmt}"


def scan_stream(
    f: IO[bytes],
    size: int,
    location: str = "",
    depth: int = 0,
    *,
    modes: tuple[str, ...] = _ALL_MODES,
) -> tuple[str, list[Finding]]:
    """Judge one seekable binary stream of `size` bytes by its content: (format, findings).

    `depth` counts the archives and compressed streams this one sits in; `modes` are the
    unpicklers that may read it (plain: pickle/torch/numpy; joblib: joblib's array reader).
    """
    out: list[Finding] = []
    if size == 0:
        return "empty", [_err(FindingKind.PARSE_ERROR, "empty file", location)]
    if depth > MAX_DEPTH:
        message = f"nested more than {MAX_DEPTH} archives or compressed streams deep: not judged"
        return "nested", [_err(FindingKind.UNSUPPORTED, message, location)]
    f.seek(0)
    head = f.read(16)
    f.seek(0)
    if head.startswith(_ZIP_MAGICS):
        return _scan_zip(f, location, out, size, depth), out
    if head.startswith(_NPY_MAGIC):
        return _scan_npy(f, location, out, size), out
    if head.startswith(b"TGSEAL"):
        message = (
            "sealed stream: unseal it to scan it (the trainer scans checkpoints after "
            "decryption, before loading)"
        )
        return "sealed", [_err(FindingKind.UNSUPPORTED, message, location)]
    fmt: str | None = None
    compressor = archives.joblib_compressor(head)
    if compressor is not None:
        fmt = _scan_compressed(f, compressor, location, out, depth)
    if fmt is None and is_safetensors(head, size):
        fmt = scan_safetensors(f, location, out, size)
    if fmt is None and head.startswith(HDF5_MAGIC):
        fmt = scan_hdf5(f, size, location, out)
    if fmt is None and head.startswith(archives.SEVEN_ZIP_MAGIC):
        fmt = archives.scan_7z(f, location, out, depth, scan_stream)
    if fmt is None and archives.is_tar(f, size):
        fmt = archives.scan_tar(f, location, out, depth, scan_stream)
    if head[0] in OPCODE_BYTES:
        pickle_fmt = _scan_pickles(f, size, location, out, primary=fmt is None, modes=modes)
        fmt = fmt or pickle_fmt
    if fmt is None:
        if _is_text(f):
            return "text", out  # every loader refuses its first byte
        out.append(
            _err(
                FindingKind.PARSE_ERROR,
                "unrecognised format (not a pickle, zip, npy, joblib, safetensors, tar or 7z file)",
                location,
            )
        )
        return "unknown", out
    if zipscan.find_eocd(f, size) is not None:
        # a polyglot with a zip at its end: judge what zip readers find there too
        f.seek(0)
        side: list[Finding] = []
        _scan_zip(f, location, side, size, depth)
        _add(out, (x for x in side if not x.kind.is_error))
    return fmt, out
