"""The crypto area's public names are pinned (httpx's habit): removing one is a breaking change."""

import trainguard.crypto as crypto


def test_public_names_are_exported_and_resolvable() -> None:
    expected = {
        "Keyring", "SealedReader", "SealedWriter", "seal_file", "unseal_file", "rewrap_file", "is_sealed",
        "SigningKey", "VerifyKey", "canonical_json", "build_manifest", "sign_path", "verify_path",
        "ClusterCA", "server_context", "client_context", "peer_identity", "Identity",
        "BadSignature", "SealedStreamError", "RetiredKeyError",
    }
    assert expected <= set(crypto.__all__)
    for name in crypto.__all__:
        assert getattr(crypto, name) is not None
