from __future__ import annotations

import trainguard.crypto as crypto


def test_public_names_are_exported() -> None:
    for name in crypto.__all__:
        assert hasattr(crypto, name), name
    for name in (
        "Keyring",
        "SealedWriter",
        "SealedReader",
        "sign_path",
        "verify_path",
        "SigningKey",
    ):
        assert name in crypto.__all__
