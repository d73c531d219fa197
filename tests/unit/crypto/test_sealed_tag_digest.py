"""The tag digest of a sealed stream (`TagTranscript`): what signed checkpoint manifests record
instead of a SHA-256 of the whole file. The writer's digest equals the one recomputed from the
file for any content and segment size; every change a party without the data key can make
either changes the digest or fails a tag when the stream is unsealed; a KEK rewrap keeps it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.crypto.errors import SealedStreamError
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.sealed.stream import (
    HEADER_SIZE,
    TAG_SIZE,
    SealedReader,
    SealedWriter,
    rewrap_file,
    tag_digest,
)


def _write(path: Path, data: bytes, keyring: Keyring, seg: int) -> tuple[int, str]:
    with open(path, "wb") as f:
        w = SealedWriter(f, keyring, segment_size=seg)
        for i in range(0, len(data), 1000):  # uneven writes across segment boundaries
            w.write(data[i : i + 1000])
        w.close()
    return w.tag_digest


def _unseal(path: Path, keyring: Keyring) -> bytes:
    with open(path, "rb") as f, SealedReader(f, keyring) as r:
        return r.read()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=20_000), seg=st.sampled_from([1, 7, 64, 4096, 70_000]))
def test_writer_digest_equals_the_digest_read_back_from_the_file(
    keyring: Keyring, tmp_path: Path, data: bytes, seg: int
) -> None:
    path = tmp_path / "s.tgs"
    written = _write(path, data, keyring, seg)
    assert written == tag_digest(path)
    assert written[0] == path.stat().st_size
    assert _unseal(path, keyring) == data


def test_same_content_sealed_twice_has_different_digests(keyring: Keyring, tmp_path: Path) -> None:
    a = _write(tmp_path / "a", b"x" * 5000, keyring, 1024)
    b = _write(tmp_path / "b", b"x" * 5000, keyring, 1024)
    assert a[1] != b[1]  # fresh DEK, salt and nonce prefix: a digest names one stream


@pytest.mark.parametrize("where", ["header", "tag", "last-tag", "length"])
def test_changes_to_what_the_digest_covers_change_it(
    keyring: Keyring, tmp_path: Path, where: str
) -> None:
    seg = 1024
    path = tmp_path / "s"
    _, digest = _write(path, os.urandom(5 * seg + 100), keyring, seg)
    raw = bytearray(path.read_bytes())
    if where == "header":
        raw[30] ^= 1  # the salt
    elif where == "tag":
        raw[HEADER_SIZE + 2 * (seg + TAG_SIZE) - 3] ^= 1
    elif where == "last-tag":
        raw[-1] ^= 0x80
    else:  # drop the final segment and make the previous one look final: not a whole stream
        del raw[HEADER_SIZE + 5 * (seg + TAG_SIZE) :]
        raw += bytes(TAG_SIZE)
    path.write_bytes(bytes(raw))
    try:
        got = tag_digest(path)[1]
    except SealedStreamError:
        return
    assert got != digest


def test_a_changed_body_keeps_the_digest_but_never_unseals(keyring: Keyring, tmp_path: Path) -> None:
    """Ciphertext bytes are not in the digest: their tag is, and the tag fails on unseal."""
    seg = 1024
    path = tmp_path / "s"
    _, digest = _write(path, os.urandom(3 * seg), keyring, seg)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + seg + TAG_SIZE + 10] ^= 1
    path.write_bytes(bytes(raw))
    assert tag_digest(path)[1] == digest
    with pytest.raises(SealedStreamError):
        _unseal(path, keyring)


def test_segments_swapped_with_their_tags_change_the_digest(keyring: Keyring, tmp_path: Path) -> None:
    seg = 512
    path = tmp_path / "s"
    _, digest = _write(path, os.urandom(4 * seg), keyring, seg)
    raw = bytearray(path.read_bytes())
    s = seg + TAG_SIZE
    a, b = HEADER_SIZE, HEADER_SIZE + s
    raw[a : a + s], raw[b : b + s] = raw[b : b + s], raw[a : a + s]
    path.write_bytes(bytes(raw))
    assert tag_digest(path)[1] != digest


@pytest.mark.parametrize("cut", [0, 10, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5])
def test_truncated_or_foreign_files_are_refused(keyring: Keyring, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "s"
    _write(path, os.urandom(3000), keyring, 1024)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SealedStreamError):
        tag_digest(path)
    (tmp_path / "plain").write_bytes(b"PK\x03\x04" + bytes(500))
    with pytest.raises(SealedStreamError):
        tag_digest(tmp_path / "plain")


def test_a_link_is_not_followed(keyring: Keyring, tmp_path: Path) -> None:
    _write(tmp_path / "s", b"abc", keyring, 1024)
    (tmp_path / "l").symlink_to(tmp_path / "s")
    with pytest.raises(OSError):
        tag_digest(tmp_path / "l")


def test_a_kek_rewrap_keeps_the_digest(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "s"
    written = _write(path, os.urandom(4000), keyring, 1024)
    keyring.rotate()
    assert rewrap_file(path, keyring)
    assert tag_digest(path) == written
    assert len(_unseal(path, keyring)) == 4000


def test_an_aborted_writer_has_no_digest(keyring: Keyring, tmp_path: Path) -> None:
    with open(tmp_path / "s", "wb") as f:
        w = SealedWriter(f, keyring, segment_size=64)
        w.write(b"x" * 1000)
        w.abort()
    with pytest.raises(ValueError):
        _ = w.tag_digest
