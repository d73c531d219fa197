"""The node keyring: versioned key-encryption keys (KEKs) that wrap per-file data keys.

Files in ``keys/`` (folder 0700, files 0600, read with O_NOFOLLOW)::

    kek-v1.key, kek-v2.key, ...   32 random bytes each: one AES-256 KEK per version
    keyring.json                  {"format": 1, "kek_id": "<16 hex>", "min_version": M,
                                   "versions": [{"version": 1, "created_at": <unix s>}, ...]}

``kek_id`` names the keyring (it survives rotations); the version names one KEK inside it.
`rotate()` adds a version and makes it current; old versions keep decrypting until
`retire_below(v)` raises the minimum decryption version and deletes the older key files. Data
that still needs a retired version then fails with `RetiredKeyError`, which names the version:
run ``trainguard key rewrap`` (only the small header of a sealed file is rewritten) before
retiring.

Under systemd the KEKs may come from ``$CREDENTIALS_DIRECTORY`` (systemd-creds, TPM2-sealed):
entry points record that folder in `Home.credentials_dir` (`Home.resolve`), and a
``kek-v<N>.key`` found there wins over the file in ``keys/``. Everything outside this module
opens a home's keyring with `open_keyring(home)`, so every command honours the credential.
Library code never reads the environment itself.

Wrapped DEK (`WrappedDek.blob`, 60 bytes): nonce(12) ‖ AES-256-GCM(KEK, DEK 32) ‖ tag(16), with
AAD = ``b"trainguard/dek/v1" ‖ kek_id ‖ BE32(version)``.
Small blob (`encrypt_small`): ``b"TGK1"`` ‖ kek_id(8) ‖ BE32(version) ‖ nonce(12) ‖ ciphertext ‖
tag(16), with AAD = those first 16 bytes ‖ the caller's aad.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from trainguard.core.clock import Clock, Random
from trainguard.core.errors import TrainguardError
from trainguard.core.fs import read_private, write_private
from trainguard.core.home import RESTORE_KEY_TIP, Home
from trainguard.crypto.errors import DecryptionError, KeyringError, RetiredKeyError

__all__ = ["KEK_BYTES", "KekInfo", "Keyring", "WrappedDek", "open_keyring"]

log = logging.getLogger(__name__)

KEK_BYTES = 32
DEK_BYTES = 32
WRAPPED_DEK_BYTES = 12 + DEK_BYTES + 16
_META = "keyring.json"
_FORMAT = 1
_DEK_AAD = b"trainguard/dek/v1"
_SMALL_MAGIC = b"TGK1"
_SMALL_HEAD = struct.Struct(">4s8sI")  # magic, kek id, version

@dataclass(frozen=True)
class KekInfo:
    """One KEK version as `key list` shows it (never the key bytes)."""

    version: int
    created_at: float
    retired: bool
    current: bool = False


@dataclass(frozen=True)
class WrappedDek:
    """A data key wrapped under one KEK version; `blob` is nonce ‖ ciphertext ‖ tag."""

    kek_id: str
    version: int
    blob: bytes

    def __repr__(self) -> str:  # the blob is not secret, but keep reprs short
        return f"WrappedDek(kek_id={self.kek_id}, version={self.version})"


def _kek_file(version: int) -> str:
    return f"kek-v{version}.key"


def _dek_aad(kek_id: str, version: int) -> bytes:
    return _DEK_AAD + bytes.fromhex(kek_id) + struct.pack(">I", version)


class Keyring:
    """Versioned KEKs in one folder. Create with `create`, load with `open`."""

    def __init__(
        self,
        keys_dir: Path,
        meta: dict[str, Any],
        *,
        clock: Clock = time.time,
        rng: Random = os.urandom,
        credentials_dir: Path | None = None,
    ) -> None:
        self._dir = Path(keys_dir)
        self._meta = meta
        self._clock = clock
        self._rng = rng
        self._credentials_dir = credentials_dir
        self._keys: dict[int, bytes] = {}

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        keys_dir: Path,
        *,
        clock: Clock = time.time,
        rng: Random = os.urandom,
    ) -> Keyring:
        """Create a keyring with KEK v1 in `keys_dir`; refuses to overwrite an existing one."""
        keys_dir = Path(keys_dir)
        if (keys_dir / _META).exists():
            raise KeyringError(
                f"a keyring already exists in {keys_dir}",
                tip="use it, or move it aside first (data sealed under it needs it to decrypt)",
            )
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "kek_id": rng(8).hex(),
            "min_version": 1,
            "versions": [],
        }
        ring = cls(keys_dir, meta, clock=clock, rng=rng)
        ring._add_version(1)
        log.info("created keyring %s with KEK v1", ring.kek_id)
        return ring

    @classmethod
    def open(
        cls,
        keys_dir: Path,
        *,
        clock: Clock = time.time,
        rng: Random = os.urandom,
        credentials_dir: Path | None = None,
    ) -> Keyring:
        """Load the keyring metadata of `keys_dir`; key files are read when first needed."""
        path = Path(keys_dir) / _META
        try:
            meta = json.loads(read_private(path))
        except TrainguardError as exc:
            raise KeyringError(
                f"cannot open the keyring in {keys_dir}: {exc.message}",
                tip=exc.tip or "run `trainguard init` to create a home with a keyring",
            ) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyringError(f"{path} is not a keyring file", tip=RESTORE_KEY_TIP) from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or not meta.get("versions"):
            raise KeyringError(
                f"{path} is not a keyring file of format {_FORMAT}", tip=RESTORE_KEY_TIP
            )
        return cls(keys_dir, meta, clock=clock, rng=rng, credentials_dir=credentials_dir)

    # -- metadata -------------------------------------------------------------------------

    @property
    def keys_dir(self) -> Path:
        return self._dir

    @property
    def kek_id(self) -> str:
        return str(self._meta["kek_id"])

    @property
    def current_version(self) -> int:
        return max(int(v["version"]) for v in self._meta["versions"])

    @property
    def min_version(self) -> int:
        return int(self._meta["min_version"])

    def versions(self) -> list[KekInfo]:
        cur, low = self.current_version, self.min_version
        return [
            KekInfo(
                version=int(v["version"]),
                created_at=float(v["created_at"]),
                retired=int(v["version"]) < low,
                current=int(v["version"]) == cur,
            )
            for v in sorted(self._meta["versions"], key=lambda v: int(v["version"]))
        ]

    def current_info(self) -> KekInfo:
        return next(v for v in self.versions() if v.current)

    def rotate(self) -> KekInfo:
        """Add a new KEK version and make it current. Older versions still decrypt."""
        version = self.current_version + 1
        self._add_version(version)
        log.info("rotated keyring %s to KEK v%d", self.kek_id, version)
        return self.current_info()

    def retire_below(self, version: int) -> list[int]:
        """Refuse decryption under versions < `version` and delete their key files.

        Returns the versions newly retired. The current version can never be retired.
        """
        if version > self.current_version:
            raise KeyringError(
                f"cannot retire KEK versions below {version}: the current version is "
                f"{self.current_version}",
                tip="run `trainguard key rotate` first, then `key rewrap`, then retire",
            )
        old_min = self.min_version
        if version <= old_min:
            return []
        self._meta["min_version"] = version
        self._save_meta()
        retired = list(range(old_min, version))
        for v in retired:
            self._keys.pop(v, None)
            try:
                os.unlink(self._dir / _kek_file(v))
            except FileNotFoundError:
                pass
        log.info("retired KEK versions %s of keyring %s", retired, self.kek_id)
        return retired

    # -- key use ----------------------------------------------------------------------------

    def wrap_dek(self, dek: bytes) -> WrappedDek:
        """Encrypt a 32-byte data key under the current KEK."""
        if len(dek) != DEK_BYTES:
            raise ValueError("a DEK is 32 bytes")
        version = self.current_version
        nonce = self._rng(12)
        blob = nonce + AESGCM(self._kek(version)).encrypt(
            nonce, dek, _dek_aad(self.kek_id, version)
        )
        return WrappedDek(self.kek_id, version, blob)

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes:
        """Decrypt a wrapped DEK. Raises `RetiredKeyError` or `DecryptionError`."""
        if wrapped.kek_id != self.kek_id or len(wrapped.blob) != WRAPPED_DEK_BYTES:
            raise DecryptionError(what)
        key = self._kek_for_decrypt(wrapped.version, what)
        try:
            return AESGCM(key).decrypt(
                wrapped.blob[:12], wrapped.blob[12:], _dek_aad(wrapped.kek_id, wrapped.version)
            )
        except InvalidTag as exc:
            raise DecryptionError(what) from exc

    def encrypt_small(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under the current KEK for small secrets (tokens, job keys, configs)."""
        version = self.current_version
        head = _SMALL_HEAD.pack(_SMALL_MAGIC, bytes.fromhex(self.kek_id), version)
        nonce = self._rng(12)
        return head + nonce + AESGCM(self._kek(version)).encrypt(nonce, plaintext, head + aad)

    def decrypt_small(self, blob: bytes, aad: bytes, *, what: str = "data") -> bytes:
        """Reverse `encrypt_small` with the same `aad`; the KEK version is read from the blob."""
        if len(blob) < _SMALL_HEAD.size + 12 + 16:
            raise DecryptionError(what)
        magic, kid, version = _SMALL_HEAD.unpack_from(blob)
        if magic != _SMALL_MAGIC or kid.hex() != self.kek_id:
            raise DecryptionError(what)
        key = self._kek_for_decrypt(version, what)
        head, nonce = blob[: _SMALL_HEAD.size], blob[_SMALL_HEAD.size : _SMALL_HEAD.size + 12]
        try:
            return AESGCM(key).decrypt(nonce, blob[_SMALL_HEAD.size + 12 :], head + aad)
        except InvalidTag as exc:
            raise DecryptionError(what) from exc

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose`, HKDF-SHA256 from the current KEK.

        Stable for the same purpose and KEK version; changes after `rotate()`.
        """
        version = self.current_version
        info = f"trainguard/derive/v1/{self.kek_id}/{version}/{purpose}".encode()
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        return hkdf.derive(self._kek(version))

    # -- internals --------------------------------------------------------------------------

    def _kek_for_decrypt(self, version: int, what: str) -> bytes:
        known = {v.version for v in self.versions()}
        if version not in known:
            raise DecryptionError(what)
        if version < self.min_version:
            raise RetiredKeyError(version, self.min_version, what)
        return self._kek(version)

    def _kek(self, version: int) -> bytes:
        key = self._keys.get(version)
        if key is not None:
            return key
        path = self._dir / _kek_file(version)
        if self._credentials_dir is not None:
            cred = self._credentials_dir / _kek_file(version)
            if cred.exists():
                path = cred
        try:
            key = read_private(path)
        except TrainguardError as exc:
            raise KeyringError(
                f"KEK version {version} of keyring {self.kek_id} is unavailable: {exc.message}",
                tip=exc.tip or "restore the key file from a backup",
            ) from exc
        if len(key) != KEK_BYTES:
            raise KeyringError(f"{path} is not a {KEK_BYTES}-byte KEK", tip=RESTORE_KEY_TIP)
        self._keys[version] = key
        return key

    def _add_version(self, version: int) -> None:
        key = self._rng(KEK_BYTES)
        write_private(self._dir / _kek_file(version), key)
        self._keys[version] = key
        self._meta["versions"].append({"version": version, "created_at": self._clock()})
        self._save_meta()

    def _save_meta(self) -> None:
        write_private(self._dir / _META, json.dumps(self._meta, indent=2, sort_keys=True).encode())

    def __repr__(self) -> str:
        return f"Keyring(kek_id={self.kek_id}, current_version={self.current_version})"


def open_keyring(
    home: Home,
    *,
    clock: Clock = time.time,
    rng: Random = os.urandom,
) -> Keyring:
    """The keyring of `home`: metadata from ``keys/``, each KEK from the home's systemd
    credentials folder when it holds that version, else from ``keys/``.

    Raises:
        HomeError: `home` was never created by `trainguard init`.
        KeyringError: the keyring metadata is missing or damaged.
    """
    home.require()
    return Keyring.open(home.keys_dir, clock=clock, rng=rng, credentials_dir=home.credentials_dir)
