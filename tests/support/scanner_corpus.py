"""Build the scanner's test corpus in code: malicious pickles assembled from opcodes (never
executed, never unpickled) and the containers they hide in (zip, legacy torch, .npy, joblib,
compressed streams, safetensors headers)."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from collections.abc import Iterable

# -- opcode helpers --------------------------------------------------------------------------


def unicode(s: str) -> bytes:
    data = s.encode()
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(data)) + data


def proto(n: int = 4) -> bytes:
    return b"\x80" + bytes([n])


def call_global_p0(module: str, name: str, arg: str) -> bytes:
    """Protocol 0 text: GLOBAL 'module\\nname\\n', MARK, STRING arg, TUPLE, REDUCE, STOP."""
    return f"c{module}\n{name}\n(S'{arg}'\ntR.".encode()


def call_global_p2(module: str, name: str, arg: str) -> bytes:
    return proto(2) + f"c{module}\n{name}\n".encode() + unicode(arg) + b"\x85R."


def stack_global(module: str, name: str, arg: str, protocol: int = 4) -> bytes:
    """Protocol 4: STACK_GLOBAL with the strings memoised on the way."""
    return (
        proto(protocol)
        + unicode(module) + b"\x94"  # MEMOIZE
        + unicode(name) + b"\x94"
        + b"\x93\x94"  # STACK_GLOBAL, MEMOIZE
        + unicode(arg) + b"\x85R."  # TUPLE1 REDUCE STOP
    )  # fmt: skip


def memo_trick(module: str, name: str, arg: str) -> bytes:
    """Module and name strings parked in the memo inside a discarded list, then fetched with
    BINGET for STACK_GLOBAL: a scanner that only looks at the strings next to STACK_GLOBAL
    misses it."""
    return (
        proto(4)
        + b"]"  # EMPTY_LIST
        + unicode("innocent") + b"q\x00"  # BINPUT 0
        + unicode(module) + b"q\x01"  # BINPUT 1
        + unicode(name) + b"q\x02"  # BINPUT 2
        + b"0"  # POP the three strings one by one...
        + b"0" + b"0" + b"0"  # ...and the list
        + b"h\x01h\x02\x93"  # BINGET 1, BINGET 2, STACK_GLOBAL
        + unicode(arg) + b"\x85R."
    )  # fmt: skip


def put_get_p0(module: str, name: str, arg: str) -> bytes:
    """Protocol 0 text with PUT/GET feeding STACK_GLOBAL (the unpickler accepts any opcode)."""
    return f"V{module}\np0\n0V{name}\np1\n0g0\ng1\n".encode() + b"\x93" + f"(V{arg}\ntR.".encode()


def getattr_chain(target: str = "eval", arg: str = "print(1)") -> bytes:
    """getattr(importlib.import_module('builtins'), 'eval')('...') in protocol 2."""
    return (
        proto(2)
        + b"cbuiltins\ngetattr\n"
        + b"cimportlib\nimport_module\n" + unicode("builtins") + b"\x85R"
        + unicode(target) + b"\x86R"  # TUPLE2 REDUCE -> eval
        + unicode(arg) + b"\x85R."
    )  # fmt: skip


def nested_in_ordereddict(module: str = "os", name: str = "system") -> bytes:
    """An OrderedDict whose value is built by a nested REDUCE of a dangerous global."""
    inner = f"c{module}\n{name}\n".encode() + unicode("id") + b"\x85R"
    return (
        proto(2)
        + b"ccollections\nOrderedDict\n)R"  # OrderedDict()
        + unicode("weight") + inner + b"s."  # SETITEM, STOP
    )  # fmt: skip


def inst_p0(module: str = "os", name: str = "system") -> bytes:
    return f"(S'id'\ni{module}\n{name}\n.".encode()


def obj_p1(module: str = "os", name: str = "system") -> bytes:
    return f"(c{module}\n{name}\nS'id'\no.".encode()


def newobj_ex(module: str = "subprocess", name: str = "Popen") -> bytes:
    return (
        proto(4) + unicode(module) + unicode(name) + b"\x93"
        + unicode("id") + b"\x85}\x92."  # args tuple, empty kwargs dict, NEWOBJ_EX
    )  # fmt: skip


def ext_code() -> bytes:
    return proto(2) + b"\x82\x01)R."  # EXT1 1, EMPTY_TUPLE, REDUCE


def build_on_class() -> bytes:
    """BUILD on an allowed class itself: would overwrite class attributes process-wide."""
    return proto(2) + b"ccollections\nOrderedDict\n}" + unicode("x") + b"K\x01s" + b"b."


def framed_p5(module: str, name: str, arg: str) -> bytes:
    body = unicode(module) + unicode(name) + b"\x93" + unicode(arg) + b"\x85R."
    return proto(5) + b"\x95" + struct.pack("<Q", len(body)) + body


PAYLOADS: dict[str, bytes] = {
    "os.system p0": call_global_p0("os", "system", "id"),
    "posix.system p2": call_global_p2("posix", "system", "id"),
    "nt.system p0": call_global_p0("nt", "system", "id"),
    "subprocess.Popen": stack_global("subprocess", "Popen", "id"),
    "subprocess.check_output": stack_global("subprocess", "check_output", "id", 3),
    "builtins.eval": stack_global("builtins", "eval", "1+1"),
    "builtins.exec": call_global_p2("builtins", "exec", "pass"),
    "__builtin__.eval py2": call_global_p0("__builtin__", "eval", "1"),
    "getattr chain": getattr_chain(),
    "importlib.import_module": stack_global("importlib", "import_module", "os"),
    "runpy._run_code": stack_global("runpy", "_run_code", "print(1)"),
    "pip main": stack_global("pip._internal.cli.main", "main", "install"),
    "pip main legacy": call_global_p2("pip", "main", "install"),
    "webbrowser.open": stack_global("webbrowser", "open", "http://x"),
    "torch.load": stack_global("torch", "load", "/tmp/x"),
    "numpy.load": stack_global("numpy", "load", "/tmp/x"),
    "functools.partial": stack_global("functools", "partial", "x"),
    "operator.attrgetter": stack_global("operator", "attrgetter", "x"),
    "torch _load_from_bytes": stack_global("torch.storage", "_load_from_bytes", "x"),
    "nested reduce in OrderedDict": nested_in_ordereddict(),
    "memo trick BINGET": memo_trick("os", "system", "id"),
    "PUT/GET p0": put_get_p0("os", "system", "id"),
    "INST": inst_p0(),
    "OBJ": obj_p1(),
    "NEWOBJ_EX": newobj_ex(),
    "EXT1": ext_code(),
    "BUILD on class": build_on_class(),
    "FRAME p5": framed_p5("os", "system", "id"),
    "qualname trick": stack_global("collections", "OrderedDict.__init__.__globals__", "x"),
}


# -- containers ------------------------------------------------------------------------------


def zip_archive(
    members: Iterable[tuple[str, bytes]],
    *,
    flags: int = 0,
    bad_crc: bool = False,
    hide: frozenset[str] = frozenset(),
    deflate: bool = False,
) -> bytes:
    """A zip built by hand: odd flag bits, wrong CRCs and members left out of the central
    directory (still present as local headers) are all possible."""
    out, central, count = io.BytesIO(), io.BytesIO(), 0
    for name, data in members:
        crc = zlib.crc32(data) ^ (0xDEADBEEF if bad_crc else 0)
        payload = zlib.compress(data)[2:-4] if deflate else data
        method = 8 if deflate else 0
        offset = out.tell()
        raw_name = name.encode()
        out.write(
            struct.pack(
                "<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0, crc,
                len(payload), len(data), len(raw_name), 0,
            )
            + raw_name
            + payload
        )  # fmt: skip
        if name in hide:
            continue
        count += 1
        central.write(
            struct.pack(
                "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc,
                len(payload), len(data), len(raw_name), 0, 0, 0, 0, 0, offset,
            )
            + raw_name
        )  # fmt: skip
    cd = central.getvalue()
    cd_offset = out.tell()
    out.write(cd)
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(cd), cd_offset, 0))
    return out.getvalue()


def benign_data_pkl() -> bytes:
    return pickle.dumps({"step": 3, "lr": 0.1, "names": ["a", "b"]}, protocol=2)


def legacy_torch(main_pickle: bytes) -> bytes:
    """The pre-1.6 torch layout: magic, protocol version, sys info, main pickle, storage keys."""
    return (
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
        + main_pickle
        + pickle.dumps([], protocol=2)
        + b"\x00" * 64  # raw storage bytes follow in real files
    )


def npy_object(payload: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def safetensors(
    tensors: dict[str, tuple[str, list[int], tuple[int, int]]],
    data_len: int,
    metadata: dict[str, object] | None = None,
) -> bytes:
    header: dict[str, object] = {
        name: {"dtype": d, "shape": s, "data_offsets": list(o)}
        for name, (d, s, o) in tensors.items()
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * data_len


# -- the bypasses of issue #21 -------------------------------------------------------------------


def hex_int_then(payload: bytes) -> bytes:
    """A protocol-0 stream opening with INT in hex (base 0 for CPython: 0x1 is 1), popped, then
    the payload: a base-10 reader fails at offset 0."""
    return b"I0x1\n0" + payload


def computed_magic() -> bytes:
    """torch's legacy magic number computed by REDUCE (builtins.int(hex string, 16)): the walk
    cannot know the value, torch.load compares it and reads on."""
    return b"cbuiltins\nint\n(S'1950a86a20f9469cfc6c'\nI16\ntR."


def legacy_torch_p0(main_pickle: bytes, *, magic: bytes | None = None) -> bytes:
    """A legacy torch file whose later pickles are protocol 0 (no PROTO opcode)."""
    return (
        (magic if magic is not None else pickle.dumps(0x1950A86A20F9469CFC6C, protocol=0))
        + pickle.dumps(1001, protocol=0)
        + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=0)
        + main_pickle
        + pickle.dumps([], protocol=0)
    )


def npy_with_descr(descr: str, payload: bytes, shape: str = "(1,)") -> bytes:
    """A version 1.0 .npy whose header dict has the given descr literal, then `payload`."""
    header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
    header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def _local_header(name: bytes, data: bytes, flags: int = 0) -> bytes:
    return (
        struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, zlib.crc32(data), len(data),
            len(data), len(name), 0,
        )
        + name
        + data
    )  # fmt: skip


def _central_record(name: bytes, data: bytes, offset: int, flags: int = 0) -> bytes:
    return (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 20, flags, 0, 0, 0, zlib.crc32(data),
            len(data), len(data), len(name), 0, 0, 0, 0, 0, offset,
        )
        + name
    )  # fmt: skip


def _zip64_end(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset
    )


def _locator(offset: int) -> bytes:
    return struct.pack("<4sIQI", b"PK\x06\x07", 0, offset, 1)


def _end(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def zip64_archive(members: Iterable[tuple[str, bytes]], *, relocate: bool = False) -> bytes:
    """A zip with a zip64 end record and locator, as torch.save writes one; with `relocate`,
    16 bytes separate the zip64 end record from the locator, which points to it."""
    out, central = io.BytesIO(), io.BytesIO()
    items = list(members)
    for name, data in items:
        offset = out.tell()
        out.write(_local_header(name.encode(), data))
        central.write(_central_record(name.encode(), data, offset))
    cd, cd_offset = central.getvalue(), out.tell()
    out.write(cd)
    record_at = out.tell()
    out.write(_zip64_end(len(items), len(cd), cd_offset))
    if relocate:
        out.write(b"\x00" * 16)
    out.write(_locator(record_at))
    out.write(_end(len(items), len(cd), cd_offset))
    return out.getvalue()


def zip64_locator_decoy(
    real: Iterable[tuple[str, bytes]], decoy: Iterable[tuple[str, bytes]]
) -> bytes:
    """The zip64 bypass: a decoy zip64 end record sits where a fixed-position reader looks
    (just before the locator) and lists the `decoy` members; the locator's offset leads to the
    real record, whose directory lists `real`. The real members sit after junk bytes, out of
    reach of a local-header walk from offset 0. torch's reader (miniz) follows the locator."""
    out = io.BytesIO()
    decoy_items, real_items = list(decoy), list(real)
    decoy_dir, real_dir = io.BytesIO(), io.BytesIO()
    for name, data in decoy_items:
        offset = out.tell()
        out.write(_local_header(name.encode(), data))
        decoy_dir.write(_central_record(name.encode(), data, offset))
    out.write(b"JUNKJUNK")
    for name, data in real_items:
        offset = out.tell()
        out.write(_local_header(name.encode(), data))
        real_dir.write(_central_record(name.encode(), data, offset))
    real_cd, real_cd_at = real_dir.getvalue(), out.tell()
    out.write(real_cd)
    real_record_at = out.tell()
    out.write(_zip64_end(len(real_items), len(real_cd), real_cd_at))
    decoy_cd, decoy_cd_at = decoy_dir.getvalue(), out.tell()
    out.write(decoy_cd)
    out.write(_zip64_end(len(decoy_items), len(decoy_cd), decoy_cd_at))
    out.write(_locator(real_record_at))
    out.write(_end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
    return out.getvalue()


def zip64_absurd_offset(field: str = "locator") -> bytes:
    """A zip64 archive with one offset set to 2**64 - 1: the locator's pointer to the zip64
    end record, or that record's central-directory offset or size."""
    blob = zip64_archive([("archive/data.pkl", benign_data_pkl())])
    if field == "locator":
        at = blob.rindex(b"PK\x06\x07") + 8
    else:
        at = blob.rindex(b"PK\x06\x06") + {"cd_size": 40, "cd_offset": 48}[field]
    return blob[:at] + b"\xff" * 8 + blob[at + 8 :]


def tar_archive(members: Iterable[tuple[str, bytes]], *, gz: bool = False) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seven_zip(members: Iterable[tuple[str, bytes]]) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        for name, data in members:
            archive.writestr(data, name)
    return buf.getvalue()
