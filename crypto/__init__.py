"""trainguard.crypto: keyring, sealed streams, signatures and manifests, cluster PKI.

Import public names from here; everything else is private to the area.
"""

from trainguard.crypto.config import CryptoConfig
from trainguard.crypto.errors import (
    BadSignature,
    DecryptionError,
    KeyFileError,
    KeyringError,
    RetiredKeyError,
)
from trainguard.crypto.keyring import KekInfo, Keyring, WrappedDek
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json

__all__ = [
    "BadSignature",
    "CryptoConfig",
    "DecryptionError",
    "KekInfo",
    "KeyFileError",
    "Keyring",
    "KeyringError",
    "RetiredKeyError",
    "SigningKey",
    "VerifyKey",
    "WrappedDek",
    "canonical_json",
    # --- pki (lead): add ClusterCA, server_context, client_context, peer_identity, Identity here
]
