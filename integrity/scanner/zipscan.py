"""Zip members as each loader finds them, plus a local-header walk.

Three views are merged, so a member visible to any reader is judged:

* **miniz** (torch's ``PyTorchFileReader``), emulated from miniz 3.0.2's
  ``mz_zip_reader_read_central_dir``: the last end record with 22 bytes after it; a zip64 end
  record read *at the offset the zip64 locator gives* (refused past the end); no adjustment for
  bytes prepended to the archive; each member's data after its local header, its size from the
  central directory.
* **zipfile** (numpy's ``NpzFile``): Python's own ``zipfile.ZipFile`` on the same bytes, each
  member's data located as ``ZipFile.open`` locates it.
* **local headers**: a walk over every local header from offset 0, tolerant of wrong CRCs, odd
  flag bits and concatenated archives, so a member hidden from both directories is still seen.

CRCs and the encryption flag are ignored: a member is judged by its bytes as stored. Every
offset is checked against the archive size before it is used, so an absurd zip64 value is a
clean refusal of that view, never an exception.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import IO

__all__ = ["ZipMember", "find_eocd", "list_members", "miniz_members", "zipfile_members"]

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"
_DESCRIPTOR = b"PK\x07\x08"
_MAX_MEMBERS = 1_000_000
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class ZipMember:
    name: str
    data_offset: int
    compressed_size: int
    uncompressed_size: int
    method: int
    flags: int
    raw_name: bytes = b""
    header_offset: int = -1

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 1)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.data_offset, self.compressed_size, self.method)


def _read_at(f: IO[bytes], offset: int, n: int, size: int) -> bytes | None:
    """n bytes at offset, or None when they are not all inside the archive."""
    if offset < 0 or n < 0 or offset + n > size:
        return None
    f.seek(offset)
    data = f.read(n)
    return data if len(data) == n else None


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


def find_eocd(f: IO[bytes], size: int) -> int | None:
    """Offset of the end-of-central-directory record miniz uses (the last signature with at
    least 22 bytes after it, searched backwards about 64 KiB), or None."""
    if size < 22:
        return None
    cur = max(size - 4096, 0)
    while True:
        n = min(4096, size - cur)
        block = _read_at(f, cur, n, size)
        if block is None:
            return None
        i = n - 4
        while i >= 0:
            if block[i : i + 4] == _EOCD and size - (cur + i) >= 22:
                return cur + i
            i -= 1
        if cur == 0 or size - cur >= 0xFFFF + 22:
            return None
        cur = max(cur - (4096 - 3), 0)


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int] | None:
    """miniz's reading of the zip64 extended-information field; None when malformed."""
    pos = 0
    while pos < len(extra):
        if len(extra) - pos < 4:
            return None
        tag, length = struct.unpack_from("<HH", extra, pos)
        if length + 4 > len(extra) - pos:
            return None
        if tag == 1:
            body, at = extra[pos + 4 : pos + 4 + length], 0
            values = []
            for field in (usize, csize, offset):
                if field == _U32:
                    if len(body) - at < 8:
                        return None
                    values.append(struct.unpack_from("<Q", body, at)[0])
                    at += 8
                else:
                    values.append(field)
            return values[0], values[1], values[2]
        pos += 4 + length
    return usize, csize, offset


def miniz_members(f: IO[bytes], size: int) -> list[ZipMember] | None:
    """The members torch's reader sees, or None when it refuses the archive."""
    eocd = find_eocd(f, size)
    if eocd is None:
        return None
    rec = _read_at(f, eocd, 22, size)
    if rec is None:
        return None
    zip64, loc, rec64 = False, b"", b""
    if eocd >= 20 + 56:
        loc = _read_at(f, eocd - 20, 20, size) or b""
        if loc[:4] == _LOCATOR64:
            (rec64_ofs,) = struct.unpack_from("<Q", loc, 8)
            if rec64_ofs > size - 56:
                return None  # miniz: MZ_ZIP_NOT_AN_ARCHIVE
            rec64 = _read_at(f, rec64_ofs, 56, size) or b""
            zip64 = rec64[:4] == _EOCD64
    this_disk, cdir_disk, entries_here, total = struct.unpack_from("<HHHH", rec, 4)
    cdir_size, cdir_ofs = struct.unpack_from("<II", rec, 12)
    if zip64:
        (disks,) = struct.unpack_from("<I", loc, 16)
        rec_size, _, _, this_disk, cdir_disk, entries_here, total, cdir_size, cdir_ofs = (
            struct.unpack_from("<QHHIIQQQQ", rec64, 4)
        )
        if rec_size < 56 - 12 or disks != 1 or total > _U32 or entries_here > _U32:
            return None
        if cdir_size > _U32:
            return None
    if total != entries_here:
        return None
    if (this_disk | cdir_disk) != 0 and (this_disk != 1 or cdir_disk != 1):
        return None
    if cdir_size < total * 46 or cdir_ofs + cdir_size > size:
        return None
    if total > _MAX_MEMBERS:
        return None
    cdir = _read_at(f, cdir_ofs, cdir_size, size)
    if cdir is None:
        return None
    members: list[ZipMember] = []
    p = 0
    for _ in range(total):
        if len(cdir) - p < 46 or cdir[p : p + 4] != _CENTRAL:
            return None
        (flags,) = struct.unpack_from("<H", cdir, p + 8)
        (method_time,) = struct.unpack_from("<I", cdir, p + 10)
        method = method_time & 0xFFFF
        csize, usize, nlen, elen, clen, disk = struct.unpack_from("<IIHHHH", cdir, p + 20)
        (lho,) = struct.unpack_from("<I", cdir, p + 42)
        if csize != _U32 and usize != _U32:
            if (method_time == 0 and usize != csize) or (usize and not csize):
                return None
        if disk == 0xFFFF or (disk != this_disk and disk != 1):
            return None
        if csize != _U32 and lho + 30 + csize > size:
            return None
        if flags & 0x2000:
            return None
        total_len = 46 + nlen + elen + clen
        if total_len > len(cdir) - p:
            return None
        raw_name = cdir[p + 46 : p + 46 + nlen]
        extra = cdir[p + 46 + nlen : p + 46 + nlen + elen]
        if max(csize, usize, lho) == _U32:
            sizes = _zip64_extra(extra, usize, csize, lho)
            if sizes is None:
                return None
            usize, csize, lho = sizes
        p += total_len
        local = _read_at(f, lho, 30, size)
        if local is None or local[:4] != _LOCAL:
            continue  # this member cannot be extracted
        lnlen, lelen = struct.unpack_from("<HH", local, 26)
        data_offset = lho + 30 + lnlen + lelen
        if data_offset + csize > size:
            continue
        members.append(
            ZipMember(
                _decode_name(raw_name, flags),
                data_offset,
                csize,
                usize,
                method,
                flags,
                raw_name,
                lho,
            )  # fmt: skip
        )
    return members


def zipfile_members(f: IO[bytes], size: int) -> list[ZipMember] | None:
    """The members Python's zipfile (numpy's reader) sees, or None when it refuses."""
    try:
        f.seek(0)
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError,
            OverflowError, IndexError, KeyError, MemoryError):  # fmt: skip
        return None
    members: list[ZipMember] = []
    for info in infos[:_MAX_MEMBERS]:
        head = _read_at(f, info.header_offset, 30, size)
        if head is None or head[:4] != _LOCAL:
            continue
        lflags = struct.unpack_from("<H", head, 6)[0]
        if lflags & 0x60:  # compressed patch data, strong encryption: ZipFile.open refuses
            continue
        nlen, elen = struct.unpack_from("<HH", head, 26)
        data_offset = info.header_offset + 30 + nlen + elen
        if data_offset > size:
            continue
        # ZipExtFile reads lazily: a size past the end still yields what is there
        csize = min(info.compress_size, size - data_offset)
        raw = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        members.append(
            ZipMember(
                info.filename, data_offset, csize, info.file_size,
                info.compress_type, info.flag_bits, raw, info.header_offset,
            )
        )  # fmt: skip
    return members


def _local_header(
    f: IO[bytes], offset: int, size: int
) -> tuple[int, int, int, int, int, bytes] | None:
    """(data_offset, method, flags, csize, usize, raw name) from the local header at offset."""
    head = _read_at(f, offset, 30, size)
    if head is None or head[:4] != _LOCAL:
        return None
    flags, method = struct.unpack_from("<HH", head, 6)
    csize, usize, nlen, elen = struct.unpack_from("<IIHH", head, 18)
    name_extra = _read_at(f, offset + 30, nlen + elen, size)
    if name_extra is None:
        return None
    if max(csize, usize) == _U32:
        sizes = _zip64_extra(name_extra[nlen:], usize, csize, 0)
        if sizes is not None:
            usize, csize = sizes[0], sizes[1]
    return offset + 30 + nlen + elen, method, flags, csize, usize, name_extra[:nlen]


def _skip_records(f: IO[bytes], pos: int, size: int) -> int | None:
    """Step over central-directory records so a walk can reach a concatenated archive."""
    while pos < size:
        head = _read_at(f, pos, 4, size)
        if head == _LOCAL:
            return pos
        if head == _CENTRAL:
            fixed = _read_at(f, pos, 46, size)
            if fixed is None:
                return None
            nlen, elen, clen = struct.unpack_from("<HHH", fixed, 28)
            pos += 46 + nlen + elen + clen
        elif head == _EOCD:
            rec = _read_at(f, pos, 22, size)
            if rec is None:
                return None
            pos += 22 + struct.unpack_from("<H", rec, 20)[0]
        elif head == _EOCD64:
            rec = _read_at(f, pos, 12, size)
            if rec is None:
                return None
            pos += 12 + struct.unpack_from("<Q", rec, 4)[0]
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
    f: IO[bytes], size: int, known: dict[int, ZipMember], problems: list[str]
) -> list[ZipMember]:
    members: list[ZipMember] = []
    pos: int | None = 0
    while pos is not None and pos < size and len(members) < _MAX_MEMBERS:
        local = _local_header(f, pos, size)
        if local is None:
            nxt = _skip_records(f, pos, size)
            pos = nxt if nxt is not None and nxt > pos else None
            continue
        data_offset, method, flags, csize, usize, raw = local
        if flags & 8 and csize == 0:
            if pos in known:
                csize, usize = known[pos].compressed_size, known[pos].uncompressed_size
            else:  # e.g. the earlier archives of a concatenation (torch DCP .distcp files)
                found = _find_descriptor(f, data_offset, size)
                if found is None:
                    problems.append(f"member {raw!r}: no data descriptor found; walk stopped")
                    break
                csize = usize = found
        if data_offset + csize > size:
            problems.append(f"member {raw!r}: data runs past the end of the archive")
            break
        members.append(
            ZipMember(_decode_name(raw, flags), data_offset, csize, usize, method, flags, raw, pos)
        )
        pos = data_offset + csize
        if flags & 8:
            pos += 16 if _read_at(f, pos, 4, size) == _DESCRIPTOR else 12
            if max(csize, usize) >= _U32:
                pos += 8
    return members


def list_members(f: IO[bytes], size: int) -> tuple[list[ZipMember], list[str]]:
    """Every member any view finds (one entry per distinct data range and method), plus
    problems met on the way."""
    problems: list[str] = []
    torch_view = miniz_members(f, size)
    numpy_view = zipfile_members(f, size)
    if torch_view is None and numpy_view is None:
        problems.append("neither torch's zip reader nor Python's zipfile opens this archive")
    by_header: dict[int, ZipMember] = {}
    for m in (torch_view or []) + (numpy_view or []):
        by_header.setdefault(m.header_offset, m)
    local_view = _walk_local(f, size, by_header, problems)
    seen: set[tuple[int, int, int]] = set()
    out: list[ZipMember] = []
    for member in [*(torch_view or []), *(numpy_view or []), *local_view]:
        if member.key not in seen:
            seen.add(member.key)
            out.append(member)
    return out, problems
