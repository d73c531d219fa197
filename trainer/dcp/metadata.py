"""DCP's `.metadata`, unpickled only into DCP's own metadata classes (never `pickle.load`)."""

from __future__ import annotations

import pickle
from typing import IO, Any

import torch
from torch.distributed.checkpoint.metadata import Metadata
from trainguard.trainer.dcp.signed import _Refused

# ---- DCP's metadata, unpickled only into its own classes --------------------------------------

_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    (_MD, "Metadata"), (_MD, "MetadataIndex"), (_MD, "StorageMeta"), (_MD, "TensorProperties"),
    (_MD, "TensorStorageMetadata"), (_MD, "BytesStorageMetadata"), (_MD, "ChunkStorageMetadata"),
    (_MD, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a layout by name (torch.strided)
    ("torch", "Size"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id
    ("collections", "OrderedDict"),
})


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch.Size, dtypes and paths; refuses every other global
    (so a crafted pickle cannot reach os.system, eval, getattr, builtins...)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _Refused(f"DCP metadata refers to {module}.{name}, which is not a metadata class")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("DCP metadata holds a persistent reference")


def load_metadata(data: IO[bytes]) -> Metadata:
    """DCP `Metadata` from a pickle, through the restricted unpickler."""
    try:
        md = _MetadataUnpickler(data).load()
    except _Refused:
        raise
    except Exception as exc:  # a malformed pickle: any of pickle's many error types
        raise _Refused(f"DCP metadata is malformed ({type(exc).__name__})") from exc
    if not isinstance(md, Metadata):
        raise _Refused("DCP metadata is not a Metadata object")
    return md
