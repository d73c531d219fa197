"""Sealed streams on paths and pipes: seal, unseal, rewrap, inspect (format in `stream.py`).

Outputs to a path appear only when the whole stream was sealed or verified: the data goes
into an unnamed O_TMPFILE inode that is linked into place on success, so even a killed process
leaves nothing behind (a named temporary file removed on failure where O_TMPFILE is missing).
A regular input file sealed or unsealed to a path is processed by parallel workers, segment by
segment at its own offset (`pipeline.run_parallel`; memory: two segments per worker, nothing
memory-mapped). Outputs to a file object (a pipe) receive one verified segment at a time, in
order, from a background writer thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trainguard.core.clock import Random
from trainguard.core.fs import atomic_output
from trainguard.crypto.errors import CryptoError, KeyringError, RetiredKeyError, SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.format import (
    DEFAULT_SEGMENT_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    Header,
    SegmentOpener,
    SegmentSealer,
    read_exact,
    read_header,
    unseal_segments,
)
from trainguard.crypto.sealed.pipeline import (
    Stages,
    default_workers,
    pread_exact,
    pwrite_all,
    run_parallel,
)

__all__ = [
    "RewrapResult",
    "iter_unsealed",
    "is_sealed",
    "rewrap_file",
    "rewrap_files",
    "seal_file",
    "seal_stream",
    "sealed_kek_version",
    "unseal_file",
]

Source = Path | str | BinaryIO
Sink = Path | str | BinaryIO


def iter_unsealed(
    src: BinaryIO, keyring: Keyring, *, what: str = "sealed stream"
) -> Iterator[memoryview]:
    """Verified plaintext segments of a sealed stream read front to back (pipes work).

    Each yielded view is valid until the next one is requested. Raises `SealedStreamError`
    at the first bad segment; a stream without its short final segment fails at the end.
    """
    return unseal_segments(src, keyring, what)


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    keyring: Keyring,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    rng: Random = os.urandom,
) -> int:
    """Seal everything readable from `src` into `dst`; returns the plaintext length.

    Reading and encrypting happen on the calling thread while a background thread writes the
    previous segment (memory: a few segments)."""
    sealer = SegmentSealer(None, keyring, segment_size, rng)
    dst.write(sealer.header.pack())
    ring = [bytearray(segment_size + TAG_SIZE) for _ in range(_RING)]
    stages = Stages([dst.write], ring, name="seal")
    plain = memoryview(bytearray(segment_size))
    total = 0
    try:
        while True:
            n = read_exact(src, plain)
            total += n
            ct = stages.acquire()
            stages.submit(ct, len(sealer.seal_into(plain[:n], n < segment_size, ct)))
            if n < segment_size:
                break
    except BaseException:
        stages.abort()
        raise
    stages.finish()
    dst.flush()
    return total


_RING = 4  # buffers in flight between the caller and a background stage


def _seal_regular(src_fd: int, size: int, out: BinaryIO, keyring: Keyring, segment_size: int,
                  rng: Random, what: str) -> int:
    """Seal the first `size` bytes of a regular file into a new, still unnamed output file:
    worker threads each read, encrypt and write whole segments at their own offsets."""
    sealer = SegmentSealer(None, keyring, segment_size, rng)
    fd = out.fileno()
    pwrite_all(fd, memoryview(sealer.header.pack()), 0)
    count = size // segment_size + 1  # the last segment is the short one (maybe empty)
    workers = min(default_workers(), count)
    plains = [memoryview(bytearray(segment_size)) for _ in range(workers)]
    ciphers = [sealer.new_cipher() for _ in range(workers)]
    with contextlib.suppress(OSError):
        os.posix_fadvise(src_fd, 0, size, os.POSIX_FADV_SEQUENTIAL)

    def produce(index: int, worker: int, ct: bytearray) -> memoryview:
        off = index * segment_size
        n = min(segment_size, size - off)
        pv, cv = plains[worker][:n], memoryview(ct)[: n + TAG_SIZE]
        if pread_exact(src_fd, pv, off) != n:
            raise CryptoError(f"{what} became shorter while it was sealed; nothing was written",
                              tip="seal a file nothing is writing to, or pipe it: "
                              "`trainguard seal - OUT < FILE`")
        sealer.seal_at(index, pv, index == count - 1, cv, ciphers[worker])
        return cv

    def consume(index: int, cv: memoryview) -> None:
        pwrite_all(fd, cv, HEADER_SIZE + index * (segment_size + TAG_SIZE))

    run_parallel(count, produce, consume, workers=workers, buffer_size=segment_size + TAG_SIZE,
                 name="seal")
    return size


def _unseal_regular(src_fd: int, size: int, out: BinaryIO, keyring: Keyring, what: str) -> int:
    """Verify and decrypt a sealed regular file into a new, still unnamed output file: worker
    threads each read, verify and write whole segments at their own offsets. The caller links
    the output only if every segment verified."""
    raw = bytearray(HEADER_SIZE)
    if pread_exact(src_fd, memoryview(raw), 0) != HEADER_SIZE:
        raise SealedStreamError(what)
    opener = SegmentOpener(Header.parse(bytes(raw), what), keyring, what)
    seg = opener.segment_size
    full, rem = divmod(size - HEADER_SIZE, seg + TAG_SIZE)
    if rem < TAG_SIZE:  # no short final segment: truncated
        raise SealedStreamError(what)
    fd = out.fileno()
    count = full + 1
    workers = min(default_workers(), count)
    cts = [memoryview(bytearray(seg + TAG_SIZE)) for _ in range(workers)]
    ciphers = [opener.new_cipher() for _ in range(workers)]
    with contextlib.suppress(OSError):
        os.posix_fadvise(src_fd, 0, size, os.POSIX_FADV_SEQUENTIAL)

    def produce(index: int, worker: int, plain: bytearray) -> memoryview:
        last = index == full
        n = rem if last else seg + TAG_SIZE
        cv, pv = cts[worker][:n], memoryview(plain)[: n - TAG_SIZE]
        if pread_exact(src_fd, cv, HEADER_SIZE + index * (seg + TAG_SIZE)) != n:
            raise SealedStreamError(what)  # shrank while read: truncated
        opener.open_into(index, last, cv, pv, ciphers[worker])
        return pv

    def consume(index: int, pv: memoryview) -> None:
        pwrite_all(fd, pv, index * seg)

    run_parallel(count, produce, consume, workers=workers, buffer_size=seg, name="unseal")
    return full * seg + rem - TAG_SIZE


@contextlib.contextmanager
def _output(dst: Path, mode: int) -> Iterator[BinaryIO]:
    """A file that appears at `dst` only if the block succeeds.

    An O_TMPFILE inode has no name until it is linked, so a failure, a crash or SIGKILL leaves
    nothing; where the filesystem lacks O_TMPFILE, a named temp file removed on failure.
    """
    parent = dst.parent
    fd = -1
    if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    if fd < 0:
        # "r+b", not "wb": the temp file is new and empty, and O_TRUNC would make ext4 flush
        # it on close (its auto_da_alloc heuristic), halving throughput.
        with atomic_output(dst, mode=mode) as tmp, open(tmp, "r+b") as out:
            yield out
        return
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, mode)
        yield out
        out.flush()
        tmp = parent / f".{dst.name}.{os.urandom(6).hex()}.part"
        dirfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # a dir fd makes CPython use linkat(AT_SYMLINK_FOLLOW), which naming needs
            os.link(f"/proc/self/fd/{fd}", tmp.name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        finally:
            os.close(dirfd)
        try:
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _to_sink(dst: Sink, mode: int, produce: Callable[[BinaryIO], int]) -> int:
    if isinstance(dst, str | Path):
        with _output(Path(dst), mode) as out:
            return produce(out)
    return produce(dst)


def seal_file(
    src: Source,
    dst: Sink,
    keyring: Keyring,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    rng: Random = os.urandom,
) -> int:
    """Seal `src` (a path or a readable binary file object) into `dst` (a path or file object).

    A path output appears only on success. A regular input file is sealed as of its size
    when opened, by parallel workers (read, encrypt, write at the segment's offset; memory: two
    segments per worker); if it shrinks meanwhile, `CryptoError` and no output. Other inputs
    and file-object outputs are streamed in order. Returns the plaintext length.
    """
    if isinstance(src, str | Path):
        with open(src, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and isinstance(dst, str | Path):
                fd, size, what = f.fileno(), st.st_size, f"input {src}"
                return _to_sink(dst, 0o644, lambda out: _seal_regular(
                    fd, size, out, keyring, segment_size, rng, what))
            return seal_file(f, dst, keyring, segment_size=segment_size, rng=rng)
    stream = src
    return _to_sink(
        dst,
        0o644,
        lambda out: seal_stream(stream, out, keyring, segment_size=segment_size, rng=rng),
    )


def unseal_file(src: Source, dst: Sink, keyring: Keyring) -> int:
    """Verify and decrypt `src` into `dst`; returns the plaintext length.

    A path output (0600) appears only after the whole stream verified (a regular input file is
    unsealed by parallel workers into the still unnamed output). A file-object output receives
    one verified segment at a time: on failure it may hold a verified prefix, and
    `SealedStreamError` is raised.
    """
    if isinstance(src, str | Path):
        what = f"sealed file {src}"
        with open(src, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and isinstance(dst, str | Path):
                fd, size = f.fileno(), st.st_size
                return _to_sink(
                    dst, 0o600, lambda out: _unseal_regular(fd, size, out, keyring, what)
                )
            return _to_sink(dst, 0o600, lambda out: _copy_plain(f, out, keyring, what))
    stream = src
    return _to_sink(dst, 0o600, lambda out: _copy_plain(stream, out, keyring, "sealed stream"))


def _copy_plain(src: BinaryIO, out: BinaryIO, keyring: Keyring, what: str) -> int:
    """Read and verify on this thread; a background thread writes each verified segment."""
    opener = SegmentOpener(read_header(src, what), keyring, what)
    seg = opener.segment_size
    stages = Stages([out.write], [bytearray(seg) for _ in range(_RING)], name="unseal")
    ct = bytearray(seg + TAG_SIZE)
    total, index = 0, 0
    try:
        while True:
            n = read_exact(src, memoryview(ct))
            if n < TAG_SIZE:  # a stream must end in a (short) final segment
                raise SealedStreamError(what)
            last = n < len(ct)
            plain = stages.acquire()
            try:
                opener.open_into(index, last, memoryview(ct)[:n], memoryview(plain)[: n - TAG_SIZE])
            except BaseException:
                stages.release(plain)
                raise
            stages.submit(plain, n - TAG_SIZE)  # verified: only now handed to the writer
            total += n - TAG_SIZE
            if last:
                break
            index += 1
    except BaseException:
        with contextlib.suppress(Exception):  # the verified prefix still goes out
            stages.finish()
        raise
    stages.finish()
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
        return Header.parse(f.read(HEADER_SIZE), f"sealed file {path}").kek_version


def rewrap_file(path: Path | str, keyring: Keyring, *, fsync: bool = True) -> bool:
    """Re-encrypt the file's DEK under the current KEK, rewriting only the 157-byte header.

    Returns False when the file already uses the current version. The header is replaced by
    one write at offset 0 (inside the first disk sector, which storage writes as a unit), then
    fsynced; the body is never touched.
    """
    what = f"sealed file {path}"
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        h = Header.parse(os.pread(fd, HEADER_SIZE, 0), what)
        if h.kek_version == keyring.current_version:
            return False
        wrapped = keyring.wrap_dek(h.unwrap(keyring, what))
        new = Header(
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
