"""Errors of the crypto area. Verification failures carry one generic message each, so nothing
leaks which check failed (pyca/cryptography's `InvalidToken` habit)."""

from __future__ import annotations

from trainguard.core.errors import CryptoError, IntegrityError

__all__ = [
    "BadSignature",
    "CryptoError",
    "DecryptionError",
    "IntegrityError",
    "KeyFileError",
    "KeyringError",
    "ManifestError",
    "ManifestMismatch",
    "RetiredKeyError",
    "SealedStreamError",
]


class BadSignature(CryptoError):
    """A signature did not verify."""

    def __init__(self, what: str = "data") -> None:
        super().__init__(
            f"signature verification failed for {what}; it may have been modified maliciously",
            tip="do not use it; restore it from a trusted copy or re-sign it after review",
        )


class KeyFileError(CryptoError):
    """A key file is missing, unreadable or not a key of the expected type (exit 2)."""

    exit_code = 2


class KeyringError(CryptoError):
    """The keyring cannot be created, opened or changed as asked (exit 2)."""

    exit_code = 2


class DecryptionError(CryptoError):
    """A small encrypted blob did not decrypt: wrong key, wrong context or modified (exit 1)."""

    def __init__(self, what: str = "data") -> None:
        super().__init__(
            f"decryption failed for {what}: it was modified, or encrypted under another keyring",
            tip="restore it from a trusted copy, or point --home at the keyring that wrote it",
        )


class RetiredKeyError(CryptoError):
    """Data needs a KEK version that was retired (exit 1). Names the version, never key bytes."""

    def __init__(self, version: int, minimum: int, what: str = "data") -> None:
        self.version = version
        self.minimum = minimum
        super().__init__(
            f"{what} needs KEK version {version}, which was retired "
            f"(the minimum decryption version is {minimum})",
            tip="restore the retired key from a backup to read it; next time run "
            "`trainguard key rewrap PATH...` before `trainguard key retire`",
        )


class SealedStreamError(CryptoError):
    """A sealed stream failed authentication. One message for every cause (exit 1)."""

    def __init__(self, what: str = "sealed stream") -> None:
        super().__init__(
            f"{what} failed authentication: it is damaged, truncated, reordered, modified, "
            "or sealed under another keyring",
            tip="do not use it; restore it from a trusted copy, or point --home at the "
            "keyring that sealed it",
        )


class ManifestError(CryptoError):
    """A manifest cannot be built or read (exit 2): unreadable path, bad manifest file."""

    exit_code = 2


class ManifestMismatch(IntegrityError):
    """The files no longer match a correctly signed manifest (exit 1)."""

    def __init__(
        self, missing: list[str], extra: list[str], changed: list[str], *, what: str = "artifact"
    ) -> None:
        self.missing = missing
        self.extra = extra
        self.changed = changed
        parts = []
        for label, names in (("missing", missing), ("extra", extra), ("changed", changed)):
            if names:
                shown = ", ".join(names[:10]) + (
                    f" (+{len(names) - 10} more)" if len(names) > 10 else ""
                )
                parts.append(f"{label}: {shown}")
        super().__init__(
            f"{what} does not match its signed manifest; " + "; ".join(parts),
            tip="do not use it; restore the listed files from a trusted copy, or re-sign "
            "after review with `trainguard sign`",
        )
