"""trainguard.crypto: keyring, sealed streams, signatures and manifests, cluster PKI.

Import public names from here; everything else is private to the area.
"""

from trainguard.crypto.config import CryptoConfig
from trainguard.crypto.errors import (
    BadSignature,
    CryptoError,
    DecryptionError,
    KeyFileError,
    KeyringError,
    ManifestError,
    ManifestMismatch,
    RetiredKeyError,
    SealedStreamError,
)
from trainguard.crypto.keyring import KekInfo, Keyring, WrappedDek, open_keyring
from trainguard.crypto.manifest import (
    FileEntry,
    Manifest,
    build_manifest,
    default_manifest_path,
    sign_path,
    verify_path,
)
from trainguard.crypto.pki import (
    ClusterCA,
    Identity,
    IdentityKind,
    IssuedCert,
    PkiError,
    client_context,
    needs_renewal,
    peer_identity,
    server_context,
)
from trainguard.crypto.sealed.stream import (
    SealedReader,
    SealedWriter,
    is_sealed,
    rewrap_file,
    seal_file,
    unseal_file,
)
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json

__all__ = [
    "BadSignature",
    "CryptoConfig",
    "CryptoError",
    "DecryptionError",
    "FileEntry",
    "KekInfo",
    "KeyFileError",
    "Keyring",
    "KeyringError",
    "Manifest",
    "ManifestError",
    "ManifestMismatch",
    "RetiredKeyError",
    "SealedReader",
    "SealedStreamError",
    "SealedWriter",
    "SigningKey",
    "VerifyKey",
    "WrappedDek",
    "build_manifest",
    "canonical_json",
    "default_manifest_path",
    "is_sealed",
    "open_keyring",
    "rewrap_file",
    "seal_file",
    "sign_path",
    "unseal_file",
    "verify_path",
    "ClusterCA",
    "Identity",
    "IdentityKind",
    "IssuedCert",
    "PkiError",
    "client_context",
    "needs_renewal",
    "peer_identity",
    "server_context",
]
