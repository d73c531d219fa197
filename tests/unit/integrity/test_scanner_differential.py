"""Differential tests: the scanner's opcode reader against CPython's two unpicklers, and its zip
reader against the zip readers the loaders use, on Hypothesis-generated inputs.

The real unpicklers run with `find_class` and `persistent_load` replaced by recorders that
return inert stubs: nothing is ever imported, and the stream goes on past each global so every
import the loader *would* attempt is recorded. Properties:

* every global either unpickler would import is among the globals the walk resolves;
* the walk fails exactly (`PickleParseError.exact`) only where both unpicklers fail;
* where the pure-Python unpickler completes, the walk completes with the same value and ends
  at the same offset.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import scanner_corpus as corpus
from trainguard.integrity.scanner import Verdict, scan_bytes, zipscan
from trainguard.integrity.scanner.allowlist import normalize
from trainguard.integrity.scanner.pickle_values import (
    BigBytes,
    BigStr,
    PDict,
    PSet,
)
from trainguard.integrity.scanner.pickle_walk import PickleParseError, walk_pickle

# -- the recording unpicklers -------------------------------------------------------------------


class _Stub:
    """What a recorded global resolves to: accepts any call and any state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _cannot_import(module: str) -> bool:
    """Names `__import__` refuses before importing anything (an empty name, a NUL byte in the
    first package name): checked by calling it, which is safe for exactly these names."""
    if module and "\x00" not in module.partition(".")[0]:
        return False
    before = set(__import__("sys").modules)
    try:
        __import__(module)
    except ValueError:
        assert set(__import__("sys").modules) == before
        return True
    return False


class _PyRecorder(pickle._Unpickler):  # type: ignore[name-defined,misc]
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.imports: list[tuple[str, str, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            module, name = normalize(module, name, self.proto)
        if _cannot_import(module):
            raise ValueError("Empty module name or embedded null byte")
        self.imports.append((module, name, self.proto))
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return _Stub()


class _CRecorder(pickle.Unpickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.imports: list[tuple[str, str, int]] = []
        self._proto_guess = 0

    def find_class(self, module: str, name: str) -> Any:
        if _cannot_import(normalize(module, name, 0)[0]) and _cannot_import(module):
            raise ValueError("Empty module name or embedded null byte")
        self.imports.append((module, name, -1))
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return _Stub()


def _run(cls: type, data: bytes) -> tuple[bool, Any, int, list[tuple[str, str, int]]]:
    stream = io.BytesIO(data)
    unpickler = cls(stream)
    try:
        value = unpickler.load()
    except BaseException as exc:  # noqa: BLE001 - any failure of the real loader counts
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return False, None, -1, unpickler.imports
    return True, value, stream.tell(), unpickler.imports


def _walk(data: bytes) -> tuple[Any, PickleParseError | None, set[str]]:
    """The walk over bytes in memory, checked against the same walk over a file stream."""
    outcomes = []
    for stream in (io.BytesIO(data), io.BufferedReader(io.BytesIO(data))):  # type: ignore[arg-type]
        try:
            result = walk_pickle(stream)
        except PickleParseError as exc:
            outcomes.append((None, exc, set(exc.globals)))
        else:
            outcomes.append((result, None, set(result.globals)))
    (mem, mem_err, mem_globals), (disk, disk_err, disk_globals) = outcomes
    assert mem_globals == disk_globals, data
    assert (mem_err is None) == (disk_err is None), data
    if mem_err is not None and disk_err is not None:
        assert mem_err.exact == disk_err.exact, (data, str(mem_err), str(disk_err))
    if mem is not None and disk is not None:
        assert mem.end == disk.end, data
    return outcomes[0]


def _seen(module: str, name: str, proto: int, walked: set[str]) -> bool:
    protos = [proto] if proto >= 0 else [0, 3]  # the C unpickler does not expose its protocol
    return any(".".join(normalize(module, name, p)) in walked for p in protos)


_NOT_LITERAL = object()


def _plain(value: Any, depth: int = 0) -> Any:
    """The walk's simulated value as the real object, or _NOT_LITERAL."""
    if depth > 20 or isinstance(value, (BigStr, BigBytes)):
        return _NOT_LITERAL
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if type(value) in (list, tuple):
        items = [_plain(v, depth + 1) for v in value]
        if any(i is _NOT_LITERAL for i in items):
            return _NOT_LITERAL
        return items if type(value) is list else tuple(items)
    if isinstance(value, PDict):
        try:
            out = {}
            for k, v in value.pairs:
                k, v = _plain(k, depth + 1), _plain(v, depth + 1)
                if k is _NOT_LITERAL or v is _NOT_LITERAL:
                    return _NOT_LITERAL
                out[k] = v
            return out
        except TypeError:
            return _NOT_LITERAL
    if isinstance(value, PSet):
        items = [_plain(v, depth + 1) for v in value.items]
        if any(i is _NOT_LITERAL for i in items):
            return _NOT_LITERAL
        try:
            return frozenset(items) if value.frozen else set(items)
        except TypeError:
            return _NOT_LITERAL
    return _NOT_LITERAL


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bytearray) or isinstance(b, bytearray):
        return bytes(a) == bytes(b)
    return bool(a == b)


# -- opcode streams ------------------------------------------------------------------------------

_MODULES = ["os", "posix", "builtins", "__builtin__", "collections", "torch._utils", "numpy",
            "copy_reg", "joblib.numpy_pickle", "o\x00s", "", "a.b", "é"]  # fmt: skip
_NAMES = ["system", "eval", "OrderedDict", "_rebuild_tensor_v2", "dtype", "x.y", "", "\x00"]

_int_text = st.one_of(
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.integers(0, 1 << 40).map(hex),
    st.integers(0, 1 << 40).map(lambda n: "0" + oct(n)[2:]),
    st.integers(0, 1 << 40).map(oct),
    st.integers(0, 1 << 20).map(bin),
    st.sampled_from(["00", "01", "0", "1", "+1", "-0", " 7", "7 ", "1_000", "0x", "0x_1", "08",
                     "0X1F", "1\x00junk", "\x00", "1e3", "+ 1", "--1", "0b12", "٣", "1\t"]),
    st.text(alphabet="0123456789xXabcdefL_+- \t\x00o", max_size=8),
)  # fmt: skip
_float_text = st.one_of(
    st.floats(allow_nan=True).map(repr),
    st.sampled_from(["1e500", "-1e500", "1e-500", "inf", "-inf", "nan", "Infinity", "+nan",
                     "1_0.5", " 1.5", "1.5 ", ".5", "5.", ".", "1e", "0x1p3", "1.5\x00x",
                     "infinityx", "NaN"]),
    st.text(alphabet="0123456789.eE+-_ infna\x00x", max_size=8),
)  # fmt: skip
_short_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)


def _line(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return raw + b"\n"


@st.composite
def _opcode(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 44))
    if kind == 0:
        return b"I" + _line(draw(_int_text))
    if kind == 1:
        return b"L" + _line(draw(_int_text) + draw(st.sampled_from(["", "L", "LL"])))
    if kind == 2:
        return b"F" + _line(draw(_float_text))
    if kind == 3:
        q = draw(st.sampled_from(["'", '"']))
        inner = draw(st.sampled_from(["abc", "a\\x41", "\\x4", "\\n", "\\q", "é", "", "\\'"]))
        close = draw(st.sampled_from([q, "", "'" if q == '"' else '"']))
        return b"S" + _line(q + inner + close)
    if kind == 4:
        return b"V" + _line(draw(st.sampled_from(["abc", "\\u0041", "\\u00", "\\U00110000", "é"])))
    if kind == 5:
        raw = draw(_short_text).encode("utf-8", "surrogatepass")
        return b"\x8c" + bytes([len(raw)]) + raw
    if kind == 6:
        raw = draw(st.binary(max_size=6))
        n = draw(st.sampled_from([len(raw), len(raw) + 1, 0xFFFFFFFF, 1 << 31]))
        return b"X" + struct.pack("<I", n & 0xFFFFFFFF) + raw
    if kind == 7:
        op = draw(st.sampled_from([b"B", b"T"]))
        raw = draw(st.binary(max_size=4))
        n = draw(st.sampled_from([len(raw), 1 << 31]))
        return op + struct.pack("<I", n) + raw
    if kind == 8:
        raw = draw(st.binary(max_size=4))
        return draw(st.sampled_from([b"C", b"U"])) + bytes([len(raw)]) + raw
    if kind == 9:
        return b"c" + _line(draw(st.sampled_from(_MODULES))) + _line(draw(st.sampled_from(_NAMES)))
    if kind == 10:
        return b"i" + _line(draw(st.sampled_from(_MODULES))) + _line(draw(st.sampled_from(_NAMES)))
    if kind == 11:
        module, name = draw(st.sampled_from(_MODULES)), draw(st.sampled_from(_NAMES))
        m, n = module.encode("utf-8", "surrogatepass"), name.encode("utf-8", "surrogatepass")
        return b"\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93"
    if kind == 12:
        return b"\x80" + bytes([draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 255]))])
    if kind == 13:
        return b"\x95" + struct.pack("<Q", draw(st.integers(0, 40)))
    if kind in (14, 15):
        return draw(st.sampled_from([b"g", b"p"])) + _line(
            draw(st.sampled_from(["0", "1", " 1", "1_0", "-1", "0\x001", "x", "2 ", "+0"]))
        )
    if kind == 16:
        return draw(st.sampled_from([b"h", b"q"])) + bytes([draw(st.integers(0, 3))])
    if kind == 17:
        return draw(st.sampled_from([b"j", b"r"])) + struct.pack("<I", draw(st.integers(0, 3)))
    if kind == 18:
        return b"J" + struct.pack("<i", draw(st.integers(-(1 << 31), (1 << 31) - 1)))
    if kind == 19:
        return b"K" + bytes([draw(st.integers(0, 255))])
    if kind == 20:
        return b"M" + struct.pack("<H", draw(st.integers(0, 0xFFFF)))
    if kind == 21:
        raw = draw(st.binary(max_size=9))
        return b"\x8a" + bytes([len(raw)]) + raw
    if kind == 22:
        return b"G" + struct.pack(">d", draw(st.floats()))
    if kind == 23:
        return b"P" + _line(draw(st.sampled_from(["1", "abc", "é"])))
    if kind == 24:
        return draw(st.sampled_from([b"\x82\x01", b"\x83\x01\x00", b"\x84\x00\x00\x00\x00"]))
    if kind == 25:
        return bytes([draw(st.integers(0, 255))])  # any byte, opcode or not
    # argument-less structure opcodes, weighted up
    return draw(
        st.sampled_from(
            [b"(", b"(", b"t", b"l", b"d", b"}", b"]", b")", b"a", b"e", b"s", b"u", b"0",
             b"1", b"2", b"R", b"b", b"o", b"\x81", b"\x92", b"\x85", b"\x86", b"\x87",
             b"\x88", b"\x89", b"N", b"\x8f", b"\x90", b"\x91", b"\x94", b"Q", b"\x98",
             b"\x97", b"."]
        )
    )  # fmt: skip


_streams = st.builds(
    lambda ops, stop: b"".join(ops) + (b"." if stop else b""),
    st.lists(_opcode(), min_size=1, max_size=25),
    st.booleans(),
)


def _values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3) | st.sets(st.integers(), max_size=3),
        max_leaves=12,
    )  # fmt: skip


@st.composite
def _mutated_pickles(draw: st.DrawFn) -> bytes:
    """Real pickles of every protocol, with opcodes spliced in and bytes changed."""
    data = bytearray(pickle.dumps(draw(_values()), protocol=draw(st.integers(0, 5))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(_opcode())
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


_inputs = st.one_of(
    _streams,
    _mutated_pickles(),
    st.tuples(_streams, st.integers(1, 12)).map(lambda t: t[0][: -t[1]] or t[0]),  # cut short
)
_SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_against_unpicklers(data: bytes) -> None:
    result, error, walked = _walk(data)
    for name, cls in (("pickle._Unpickler", _PyRecorder), ("_pickle.Unpickler", _CRecorder)):
        ok, value, end, imports = _run(cls, data)
        gave_up = error is not None and not error.exact  # an error verdict, never safe
        for module, gname, proto in imports:
            assert gave_up or _seen(module, gname, proto, walked), (name, module, gname, data)
        if ok:
            assert error is None or not error.exact, (name, "completes, walk fails", data, error)
            if result is not None and cls is _PyRecorder:
                if result.frame_tail is None:
                    assert result.end == end, (data, result.end, end)
                plain = _plain(result.value)
                if plain is not _NOT_LITERAL and not imports:
                    assert _same(plain, value), (data, plain, value)


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
@_SETTINGS
@given(_inputs)
def test_walk_sees_every_global_both_unpicklers_import(data: bytes) -> None:
    """Opcode arguments are decoded as _pickle and pickle._Unpickler decode them (all
    protocols): every import either would attempt is seen, the walk stops only where both stop,
    and where they complete it reaches the same value and offset."""
    _check_against_unpicklers(data)


@pytest.mark.parametrize(
    "data",
    [
        b"I0x1f\n.", b"I017\n.", b"I1_0\n.", b"I00\n.", b"I01\n.", b"I+1\n.", b"I1\x00zz\n.",
        b"I\x00\n.", b"L0x10L\n.", b"L12\x00z\n.", b"F1e500\n.", b"F1.5\x00z\n.", b"F 1.5 \n.",
        b"Fnan\n.", b"g0\n", b"(S'a'\np 1\n0g1_\n.", b"(I1\np0\n0g 0\n.", b"cos\nsystem",
        b"ios\nsystem\n.", b"\x80\x02\x95\x05\x00\x00\x00\x00\x00\x00\x00N.",
        b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
def test_walk_matches_the_unpicklers_on_known_divergences(data: bytes) -> None:
    _check_against_unpicklers(data)


# -- zip readers ---------------------------------------------------------------------------------


def _torch_records(blob: bytes) -> dict[str, bytes] | None:
    torch = pytest.importorskip("torch")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(blob))
        names = reader.get_all_records()
    except Exception:  # noqa: BLE001 - torch refuses the archive
        return None
    out = {}
    for name in names:
        if name in _directory_entries(blob):
            continue  # miniz extracts nothing for these: torch returns an unwritten buffer
        try:
            out[name] = bytes(reader.get_record(name))
        except Exception:  # noqa: BLE001,S112 - torch refuses this record
            continue
    return out


def _directory_entries(blob: bytes) -> set[str]:
    """Names whose central record carries the MS-DOS directory attribute (or a trailing /)."""
    names = set()
    f = io.BytesIO(blob)
    for member in zipscan.miniz_members(f, len(blob)) or []:
        if member.name.endswith("/"):
            names.add(member.name.split("/", 1)[-1])
    at = 0
    while (at := blob.find(b"PK\x01\x02", at)) >= 0 and at + 46 <= len(blob):
        (attrs,) = struct.unpack_from("<I", blob, at + 38)
        (nlen,) = struct.unpack_from("<H", blob, at + 28)
        if attrs & 0x10:
            names.add(blob[at + 46 : at + 46 + nlen].decode("utf-8", "replace").split("/", 1)[-1])
        at += 4
    return names


def _zipfile_records(blob: bytes) -> dict[str, bytes] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            out = {}
            for info in archive.infolist():
                try:
                    out[info.filename] = archive.read(info)
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error,
                        EOFError, ValueError):  # fmt: skip
                    continue
            return out
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, KeyError):
        return None


def _scanned_payloads(blob: bytes) -> set[bytes]:
    """The bytes of every member the scanner judges, decompressed as it decompresses them."""
    from trainguard.integrity.scanner.formats import _member_stream

    f = io.BytesIO(blob)
    members, _ = zipscan.list_members(f, len(blob))
    out = set()
    for member in members:
        try:
            stream, _length = _member_stream(f, member)
        except (ValueError, zlib.error, OSError, EOFError):
            continue
        out.add(stream.read())
    return out


@st.composite
def _mutated_zips(draw: st.DrawFn) -> bytes:
    members = [
        ("archive/data.pkl", corpus.benign_data_pkl()),
        ("archive/data/0", draw(st.binary(min_size=1, max_size=16))),
        ("archive/version", b"3\n"),
    ]
    blob = bytearray(
        draw(
            st.sampled_from(
                [
                    corpus.zip_archive(members),
                    corpus.zip_archive(members, deflate=True),
                    corpus.zip64_archive(members),
                    corpus.zip64_archive(members, relocate=True),
                ]
            )
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(blob) - 1))
        how = draw(st.integers(0, 3))
        if how == 0:
            blob[at] = draw(st.integers(0, 255))
        elif how == 1:  # push a 16-, 32- or 64-bit field to an extreme
            width = draw(st.sampled_from([2, 4, 8]))
            blob[at : at + width] = draw(st.sampled_from([b"\xff", b"\x00"])) * width
        elif how == 2:
            blob[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del blob[at : at + draw(st.integers(1, 8))]
    return bytes(blob)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_zips())
def test_scanner_sees_every_member_zipfile_and_torch_read(blob: bytes) -> None:
    """Zip structures are located as the loaders' readers locate them: on mutated archives,
    every member Python's zipfile (numpy) or torch's PyTorchFileReader (miniz) can read is among
    the members the scanner judges, byte for byte; and the scan never raises."""
    scanned = _scanned_payloads(blob)
    verdict = scan_bytes(blob).verdict
    for reader in (_zipfile_records, _torch_records):
        records = reader(blob)
        for name, data in (records or {}).items():
            assume(len(data) < 1 << 20)
            # miniz inflates some streams zlib refuses: then the member is unreadable to the
            # scanner, an error verdict, never safe
            assert data in scanned or not data or verdict is not Verdict.SAFE, (
                reader.__name__,
                name,
                data[:40],
            )
