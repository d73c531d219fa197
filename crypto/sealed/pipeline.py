"""Sealed streams at disk speed: background stages and parallel segment workers (internal).

Every expensive step here (AES-GCM from `cryptography`, SHA-256 from `hashlib`, `os.pread` /
`os.pwrite` / file writes) releases the GIL, so plain threads overlap them on separate cores:

- `Stages`: an ordered chain of background threads over a small ring of buffers. The caller
  fills a buffer (e.g. encrypts segment i+1) while the stages hash and write segment i. Memory:
  the ring (a few segments). An error in any stage is kept, later buffers skip the failed work,
  and the caller sees the original exception at its next `acquire`, `drain` or `finish`.
- `run_parallel`: N workers that each take the next segment index and read and encrypt or
  verify it (`pread`, AES-GCM), while the calling thread writes each finished segment at its
  own offset (`pwrite`): for a regular file into a new output that has no name until
  everything succeeded. The first error stops every worker.

Nothing here knows the format: `files.py` and `stream.py` pass the per-segment work in.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

__all__ = [
    "EarlyWriteback",
    "Stages",
    "default_workers",
    "pread_exact",
    "pwrite_all",
    "run_parallel",
]

_STOP: Final = object()


def default_workers() -> int:
    """Threads for parallel segment work: the CPUs this process may use, 1..4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class Stages:
    """Buffers pass through `stages` (each on its own thread) in submission order.

    `acquire()` returns a free buffer (blocking while all are in flight); `submit(buf, n)`
    hands its first `n` bytes to the first stage; a buffer is free again after the last stage.
    `finish()` waits for everything submitted and raises the first stage error; `abort()` stops
    without waiting for the work to be done (still joins the threads).
    """

    def __init__(self, stages: Sequence[Callable[[memoryview], object]], buffers: Sequence[bytearray],
                 *, name: str = "sealed") -> None:
        if not stages or not buffers:
            raise ValueError("Stages needs at least one stage and one buffer")
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for b in buffers:
            self._free.put(b)
        self._queues: list[queue.SimpleQueue[object]] = [queue.SimpleQueue() for _ in stages]
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._done = False
        self._threads = [
            threading.Thread(target=self._run, args=(i, fn), name=f"{name}-stage{i}", daemon=True)
            for i, fn in enumerate(stages)
        ]
        for t in self._threads:
            t.start()

    def _run(self, i: int, fn: Callable[[memoryview], object]) -> None:
        src = self._queues[i]
        nxt = self._queues[i + 1] if i + 1 < len(self._queues) else None
        while True:
            item = src.get()
            if item is _STOP:
                if nxt is not None:
                    nxt.put(_STOP)
                return
            buf, n = item  # type: ignore[misc]
            if not self._failed.is_set():
                try:
                    fn(memoryview(buf)[:n])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the caller thread
                    if self._error is None:
                        self._error = exc
                    self._failed.set()
            if nxt is not None:
                nxt.put(item)
            else:
                self._free.put(buf)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def acquire(self) -> bytearray:
        """A free buffer; raises the first stage error instead when one happened."""
        self._raise()
        buf = self._free.get()
        self._raise()
        return buf

    def submit(self, buf: bytearray, n: int) -> None:
        if self._done:
            raise ValueError("submit after finish")
        self._queues[0].put((buf, n))

    def release(self, buf: bytearray) -> None:
        """Give back a buffer that was acquired but not submitted."""
        self._free.put(buf)

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._queues[0].put(_STOP)
        for t in self._threads:
            t.join()

    def finish(self) -> None:
        """Wait for every submitted buffer to pass all stages; raise the first stage error."""
        self._stop()
        self._raise()

    def abort(self) -> None:
        """Stop: queued work is skipped, the threads are joined, errors are dropped."""
        if self._error is None:
            self._error = _Aborted()
        self._failed.set()
        self._stop()


class _Aborted(Exception):
    """Marks a pipeline that was stopped on purpose (never raised to callers of `abort`)."""


def pread_exact(fd: int, buf: memoryview, offset: int) -> int:
    """Fill `buf` from `fd` at `offset`; returns the bytes read (short only at end of file)."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def pwrite_all(fd: int, data: memoryview, offset: int, piece: int = 64 << 10) -> None:
    """Write all of `data` to `fd` at `offset`, in writes of at most `piece` bytes.

    Why pieces: a 1 MiB write at a 1 MiB-aligned offset makes the page cache ask for one 1 MiB
    folio, and on a busy machine with fragmented memory that allocation cost 4x the CPU of the
    copy itself (Linux 6.18, ext4: 1.45 s vs 0.35 s of system time per GiB in 64 KiB pieces;
    `dd bs=1M` pays it too). Unsealed plaintext lands exactly on such offsets.
    """
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + piece], offset + done)


def run_parallel(count: int, produce: Callable[[int, int, bytearray], memoryview],
                 consume: Callable[[int, memoryview], object], *, workers: int,
                 buffer_size: int, name: str = "sealed") -> None:
    """``produce(index, worker, buf)`` for every index in ``range(count)`` on `workers` threads
    (reading and encrypting or verifying in parallel), ``consume(index, view)`` on the calling
    thread as results arrive (writing: one writer, because writes to one file serialize in the
    kernel and parallel writers only spin on its lock).

    Indices are handed out in increasing order; each worker has two buffers of `buffer_size`,
    so it works on the next index while the caller writes its last one. Memory: 2 x workers
    buffers. The first exception, in a worker or in `consume`, stops everything and is raised
    here once every worker has stopped; nothing is consumed after it.
    """
    workers = max(1, min(workers, count))
    lock = threading.Lock()
    state = {"next": 0}
    stop = threading.Event()
    done: queue.SimpleQueue[tuple[int, int, bytearray | None, object]] = queue.SimpleQueue()
    free: list[queue.SimpleQueue[bytearray]] = [queue.SimpleQueue() for _ in range(workers)]
    for q in free:
        for _ in range(2):
            q.put(bytearray(buffer_size))

    def run(w: int) -> None:
        while True:
            with lock:
                i = state["next"]
                state["next"] = i + 1
            if i >= count or stop.is_set():
                done.put((-1, w, None, None))
                return
            buf = free[w].get()
            try:
                view = produce(i, w, buf)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                done.put((-2, w, buf, exc))
                return
            done.put((i, w, buf, view))

    threads = [threading.Thread(target=run, args=(w,), name=f"{name}-worker{w}", daemon=True)
               for w in range(workers)]
    for t in threads:
        t.start()
    error: BaseException | None = None
    running = workers
    try:
        while running:
            i, w, buf, result = done.get()
            if i == -1:
                running -= 1
                continue
            if i == -2:
                running -= 1
                error = error or cast(BaseException, result)
                stop.set()
            elif error is None:
                try:
                    consume(i, cast(memoryview, result))
                except BaseException as exc:  # noqa: BLE001 - raised below
                    error = exc
                    stop.set()
            if buf is not None:
                free[w].put(buf)
    except BaseException:  # e.g. KeyboardInterrupt: the workers stop at their next index
        stop.set()
        for q in free:
            for _ in range(2):
                q.put(bytearray(0))  # nobody waits on a buffer forever
        raise
    finally:
        for t in threads:
            t.join()
    if error is not None:
        raise error


class EarlyWriteback:
    """A file-object sink that asks the kernel to start writing its pages to disk every
    `every` bytes (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the
    disk works while the caller still encrypts and hashes and a final ``fsync`` has little
    left to wait for. Durability is unchanged: only that fsync makes the data durable. Where
    ``sync_file_range`` is missing (not Linux), it is a plain pass-through."""

    def __init__(self, raw: Any, every: int = 8 << 20) -> None:
        self.raw = raw
        self._fd = raw.fileno()
        self._every = every
        self._start = raw.tell()
        self._pos = self._start

    def write(self, data: Any) -> int:
        n = self.raw.write(data)
        self._pos += n
        if _SYNC_FILE_RANGE is not None and self._pos - self._start >= self._every:
            self.raw.flush()
            _SYNC_FILE_RANGE(self._fd, self._start, self._pos - self._start, _SYNC_FILE_RANGE_WRITE)
            self._start = self._pos
        return n

    def flush(self) -> None:
        self.raw.flush()


def _load_sync_file_range() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE = _load_sync_file_range() if sys.platform.startswith("linux") else None
