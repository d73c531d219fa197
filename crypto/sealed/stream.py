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
inside a segment fails its tag, truncation at a segment boundary removes the short final
segment; a header from another file carries another DEK and salt. Every such failure raises the
same `SealedStreamError`. A KEK rotation rewrites only bytes 91..156 (`rewrap_file`), never the
body.

Readers verify before releasing plaintext: `unseal_file` to a path makes the file appear only
when the whole stream verified; to a pipe it emits one verified segment at a time, so a bad
stream can cut the output short (the command then exits 1).

Modules: `format` (header, keys, one segment), `pipeline` (background stages and parallel
segment workers: AES-GCM, SHA-256 and file I/O release the GIL, so threads overlap them),
this module (the `SealedWriter` and `SealedReader` file objects, which `torch.save` /
`torch.load` use directly) and `files` (paths and pipes: seal, unseal, rewrap), whose public
names are re-exported here.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, BinaryIO, cast

from trainguard.core.clock import Random
from trainguard.crypto.errors import SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.files import (
    RewrapResult,
    is_sealed,
    iter_unsealed,
    rewrap_file,
    rewrap_files,
    seal_file,
    seal_stream,
    sealed_kek_version,
    unseal_file,
)
from trainguard.crypto.sealed.format import (
    AAD_SIZE,
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    TAGS_DIGEST,
    DataKey,
    DekUnwrapper,
    SegmentOpener,
    SegmentSealer,
    TagTranscript,
    read_exact,
    read_header,
    tag_digest_fd,
)
from trainguard.crypto.sealed.pipeline import EarlyWriteback, Stages, default_workers

__all__ = [
    "AAD_SIZE",
    "DEFAULT_SEGMENT_SIZE",
    "DataKey",
    "DekUnwrapper",
    "EarlyWriteback",
    "HEADER_SIZE",
    "MAGIC",
    "TAG_SIZE",
    "TAGS_DIGEST",
    "PositionedReader",
    "RewrapResult",
    "SealedReader",
    "SealedStreamError",
    "SealedWriter",
    "is_sealed",
    "iter_unsealed",
    "rewrap_file",
    "rewrap_files",
    "seal_file",
    "seal_stream",
    "sealed_kek_version",
    "tag_digest",
    "tag_digest_fd",
    "unseal_file",
]


def tag_digest(path: str | os.PathLike[str], what: str | None = None) -> tuple[int, str]:
    """(length, content digest of kind `TAGS_DIGEST`) of the sealed file at `path`, from its
    header and segment tags only (see `TagTranscript`). Links are not followed. Raises
    `SealedStreamError` (not a whole sealed stream) or `OSError`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return tag_digest_fd(fd, what or os.fspath(path))
    finally:
        os.close(fd)


class SealedWriter:
    """A writable binary file object that seals everything written into `fileobj`.

    `close()` writes the final segment; leaving a ``with`` block by an exception aborts
    instead, and so does dropping an unclosed writer, so a half-written stream never
    verifies. Does not close `fileobj`. `torch.save(obj, writer)` writes straight into it.

    Pipelined: the caller's thread encrypts segment i+1 (whole segments straight out of the
    caller's buffer, no copy) while background threads write segment i into `fileobj` and,
    when `digest` (a `hashlib` object) is given, hash the ciphertext (header included) into it
    on a third thread; AES-GCM, SHA-256 and file writes release the GIL, so they overlap on
    separate cores. Memory: a ring of eight segments. A write error in the background surfaces
    from the next `write`, `flush` or `close` (the stream is then abandoned: it never verifies).
    The threads start with the first full segment, so small streams are written inline.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        keyring: Keyring | DataKey,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        rng: Random = os.urandom,
        digest: Any | None = None,
    ) -> None:
        self._sealer = SegmentSealer(None, keyring, segment_size, rng)
        self._f = fileobj
        self._seg = segment_size
        self._sinks: list[Callable[[memoryview], object]] = (
            [digest.update, fileobj.write] if digest is not None else [fileobj.write]
        )
        self._stages: Stages | None = None
        self._buf = bytearray(segment_size)
        self._fill = 0
        self._pos = 0
        self._closed = False
        self._aborted = False
        header = memoryview(self._sealer.header.pack())
        self._tags = TagTranscript(self._sealer.header.aad)
        self._length = len(header)
        for sink in self._sinks:
            sink(header)

    def _out(self) -> bytearray:
        if self._stages is None:
            ring = [bytearray(self._seg + TAG_SIZE) for _ in range(_RING)]
            self._stages = Stages(self._sinks, ring, name="sealed-writer")
        return self._stages.acquire()

    def _seal(self, plain: memoryview | bytearray, last: bool) -> None:
        if last and self._stages is None:  # a small stream: no threads
            ct = self._sealer.seal_into(plain, True, bytearray(len(plain) + TAG_SIZE))
            self._account(ct)
            for sink in self._sinks:
                sink(ct)
            return
        out = self._out()
        ct = self._sealer.seal_into(plain, last, out)
        self._account(ct)
        self._stages.submit(out, len(ct))  # type: ignore[union-attr]

    def _account(self, ct: memoryview | bytearray) -> None:
        self._tags.add(ct[len(ct) - TAG_SIZE :])
        self._length += len(ct)

    @property
    def tag_digest(self) -> tuple[int, str]:
        """(stream length, `TagTranscript` digest) once closed: what a signed manifest records
        for this stream (kind `TAGS_DIGEST`), computed from the 16-byte tags, so no thread has
        to hash the ciphertext; `tag_digest_fd` recomputes it from the file."""
        if not self._closed or self._aborted:
            raise ValueError("the digest of a sealed stream is known once it is closed")
        return self._length, self._tags.finish(self._length)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed SealedWriter")
        mv = memoryview(data).cast("B")
        n, pos, seg = len(mv), 0, self._seg
        while pos < n:
            if self._fill == 0 and n - pos >= seg:  # whole segments straight from the caller
                self._seal(mv[pos : pos + seg], last=False)
                pos += seg
                continue
            take = min(seg - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = mv[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == seg:  # a full segment is never the last one
                self._seal(self._buf, last=False)
                self._fill = 0
        self._pos += n
        return n

    def close(self) -> None:
        """Seal the final segment, wait for the background writes and flush `fileobj`."""
        if self._closed:
            return
        self._closed = True
        try:
            self._seal(memoryview(self._buf)[: self._fill], last=True)
        except BaseException:
            self._aborted = True
            self._abort_stages()
            raise
        if self._stages is not None:
            self._stages.finish()
        self._f.flush()

    def _abort_stages(self) -> None:
        if self._stages is not None:
            self._stages.abort()

    def abort(self) -> None:
        """Stop without a final segment: what was written will never verify."""
        if not self._closed:
            self._closed = True
            self._aborted = True
            self._abort_stages()

    def flush(self) -> None:
        """Wait until every sealed segment was handed to `fileobj`, then flush it (a partial
        segment stays buffered until more data or `close`)."""
        if self._closed:
            return
        if self._stages is not None:
            held = [self._stages.acquire() for _ in range(_RING)]  # all back: nothing in flight
            for b in held:
                self._stages.release(b)
        self._f.flush()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()

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


_RING = 8  # ciphertext segments in flight: the caller runs ahead while a stage is descheduled
_PARALLEL_MIN = 4  # whole segments in one read before SealedReader decrypts on several threads
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _reader_pool() -> ThreadPoolExecutor:
    """Threads shared by every `SealedReader` for large reads (one per CPU, up to 4)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="sealed-reader")
        return _POOL


def _forget_pool_in_child() -> None:
    """A forked child (a DataLoader worker, say) inherits the pool without its threads: it
    would queue reads nobody runs. It starts its own on first use."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


class PositionedReader(io.RawIOBase):
    """A read-only, seekable raw stream of ``_size`` bytes whose position is ``_pos``;
    subclasses implement ``readinto`` from that position."""

    _pos: int
    _size: int

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


class SealedReader(PositionedReader):
    """A readable, seekable binary file object over a sealed stream in a seekable `fileobj`.

    Opening verifies the header, the key and the final segment (so truncation is caught up
    front); each segment is verified when it is first read, and segment i is read without
    reading the ones before it. The two segments read last stay decrypted (a zip reader, as
    torch.load, goes back and forth between a file's index at its end and a record near the
    start). Memory: three segments. Works with
    ``torch.load(reader, weights_only=True)``. `keyring` may be any `DekUnwrapper` (a key
    service client that unwraps the stream's data key).
    """

    def __init__(
        self, fileobj: BinaryIO, keyring: DekUnwrapper, *, what: str = "sealed stream"
    ) -> None:
        super().__init__()
        self._f = fileobj
        fileobj.seek(0)
        self._opener = SegmentOpener(read_header(fileobj, what), keyring, what)
        self._what = what
        seg = self._opener.segment_size
        body = fileobj.seek(0, io.SEEK_END) - HEADER_SIZE
        full, rem = divmod(body, seg + TAG_SIZE)
        if rem < TAG_SIZE:  # no short final segment: truncated (or not a sealed body)
            raise SealedStreamError(what)
        self._count = full + 1
        self._size = full * seg + rem - TAG_SIZE
        self._ct = bytearray(seg + TAG_SIZE)
        self._slots = [[-1, 0, bytearray(seg)], [-1, 0, bytearray(seg)]]  # [index, length, plaintext], newest first
        self._pos = 0
        try:  # a real file: large reads decrypt on several threads with pread
            self._fd: int | None = fileobj.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._segment(self._count - 1)  # verifies the final segment: truncation caught now

    def _segment(self, index: int) -> tuple[int, memoryview]:
        """Segment `index`'s plaintext length and buffer, decrypted into the older slot unless
        one of the two holds it."""
        first, second = self._slots
        if first[0] == index:
            return first[1], memoryview(first[2])
        if second[0] != index:
            second[0] = -1  # the buffer is overwritten even when verification fails
            second[1] = self._decrypt_into(index, memoryview(second[2]))
            second[0] = index
        self._slots.reverse()
        return second[1], memoryview(second[2])

    def _cached(self, index: int) -> bool:
        return any(slot[0] == index for slot in self._slots)

    def _decrypt_into(self, index: int, out: memoryview) -> int:
        """Read, verify and decrypt segment `index` into the start of `out` (at least one
        segment long); returns its plaintext length. `SealedStreamError` if it fails (`out`
        is then zeroed: no unverified plaintext is left in the caller's buffer)."""
        seg = self._opener.segment_size
        last = index == self._count - 1
        plen = self._size - index * seg if last else seg
        self._f.seek(HEADER_SIZE + index * (seg + TAG_SIZE))
        view = memoryview(self._ct)[: plen + TAG_SIZE]
        if read_exact(self._f, view) != len(view):
            raise SealedStreamError(self._what)
        try:
            self._opener.open_into(index, last, view, out[:plen])
        except SealedStreamError:
            out[:plen] = bytes(plen)  # AES-GCM decrypts before the tag check: wipe it
            raise
        return plen

    def _decrypt_parallel(self, first: int, count: int, out: memoryview) -> int:
        """Decrypt `count` whole segments from `first` straight into `out` on the shared
        worker threads (AES-GCM and pread release the GIL), each worker a contiguous run
        with its own buffer and cipher; `out` is zeroed if any tag fails. Returns bytes."""
        seg, fd = self._opener.segment_size, cast(int, self._fd)
        count = min(count, (self._size - first * seg) // seg)  # whole segments only
        pool = _reader_pool()
        runs = max(1, min(default_workers(), count))
        bounds = [first + count * k // runs for k in range(runs + 1)]

        def work(lo: int, hi: int) -> None:
            ct, cipher = bytearray(seg + TAG_SIZE), self._opener.new_cipher()
            view = memoryview(ct)
            for i in range(lo, hi):
                if os.preadv(fd, [ct], HEADER_SIZE + i * (seg + TAG_SIZE)) != len(ct):
                    raise SealedStreamError(self._what)
                start = (i - first) * seg
                self._opener.open_into(i, False, view, out[start : start + seg], cipher)

        futures = [pool.submit(work, lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]
        errors = [f.exception() for f in futures]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            out[: count * seg] = bytes(count * seg)  # no unverified plaintext left behind
            raise failed
        return count * seg

    @property
    def size(self) -> int:
        """Plaintext length in bytes."""
        return self._size

    @property
    def segment_size(self) -> int:
        return self._opener.segment_size

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        seg, done = self._opener.segment_size, 0
        while done < len(out) and self._pos < self._size:
            index, off = divmod(self._pos, seg)
            whole = (len(out) - done) // seg if off == 0 else 0
            if whole >= _PARALLEL_MIN and self._fd is not None:  # many segments: on all cores
                n = self._decrypt_parallel(index, whole, out[done : done + whole * seg])
                done += n
                self._pos += n
                continue
            if whole and not self._cached(index):
                n = self._decrypt_into(index, out[done:])  # a whole segment: no extra copy
                done += n
                self._pos += n
                continue
            length, plain = self._segment(index)
            take = min(len(out) - done, length - off)
            out[done : done + take] = plain[off : off + take]
            done += take
            self._pos += take
        return done

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        size = max(0, min(size, self._size - self._pos))
        index, off = divmod(self._pos, self._opener.segment_size)
        if size and off + size <= self._opener.segment_size:  # inside one segment: one copy
            plain = self._segment(index)[1]
            self._pos += size
            return bytes(plain[off : off + size])
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf) if n == size else bytes(buf[:n])

    def readall(self) -> bytes:
        return self.read(-1)

