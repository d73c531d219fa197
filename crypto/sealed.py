"""Sealed streams: files encrypted in authenticated segments under a keyring (format v1).

Layout (all integers big-endian)::

    offset size  field                                   in AAD   rewritten by rewrap
    0      6     magic b"TGSEAL"                         yes      no
    6      1     format version (1)                      yes      no
    7      1     algorithm (1 = AES-256-GCM, HKDF-SHA256) yes     no
    8      4     segment size S (plaintext bytes)        yes      no
    12     8     KEK id (the keyring's id)               yes      no
    20     32    salt                                    yes      no
    52     7     nonce prefix                            yes      no
    59     32    key commitment                          yes      no
    91     4     KEK version                             no       yes
    95     2     wrapped DEK length (60)                 no       no
    97     60    wrapped DEK (see keyring.py)            no       yes
    157          body: segments 0..n-1

Segment i = AES-256-GCM(segment key, nonce = prefix ‖ BE32(i) ‖ last, plaintext, AAD = header
bytes 0..90) = ciphertext ‖ 16-byte tag. Every segment but the last holds exactly S plaintext
bytes; the last (``last`` = 1) holds 0..S-1 bytes, so every stream has exactly one short final
segment and neither writer nor reader needs to look ahead (a plaintext of k·S bytes ends in
an empty final segment). A body whose length is a whole number of full segments is truncated.

``segment key ‖ key commitment`` = HKDF-SHA256(ikm=DEK, salt=salt,
info=b"trainguard/sealed/v1" ‖ header bytes 0..58, 64 bytes): a wrong DEK or an edited
immutable field is caught by the commitment before any segment is tried. The wrapped DEK is
bound to the KEK id and version by its own AAD.

Why this rejects every tamper class: a flipped bit fails a tag (or the commitment, or the DEK
unwrap); reordered or duplicated segments decrypt under the wrong index in the nonce; truncation
inside a segment fails its tag, truncation at a segment boundary removes the short final segment; a header from another file carries another DEK and salt. Every
such failure raises the same `SealedStreamError`. A KEK rotation rewrites only bytes 91..156
(`rewrap_file`), never the body.

Readers verify before releasing plaintext: `unseal_file` writes to a temporary file and renames
it only when the whole stream verified; when writing to a pipe it emits one verified segment at
a time, so a bad stream can cut the output short (the command then exits 1).
"""

from __future__ import annotations

import hmac
import io
import logging
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from trainguard.core.home import atomic_output
from trainguard.crypto.config import MAX_SEGMENT_SIZE
from trainguard.crypto.errors import (
    DecryptionError,
    KeyringError,
    RetiredKeyError,
    SealedStreamError,
)
from trainguard.crypto.keyring import WRAPPED_DEK_BYTES, Keyring, WrappedDek

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "HEADER_SIZE",
    "RewrapResult",
    "MAGIC",
    "SealedReader",
    "SealedStreamError",
    "SealedWriter",
    "is_sealed",
    "rewrap_file",
    "rewrap_files",
    "seal_file",
    "sealed_kek_version",
    "unseal_file",
]

log = logging.getLogger(__name__)

MAGIC = b"TGSEAL"
FORMAT_VERSION = 1
ALG_AES256GCM_HKDF_SHA256 = 1
DEFAULT_SEGMENT_SIZE = 1 << 20
TAG_SIZE = 16
_CONTEXT = struct.Struct(">6sBBI8s32s7s")
_FIXED = struct.Struct(">6sBBI8s32s7s32s")
_MUTABLE = struct.Struct(">IH")
AAD_SIZE = _FIXED.size  # 91
HEADER_SIZE = _FIXED.size + _MUTABLE.size + WRAPPED_DEK_BYTES  # 157
_KDF_INFO = b"trainguard/sealed/v1"
_LAST = b"\x01"
_NOT_LAST = b"\x00"

Random = Callable[[int], bytes]
Source = Path | str | BinaryIO
Sink = Path | str | BinaryIO


@dataclass(frozen=True)
class _Header:
    segment_size: int
    kek_id: str
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes
    kek_version: int
    wrapped: bytes

    @property
    def context(self) -> bytes:
        """Header bytes 0..58: everything the key commitment binds."""
        return _context(self.segment_size, self.kek_id, self.salt, self.nonce_prefix)

    @property
    def aad(self) -> bytes:
        return self.context + self.commitment

    def pack(self) -> bytes:
        return self.aad + _MUTABLE.pack(self.kek_version, len(self.wrapped)) + self.wrapped

    @classmethod
    def parse(cls, raw: bytes) -> _Header:
        if len(raw) != HEADER_SIZE:
            raise SealedStreamError()
        magic, ver, alg, seg, kid, salt, prefix, commit = _FIXED.unpack_from(raw)
        kek_version, wlen = _MUTABLE.unpack_from(raw, _FIXED.size)
        if (
            magic != MAGIC
            or ver != FORMAT_VERSION
            or alg != ALG_AES256GCM_HKDF_SHA256
            or not 1 <= seg <= MAX_SEGMENT_SIZE
            or wlen != WRAPPED_DEK_BYTES
        ):
            raise SealedStreamError()
        return cls(seg, kid.hex(), salt, prefix, commit, kek_version, raw[AAD_SIZE + 6 :])


def _context(segment_size: int, kek_id: str, salt: bytes, prefix: bytes) -> bytes:
    return _CONTEXT.pack(
        MAGIC,
        FORMAT_VERSION,
        ALG_AES256GCM_HKDF_SHA256,
        segment_size,
        bytes.fromhex(kek_id),
        salt,
        prefix,
    )


def _derive(dek: bytes, context: bytes) -> tuple[bytes, bytes]:
    """(segment key, key commitment): HKDF over the DEK, bound to every other header field
    before the commitment, so an edited segment size or nonce prefix fails up front."""
    salt = context[20:52]
    out = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_KDF_INFO + context).derive(
        dek
    )
    return out[:32], out[32:]


def _open_header(header: _Header, keyring: Keyring, what: str) -> AESGCM:
    """Unwrap the DEK and check the commitment; the AESGCM object for the segments."""
    try:
        dek = keyring.unwrap_dek(
            WrappedDek(header.kek_id, header.kek_version, header.wrapped), what=what
        )
    except DecryptionError as exc:
        raise SealedStreamError(what) from exc
    seg_key, commitment = _derive(dek, header.context)
    if not hmac.compare_digest(commitment, header.commitment):
        raise SealedStreamError(what)
    return AESGCM(seg_key)


def _read_exact(f: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `f` (pipes return short reads); returns bytes read, short only at EOF."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


class _Sealer:
    """Encrypts consecutive segments of one stream into a reused output buffer."""

    def __init__(self, out: BinaryIO, keyring: Keyring, segment_size: int, rng: Random) -> None:
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be 1..{MAX_SEGMENT_SIZE}")
        dek = rng(32)
        salt, prefix = rng(32), rng(7)
        seg_key, commitment = _derive(dek, _context(segment_size, keyring.kek_id, salt, prefix))
        wrapped = keyring.wrap_dek(dek)
        self.header = _Header(
            segment_size, keyring.kek_id, salt, prefix, commitment, wrapped.version, wrapped.blob
        )
        self._aad = self.header.aad
        self._aead = AESGCM(seg_key)
        self._out = out
        self._ct = bytearray(segment_size + TAG_SIZE)
        self.index = 0
        out.write(self.header.pack())

    def seal(self, plain: memoryview | bytearray, last: bool) -> None:
        """Encrypt the next segment and write it."""
        self._out.write(self.seal_into(plain, last, self._ct))

    def seal_into(self, plain: memoryview | bytearray, last: bool, out: bytearray) -> memoryview:
        """Encrypt the next segment into `out`; returns the view to write."""
        if self.index > 0xFFFFFFFF:
            raise OverflowError("stream too long for one sealed file; use a larger segment")
        nonce = (
            self.header.nonce_prefix
            + self.index.to_bytes(4, "big")
            + (_LAST if last else _NOT_LAST)
        )
        view = memoryview(out)[: len(plain) + TAG_SIZE]
        self._aead.encrypt_into(nonce, plain, self._aad, view)
        self.index += 1
        return view


class SealedWriter:
    """A writable binary file object that seals everything written into `fileobj`.

    `close()` writes the final segment; leaving a ``with`` block by an exception aborts
    instead, so a half-written stream never verifies. Does not close `fileobj`.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        keyring: Keyring,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        rng: Random = os.urandom,
    ) -> None:
        self._sealer = _Sealer(fileobj, keyring, segment_size, rng)
        self._f = fileobj
        self._seg = segment_size
        self._buf = bytearray(segment_size)
        self._fill = 0
        self._pos = 0
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed SealedWriter")
        mv = memoryview(data).cast("B")
        n, pos, seg = len(mv), 0, self._seg
        while pos < n:
            if self._fill == 0 and n - pos >= seg:  # whole segments straight from the caller
                self._sealer.seal(mv[pos : pos + seg], last=False)
                pos += seg
                continue
            take = min(seg - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = mv[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == seg:  # a full segment is never the last one
                self._sealer.seal(self._buf, last=False)
                self._fill = 0
        self._pos += n
        return n

    def close(self) -> None:
        """Seal the final segment and flush `fileobj`."""
        if self._closed:
            return
        self._closed = True
        self._sealer.seal(memoryview(self._buf)[: self._fill], last=True)
        self._f.flush()

    def abort(self) -> None:
        """Stop without a final segment: what was written will never verify."""
        self._closed = True

    def flush(self) -> None:
        if not self._closed:
            self._f.flush()

    def tell(self) -> int:
        return self._pos

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SealedReader(io.RawIOBase):
    """A readable, seekable binary file object over a sealed stream in a seekable `fileobj`.

    Opening verifies the header, the key and the final segment (so truncation is caught up
    front); each segment is verified when first read. Memory: two segments.
    """

    def __init__(self, fileobj: BinaryIO, keyring: Keyring, *, what: str = "sealed stream") -> None:
        super().__init__()
        self._f = fileobj
        self._what = what
        fileobj.seek(0)
        raw = fileobj.read(HEADER_SIZE)
        if not raw or len(raw) != HEADER_SIZE:
            raise SealedStreamError(what)
        self._h = _Header.parse(raw)
        self._aead = _open_header(self._h, keyring, what)
        self._aad = self._h.aad
        seg = self._h.segment_size
        body = fileobj.seek(0, io.SEEK_END) - HEADER_SIZE
        full, rem = divmod(body, seg + TAG_SIZE)
        if rem < TAG_SIZE:  # no short final segment: truncated (or not a sealed body)
            raise SealedStreamError(what)
        self._count, last_len = full + 1, rem - TAG_SIZE
        self._size = (self._count - 1) * seg + last_len
        self._ct = bytearray(seg + TAG_SIZE)
        self._plain = bytearray(seg)
        self._cached = -1
        self._cached_len = 0
        self._pos = 0
        self._load(self._count - 1)

    def _load(self, index: int) -> None:
        seg = self._h.segment_size
        last = index == self._count - 1
        plen = self._size - index * seg if last else seg
        self._f.seek(HEADER_SIZE + index * (seg + TAG_SIZE))
        view = memoryview(self._ct)[: plen + TAG_SIZE]
        if _read_exact(self._f, view) != len(view):
            raise SealedStreamError(self._what)
        nonce = self._h.nonce_prefix + index.to_bytes(4, "big") + (_LAST if last else _NOT_LAST)
        try:
            self._aead.decrypt_into(nonce, view, self._aad, memoryview(self._plain)[:plen])
        except InvalidTag as exc:
            self._cached = -1
            raise SealedStreamError(self._what) from exc
        self._cached, self._cached_len = index, plen

    @property
    def size(self) -> int:
        """Plaintext length in bytes."""
        return self._size

    @property
    def segment_size(self) -> int:
        return self._h.segment_size

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        seg, done = self._h.segment_size, 0
        while done < len(out) and self._pos < self._size:
            index, off = divmod(self._pos, seg)
            if index != self._cached:
                self._load(index)
            take = min(len(out) - done, self._cached_len - off)
            out[done : done + take] = memoryview(self._plain)[off : off + take]
            done += take
            self._pos += take
        return done

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        size = max(0, min(size, self._size - self._pos))
        index, off = divmod(self._pos, self._h.segment_size)
        if size and off + size <= self._h.segment_size:  # inside one segment: one copy
            if index != self._cached:
                self._load(index)
            self._pos += size
            return bytes(memoryview(self._plain)[off : off + size])
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf) if n == size else bytes(buf[:n])

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


def iter_unsealed(
    src: BinaryIO, keyring: Keyring, *, what: str = "sealed stream"
) -> Iterator[memoryview]:
    """Verified plaintext segments of a sealed stream read front to back (pipes work).

    Each yielded view is valid until the next one is requested. Raises `SealedStreamError`
    at the first bad segment; a stream without its short final segment fails at the end.
    """
    reused: list[bytearray] = []

    def get_buffer(size: int) -> bytearray:
        if not reused:
            reused.append(bytearray(size))
        return reused[0]

    for buf, n in _unseal_segments(src, keyring, what, get_buffer):
        yield memoryview(buf)[:n]


def _unseal_segments(
    src: BinaryIO, keyring: Keyring, what: str, get_buffer: Callable[[int], bytearray]
) -> Iterator[tuple[bytearray, int]]:
    """(buffer, length) of each verified segment; buffers come from `get_buffer(size)`."""
    header = bytearray(HEADER_SIZE)
    if _read_exact(src, memoryview(header)) != HEADER_SIZE:
        raise SealedStreamError(what)
    h = _Header.parse(bytes(header))
    aead = _open_header(h, keyring, what)
    aad, seg = h.aad, h.segment_size
    ct = bytearray(seg + TAG_SIZE)
    index = 0
    while True:
        n = _read_exact(src, memoryview(ct))
        if n < TAG_SIZE:
            raise SealedStreamError(what)
        last = n < len(ct)  # only the final segment is short
        nonce = h.nonce_prefix + index.to_bytes(4, "big") + (_LAST if last else _NOT_LAST)
        plain = get_buffer(seg)
        try:
            aead.decrypt_into(nonce, memoryview(ct)[:n], aad, memoryview(plain)[: n - TAG_SIZE])
        except InvalidTag as exc:
            raise SealedStreamError(what) from exc
        yield plain, n - TAG_SIZE
        if last:
            return
        index += 1


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keyring: Keyring,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    rng: Random = os.urandom,
) -> int:
    """Seal everything readable from `src` into `dst`; returns the plaintext length.

    Reads straight into one segment buffer and encrypts into one output buffer, both reused
    and small enough to stay in cache, so it runs near file-copy speed with AES instructions.
    """
    sealer = _Sealer(dst, keyring, segment_size, rng)
    buf = bytearray(segment_size)
    view = memoryview(buf)
    total = 0
    while True:
        n = _read_exact(src, view)
        total += n
        sealer.seal(view[:n], last=n < segment_size)
        if n < segment_size:
            break
    dst.flush()
    return total


def _seal_mapped(
    fd: int, size: int, dst: BinaryIO, keyring: Keyring, segment_size: int, rng: Random
) -> int:
    """Seal the first `size` bytes of a regular file, encrypting straight out of its memory
    map: one copy fewer than read-then-encrypt, which keeps sealing at file-copy speed.

    The input is the caller's own plaintext file; if another process truncates it while it
    is being sealed the process gets SIGBUS (the output path is never created either way).
    """
    sealer = _Sealer(dst, keyring, segment_size, rng)
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
        m.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(m)
        try:
            off = 0
            while True:
                n = min(segment_size, size - off)
                sealer.seal(view[off : off + n], last=n < segment_size)
                off += n
                if n < segment_size:
                    break
        finally:
            view.release()
    dst.flush()
    return size


def seal_file(
    src: Source,
    dst: Sink,
    keyring: Keyring,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    rng: Random = os.urandom,
) -> int:
    """Seal `src` (a path or a readable binary file object) into `dst` (a path or file object).

    A path output is written to a temporary file and renamed on success. A regular input
    file is sealed as of its size when opened. Returns the plaintext length.
    """
    if isinstance(src, str | Path):
        with open(src, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                fd, size = f.fileno(), st.st_size
                return _to_sink(
                    dst, 0o644, lambda out: _seal_mapped(fd, size, out, keyring, segment_size, rng)
                )
            return seal_file(f, dst, keyring, segment_size=segment_size, rng=rng)
    stream = src
    return _to_sink(
        dst,
        0o644,
        lambda out: seal_stream(stream, out, keyring, segment_size=segment_size, rng=rng),
    )


def _to_sink(dst: Sink, mode: int, produce: Callable[[BinaryIO], int]) -> int:
    """Run `produce` on `dst`; a path gets a temporary file renamed into place on success."""
    if isinstance(dst, str | Path):
        # "r+b", not "wb": the temp file is new and empty, and O_TRUNC would make ext4 flush
        # it on close (its auto_da_alloc heuristic), halving throughput.
        with atomic_output(Path(dst), mode=mode) as tmp, open(tmp, "r+b") as out:
            return produce(out)
    return produce(dst)


def unseal_file(src: Source, dst: Sink, keyring: Keyring) -> int:
    """Verify and decrypt `src` into `dst`; returns the plaintext length.

    A path output appears only after the whole stream verified (0600, temp file + rename).
    A file-object output receives one verified segment at a time: on failure it may hold a
    verified prefix, and `SealedStreamError` is raised.
    """
    if isinstance(src, str | Path):
        what = f"sealed file {src}"
        with open(src, "rb", buffering=0) as f:
            return _to_sink(dst, 0o600, lambda out: _copy_plain(f, out, keyring, what))
    stream = src
    return _to_sink(dst, 0o600, lambda out: _copy_plain(stream, out, keyring, "sealed stream"))


def _copy_plain(src: BinaryIO, out: BinaryIO, keyring: Keyring, what: str) -> int:
    total = 0
    for chunk in iter_unsealed(src, keyring, what=what):
        out.write(chunk)
        total += len(chunk)
    out.flush()
    return total


def is_sealed(path: Path | str) -> bool:
    """True when `path` starts with a sealed-stream header of a known version (not verified)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[:6] == MAGIC and head[6] == FORMAT_VERSION


def sealed_kek_version(path: Path | str) -> int:
    """The KEK version a sealed file's header names (not verified); `SealedStreamError` if
    the file has no well-formed header."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    return _Header.parse(raw).kek_version


def rewrap_file(path: Path | str, keyring: Keyring, *, fsync: bool = True) -> bool:
    """Re-encrypt the file's DEK under the current KEK, rewriting only the 157-byte header.

    Returns False when the file already uses the current version. The header is replaced by
    one write at offset 0 (inside the first disk sector, which storage writes as a unit), then
    fsynced; the body is never touched.
    """
    what = f"sealed file {path}"
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, HEADER_SIZE, 0)
        if len(raw) != HEADER_SIZE:
            raise SealedStreamError(what)
        h = _Header.parse(raw)
        if h.kek_version == keyring.current_version:
            return False
        try:
            dek = keyring.unwrap_dek(WrappedDek(h.kek_id, h.kek_version, h.wrapped), what=what)
        except DecryptionError as exc:
            raise SealedStreamError(what) from exc
        if not hmac.compare_digest(_derive(dek, h.context)[1], h.commitment):
            raise SealedStreamError(what)
        wrapped = keyring.wrap_dek(dek)
        new = _Header(
            h.segment_size,
            h.kek_id,
            h.salt,
            h.nonce_prefix,
            h.commitment,
            wrapped.version,
            wrapped.blob,
        ).pack()
        if os.pwrite(fd, new, 0) != HEADER_SIZE:
            raise OSError(f"short write to {path}")
        if fsync:
            os.fsync(fd)
        return True
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RewrapResult:
    """What `rewrap_files` did to one file: rewrapped, already current, or the error."""

    path: Path
    rewrapped: bool
    error: Exception | None = None


def rewrap_files(
    paths: Iterable[Path | str], keyring: Keyring, *, workers: int = 16
) -> list[RewrapResult]:
    """`rewrap_file` over many files on a thread pool; every file is still fsynced.

    Concurrent fsyncs share journal commits, so a batch runs many times faster than one
    file after another while each result stays durable when reported. Errors are collected
    per file (a damaged or retired file does not stop the batch).
    """

    def one(p: Path | str) -> RewrapResult:
        try:
            return RewrapResult(Path(p), rewrap_file(p, keyring))
        except (SealedStreamError, RetiredKeyError, KeyringError, OSError) as exc:
            return RewrapResult(Path(p), False, exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, paths))
