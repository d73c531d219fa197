"""A static walk over pickle opcodes (protocols 0-5) that never imports or calls anything.

**Arguments are decoded as CPython's unpicklers decode them.** Two unpicklers load files here:
the C one (`pickle.load`, `torch.load`, `numpy.load`) and the pure-Python `pickle._Unpickler`
(joblib's `NumpyUnpickler`). They differ at the edges: C parses a protocol-0 ``INT`` with
``strtol(s, 0)`` (hex, C octal, a line cut at a NUL byte) and falls back to ``int(s, 0)``;
Python uses ``int(line, 0)`` (so ``I0x1`` is 1 for both); Python strips the last byte of a line
even without a newline, C refuses it; C ignores frame boundaries, Python enforces them; Python's
``INST`` imports before it looks for its MARK. The walk accepts an opcode whenever *either*
unpickler would and carries the value that one computes, so it follows every byte sequence at
least as far as any loader does. It stops only where both unpicklers certainly fail
(`PickleParseError.exact`); where the walk itself gives up (a line over 64 KiB, a joblib wrapper
built in a way it cannot follow) the error is not exact and the caller never calls it safe.

The walk simulates the stack (with the Python unpickler's mark frames) and memo with inert
placeholder values, so a global assembled with STACK_GLOBAL from memoised strings, pushed twice
(DUP) or called later resolves to the module and name the real unpickler would import. Every
imported global is judged by the allowlist; every call must target a global allowed to be called.
EXT1/2/4 (the copyreg extension registry) cannot be judged statically and are unsafe. Persistent
ids are data references resolved by the loader (torch uses them for storages) and are allowed.

With ``joblib=True`` the walk reads as joblib's unpickler does: after every BUILD that leaves a
``NumpyArrayWrapper`` on the stack the array data follows in the stream, raw (skipped by the size
numpy computes from the wrapper's dtype and shape) or, when ``numpy.dtype(...).hasobject``, as a
nested pickle (walked). A plain unpickler reads the same bytes as opcodes; callers walk both.
"""

from __future__ import annotations

import codecs
import io
import math
import pickletools
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from trainguard.integrity.scanner.allowlist import Allowance, classify, normalize
from trainguard.integrity.scanner.pickle_values import (
    UNKNOWN,
    BigBytes,
    BigStr,
    PDict,
    Persistent,
    PGlobal,
    PObj,
    PSet,
    Unknown,
)
from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = [
    "JOBLIB_WRAPPER",
    "OPCODE_BYTES",
    "PickleParseError",
    "PickleResult",
    "walk_pickle",
]

MAX_FINDINGS = 50
JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
OPCODE_BYTES = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes)
HIGHEST_PROTOCOL = 5

_MAX_LINE = 1 << 20  # a name, pid or string line longer than this is not judged
_MAX_NUMBER_LINE = 64 << 10  # numeric lines: float()/int() on more is slow and never real
_MAX_VALUE = 1 << 20  # longer strings and bytes are checked but not kept
_MAX_ITEMS = 20_000_000  # stack + memo entries the walk keeps
_MAX_NESTING = 8  # joblib object arrays inside object arrays
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_C_SPACE = frozenset(b" \t\n\v\f\r")
_DIGITS = {8: frozenset(b"01234567"), 10: frozenset(b"0123456789"),
           16: frozenset(b"0123456789abcdefABCDEF")}  # fmt: skip
# The longest prefix PyOS_string_to_double (_Py_dg_strtod, then inf/nan) accepts.
_FLOAT_PREFIX = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:infinity|inf|nan))"
)


class PickleParseError(Exception):
    """The stream is not a complete pickle.

    `findings` and `globals` hold what was seen before the failure. `exact` is True when both
    CPython unpicklers fail at this point too (so nothing after it can run), False when the walk
    gave up on something it does not judge.
    """

    def __init__(
        self,
        message: str,
        findings: list[Finding],
        position: int,
        *,
        exact: bool = True,
        globals_: frozenset[str] = frozenset(),
        positions: list[int] | None = None,
    ) -> None:
        super().__init__(message)
        self.findings = findings
        self.position = position
        self.exact = exact
        self.globals = globals_
        self.positions = positions or []


@dataclass
class PickleResult:
    findings: list[Finding]
    globals: set[str]
    value: Any
    protocol: int
    end: int
    wrappers: int = 0  # joblib array wrappers whose data followed (joblib mode)
    wrapper_seen: bool = False
    frame_tail: int | None = None  # STOP came before the end of its frame (which ends here)
    first_array: int | None = None  # joblib mode: where the first array's data began
    positions: list[int] | None = None  # stream offset of each finding


class _Fail(Exception):
    """Both unpicklers fail here."""


class _Limit(Exception):
    """The walk does not judge this (never reported as safe)."""


# -- argument decoding, C and Python side by side ------------------------------------------------


def _cstr(line: bytes) -> bytes:
    """What C string functions see of a line: up to the first NUL byte."""
    cut = line.find(b"\x00")
    return line if cut < 0 else line[:cut]


def _int_or_none(data: bytes, base: int) -> int | None:
    try:
        return int(data, base)
    except ValueError:
        return None


def _strtol0(s: bytes) -> tuple[int, int, bool]:
    """glibc ``strtol(s, &end, 0)``: (value, index of end, overflowed)."""
    n, i = len(s), 0
    while i < n and s[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and s[i] in b"+-":
        negative, i = s[i] == 0x2D, i + 1
    if i + 2 < n and s[i] == 0x30 and s[i + 1] in b"xX" and s[i + 2] in _DIGITS[16]:
        base, i = 16, i + 2
    elif i < n and s[i] == 0x30:
        base = 8
    else:
        base = 10
    start, digits = i, _DIGITS[base]
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return 0, 0, False  # no conversion: end is the start of the string
    value = int(s[start:i], base)
    value = -value if negative else value
    return value, i, not _LONG_MIN <= value <= _LONG_MAX


def _c_int(line: bytes) -> int | None:
    """_pickle.c load_int: strtol base 0, else PyLong_FromString(s, NULL, 0)."""
    if len(line) < 2 or not line.endswith(b"\n"):
        return None
    s = _cstr(line)
    value, end, overflow = _strtol0(s)
    if not overflow and (end == len(s) or s[end] == 0x0A):
        if len(line) == 3 and value in (0, 1):
            return bool(value)
        return value
    return _int_or_none(s, 0)


def _py_int(line: bytes) -> int | None:
    """pickle._Unpickler.load_int: b'00\\n'/b'01\\n' are bools, else int(line, 0)."""
    if line == b"00\n":
        return False
    if line == b"01\n":
        return True
    return _int_or_none(line, 0)


def _c_long(line: bytes) -> int | None:
    if len(line) < 2 or not line.endswith(b"\n"):
        return None
    s = line[:-2] if line[-2] == 0x4C else line  # the trailing 'L' becomes the NUL
    return _int_or_none(_cstr(s), 0)


def _py_long(line: bytes) -> int | None:
    val = line[:-1]
    if val and val[-1] == 0x4C:
        val = val[:-1]
    return _int_or_none(val, 0)


def _c_float(line: bytes) -> float | None:
    """_pickle.c load_float: PyOS_string_to_double(s, &end, OverflowError), end at '\\n'/NUL."""
    if len(line) < 2 or not line.endswith(b"\n"):
        return None
    s = _cstr(line)
    match = _FLOAT_PREFIX.match(s)
    if match is None:
        return None
    text = match.group()
    value = float(text)
    if math.isinf(value) and text.lstrip(b"+-")[:1] not in (b"i", b"I"):
        return None  # overflow raises
    end = match.end()
    if end != len(s) and s[end] != 0x0A:
        return None
    return value


def _py_float(line: bytes) -> float | None:
    try:
        return float(line[:-1])
    except ValueError:
        return None


def _c_memo_key(line: bytes) -> int | None:
    """_pickle.c load_get/load_put: PyLong_FromString(s, NULL, 10) as a Py_ssize_t."""
    if len(line) < 2 or not line.endswith(b"\n"):
        return None
    value = _int_or_none(_cstr(line), 10)
    if value is None or not _LONG_MIN <= value <= _LONG_MAX:
        return None
    return value


def _py_memo_key(line: bytes) -> int | None:
    return _int_or_none(line[:-1], 10)


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _import_fails(module: str) -> bool:
    """`__import__(module)` raises before importing anything: an empty name, or a first package
    name with a NUL byte (no finder can hold it; parents are imported first, so a NUL further
    down still imports them and does not count)."""
    return module == "" or "\x00" in module.partition(".")[0]


# -- the walk -------------------------------------------------------------------------------------


# Allowed functions that call or instantiate one of their arguments while loading
# (name -> argument indexes). Those arguments must themselves be globals allowed to be called.
_INDIRECT_CALLERS: dict[str, tuple[int, ...]] = {
    "torch._tensor._rebuild_from_type_v2": (0,),
    "torch._utils._rebuild_wrapper_subclass": (0,),
    "copyreg._reconstructor": (0, 1),
    "copyreg.__newobj__": (0,),
    "copyreg.__newobj_ex__": (0,),
    "sklearn.neighbors._kd_tree.newObj": (0,),
    "sklearn.neighbors._ball_tree.newObj": (0,),
}
# Allowed functions that return an instance of their first argument without calling __init__.
_INSTANCE_OF_FIRST_ARG = frozenset(
    {
        "copyreg._reconstructor",
        "copyreg.__newobj__",
        "copyreg.__newobj_ex__",
        "sklearn.neighbors._kd_tree.newObj",
        "sklearn.neighbors._ball_tree.newObj",
    }
)
_WRAPPER_INIT = ("subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes")


class _Walker:
    def __init__(
        self, stream: IO[bytes], location: str, *, joblib: bool, depth: int, base: int
    ) -> None:
        self.f = stream
        self.location = location
        self.joblib = joblib
        self.depth = depth
        self.base = base  # stream offset reported as position 0
        self.pos = stream.tell()
        self.op_pos = self.pos
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.items = 0
        self.proto = 0
        self.findings: list[Finding] = []
        self.globals: set[str] = set()
        self.wrapper_seen = False
        self.wrappers = 0
        self.frame_end: int | None = None
        self.frame_tail: int | None = None
        self.first_array: int | None = None
        self.positions: list[int] = []
        self._reported: set[tuple[FindingKind, str]] = set()

    # -- reading ----------------------------------------------------------------------------
    def _span(self, start: int, length: int) -> None:
        """Frames: C reads them as plain stream bytes, but an opcode whose bytes cross a frame's
        end is read differently by each unpickler (Python refuses it; C, from a file object
        without peek(), drops the rest of the frame and reads on after it)."""
        end = self.frame_end
        if end is None:
            return
        if start < end < start + length:
            raise _Limit("an opcode crosses the end of its pickle frame")
        if start + length >= end:
            self.frame_end = None

    def read(self, n: int) -> bytes:
        start = self.pos
        data = self.f.read(n)
        self.pos += len(data)
        if len(data) != n:
            raise _Fail("pickle data was truncated")
        self._span(start, n)
        return data

    def skip(self, n: int) -> None:
        """Move past n bytes that must all be there (checked by reading the last one)."""
        if n <= 0:
            return
        if n <= 1 << 16:
            self.read(n)
            return
        self.f.seek(self.pos + n - 1)
        if len(self.f.read(1)) != 1:
            raise _Fail("pickle data was truncated")
        self._span(self.pos, n)
        self.pos += n

    def readline(self, limit: int = _MAX_LINE) -> bytes:
        start = self.pos
        line = self.f.readline(limit + 1)
        self.pos += len(line)
        if len(line) > limit:
            raise _Limit(f"a line longer than {limit} bytes")
        # At the end of the data this is b"" (Python's readline; its callers go on with "")
        self._span(start, len(line))
        return line

    def read_some(self, n: int) -> bytes:
        """Up to n bytes (joblib's padding reads accept a short read)."""
        start = self.pos
        data = self.f.read(n)
        self.pos += len(data)
        self._span(start, len(data))
        return data

    def key(self) -> int | None:
        data = self.f.read(1)
        if not data:
            return None
        self.pos += 1
        return data[0]

    def nested(self, location: str) -> PickleResult:
        """Walk the complete pickle that starts here (a joblib object array) as a plain one."""
        self.f.seek(self.pos)
        kwargs: dict[str, Any] = {"joblib": False, "depth": self.depth + 1, "base": self.base}
        child: _Walker
        if isinstance(self, _MemWalker):
            child = _MemWalker(self.data, self.f, location, **kwargs)
            child.pos = self.pos
        else:
            child = _Walker(self.f, location, **kwargs)
        return child.run()

    def text_line(self, encoding: str) -> str:
        line = self.readline()
        try:
            return line[:-1].decode(encoding)
        except UnicodeDecodeError as exc:
            raise _Fail(f"line is not {encoding}") from exc

    def read_str(self, n: int, *, utf8: bool) -> str:
        """n bytes decoded as UTF-8 (surrogatepass) or, for Python 2 strings, Latin-1."""
        if n <= _MAX_VALUE:
            data = self.read(n)
            if not utf8:
                return data.decode("latin-1")
            try:
                return data.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise _Fail("string is not UTF-8") from exc
        if not utf8:
            self.skip(n)
            return BigStr()
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        left = n
        try:
            while left:
                chunk = self.read(min(left, 1 << 20))
                left -= len(chunk)
                decoder.decode(chunk, final=not left)
        except UnicodeDecodeError as exc:
            raise _Fail("string is not UTF-8") from exc
        return BigStr()

    def read_bytes(self, n: int) -> bytes:
        if n <= _MAX_VALUE:
            return self.read(n)
        self.skip(n)
        return BigBytes()

    # -- findings ---------------------------------------------------------------------------
    def find(self, kind: FindingKind, message: str, name: str | None = None) -> None:
        key = (kind, name or message)
        if key in self._reported or len(self.findings) >= MAX_FINDINGS:
            return
        self._reported.add(key)
        self.positions.append(self.op_pos)
        at = self.op_pos - self.base
        where = f"{self.location}@{at}" if self.location else f"offset {at}"
        self.findings.append(Finding(kind, message, where, name))

    # -- stack (pickle._Unpickler's model: the current frame and the frames under marks) ----
    def push(self, value: Any) -> None:
        self.items += 1
        if self.items > _MAX_ITEMS:
            raise _Limit("more stack and memo entries than the scanner keeps")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise _Fail("unpickling stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _Fail("unpickling stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Fail("could not find MARK")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    # -- globals and calls ------------------------------------------------------------------
    def import_global(self, module: str, name: str) -> PGlobal:
        module, name = normalize(module, name, self.proto)
        if _import_fails(module):
            raise _Fail(f"module {module!r} cannot be imported")
        full = f"{module}.{name}"
        allowance = classify(module, name)
        self.globals.add(full)
        if full == JOBLIB_WRAPPER:
            self.wrapper_seen = True
        if allowance is Allowance.DENY:
            self.find(FindingKind.DISALLOWED_GLOBAL, f"imports {full}", full)
        return PGlobal(full, allowance)

    def check_call(self, func: Any, how: str) -> None:
        if isinstance(func, PGlobal):
            if func.allowance is Allowance.REFERENCE:
                self.find(
                    FindingKind.CALLED_REFERENCE,
                    f"{how} calls {func.full}, allowed only as a data reference",
                    func.full,
                )
            return  # CALL is fine; DENY was reported at import time
        self.find(FindingKind.NON_GLOBAL_CALL, f"{how} calls a value that is not an allowed class")

    def check_indirect(self, func: Any, args: Any) -> None:
        if not isinstance(func, PGlobal) or func.full not in _INDIRECT_CALLERS:
            return
        for index in _INDIRECT_CALLERS[func.full]:
            if not isinstance(args, tuple) or len(args) <= index:
                self.find(FindingKind.NON_GLOBAL_CALL, f"{func.full} with unreadable arguments")
                return
            self.check_call(args[index], f"{func.full} argument {index}")

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> PickleResult:
        try:
            while True:
                self.op_pos = self.pos
                key = self.key()
                if key is None:
                    raise _Fail("ran out of input before STOP")
                if self.frame_end is not None:
                    self._span(self.op_pos, 1)
                if key == 0x2E:  # STOP
                    value = self.pop()
                    if self.frame_end is not None and self.frame_end > self.pos:
                        # the next load() starts after the frame (Python; C without peek())
                        # or right here (C with peek()): the readers disagree
                        self.frame_tail = self.frame_end
                    return PickleResult(
                        self.findings, self.globals, value, self.proto, self.pos,
                        self.wrappers, self.wrapper_seen, self.frame_tail, self.first_array,
                        self.positions,
                    )  # fmt: skip
                handler = _DISPATCH.get(key)
                if handler is None:
                    raise _Fail(f"invalid load key {bytes([key])!r}")
                handler(self)
        except _Fail as exc:
            raise self._error(str(exc), exact=True) from None
        except _Limit as exc:
            raise self._error(str(exc), exact=False) from None
        except PickleParseError as exc:  # a nested object-array pickle failed
            self.findings.extend(exc.findings)
            self.positions.extend(exc.positions)
            raise self._error(str(exc), exact=exc.exact) from None
        except (MemoryError, RecursionError) as exc:
            raise self._error(f"too large to judge ({type(exc).__name__})", exact=False) from None

    def _error(self, message: str, *, exact: bool) -> PickleParseError:
        at = self.op_pos - self.base
        where = f"{self.location} " if self.location else ""
        return PickleParseError(
            f"{where}offset {at}: {message}",
            self.findings,
            at,
            exact=exact,
            globals_=frozenset(self.globals),
            positions=self.positions,
        )


class _MemWalker(_Walker):
    """The same walk over bytes already in memory (zip members, decompressed streams)."""

    def __init__(self, data: bytes, stream: IO[bytes], location: str, **kwargs: Any) -> None:
        super().__init__(stream, location, **kwargs)
        self.data = data

    def key(self) -> int | None:
        pos = self.pos
        if pos >= len(self.data):
            return None
        self.pos = pos + 1
        return self.data[pos]

    def read(self, n: int) -> bytes:
        start, end = self.pos, self.pos + n
        if end > len(self.data):
            self.pos = len(self.data)
            raise _Fail("pickle data was truncated")
        self.pos = end
        if self.frame_end is not None:
            self._span(start, n)
        return self.data[start:end]

    def read_some(self, n: int) -> bytes:
        start = self.pos
        chunk = self.data[start : start + n]
        self.pos += len(chunk)
        if self.frame_end is not None:
            self._span(start, len(chunk))
        return chunk

    def skip(self, n: int) -> None:
        if n <= 0:
            return
        if self.pos + n > len(self.data):
            self.pos = len(self.data)
            raise _Fail("pickle data was truncated")
        if self.frame_end is not None:
            self._span(self.pos, n)
        self.pos += n

    def readline(self, limit: int = _MAX_LINE) -> bytes:
        start = self.pos
        stop = self.data.find(b"\n", start, start + limit + 1)
        end = stop + 1 if stop >= 0 else min(len(self.data), start + limit + 1)
        if end - start > limit:
            raise _Limit(f"a line longer than {limit} bytes")
        self.pos = end
        if self.frame_end is not None:
            self._span(start, end - start)
        return self.data[start:end]


# -- opcode handlers (one per opcode, named after pickletools) ---------------------------------

_Handler = Callable[[_Walker], None]


def _literal(value: Any) -> _Handler:
    return lambda w: w.push(value)


def _h_int(w: _Walker) -> None:
    line = w.readline(_MAX_NUMBER_LINE)
    value = _first(_c_int(line), _py_int(line))
    if value is None:
        raise _Fail("INT argument is not an integer")
    w.push(value)


def _h_long(w: _Walker) -> None:
    line = w.readline(_MAX_NUMBER_LINE)
    value = _first(_c_long(line), _py_long(line))
    if value is None:
        raise _Fail("LONG argument is not an integer")
    w.push(value)


def _h_float(w: _Walker) -> None:
    line = w.readline(_MAX_NUMBER_LINE)
    value = _first(_c_float(line), _py_float(line))
    if value is None:
        raise _Fail("FLOAT argument is not a float")
    w.push(value)


def _h_binint(w: _Walker) -> None:
    w.push(struct.unpack("<i", w.read(4))[0])


def _h_binint1(w: _Walker) -> None:
    w.push(w.read(1)[0])


def _h_binint2(w: _Walker) -> None:
    w.push(struct.unpack("<H", w.read(2))[0])


def _h_long1(w: _Walker) -> None:
    n = w.read(1)[0]
    w.push(int.from_bytes(w.read(n), "little", signed=True))


def _h_long4(w: _Walker) -> None:
    (n,) = struct.unpack("<i", w.read(4))
    if n < 0:
        raise _Fail("LONG pickle has negative byte count")
    if n > 1 << 20:  # int(10**(8 * 2**20)) is already absurd
        w.skip(n)
        w.push(UNKNOWN)
        return
    w.push(int.from_bytes(w.read(n), "little", signed=True))


def _h_binfloat(w: _Walker) -> None:
    w.push(struct.unpack(">d", w.read(8))[0])


def _h_string(w: _Walker) -> None:
    data = w.readline()[:-1]
    if not (len(data) >= 2 and data[0] == data[-1] and data[0] in b"\"'"):
        raise _Fail("the STRING opcode argument must be quoted")
    try:
        raw = codecs.escape_decode(data[1:-1])[0]
    except ValueError as exc:
        raise _Fail(f"STRING argument: {exc}") from exc
    # Python 2 strings: str under every encoding but "bytes"; ASCII decodes alike everywhere.
    w.push(raw.decode("latin-1"))


def _counted(size_fmt: str, *, kind: str) -> _Handler:
    width = struct.calcsize(size_fmt)

    def handler(w: _Walker) -> None:
        (n,) = struct.unpack(size_fmt, w.read(width))
        if n > sys.maxsize:
            raise _Fail(f"{kind} exceeds the maximum size")
        if kind == "unicode":
            w.push(w.read_str(n, utf8=True))
        elif kind == "py2str":
            w.push(w.read_str(n, utf8=False))
        else:
            w.push(w.read_bytes(n))

    return handler


def _h_unicode(w: _Walker) -> None:
    data = w.readline()[:-1]
    try:
        w.push(str(data, "raw-unicode-escape"))
    except UnicodeDecodeError as exc:
        raise _Fail("UNICODE argument does not decode") from exc


def _h_proto(w: _Walker) -> None:
    proto = w.read(1)[0]
    if proto > HIGHEST_PROTOCOL:
        raise _Fail(f"unsupported pickle protocol: {proto}")
    w.proto = proto


def _h_frame(w: _Walker) -> None:
    (size,) = struct.unpack("<Q", w.read(8))
    if size > sys.maxsize:
        raise _Fail("frame size > sys.maxsize")
    if w.frame_end is not None:
        raise _Limit("a frame starts inside a frame")
    if size:
        w.frame_end = w.pos + size


def _h_persid(w: _Walker) -> None:
    w.push(Persistent(w.text_line("ascii")))


def _h_binpersid(w: _Walker) -> None:
    w.push(Persistent(w.pop()))


def _h_global(w: _Walker) -> None:
    module = w.text_line("utf-8")
    name = w.text_line("utf-8")
    w.push(w.import_global(module, name))


def _h_stack_global(w: _Walker) -> None:
    name, module = w.pop(), w.pop()
    if isinstance(name, str) and isinstance(module, str):
        w.push(w.import_global(module, name))
        return
    if any(isinstance(v, (PObj, Unknown, Persistent)) for v in (name, module)):
        w.find(FindingKind.UNRESOLVED_GLOBAL, "STACK_GLOBAL with operands the scanner cannot read")
        w.push(UNKNOWN)
        return
    raise _Fail("STACK_GLOBAL requires str")


def _h_inst(w: _Walker) -> None:
    # pickle._Unpickler imports before it looks for the MARK; _pickle looks first.
    module = w.text_line("ascii")
    name = w.text_line("ascii")
    cls = w.import_global(module, name)
    args = w.pop_mark()
    w.check_call(cls, "INST")
    w.push(PObj(cls, tuple(args), "INST"))


def _h_obj(w: _Walker) -> None:
    items = w.pop_mark()
    if not items:
        raise _Fail("OBJ without a class")
    w.check_call(items[0], "OBJ")
    w.check_indirect(items[0], tuple(items[1:]))
    w.push(PObj(items[0], tuple(items[1:]), "OBJ"))


def _h_reduce(w: _Walker) -> None:
    args = w.pop()
    func = w.pop()
    w.check_call(func, "REDUCE")
    w.check_indirect(func, args)
    w.push(PObj(func, args, "REDUCE"))


def _h_newobj(w: _Walker) -> None:
    args = w.pop()
    cls = w.pop()
    w.check_call(cls, "NEWOBJ")
    w.push(PObj(cls, args, "NEWOBJ"))


def _h_newobj_ex(w: _Walker) -> None:
    w.pop()  # kwargs
    args = w.pop()
    cls = w.pop()
    w.check_call(cls, "NEWOBJ_EX")
    w.push(PObj(cls, args, "NEWOBJ"))


def _h_build(w: _Walker) -> None:
    state = w.pop()
    inst = w.top()
    if isinstance(inst, PGlobal):
        # BUILD on a class or function would set attributes on it for the whole process.
        w.find(FindingKind.NON_GLOBAL_CALL, f"BUILD sets state on {inst.full} itself", inst.full)
        return
    if not isinstance(inst, PObj):
        return
    inst.builds.append(state)
    if w.joblib and w.wrapper_seen:
        from trainguard.integrity.scanner import joblib_arrays

        if joblib_arrays.is_wrapper(inst, _INSTANCE_OF_FIRST_ARG):
            if w.frame_end is not None:
                # joblib reads the array from the file, which is already past the frame
                raise _Limit("a joblib array wrapper inside a pickle frame")
            w.stack[-1] = UNKNOWN  # joblib replaces the wrapper by the array it reads
            w.wrappers += 1
            if w.first_array is None:
                w.first_array = w.pos
            joblib_arrays.read_array(w, inst, _WRAPPER_INIT)


def _h_ext(width: int, fmt: str) -> _Handler:
    def handler(w: _Walker) -> None:
        (code,) = struct.unpack(fmt, w.read(width))
        if code <= 0:
            raise _Fail("EXT specifies code <= 0")
        w.find(FindingKind.EXTENSION_CODE, f"EXT opcode (copyreg extension code {code})")
        w.push(UNKNOWN)

    return handler


def _h_mark(w: _Walker) -> None:
    if len(w.metastack) > _MAX_ITEMS // 20:
        raise _Limit("more marks than the scanner keeps")
    w.metastack.append(w.stack)
    w.stack = []


def _h_pop(w: _Walker) -> None:
    if w.stack:
        w.stack.pop()
    else:
        w.pop_mark()


def _h_pop_mark(w: _Walker) -> None:
    w.pop_mark()


def _h_dup(w: _Walker) -> None:
    w.push(w.top())


def _memo_get(w: _Walker, key: int) -> None:
    if key not in w.memo:
        raise _Fail(f"memo value not found at index {key}")
    w.push(w.memo[key])


def _memo_put(w: _Walker, key: int) -> None:
    if key < 0:
        raise _Fail("negative PUT argument")
    w.items += 1
    w.memo[key] = w.top()


def _h_get(w: _Walker) -> None:
    line = w.readline(_MAX_NUMBER_LINE)
    key = _first(_c_memo_key(line), _py_memo_key(line))
    if key is None:
        raise _Fail("GET argument is not an integer")
    _memo_get(w, key)


def _h_binget(w: _Walker) -> None:
    _memo_get(w, w.read(1)[0])


def _h_long_binget(w: _Walker) -> None:
    _memo_get(w, struct.unpack("<I", w.read(4))[0])


def _h_put(w: _Walker) -> None:
    line = w.readline(_MAX_NUMBER_LINE)
    key = _first(_c_memo_key(line), _py_memo_key(line))
    if key is None:
        raise _Fail("PUT argument is not an integer")
    _memo_put(w, key)


def _h_binput(w: _Walker) -> None:
    _memo_put(w, w.read(1)[0])


def _h_long_binput(w: _Walker) -> None:
    _memo_put(w, struct.unpack("<I", w.read(4))[0])


def _h_memoize(w: _Walker) -> None:
    _memo_put(w, len(w.memo))


def _h_append(w: _Walker) -> None:
    value = w.pop()
    target = w.top()
    if isinstance(target, list):
        target.append(value)


def _h_appends(w: _Walker) -> None:
    items = w.pop_mark()
    target = w.top()
    if isinstance(target, list):
        target.extend(items)


def _h_list(w: _Walker) -> None:
    w.push(w.pop_mark())


def _h_tuple(w: _Walker) -> None:
    w.push(tuple(w.pop_mark()))


def _tuple_n(n: int) -> _Handler:
    def handler(w: _Walker) -> None:
        if len(w.stack) < n:
            raise _Fail("unpickling stack underflow")
        items = tuple(w.stack[-n:])
        del w.stack[-n:]
        w.push(items)

    return handler


def _h_dict(w: _Walker) -> None:
    items = w.pop_mark()
    if len(items) % 2:
        raise _Fail("odd number of items for DICT")
    w.push(PDict(list(zip(items[::2], items[1::2], strict=True))))


def _h_setitem(w: _Walker) -> None:
    value, key = w.pop(), w.pop()
    target = w.top()
    if isinstance(target, PDict):
        target.pairs.append((key, value))


def _h_setitems(w: _Walker) -> None:
    items = w.pop_mark()
    target = w.top()
    if len(items) % 2:
        raise _Fail("odd number of items for SETITEMS")
    if isinstance(target, PDict):
        target.pairs.extend(zip(items[::2], items[1::2], strict=True))


def _h_additems(w: _Walker) -> None:
    items = w.pop_mark()
    target = w.top()
    if isinstance(target, PSet):
        target.items.extend(items)


def _h_frozenset(w: _Walker) -> None:
    w.push(PSet(w.pop_mark(), frozen=True))


def _h_readonly_buffer(w: _Walker) -> None:
    w.top()


_DISPATCH: dict[int, _Handler] = {
    ord("("): _h_mark,
    ord("0"): _h_pop,
    ord("1"): _h_pop_mark,
    ord("2"): _h_dup,
    ord("F"): _h_float,
    ord("I"): _h_int,
    ord("J"): _h_binint,
    ord("K"): _h_binint1,
    ord("L"): _h_long,
    ord("M"): _h_binint2,
    ord("N"): _literal(None),
    ord("P"): _h_persid,
    ord("Q"): _h_binpersid,
    ord("R"): _h_reduce,
    ord("S"): _h_string,
    ord("T"): _counted("<I", kind="py2str"),  # C reads the size unsigned (Python: signed)
    ord("U"): _counted("<B", kind="py2str"),
    ord("V"): _h_unicode,
    ord("X"): _counted("<I", kind="unicode"),
    ord("a"): _h_append,
    ord("b"): _h_build,
    ord("c"): _h_global,
    ord("d"): _h_dict,
    ord("}"): lambda w: w.push(PDict()),
    ord("e"): _h_appends,
    ord("g"): _h_get,
    ord("h"): _h_binget,
    ord("i"): _h_inst,
    ord("j"): _h_long_binget,
    ord("l"): _h_list,
    ord("]"): lambda w: w.push([]),
    ord("o"): _h_obj,
    ord("p"): _h_put,
    ord("q"): _h_binput,
    ord("r"): _h_long_binput,
    ord("s"): _h_setitem,
    ord("t"): _h_tuple,
    ord(")"): lambda w: w.push(()),
    ord("u"): _h_setitems,
    ord("G"): _h_binfloat,
    0x80: _h_proto,
    0x81: _h_newobj,
    0x82: _h_ext(1, "<B"),
    0x83: _h_ext(2, "<H"),
    0x84: _h_ext(4, "<i"),
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    0x88: _literal(True),
    0x89: _literal(False),
    0x8A: _h_long1,
    0x8B: _h_long4,
    ord("B"): _counted("<I", kind="bytes"),
    ord("C"): _counted("<B", kind="bytes"),
    0x8C: _counted("<B", kind="unicode"),
    0x8D: _counted("<Q", kind="unicode"),
    0x8E: _counted("<Q", kind="bytes"),
    0x8F: lambda w: w.push(PSet()),
    0x90: _h_additems,
    0x91: _h_frozenset,
    0x92: _h_newobj_ex,
    0x93: _h_stack_global,
    0x94: _h_memoize,
    0x95: _h_frame,
    0x96: _counted("<Q", kind="bytes"),
    0x97: lambda w: w.push(UNKNOWN),  # NEXT_BUFFER: out-of-band data, never code
    0x98: _h_readonly_buffer,
}
assert set(_DISPATCH) | {ord(".")} == set(OPCODE_BYTES), "every opcode has a handler"


def walk_pickle(
    stream: IO[bytes],
    location: str = "",
    *,
    joblib: bool = False,
    depth: int = 0,
    base: int | None = None,
) -> PickleResult:
    """Walk one pickle from the stream's current position up to and including STOP.

    Returns the findings, every resolved global and the simulated top-level value; the stream
    is left just after STOP. `base` is the stream offset that positions are reported from
    (default: where the walk starts).

    Raises:
        PickleParseError: the bytes are not a complete pickle (with the findings seen so far).
    """
    start = stream.tell()
    kwargs: dict[str, Any] = {
        "joblib": joblib, "depth": depth, "base": start if base is None else base
    }  # fmt: skip
    walker: _Walker
    if isinstance(stream, io.BytesIO):
        walker = _MemWalker(stream.getvalue(), stream, location, **kwargs)
    else:
        walker = _Walker(stream, location, **kwargs)
    result = walker.run()
    stream.seek(result.end)
    return result
