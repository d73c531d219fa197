"""Sealed-stream format v1, the primitives: header, key derivation, one segment at a time.

The byte layout is documented in `trainguard.crypto.sealed.stream`, the public module. This module is
internal to the crypto area: the file objects (`sealed.py`) and the path operations
(`sealed_files.py`) are built on it, and other areas never import it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from trainguard.core.clock import Random
from trainguard.crypto.config import MAX_SEGMENT_SIZE
from trainguard.crypto.errors import DecryptionError, SealedStreamError
from trainguard.crypto.keyring import WRAPPED_DEK_BYTES, Keyring, WrappedDek

MAGIC = b"TGSEAL"
FORMAT_VERSION = 1
ALG_AES256GCM_HKDF_SHA256 = 1
DEFAULT_SEGMENT_SIZE = 1 << 20
TAG_SIZE = 16
_CONTEXT = struct.Struct(">6sBBI8s32s7s")  # bytes 0..58, bound by the key commitment
_FIXED = struct.Struct(">6sBBI8s32s7s32s")  # bytes 0..90, the AAD of every segment
_MUTABLE = struct.Struct(">IH")  # KEK version, wrapped-DEK length
AAD_SIZE = _FIXED.size  # 91
HEADER_SIZE = _FIXED.size + _MUTABLE.size + WRAPPED_DEK_BYTES  # 157
_KDF_INFO = b"trainguard/sealed/v1"


class DekUnwrapper(Protocol):
    """What a reader needs to open a stream: a `Keyring`, or a client of a key service that
    unwraps data keys for the caller (the KEK stays with the service)."""

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes: ...


@dataclass(frozen=True)
class DataKey:
    """A data key with its KEK-wrapped form, issued by a key service (Vault-transit style):
    a writer seals with it and never sees the KEK. `repr()` hides the key."""

    dek: bytes
    wrapped: WrappedDek

    def __repr__(self) -> str:
        return f"DataKey(wrapped={self.wrapped!r})"


def nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """prefix(7) ‖ BE32(index) ‖ last-flag(1)."""
    if index > 0xFFFFFFFF:
        raise OverflowError("stream too long for one sealed file; use a larger segment size")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


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


def derive_keys(dek: bytes, context: bytes) -> tuple[bytes, bytes]:
    """(segment key, key commitment): HKDF-SHA256 over the DEK, bound to every header field
    before the commitment, so an edited segment size or nonce prefix fails up front."""
    salt = context[20:52]
    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_KDF_INFO + context)
    out = hkdf.derive(dek)
    return out[:32], out[32:]


@dataclass(frozen=True)
class Header:
    segment_size: int
    kek_id: str
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes
    kek_version: int
    wrapped: bytes

    @property
    def context(self) -> bytes:
        return _context(self.segment_size, self.kek_id, self.salt, self.nonce_prefix)

    @property
    def aad(self) -> bytes:
        return self.context + self.commitment

    def pack(self) -> bytes:
        return self.aad + _MUTABLE.pack(self.kek_version, len(self.wrapped)) + self.wrapped

    @classmethod
    def parse(cls, raw: bytes, what: str = "sealed stream") -> Header:
        if len(raw) != HEADER_SIZE:
            raise SealedStreamError(what)
        magic, ver, alg, seg, kid, salt, prefix, commit = _FIXED.unpack_from(raw)
        kek_version, wlen = _MUTABLE.unpack_from(raw, _FIXED.size)
        if (
            magic != MAGIC
            or ver != FORMAT_VERSION
            or alg != ALG_AES256GCM_HKDF_SHA256
            or not 1 <= seg <= MAX_SEGMENT_SIZE
            or wlen != WRAPPED_DEK_BYTES
        ):
            raise SealedStreamError(what)
        return cls(seg, kid.hex(), salt, prefix, commit, kek_version, raw[AAD_SIZE + 6 :])

    def unwrap(self, keyring: DekUnwrapper, what: str) -> bytes:
        """The DEK, checked against the commitment. `RetiredKeyError` passes through."""
        try:
            dek = keyring.unwrap_dek(
                WrappedDek(self.kek_id, self.kek_version, self.wrapped), what=what
            )
        except DecryptionError as exc:
            raise SealedStreamError(what) from exc
        if not hmac.compare_digest(derive_keys(dek, self.context)[1], self.commitment):
            raise SealedStreamError(what)
        return dek


class SegmentOpener:
    """Verifies and decrypts segments of one stream (any order: the index is in the nonce)."""

    def __init__(self, header: Header, keyring: DekUnwrapper, what: str) -> None:
        dek = header.unwrap(keyring, what)
        self.header = header
        self.segment_size = header.segment_size
        seg_key = derive_keys(dek, header.context)[0]
        self._aead = AESGCM(seg_key)
        self.new_cipher: Callable[[], AESGCM] = lambda: AESGCM(seg_key)  # one per worker thread
        self._aad = header.aad
        self._what = what

    def open_into(self, index: int, last: bool, ct: memoryview, out: memoryview,
                  cipher: AESGCM | None = None) -> None:
        """Decrypt `ct` (ciphertext ‖ tag) into `out`; `SealedStreamError` if it fails.
        Threads working at once pass their own `cipher` (from `new_cipher()`)."""
        try:
            (cipher or self._aead).decrypt_into(
                nonce(self.header.nonce_prefix, index, last), ct, self._aad, out
            )
        except InvalidTag as exc:
            raise SealedStreamError(self._what) from exc


class SegmentSealer:
    """Writes the header of a new stream, then encrypts consecutive segments. With
    ``out=None`` nothing is written: the caller writes `header.pack()` and the segments."""

    def __init__(
        self, out: BinaryIO | None, keyring: Keyring | DataKey, segment_size: int, rng: Random
    ) -> None:
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be 1..{MAX_SEGMENT_SIZE}")
        if isinstance(keyring, DataKey):  # issued by a key service: no KEK in this process
            dek, wrapped = keyring.dek, keyring.wrapped
        else:
            dek = rng(32)
            wrapped = keyring.wrap_dek(dek)
        salt, prefix = rng(32), rng(7)
        seg_key, commitment = derive_keys(dek, _context(segment_size, wrapped.kek_id, salt, prefix))
        self.header = Header(
            segment_size, wrapped.kek_id, salt, prefix, commitment, wrapped.version, wrapped.blob
        )
        self._aad = self.header.aad
        self._aead = AESGCM(seg_key)
        self.new_cipher: Callable[[], AESGCM] = lambda: AESGCM(seg_key)  # one per worker thread
        self._out = out
        self._ct = bytearray(segment_size + TAG_SIZE) if out is not None else bytearray()
        self.index = 0
        if out is not None:
            out.write(self.header.pack())

    def seal(self, plain: memoryview | bytearray, last: bool) -> None:
        """Encrypt the next segment and write it. Only the final segment may be short."""
        self._out.write(self.seal_into(plain, last, self._ct))

    def seal_into(self, plain: memoryview | bytearray, last: bool, out: bytearray) -> memoryview:
        """Encrypt the next segment into `out` (>= len(plain) + TAG_SIZE bytes) without
        writing it; returns the ciphertext view. Segments must be written in this order."""
        view = memoryview(out)[: len(plain) + TAG_SIZE]
        self.seal_at(self.index, plain, last, view)
        self.index += 1
        return view

    def seal_at(self, index: int, plain: memoryview | bytearray, last: bool,
                out: memoryview, cipher: AESGCM | None = None) -> None:
        """Encrypt segment `index` into `out` (exactly len(plain) + TAG_SIZE bytes). Threads
        working at once pass their own `cipher` (from `new_cipher()`)."""
        aead = cipher or self._aead
        aead.encrypt_into(nonce(self.header.nonce_prefix, index, last), plain, self._aad, out)


TAGS_DIGEST = "tgseal-tags-v1"  # the name of the content digest below, as manifests record it
_TAGS_DOMAIN = b"trainguard/sealed-tags/v1\x00"


class TagTranscript:
    """The content digest of a sealed stream that a signature can cover without hashing the
    body: SHA-256(domain ‖ header bytes 0..90 ‖ tag of every segment in order ‖ BE64(stream
    length)).

    Why it binds every byte: each segment's AES-GCM tag authenticates its ciphertext, index and
    last-flag under the segment key, which the key commitment (header bytes 59..90, inside the
    digest) ties to one DEK. Changing a byte of the body therefore breaks a tag unless the
    changer holds this stream's DEK, and changing a tag, the immutable header or the length
    breaks the digest. The wrapped DEK (bytes 91..156) is left out on purpose, so a KEK
    rotation (`rewrap_file`) keeps signatures valid; a wrap of another DEK fails the
    commitment. Property stated plainly: for anyone who cannot unwrap the stream's DEK this is
    as binding as a hash of the file; a DEK holder (the writer, or a reader the key service
    unwraps for) could forge a body with the same tags, as it could ask for a signature."""

    def __init__(self, aad: bytes) -> None:
        self._sha = hashlib.sha256(_TAGS_DOMAIN + aad)

    def add(self, tag: bytes | memoryview) -> None:
        self._sha.update(tag)

    def finish(self, stream_length: int) -> str:
        sha = self._sha.copy()
        sha.update(stream_length.to_bytes(8, "big"))
        return sha.hexdigest()


def tag_digest_fd(fd: int, what: str = "sealed stream") -> tuple[int, str]:
    """(length, `TagTranscript` digest) of the sealed stream in the open file `fd`, reading
    only its header and tags (16 bytes per segment; small segments are read in blocks).
    Raises `SealedStreamError` for anything that is not the layout of a whole sealed stream.
    Nothing is decrypted: a body changed by someone without the DEK is caught by the tags
    when it is unsealed."""
    size = os.fstat(fd).st_size
    raw = os.pread(fd, HEADER_SIZE, 0)
    header = Header.parse(raw, what)  # length, magic, version, algorithm, segment size
    stride = header.segment_size + TAG_SIZE
    full, rem = divmod(size - HEADER_SIZE, stride)
    if rem < TAG_SIZE:  # no short final segment: truncated, or not a sealed body
        raise SealedStreamError(what)
    transcript = TagTranscript(header.aad)
    if stride >= 64 << 10:  # large segments: one small read per tag
        for i in range(full):
            transcript.add(_pread_exact(fd, TAG_SIZE, HEADER_SIZE + (i + 1) * stride - TAG_SIZE, what))
    else:  # small segments: whole blocks, tags sliced out (no syscall per segment)
        per_block = max(1, (4 << 20) // stride)
        for first in range(0, full, per_block):
            n = min(per_block, full - first)
            block = memoryview(_pread_exact(fd, n * stride, HEADER_SIZE + first * stride, what))
            for k in range(n):
                transcript.add(block[(k + 1) * stride - TAG_SIZE : (k + 1) * stride])
    transcript.add(_pread_exact(fd, TAG_SIZE, size - TAG_SIZE, what))
    return size, transcript.finish(size)


def _pread_exact(fd: int, n: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:  # the file shrank under us
        raise SealedStreamError(what)
    return data


def read_exact(f: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `f` (pipes return short reads); returns bytes read, short only at EOF."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def read_header(src: BinaryIO, what: str) -> Header:
    raw = bytearray(HEADER_SIZE)
    if read_exact(src, memoryview(raw)) != HEADER_SIZE:
        raise SealedStreamError(what)
    return Header.parse(bytes(raw), what)


def unseal_segments(src: BinaryIO, keyring: DekUnwrapper, what: str) -> Iterator[memoryview]:
    """Verified plaintext segments of a stream read front to back; each view is valid until
    the next is requested. Only the final segment is short, so no look-ahead is needed."""
    opener = SegmentOpener(read_header(src, what), keyring, what)
    seg = opener.segment_size
    ct, plain = bytearray(seg + TAG_SIZE), bytearray(seg)
    index = 0
    while True:
        n = read_exact(src, memoryview(ct))
        if n < TAG_SIZE:  # a stream must end in a (short) final segment
            raise SealedStreamError(what)
        last = n < len(ct)
        out = memoryview(plain)[: n - TAG_SIZE]
        opener.open_into(index, last, memoryview(ct)[:n], out)
        yield out
        if last:
            return
        index += 1
