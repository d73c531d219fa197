"""A zip reader for scanning: central directory *and* a local-header walk, tolerant of wrong
CRCs, odd flag bits and concatenated archives, so a member hidden from one view is still seen.

Python's zipfile refuses some archives that torch's loader (miniz) opens; this reader never
checks CRCs and never trusts a single index. It only locates member data; judging the bytes is
the caller's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

__all__ = ["ZipMember", "find_eocd", "list_members"]

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"
_DESCRIPTOR = b"PK\x07\x08"
_MAX_MEMBERS = 1_000_000


@dataclass(frozen=True)
class ZipMember:
    name: str
    data_offset: int
    compressed_size: int
    uncompressed_size: int
    method: int
    flags: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 1)


def _zip64_sizes(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            it = iter(values)
            if usize == 0xFFFFFFFF:
                usize = next(it, usize)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if offset == 0xFFFFFFFF:
                offset = next(it, offset)
            break
        pos += 4 + length
    return usize, csize, offset


def find_eocd(f: IO[bytes], size: int) -> int | None:
    """Offset of the last end-of-central-directory record, or None."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = tail.rfind(_EOCD)
    return None if pos < 0 else size - tail_len + pos


def _local_header(f: IO[bytes], offset: int) -> tuple[int, int, int, int, int, str] | None:
    """(data_offset, method, flags, csize, usize, name) from the local header at `offset`."""
    f.seek(offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != _LOCAL:
        return None
    flags, method = struct.unpack_from("<HH", head, 6)
    csize, usize, nlen, elen = struct.unpack_from("<IIHH", head, 18)
    name_extra = f.read(nlen + elen)
    name = name_extra[:nlen].decode("utf-8", "replace")
    usize, csize, _ = _zip64_sizes(name_extra[nlen:], usize, csize, 0)
    return offset + 30 + nlen + elen, method, flags, csize, usize, name


def _central(f: IO[bytes], size: int, problems: list[str]) -> dict[int, ZipMember]:
    eocd = find_eocd(f, size)
    if eocd is None:
        problems.append("no central directory")
        return {}
    f.seek(eocd)
    rec = f.read(22)
    count, cd_size, cd_offset = struct.unpack_from("<HII", rec, 10)
    # A zip64 end record (torch always writes one) sits between the directory and the EOCD.
    f.seek(max(eocd - 20, 0))
    loc = f.read(20)
    if loc[:4] == _LOCATOR64:
        (eocd64,) = struct.unpack_from("<Q", loc, 8)
        if eocd64 < eocd:
            rec64_pos = eocd - 20 - 56
            f.seek(max(rec64_pos, 0))
            rec64 = f.read(56)
            if rec64[:4] == _EOCD64:
                count64, cd_size, cd_offset = struct.unpack_from("<QQQ", rec64, 32)
                count = count64 if count in (0xFFFF,) or count64 > count else count
                eocd = rec64_pos
    base = max(eocd - cd_size - cd_offset, 0)  # bytes prepended to the archive
    f.seek(base + cd_offset)
    members: dict[int, ZipMember] = {}
    for _ in range(min(count, _MAX_MEMBERS)):
        fixed = f.read(46)
        if len(fixed) < 46 or fixed[:4] != _CENTRAL:
            problems.append("central directory truncated")
            break
        flags, method = struct.unpack_from("<HH", fixed, 8)
        csize, usize, nlen, elen, clen = struct.unpack_from("<IIHHH", fixed, 20)
        (lho,) = struct.unpack_from("<I", fixed, 42)
        var = f.read(nlen + elen + clen)
        name = var[:nlen].decode("utf-8", "replace")
        usize, csize, lho = _zip64_sizes(var[nlen : nlen + elen], usize, csize, lho)
        here = f.tell()
        local = _local_header(f, base + lho)
        f.seek(here)
        if local is None:
            problems.append(f"member {name!r} has no local header")
            continue
        members[base + lho] = ZipMember(name, local[0], csize, usize, method, flags)
    return members


def _skip_records(f: IO[bytes], pos: int, size: int) -> int | None:
    """Step over central-directory records so a walk can reach a concatenated archive."""
    while pos < size:
        f.seek(pos)
        head = f.read(4)
        if head == _LOCAL:
            return pos
        if head == _CENTRAL:
            fixed = head + f.read(42)
            if len(fixed) < 46:
                return None
            nlen, elen, clen = struct.unpack_from("<HHH", fixed, 28)
            pos += 46 + nlen + elen + clen
        elif head == _EOCD:
            rec = head + f.read(18)
            if len(rec) < 22:
                return None
            pos += 22 + struct.unpack_from("<H", rec, 20)[0]
        elif head == _EOCD64:
            (rest,) = struct.unpack("<Q", f.read(8))
            pos += 12 + rest
        elif head == _LOCATOR64:
            pos += 20
        else:
            return None
    return None


def _find_descriptor(f: IO[bytes], data_offset: int, size: int) -> int | None:
    """Size of a stored member whose local header defers it to a trailing data descriptor."""
    pos, carry = data_offset, b""
    while pos < size:
        f.seek(pos)
        block = carry + f.read(1 << 20)
        base = pos - len(carry)
        start = 0
        while (hit := block.find(_DESCRIPTOR, start)) >= 0 and hit + 16 <= len(block):
            length = base + hit - data_offset
            (small,) = struct.unpack_from("<I", block, hit + 8)
            big = struct.unpack_from("<Q", block, hit + 8)[0] if hit + 24 <= len(block) else -1
            if length in (small, big):
                return length
            start = hit + 1
        if len(block) <= len(carry):
            break
        pos = base + len(block)
        carry = block[-24:]
    return None


def _walk_local(
    f: IO[bytes], size: int, central: dict[int, ZipMember], problems: list[str]
) -> dict[int, ZipMember]:
    members: dict[int, ZipMember] = {}
    pos: int | None = 0
    while pos is not None and pos < size and len(members) < _MAX_MEMBERS:
        local = _local_header(f, pos)
        if local is None:
            nxt = _skip_records(f, pos, size)
            pos = nxt if nxt is not None and nxt > pos else None
            continue
        data_offset, method, flags, csize, usize, name = local
        known = central.get(pos)
        if flags & 8 and csize == 0:
            if known is not None:
                csize, usize = known.compressed_size, known.uncompressed_size
            else:  # e.g. the earlier archives of a concatenation (torch DCP .distcp files)
                found = _find_descriptor(f, data_offset, size)
                if found is None:
                    problems.append(f"member {name!r}: no data descriptor found; walk stopped")
                    break
                csize = usize = found
        members[pos] = ZipMember(name, data_offset, csize, usize, method, flags)
        pos = data_offset + csize
        if flags & 8:
            f.seek(pos)
            pos += 16 if f.read(4) == _DESCRIPTOR else 12
            if max(csize, usize) >= 0xFFFFFFFF:
                pos += 8
    return members


def list_members(f: IO[bytes], size: int) -> tuple[list[ZipMember], list[str]]:
    """Every member either index knows, plus problems met while reading the indexes."""
    problems: list[str] = []
    central = _central(f, size, problems)
    local = _walk_local(f, size, central, problems)
    seen: set[ZipMember] = set()
    out: list[ZipMember] = []
    for member in [*central.values(), *local.values()]:
        if member not in seen:
            seen.add(member)
            out.append(member)
    return out, problems
