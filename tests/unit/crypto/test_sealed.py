from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.crypto.errors import RetiredKeyError, SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import (
    AAD_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    SealedReader,
    SealedWriter,
    is_sealed,
    rewrap_file,
    seal_file,
    unseal_file,
)

SEG = 64
VECTORS = Path(__file__).parent / "vectors"


def seal_bytes(data: bytes, ring: Keyring, seg: int = SEG) -> bytes:
    buf = io.BytesIO()
    with SealedWriter(buf, ring, segment_size=seg) as w:
        w.write(data)
    return buf.getvalue()


def unseal_bytes(blob: bytes, ring: Keyring) -> bytes:
    out = io.BytesIO()
    unseal_file(io.BytesIO(blob), out, ring)
    return out.getvalue()


_RING: dict[str, Keyring] = {}


def shared_ring(factory: pytest.TempPathFactory) -> Keyring:
    if "r" not in _RING:
        _RING["r"] = Keyring.create(factory.mktemp("ring"))
    return _RING["r"]


@pytest.mark.parametrize("n", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 7])
def test_roundtrip_boundary_lengths(keyring: Keyring, tmp_path: Path, n: int) -> None:
    data = os.urandom(n)
    blob = seal_bytes(data, keyring)
    # the path API (memory-mapped input) gives the same layout
    (tmp_path / "p").write_bytes(data)
    seal_file(tmp_path / "p", tmp_path / "s", keyring, segment_size=SEG)
    assert len((tmp_path / "s").read_bytes()) == len(blob)
    assert unseal_file(tmp_path / "s", tmp_path / "back", keyring) == n
    assert (tmp_path / "back").read_bytes() == data
    assert len(blob) == HEADER_SIZE + n + TAG_SIZE * (n // SEG + 1)
    assert unseal_bytes(blob, keyring) == data
    assert SealedReader(io.BytesIO(blob), keyring).read() == data


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=6 * SEG),
    chunks=st.lists(st.integers(1, 3 * SEG), max_size=8),
    seg=st.sampled_from([1, 7, SEG]),
)
def test_roundtrip_random_writes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunks: list[int], seg: int
) -> None:
    ring = shared_ring(tmp_path_factory)
    buf = io.BytesIO()
    with SealedWriter(buf, ring, segment_size=seg) as w:
        pos = 0
        for c in chunks:
            w.write(data[pos : pos + c])
            pos += c
        w.write(data[pos:])
        assert w.tell() == len(data)
    blob = buf.getvalue()
    assert unseal_bytes(blob, ring) == data
    # seal_file (readinto path) produces the same layout
    other = io.BytesIO()
    seal_file(io.BytesIO(data), other, ring, segment_size=seg)
    assert len(other.getvalue()) == len(blob)
    assert SealedReader(io.BytesIO(other.getvalue()), ring).read() == data


# --- tamper classes: each must give the one generic error and leave no output file --------


def assert_rejected(blob: bytes, ring: Keyring, tmp_path: Path) -> None:
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    src = tmp_path / "in.tgs"
    src.write_bytes(blob)
    dst = tmp_path / "out.bin"
    with pytest.raises(SealedStreamError) as exc:
        unseal_file(src, dst, ring)
    assert "failed authentication" in exc.value.message
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.tgs"]  # no temp file either
    with pytest.raises(SealedStreamError):
        SealedReader(io.BytesIO(blob), ring).read()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_flip_any_bit_rejected(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    ring = shared_ring(tmp_path_factory)
    blob = bytearray(seal_bytes(os.urandom(3 * SEG + 5), ring))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= 1 << data.draw(st.integers(0, 7))
    assert_rejected(bytes(blob), ring, tmp_path_factory.mktemp("flip"))


def test_truncation_inside_a_segment(keyring: Keyring, tmp_path: Path) -> None:
    blob = seal_bytes(os.urandom(3 * SEG + 5), keyring)
    for cut in (HEADER_SIZE - 1, HEADER_SIZE + 10, HEADER_SIZE + SEG + TAG_SIZE + 3, len(blob) - 1):
        assert_rejected(blob[:cut], keyring, tmp_path)


def test_truncation_at_a_segment_boundary(keyring: Keyring, tmp_path: Path) -> None:
    blob = seal_bytes(os.urandom(3 * SEG + 5), keyring)
    for k in (0, 1, 2, 3):
        assert_rejected(blob[: HEADER_SIZE + k * (SEG + TAG_SIZE)], keyring, tmp_path)


def _segments(blob: bytes) -> list[bytes]:
    body = blob[HEADER_SIZE:]
    size = SEG + TAG_SIZE
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_reordered_segments(keyring: Keyring, tmp_path: Path) -> None:
    blob = seal_bytes(os.urandom(4 * SEG + 3), keyring)
    s = _segments(blob)
    assert_rejected(blob[:HEADER_SIZE] + s[1] + s[0] + s[2] + s[3] + s[4], keyring, tmp_path)
    assert_rejected(blob[:HEADER_SIZE] + s[0] + s[1] + s[3] + s[2] + s[4], keyring, tmp_path)
    # the short final segment moved to the front
    assert_rejected(blob[:HEADER_SIZE] + s[4] + s[0] + s[1] + s[2] + s[3], keyring, tmp_path)


def test_duplicated_segment(keyring: Keyring, tmp_path: Path) -> None:
    blob = seal_bytes(os.urandom(3 * SEG + 1), keyring)
    s = _segments(blob)
    assert len(s) == 4
    assert_rejected(blob[:HEADER_SIZE] + s[0] + s[0] + s[1] + s[2] + s[3], keyring, tmp_path)
    assert_rejected(blob[:HEADER_SIZE] + s[0] + s[1] + s[2] + s[2] + s[3], keyring, tmp_path)
    assert_rejected(blob[:HEADER_SIZE] + s[0] + s[1] + s[2] + s[3] + s[3], keyring, tmp_path)


def test_edited_segment_size_fails_before_any_segment(keyring: Keyring, tmp_path: Path) -> None:
    blob = bytearray(seal_bytes(os.urandom(3 * SEG), keyring))
    blob[8:12] = (1 << 20).to_bytes(4, "big")  # would make a reader allocate 1 MiB buffers
    with pytest.raises(SealedStreamError):
        SealedReader(io.BytesIO(bytes(blob)), keyring)


def test_header_from_another_file(keyring: Keyring, tmp_path: Path) -> None:
    a = seal_bytes(os.urandom(2 * SEG), keyring)
    b = seal_bytes(os.urandom(2 * SEG), keyring)
    assert_rejected(a[:HEADER_SIZE] + b[HEADER_SIZE:], keyring, tmp_path)
    # only the wrapped DEK moved (it is outside the AAD): the commitment catches it
    assert_rejected(b[:AAD_SIZE] + a[AAD_SIZE:HEADER_SIZE] + b[HEADER_SIZE:], keyring, tmp_path)


def test_wrong_keyring(keyring: Keyring, tmp_path: Path) -> None:
    other = Keyring.create(tmp_path / "other-keys")
    blob = seal_bytes(b"secret weights" * 20, keyring)
    assert_rejected(blob, other, tmp_path)


def test_stream_output_releases_only_verified_segments(keyring: Keyring) -> None:
    data = os.urandom(3 * SEG + 10)
    blob = bytearray(seal_bytes(data, keyring))
    blob[-1] ^= 1  # last segment bad
    out = io.BytesIO()
    with pytest.raises(SealedStreamError):
        unseal_file(io.BytesIO(bytes(blob)), out, keyring)
    assert out.getvalue() == data[: 3 * SEG]  # the verified prefix, never the bad segment


def test_writer_aborted_by_exception_never_verifies(keyring: Keyring, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), SealedWriter(buf, keyring, segment_size=SEG) as w:
        w.write(os.urandom(5 * SEG))
        raise RuntimeError("torch.save failed halfway")
    assert_rejected(buf.getvalue(), keyring, tmp_path)


# --- seek, files, rewrap, retire -----------------------------------------------------------


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def readinto(self, b):  # type: ignore[no-untyped-def]
        start = self.tell()
        n = super().readinto(b)
        self.reads.append((start, n))
        return n


def test_seek_reads_segment_i_without_earlier_ones(keyring: Keyring) -> None:
    data = os.urandom(10 * SEG)
    f = CountingFile(seal_bytes(data, keyring))
    r = SealedReader(f, keyring)
    assert r.seekable() and r.size == len(data)
    f.reads.clear()
    r.seek(7 * SEG + 3)
    assert r.read(10) == data[7 * SEG + 3 : 7 * SEG + 13]
    assert f.reads == [(HEADER_SIZE + 7 * (SEG + TAG_SIZE), SEG + TAG_SIZE)]
    r.seek(-5, io.SEEK_END)
    assert r.read() == data[-5:]
    assert r.seek(0) == 0 and r.read(SEG + 1) == data[: SEG + 1]


def test_seal_unseal_files_and_is_sealed(keyring: Keyring, tmp_path: Path) -> None:
    src = tmp_path / "plain.bin"
    src.write_bytes(os.urandom(5000))
    seal_file(src, tmp_path / "s.tgs", keyring, segment_size=1000)
    assert is_sealed(tmp_path / "s.tgs") and not is_sealed(src)
    assert unseal_file(tmp_path / "s.tgs", tmp_path / "back.bin", keyring) == 5000
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "back.bin").stat().st_mode & 0o077 == 0


def test_rewrap_changes_only_the_header(keyring: Keyring, tmp_path: Path) -> None:
    data = os.urandom(4 * SEG + 9)
    path = tmp_path / "ckpt.tgs"
    path.write_bytes(seal_bytes(data, keyring))
    before = path.read_bytes()
    keyring.rotate()
    assert rewrap_file(path, keyring) is True
    after = path.read_bytes()
    assert after[HEADER_SIZE:] == before[HEADER_SIZE:]
    assert after[:AAD_SIZE] == before[:AAD_SIZE] and after[:HEADER_SIZE] != before[:HEADER_SIZE]
    assert int.from_bytes(after[AAD_SIZE : AAD_SIZE + 4], "big") == 2
    assert rewrap_file(path, keyring) is False  # already current
    keyring.retire_below(2)
    assert unseal_bytes(after, Keyring.open(keyring.keys_dir)) == data


def test_retired_key_error_names_version(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "old.tgs"
    path.write_bytes(seal_bytes(b"x" * 100, keyring))
    keyring.rotate()
    keyring.retire_below(2)
    with pytest.raises(RetiredKeyError, match="KEK version 1") as exc:
        unseal_file(path, tmp_path / "out", keyring)
    assert "key rewrap" in (exc.value.tip or "")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RetiredKeyError):
        rewrap_file(path, keyring)


@pytest.mark.parametrize("case", range(2))
def test_header_known_answer(tmp_path: Path, case: int) -> None:
    """Fixed randomness gives a byte-exact stream: the layout cannot drift unnoticed."""
    vec = json.loads((VECTORS / "sealed_v1.json").read_text())
    c = vec["cases"][case]
    ring = Keyring.create(
        tmp_path, rng=_fixed(bytes.fromhex(vec["keyring_random"])), clock=lambda: 0
    )
    buf = io.BytesIO()
    rng = _fixed(bytes.fromhex(vec["stream_random"]))
    with SealedWriter(buf, ring, segment_size=c["segment_size"], rng=rng) as w:
        w.write(bytes.fromhex(c["plaintext"]))
    blob = buf.getvalue()
    assert blob.hex() == c["sealed"]
    # independent reading of the documented offsets
    rnd = bytes.fromhex(vec["stream_random"])
    dek, salt, prefix = rnd[:32], rnd[32:64], rnd[64:71]
    assert blob[:6] == b"TGSEAL" and blob[6] == 1 and blob[7] == 1
    assert int.from_bytes(blob[8:12], "big") == c["segment_size"]
    assert blob[12:20].hex() == ring.kek_id
    assert blob[20:52] == salt and blob[52:59] == prefix
    assert int.from_bytes(blob[91:95], "big") == 1 and int.from_bytes(blob[95:97], "big") == 60
    assert ring.unwrap_dek(_wrapped(blob)) == dek
    n = len(bytes.fromhex(c["plaintext"]))
    assert len(blob) == HEADER_SIZE + n + TAG_SIZE * (n // c["segment_size"] + 1)
    assert unseal_bytes(blob, ring) == bytes.fromhex(c["plaintext"])


def _wrapped(blob: bytes):  # type: ignore[no-untyped-def]
    from trainguard.crypto.keyring import WrappedDek

    return WrappedDek(blob[12:20].hex(), int.from_bytes(blob[91:95], "big"), blob[97:157])


def _fixed(stream: bytes):  # type: ignore[no-untyped-def]
    pos = [0]

    def rng(n: int) -> bytes:
        out = stream[pos[0] : pos[0] + n]
        assert len(out) == n, "vector randomness exhausted"
        pos[0] += n
        return out

    return rng


def test_rewrap_files_batch_reports_each_file(keyring: Keyring, tmp_path: Path) -> None:
    from trainguard.crypto.sealed.stream import rewrap_files

    good = [tmp_path / f"g{i}.tgs" for i in range(5)]
    for p in good:
        p.write_bytes(seal_bytes(os.urandom(100), keyring))
    bad = tmp_path / "bad.tgs"
    bad.write_bytes(b"TGSEAL" + b"\0" * 200)
    keyring.rotate()
    results = {r.path.name: r for r in rewrap_files([*good, bad], keyring, workers=3)}
    assert all(results[p.name].rewrapped for p in good)
    assert isinstance(results["bad.tgs"].error, SealedStreamError)
    assert [r.rewrapped for r in rewrap_files(good, keyring)] == [False] * 5


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5 * SEG),
    ops=st.lists(st.tuples(st.integers(0, 6 * SEG), st.integers(-1, 3 * SEG)), max_size=10),
)
def test_reader_matches_plaintext_for_any_seek_and_read(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, ops: list[tuple[int, int]]
) -> None:
    ring = shared_ring(tmp_path_factory)
    r = SealedReader(io.BytesIO(seal_bytes(data, ring)), ring)
    ref = io.BytesIO(data)
    for pos, size in ops:
        assert r.seek(pos) == ref.seek(pos)
        assert r.read(size) == ref.read(size)
        assert r.tell() == ref.tell()
    buf, ref_buf = bytearray(SEG + 3), bytearray(SEG + 3)
    r.seek(0)
    ref.seek(0)
    assert r.readinto(buf) == ref.readinto(ref_buf)
    assert buf == ref_buf
