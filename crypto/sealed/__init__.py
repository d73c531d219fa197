"""trainguard.crypto.sealed: sealed streams (format v1 in `stream`), on paths and pipes in `files`."""

from __future__ import annotations

from trainguard.crypto.sealed.stream import (
    AAD_SIZE,
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    RewrapResult,
    SealedReader,
    SealedStreamError,
    SealedWriter,
    is_sealed,
    iter_unsealed,
    rewrap_file,
    rewrap_files,
    seal_file,
    seal_stream,
    sealed_kek_version,
    unseal_file,
)

__all__ = [
    "AAD_SIZE",
    "DEFAULT_SEGMENT_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "RewrapResult",
    "SealedReader",
    "SealedStreamError",
    "SealedWriter",
    "TAG_SIZE",
    "is_sealed",
    "iter_unsealed",
    "rewrap_file",
    "rewrap_files",
    "seal_file",
    "seal_stream",
    "sealed_kek_version",
    "unseal_file",
]
