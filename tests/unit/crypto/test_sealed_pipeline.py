"""The fast sealed-I/O paths (parallel workers for files, background stages for streams and
`SealedWriter`): same bytes as the format vectors, every tamper still refused, errors in a
background thread surface and leave no output, memory stays O(segment)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.core.errors import CryptoError
from trainguard.crypto.errors import SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed import files as sealed_files
from trainguard.crypto.sealed import pipeline
from trainguard.crypto.sealed.stream import (
    HEADER_SIZE,
    TAG_SIZE,
    SealedReader,
    SealedWriter,
    seal_file,
    seal_stream,
    unseal_file,
)

SEG = 64
VECTORS = Path(__file__).parent / "vectors"
_RING: dict[str, Keyring] = {}


def ring_for(factory: pytest.TempPathFactory) -> Keyring:
    if "r" not in _RING:
        _RING["r"] = Keyring.create(factory.mktemp("ring"))
    return _RING["r"]


def _fixed(stream: bytes):  # type: ignore[no-untyped-def]
    pos = [0]

    def rng(n: int) -> bytes:
        out = stream[pos[0] : pos[0] + n]
        assert len(out) == n, "vector randomness exhausted"
        pos[0] += n
        return out

    return rng


def _only(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- byte compatibility with format v1 ----------------------------------------------------------


@pytest.mark.parametrize("case", range(2))
def test_every_sealing_path_writes_the_vector_bytes(tmp_path: Path, case: int) -> None:
    """Parallel file sealing, the streamed path and the pipelined writer produce exactly the
    known-answer stream, and every unsealing path reads it back."""
    vec = json.loads((VECTORS / "sealed_v1.json").read_text())
    c = vec["cases"][case]
    plain = bytes.fromhex(c["plaintext"])
    src = tmp_path / "plain.bin"
    src.write_bytes(plain)

    def ring(name: str) -> Keyring:  # the vector's keyring, with its own fixed randomness
        return Keyring.create(tmp_path / name, rng=_fixed(bytes.fromhex(vec["keyring_random"])),
                              clock=lambda: 0)

    def rng():  # type: ignore[no-untyped-def]
        return _fixed(bytes.fromhex(vec["stream_random"]))

    seal_file(src, tmp_path / "a.tgs", ring("k1"), segment_size=c["segment_size"], rng=rng())
    piped = io.BytesIO()
    seal_stream(io.BytesIO(plain), piped, ring("k2"), segment_size=c["segment_size"], rng=rng())
    buf = io.BytesIO()
    reader = ring("k3")
    with SealedWriter(buf, reader, segment_size=c["segment_size"], rng=rng()) as w:
        for i in range(0, len(plain), 7):  # odd chunks: partial and whole segments
            w.write(plain[i : i + 7])
    for blob in ((tmp_path / "a.tgs").read_bytes(), piped.getvalue(), buf.getvalue()):
        assert blob.hex() == c["sealed"]
    sealed = tmp_path / "v.tgs"
    sealed.write_bytes(bytes.fromhex(c["sealed"]))
    assert unseal_file(sealed, tmp_path / "back", reader) == len(plain)
    assert (tmp_path / "back").read_bytes() == plain
    out = io.BytesIO()
    unseal_file(io.BytesIO(bytes.fromhex(c["sealed"])), out, reader)
    assert out.getvalue() == plain


# --- round trips over segment boundaries --------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segs=st.integers(0, 9),
    delta=st.integers(-2, 2),
    chunks=st.lists(st.integers(1, 3 * SEG), min_size=1, max_size=6),
)
def test_all_paths_round_trip_around_segment_boundaries(
    tmp_path_factory: pytest.TempPathFactory, segs: int, delta: int, chunks: list[int]
) -> None:
    ring = ring_for(tmp_path_factory)
    n = max(0, segs * SEG + delta)
    data = os.urandom(n)
    d = tmp_path_factory.mktemp("rt")
    (d / "p").write_bytes(data)
    seal_file(d / "p", d / "par.tgs", ring, segment_size=SEG)  # parallel workers
    piped = io.BytesIO()
    seal_stream(io.BytesIO(data), piped, ring, segment_size=SEG)  # background writer
    w_out = io.BytesIO()
    sha = hashlib.sha256()
    with SealedWriter(w_out, ring, segment_size=SEG, digest=sha) as w:  # pipelined writer
        pos, i = 0, 0
        while pos < n:
            step = chunks[i % len(chunks)]
            w.write(data[pos : pos + step])
            pos, i = pos + step, i + 1
    assert sha.hexdigest() == hashlib.sha256(w_out.getvalue()).hexdigest()
    expected_len = HEADER_SIZE + n + TAG_SIZE * (n // SEG + 1)
    for blob in ((d / "par.tgs").read_bytes(), piped.getvalue(), w_out.getvalue()):
        assert len(blob) == expected_len
        (d / "s.tgs").write_bytes(blob)
        assert unseal_file(d / "s.tgs", d / "back", ring) == n  # parallel workers
        assert (d / "back").read_bytes() == data
        out = io.BytesIO()
        assert unseal_file(io.BytesIO(blob), out, ring) == n  # stream, background writer
        assert out.getvalue() == data
        assert SealedReader(io.BytesIO(blob), ring).read() == data


# --- tampering is refused and leaves nothing ----------------------------------------------------


def _sealed(tmp_path: Path, ring: Keyring, n: int) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    (tmp_path / "p").write_bytes(data)
    seal_file(tmp_path / "p", tmp_path / "s.tgs", ring, segment_size=SEG)
    return data, (tmp_path / "s.tgs").read_bytes()


def _refused_everywhere(blob: bytes, ring: Keyring, folder: Path) -> None:
    folder.mkdir()
    bad = folder / "bad.tgs"
    bad.write_bytes(blob)
    with pytest.raises(SealedStreamError):
        unseal_file(bad, folder / "out", ring)
    assert _only(folder) == {"bad.tgs"}  # no output, no temporary file
    with pytest.raises(SealedStreamError):
        unseal_file(io.BytesIO(blob), io.BytesIO(), ring)
    with pytest.raises(SealedStreamError):
        SealedReader(io.BytesIO(blob), ring).read()


def test_truncation_at_every_segment_boundary_is_refused(keyring: Keyring, tmp_path: Path) -> None:
    _, blob = _sealed(tmp_path, keyring, 6 * SEG + 5)
    ends = [HEADER_SIZE + k * (SEG + TAG_SIZE) for k in range(7)]
    for k, end in enumerate(ends):
        _refused_everywhere(blob[:end], keyring, tmp_path / f"cut{k}")
    for k, end in enumerate(ends[1:]):  # and one byte either side of each boundary
        _refused_everywhere(blob[: end - 1], keyring, tmp_path / f"m{k}")
        _refused_everywhere(blob[: end + 1], keyring, tmp_path / f"p{k}")


def test_a_flipped_byte_in_any_segment_is_refused(keyring: Keyring, tmp_path: Path) -> None:
    _, blob = _sealed(tmp_path, keyring, 5 * SEG + 9)
    for k in range(6):
        bad = bytearray(blob)
        bad[HEADER_SIZE + k * (SEG + TAG_SIZE) + 3] ^= 0x40
        _refused_everywhere(bytes(bad), keyring, tmp_path / f"flip{k}")


def test_swapped_segments_are_refused(keyring: Keyring, tmp_path: Path) -> None:
    _, blob = _sealed(tmp_path, keyring, 5 * SEG + 9)
    a, b, L = HEADER_SIZE + 1 * (SEG + TAG_SIZE), HEADER_SIZE + 3 * (SEG + TAG_SIZE), SEG + TAG_SIZE
    swapped = blob[:a] + blob[b : b + L] + blob[a + L : b] + blob[a : a + L] + blob[b + L :]
    assert len(swapped) == len(blob)
    _refused_everywhere(swapped, keyring, tmp_path / "swap")


# --- errors on a background thread -------------------------------------------------------------


class FailingFile(io.RawIOBase):
    """Accepts `ok` writes, then fails like a full disk."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok, self.data = ok, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        if self.ok <= 0:
            raise OSError(28, "No space left on device")
        self.ok -= 1
        self.data += bytes(b)
        return len(memoryview(b))


def test_writer_thread_error_surfaces_from_write_or_close(keyring: Keyring) -> None:
    sink = FailingFile(ok=3)  # header and two segments, then ENOSPC on the writer thread
    w = SealedWriter(sink, keyring, segment_size=SEG)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space"):
        for _ in range(50):
            w.write(os.urandom(SEG))
        w.close()
    w.abort()
    with pytest.raises(SealedStreamError):  # what reached the file never verifies
        unseal_file(io.BytesIO(bytes(sink.data)), io.BytesIO(), keyring)


def test_writer_error_in_torch_save_leaves_no_checkpoint(keyring: Keyring, tmp_path: Path) -> None:
    """The pattern CheckpointStore.save uses: an error on the writer thread fails the save and
    the atomic output leaves nothing behind."""
    import torch
    from trainguard.core.fs import atomic_output

    target = tmp_path / "ck.tgseal"
    # torch.save may rewrap the error as a RuntimeError when it closes its zip writer
    with pytest.raises((OSError, RuntimeError)), atomic_output(target, mode=0o600) as tmp:
        with tmp.open("wb") as raw:
            real = raw.write
            count = [0]

            def write(b):  # type: ignore[no-untyped-def]
                count[0] += 1
                if count[0] > 4:
                    raise OSError(28, "No space left on device")
                return real(b)

            raw.write = write  # type: ignore[method-assign]
            with SealedWriter(raw, keyring, segment_size=4096) as w:
                torch.save({"w": torch.randn(64, 1024)}, w)
    assert _only(tmp_path) == {"keys"}


def test_parallel_write_error_leaves_no_output(
    keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "p"
    src.write_bytes(os.urandom(20 * SEG))
    seal_file(src, tmp_path / "s.tgs", keyring, segment_size=SEG)
    real = pipeline.pwrite_all
    calls = [0]

    def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
        calls[0] += 1
        if calls[0] == 6:
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(sealed_files, "pwrite_all", pwrite_all)
    monkeypatch.setattr(sealed_files, "default_workers", lambda: 2)
    before = _only(tmp_path)
    with pytest.raises(OSError, match="No space"):
        seal_file(src, tmp_path / "out.tgs", keyring, segment_size=SEG)
    calls[0] = 0
    with pytest.raises(OSError, match="No space"):
        unseal_file(tmp_path / "s.tgs", tmp_path / "out.bin", keyring)
    assert _only(tmp_path) == before


def test_input_that_shrinks_while_sealed_fails_without_output(
    keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "p"
    src.write_bytes(os.urandom(10 * SEG))
    real = pipeline.pread_exact

    def pread_exact(fd: int, buf: memoryview, offset: int) -> int:
        if offset >= 5 * SEG:  # as if someone truncated the file meanwhile
            os.truncate(src, 5 * SEG)
        return real(fd, buf, offset)

    monkeypatch.setattr(sealed_files, "pread_exact", pread_exact)
    with pytest.raises(CryptoError, match="became shorter") as exc:
        seal_file(src, tmp_path / "out.tgs", keyring, segment_size=SEG)
    assert exc.value.tip
    assert not (tmp_path / "out.tgs").exists()


def test_run_parallel_stops_at_the_first_worker_error() -> None:
    seen: list[int] = []

    def produce(i: int, w: int, buf: bytearray) -> memoryview:
        if i == 7:
            raise ValueError("segment 7 failed")
        return memoryview(buf)[:1]

    with pytest.raises(ValueError, match="segment 7"):
        pipeline.run_parallel(1000, produce, lambda i, v: seen.append(i), workers=3,
                              buffer_size=1)
    assert 7 not in seen and len(seen) < 1000


# --- memory: O(segment), not O(file) -----------------------------------------------------------


def test_seal_and_unseal_of_a_large_file_keep_rss_small(tmp_path: Path) -> None:
    """Peak RSS of a process that seals and unseals a 96 MiB file grows by far less than the
    file (the input is read a segment at a time, never mapped whole)."""
    mib = 96
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from trainguard.crypto.keyring import Keyring
        from trainguard.crypto.sealed.stream import seal_file, unseal_file
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        d = Path({str(tmp_path)!r})
        ring = Keyring.create(d / "k")
        seal_file(d / "tiny", d / "tiny.tgs", ring)  # warm up imports and buffers
        base = hwm()
        seal_file(d / "big.bin", d / "big.tgs", ring)
        unseal_file(d / "big.tgs", d / "back.bin", ring)
        print(base, hwm())
    """)
    (tmp_path / "tiny").write_bytes(b"x")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, check=True)
    base, peak = map(int, out.stdout.split())
    assert peak - base < 32, f"peak RSS grew {peak - base} MiB for a {mib} MiB file"
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_reader_leaves_no_unverified_plaintext_in_the_callers_buffer(keyring: Keyring) -> None:
    data = b"\x01" * (4 * SEG)
    buf = io.BytesIO()
    with SealedWriter(buf, keyring, segment_size=SEG) as w:
        w.write(data)
    bad = bytearray(buf.getvalue())
    bad[HEADER_SIZE + 2 * (SEG + TAG_SIZE) + SEG] ^= 1  # the tag of segment 2
    r = SealedReader(io.BytesIO(bytes(bad)), keyring)
    out = bytearray(4 * SEG)
    with pytest.raises(SealedStreamError):
        r.readinto(out)
    assert out[: 2 * SEG] == data[: 2 * SEG]  # verified segments only
    assert out[2 * SEG :] == bytes(2 * SEG)


def test_early_writeback_passes_bytes_through_and_covers_every_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = pipeline._SYNC_FILE_RANGE  # noqa: SLF001

    def record(fd: int, off: int, n: int, flags: int) -> int:
        calls.append((off, n))
        return real(fd, off, n, flags) if real is not None else 0

    monkeypatch.setattr(pipeline, "_SYNC_FILE_RANGE", record)
    data = os.urandom(10 * 1000)
    with (tmp_path / "f").open("wb") as raw:
        sink = pipeline.EarlyWriteback(raw, every=3000)
        for i in range(0, len(data), 700):
            sink.write(data[i : i + 700])
        sink.flush()
    assert (tmp_path / "f").read_bytes() == data
    assert calls and calls[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:], strict=False))
    assert all(n >= 3000 for _, n in calls)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 13 * 256 + 100), start=st.integers(0, 13 * 256),
       length=st.integers(0, 13 * 256 + 100))
def test_large_reads_from_a_file_decrypt_on_threads_and_match(
    keyring: Keyring, tmp_path: Path, size: int, start: int, length: int
) -> None:
    """Reads of >= 4 whole segments from a real file take the threaded pread path; any
    position and length returns exactly the plaintext, as the one-segment path does."""
    data = os.urandom(size)
    path = tmp_path / "s"
    with open(path, "wb") as f, SealedWriter(f, keyring, segment_size=256) as w:
        w.write(data)
    with open(path, "rb") as f, SealedReader(f, keyring) as r:
        r.seek(start)
        assert r.read(length) == data[start : start + length]
        out = bytearray(size)
        r.seek(0)
        assert r.readinto(out) == size and bytes(out) == data


def test_a_bad_tag_in_a_threaded_read_zeroes_the_whole_read(keyring: Keyring, tmp_path: Path) -> None:
    seg, data = 256, b"\x01" * (12 * 256 + 10)
    path = tmp_path / "s"
    with open(path, "wb") as f, SealedWriter(f, keyring, segment_size=seg) as w:
        w.write(data)
    bad = bytearray(path.read_bytes())
    bad[HEADER_SIZE + 9 * (seg + TAG_SIZE) + 3] ^= 1  # segment 9, read by the second thread
    path.write_bytes(bytes(bad))
    with open(path, "rb") as f, SealedReader(f, keyring) as r:
        assert r._fd is not None  # noqa: SLF001 - the threaded path is the one under test
        out = bytearray(12 * seg)
        with pytest.raises(SealedStreamError):
            r.readinto(out)
    assert out == bytes(12 * seg)


def test_a_forked_child_reads_large_sealed_files_with_its_own_threads(
    keyring: Keyring, tmp_path: Path
) -> None:
    """A forked child (a DataLoader worker, say) reads large sealed files through the threaded
    path after its parent already did."""
    path = tmp_path / "s"
    data = os.urandom(16 * 256)
    with open(path, "wb") as f, SealedWriter(f, keyring, segment_size=256) as w:
        w.write(data)
    with open(path, "rb") as f, SealedReader(f, keyring) as r:
        assert r.read() == data  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the threaded read completes and matches
        ok = False
        try:
            with open(path, "rb") as f, SealedReader(f, keyring) as r:
                ok = r.read() == data
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
