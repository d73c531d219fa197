"""Ed25519 signing keys and canonical JSON.

The node's key signs audit checkpoints, manifests, the policy file, dependency locks and session
tokens. Private keys are stored as unencrypted PKCS#8 PEM in 0600 files (the home's keys/ folder
is 0700); they are read with O_NOFOLLOW. `repr()` never shows key material.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from trainguard.core.fs import read_private, write_private
from trainguard.core.home import RESTORE_KEY_TIP
from trainguard.crypto.errors import BadSignature, KeyFileError

__all__ = ["SigningKey", "VerifyKey", "canonical_json"]


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8. What gets hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class VerifyKey:
    """An Ed25519 public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyKey:
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise KeyFileError("not a 32-byte Ed25519 public key") from exc

    @classmethod
    def load(cls, path: Path) -> VerifyKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(
                f"cannot read public key {path}: {exc.strerror}", tip="run `trainguard init`"
            ) from exc
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"{path} is not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        return cls(key)

    def to_bytes(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def save(self, path: Path) -> None:
        write_private(path, self.to_pem(), mode=0o644)

    @property
    def key_id(self) -> str:
        """First 16 hex digits of SHA-256 over the raw public key."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def verify(self, signature: bytes, data: bytes, *, what: str = "data") -> None:
        """Return nothing if `signature` is valid for `data`, else raise `BadSignature`."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature as exc:
            raise BadSignature(what) from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.to_bytes() == self.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"VerifyKey(key_id={self.key_id})"


class SigningKey:
    """An Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        data = read_private(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a PEM private key", tip=RESTORE_KEY_TIP) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the private key (0600) and the public key next to it as `<path>.pub`."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
        self.public_key().save(path.with_name(path.name + ".pub"))

    def public_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key())

    @property
    def key_id(self) -> str:
        return self.public_key().key_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id})"
