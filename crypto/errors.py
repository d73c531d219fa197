"""Errors of the crypto area. Verification failures carry one generic message each, so nothing
leaks which check failed (pyca/cryptography's `InvalidToken` habit)."""

from __future__ import annotations

from trainguard.core.errors import CryptoError, IntegrityError

__all__ = ["BadSignature", "CryptoError", "IntegrityError", "KeyFileError"]


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
