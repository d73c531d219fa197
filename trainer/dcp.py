"""Sealed, signed torch.distributed.checkpoint (DCP) checkpoints of sharded state.

Layout in the checkpoint folder::

    step-00000100.dcp/               DCP's own files, each one sealed stream (crypto.sealed):
        __0_0.distcp, __1_0.distcp   one per rank (offsets inside are plaintext offsets)
        .metadata                    DCP's pickled `Metadata`, sealed like the shards
    step-00000100.dcp.tgsig.json     manifest of every file of the step (kind "directory",
                                     name, size, SHA-256 of the ciphertext), signed; written
                                     LAST by the coordinator rank, when every rank has written

A step folder without its signed manifest is an unfinished save (a crash, a killed rank) and is
never a candidate for loading, so the newest checkpoint that verifies is always a complete one.

Writing: `SealedDcpWriter` is DCP's `FileSystemWriter` on a file system whose streams seal
everything written (a fresh data key per file from `keys.data_key()`, the key service's
``checkpoint-key``) and hash the ciphertext on the way out. Each rank returns its files' digests
with its write results; the coordinator's `finish` writes the sealed ``.metadata``, then signs
the manifest over all of them (``DOMAIN ‖ canonical_json(manifest)``, the signature of
`trainguard.trainer.checkpoint`) and writes it. The same path serves DCP's `async_save`: the
finish runs in DCP's upload thread after every rank's upload.

Loading: `SealedDcpReader.read_metadata` first checks the manifest's signature (`verify`), that
it names this step, that the folder holds exactly its files (no missing, no extra, no links)
with their sizes, and the hash of ``.metadata``; only then is ``.metadata`` unsealed and read by
a restricted unpickler that builds DCP's metadata classes and nothing else (no `pickle.load`).
A shard is hashed against the manifest before it is opened; the sealed stream then
authenticates every segment as it is read. Any failure is `CheckpointTampered`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

import torch
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future as TorchFuture
from trainguard.core.errors import TrainguardError
from trainguard.core.fs import atomic_output
from trainguard.crypto.keyring import Keyring, WrappedDek
from trainguard.crypto.manifest import FileEntry, Manifest
from trainguard.crypto.sealed.stream import (
    DEFAULT_SEGMENT_SIZE,
    DataKey,
    SealedReader,
    SealedWriter,
)
from trainguard.crypto.signing import SigningKey, canonical_json
from trainguard.trainer.checkpoint import DOMAIN, _verify_signature
from trainguard.trainer.context import Trust
from trainguard.trainer.errors import CheckpointTampered, TrainerError

__all__ = [
    "DcpCheckpoints",
    "LocalKeys",
    "SealedDcpReader",
    "SealedDcpWriter",
    "SealingKeys",
    "export_single",
    "Signer",
    "Verifier",
    "newest_verified",
    "signing_key_signer",
    "trust_verifier",
    "verify_step",
]

log = logging.getLogger(__name__)

_STEP = re.compile(r"^step-(\d{8})\.dcp$")
_SUFFIX = ".tgsig.json"
_DIGESTS = "__trainguard_digests__"  # the fqn of the write result that carries a rank's digests
_METADATA = ".metadata"


class SealingKeys(Protocol):
    """Data keys for sealing and unwrapping: the key service client (`trainer.keys.KeyClient`)."""

    def data_key(self) -> DataKey: ...

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes: ...


Signer = Callable[[dict[str, Any]], dict[str, Any]]
"""Signs a manifest body: returns {"algorithm", "key_id", "certificate", "signature" (base64)}
over ``DOMAIN ‖ canonical_json(body)`` (`KeyClient.sign`)."""

Verifier = Callable[[dict[str, Any], bytes, bytes], str]
"""(manifest document, signature, signed message) -> who signed; raises on any failure."""


class LocalKeys:
    """`SealingKeys` on a keyring held in this process (single-node tools such as `checkpoint
    export`, and tests); workers of a job use the key service client instead."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    def data_key(self) -> DataKey:
        dek = os.urandom(32)
        return DataKey(dek, self._keyring.wrap_dek(dek))

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes:
        return self._keyring.unwrap_dek(wrapped, what=what)

    def __repr__(self) -> str:
        return "LocalKeys(...)"


def trust_verifier(trust: Trust) -> Verifier:
    """Verify with this node's key or a cluster node certificate (as single-file checkpoints)."""

    def verify(doc: dict[str, Any], signature: bytes, message: bytes) -> str:
        return _verify_signature(trust, doc, signature, message)

    return verify


def signing_key_signer(key: SigningKey) -> Signer:
    """A `Signer` on an Ed25519 key held in this process (single-node tools and tests; workers
    of a job sign through the key service instead)."""

    def sign(body: dict[str, Any]) -> dict[str, Any]:
        sig = key.sign(DOMAIN + canonical_json(body))
        return {"algorithm": "ed25519", "key_id": key.key_id, "certificate": None,
                "signature": base64.b64encode(sig).decode()}

    return sign


class _Refused(Exception):
    """Raised inside DCP's steps (it may cross ranks pickled); becomes CheckpointTampered."""


def manifest_path(folder: Path) -> Path:
    return folder.with_name(folder.name + _SUFFIX)


# ---- sealed streams on DCP's file system ------------------------------------------------------


class _Sink:
    """The file object a `SealedWriter` writes ciphertext into: `raw`, hashed on the way."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha.update(data)
        n = self.raw.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        pass  # flushed once, when the stream is finished


class _SealingStream(io.RawIOBase):
    """What DCP writes into: seals into `raw` and reports plaintext offsets (DCP's tell())."""

    def __init__(self, raw: BinaryIO, key: DataKey, segment_size: int) -> None:
        super().__init__()
        self.sink = _Sink(raw)
        self._sealer = SealedWriter(cast(BinaryIO, self.sink), key, segment_size=segment_size)

    def write(self, data: Any) -> int:
        return self._sealer.write(data)

    def tell(self) -> int:
        return self._sealer.tell()

    def fileno(self) -> int:  # DCP fsyncs what is written so far; finish() syncs the rest
        return self.sink.raw.fileno()

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def finish(self, sync: bool) -> None:
        self._sealer.close()
        self.sink.raw.flush()
        if sync:
            os.fsync(self.sink.raw.fileno())

    def abort(self) -> None:
        self._sealer.abort()

    def close(self) -> None:  # DCP closes the stream itself; sealing ends in finish()
        pass


class _SealedFileSystem(FileSystem):
    """DCP's local file system with every stream sealed (write) or verified and unsealed (read)."""

    def __init__(self, keys: SealingKeys, *, sync: bool = True,
                 segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self._keys = keys
        self._sync = sync
        self._segment_size = segment_size
        self._lock = threading.Lock()
        self.digests: dict[str, tuple[int, str]] = {}  # written: name -> (size, sha256)
        self.expected: dict[str, FileEntry] | None = None  # read: the verified manifest
        self.folder: Path | None = None  # read: the verified step folder
        self._hashed: set[str] = set()

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[io.IOBase]:
        p = Path(path)
        if mode == "wb":
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(p, flags, 0o600), "wb") as raw:
                stream = _SealingStream(raw, self._keys.data_key(), self._segment_size)
                try:
                    yield stream
                except BaseException:
                    stream.abort()
                    raise
                stream.finish(self._sync)
            with self._lock:
                self.digests[p.name] = (stream.sink.size, stream.sink.sha.hexdigest())
        elif mode == "rb":
            self._check(p)
            with p.open("rb") as src, SealedReader(cast(BinaryIO, src), self._keys,
                                                   what=p.name) as reader:
                yield reader
        else:
            raise ValueError(f"unsupported mode {mode!r}")

    def _check(self, p: Path) -> None:
        """Hash a file against the verified manifest before any of it is unsealed."""
        if self.expected is None or p.name not in self.expected or p.parent != self.folder:
            raise _Refused(f"{p.name} is not a signed file of this checkpoint")
        with self._lock:
            if p.name in self._hashed:
                return
        entry = self.expected[p.name]
        got = _hash(p)
        if got != (entry.size, entry.sha256):
            raise _Refused(f"{p.parent.name}/{p.name} does not match its signed manifest")
        with self._lock:
            self._hashed.add(p.name)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        super().rename(path, new_path)
        with self._lock:
            if Path(path).name in self.digests:
                self.digests[Path(new_path).name] = self.digests.pop(Path(path).name)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)


def _hash(path: Path) -> tuple[int, str]:
    from trainguard.core.fs import hash_file

    try:
        d = hash_file(path, follow_symlinks=False)
    except OSError as exc:
        raise _Refused(f"{path.name} cannot be read") from exc
    return d.size, d.sha256


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


# ---- the signed manifest of one step ----------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    """A verified step folder: its step, path and who signed it."""

    step: int
    path: Path
    signer: str
    files: Mapping[str, FileEntry]


def _read_signed(folder: Path, verify: Verifier) -> tuple[Manifest, str]:
    mpath = manifest_path(folder)
    try:
        doc = json.loads(mpath.read_bytes())
        body = doc["manifest"]
        signature = base64.b64decode(doc["signature"], validate=True)
        signer = verify(doc, signature, DOMAIN + canonical_json(body))
        manifest = Manifest.from_json(body)
    except FileNotFoundError as exc:
        raise CheckpointTampered(f"checkpoint {folder.name}: no signed manifest (unfinished)") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted document is a refusal
        raise CheckpointTampered(f"checkpoint {folder.name}: signature does not verify") from exc
    if manifest.kind != "directory" or manifest.name != folder.name:
        raise CheckpointTampered(f"checkpoint {folder.name}: manifest names another checkpoint")
    return manifest, signer


def _check_listing(folder: Path, files: Mapping[str, FileEntry]) -> None:
    """Exactly the signed files, as regular files of the signed sizes (no links, no extras)."""
    try:
        present = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(folder)}
    except OSError as exc:
        raise CheckpointTampered(f"checkpoint {folder.name}: folder cannot be read") from exc
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    if missing or extra:
        raise CheckpointTampered(
            f"checkpoint {folder.name}: missing {missing or 'none'}, unsigned {extra or 'none'}")
    for name, st in present.items():
        if not stat.S_ISREG(st.st_mode) or st.st_size != files[name].size:
            raise CheckpointTampered(f"checkpoint {folder.name}: {name} does not match its manifest")


def verify_step(folder: Path, verify: Verifier, *, hash_all: bool = True) -> StepInfo:
    """Check a step folder against its signed manifest (signature, file set, sizes and, with
    `hash_all`, every file's SHA-256). Raises `CheckpointTampered`."""
    manifest, signer = _read_signed(folder, verify)
    files = {e.path: e for e in manifest.files}
    if any(e.link is not None or "/" in e.path for e in files.values()) or _METADATA not in files:
        raise CheckpointTampered(f"checkpoint {folder.name}: manifest is not a DCP checkpoint's")
    _check_listing(folder, files)
    for name in sorted(files) if hash_all else [_METADATA]:
        try:
            got = _hash(folder / name)
        except _Refused as exc:
            raise CheckpointTampered(f"checkpoint {folder.name}: {exc}") from exc
        if got != (files[name].size, files[name].sha256):
            raise CheckpointTampered(f"checkpoint {folder.name}: {name} does not match its manifest")
    m = _STEP.match(folder.name)
    return StepInfo(int(m.group(1)) if m else -1, folder, signer, files)


def list_steps(directory: Path) -> list[tuple[int, Path]]:
    """Step folders that have a manifest, newest first (not yet verified)."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _STEP.match(p.name)
        if m and manifest_path(p).exists():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def newest_verified(directory: Path, verify: Verifier) -> tuple[StepInfo | None, list[tuple[Path, str]]]:
    """The newest step folder that fully verifies, and every newer one refused with its reason."""
    refused: list[tuple[Path, str]] = []
    for _step, folder in list_steps(directory):
        try:
            return verify_step(folder, verify), refused
        except CheckpointTampered as exc:
            log.warning("refusing %s: %s", folder, exc.message)
            refused.append((folder, exc.message))
    return None, refused


# ---- DCP storage writer and reader ------------------------------------------------------------


class SealedDcpWriter(FileSystemWriter):
    """DCP's `FileSystemWriter` with every file sealed and a signed manifest written last.

    Args:
        path: the step folder (``<dir>/step-NNNNNNNN.dcp``).
        keys: data keys (`SealingKeys`); sign: signs the manifest (`Signer`).
        keep: after signing, the coordinator keeps this many signed steps in the parent folder
            and removes unfinished older ones (0: prune nothing).
    """

    def __init__(self, path: Path, keys: SealingKeys, sign: Signer, *, sync_files: bool = True,
                 thread_count: int = 1, keep: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files,
                         thread_count=thread_count, overwrite=True)
        self.fs: _SealedFileSystem = _SealedFileSystem(keys, sync=sync_files)
        self._sign = sign
        self._keep = keep
        self._clock = clock
        self.signed: Path | None = None

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # The coordinator, after every rank created the folder and before any rank writes: a
        # signed step is never overwritten; files of an unfinished attempt are removed.
        folder = Path(self.path)
        if manifest_path(folder).exists():
            raise _Refused(f"{folder.name} is already a signed checkpoint; save another step")
        for leftover in folder.iterdir():
            leftover.unlink()
        return super().prepare_global_plan(plans)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> TorchFuture[list[WriteResult]]:
        results = list(super().write_data(plan, planner).wait())
        prefix = plan.storage_data.prefix
        with self.fs._lock:  # noqa: SLF001
            mine = {n: d for n, d in self.fs.digests.items() if n.startswith(prefix)}
        results.append(WriteResult(MetadataIndex(_DIGESTS + prefix), 0, mine))
        fut: TorchFuture[list[WriteResult]] = TorchFuture()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        digests: dict[str, tuple[int, str]] = {}
        kept: list[list[WriteResult]] = []
        for rank_results in results:
            kept.append([])
            for wr in rank_results:
                if wr.index.fqn.startswith(_DIGESTS):
                    digests.update(wr.storage_data)
                else:
                    kept[-1].append(wr)
        super().finish(metadata, kept)  # the sealed .metadata, through our file system
        digests[_METADATA] = self.fs.digests[_METADATA]
        folder = Path(self.path)
        on_disk = {p.name for p in folder.iterdir()}
        if on_disk != set(digests):
            raise _Refused(f"{folder.name}: files appeared that no rank reported; not signed")
        entries = tuple(FileEntry(n, int(s), str(h)) for n, (s, h) in sorted(digests.items()))
        body = Manifest("directory", folder.name, entries, self._clock()).to_json()
        signed = self._sign(body)
        doc = {"format": 1, "manifest": body, "key_id": signed.get("key_id"),
               "algorithm": signed["algorithm"], "certificate": signed.get("certificate"),
               "signature": signed["signature"]}
        with atomic_output(manifest_path(folder), mode=0o600) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        self.signed = manifest_path(folder)
        if self._keep:
            _prune(folder.parent, self._keep, folder)


def _prune(directory: Path, keep: int, current: Path) -> None:
    m = _STEP.match(current.name)
    now = int(m.group(1)) if m else -1
    for _step, folder in list_steps(directory)[keep:]:
        manifest_path(folder).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    for p in directory.iterdir():  # unfinished saves older than this one: crashed attempts
        s = _STEP.match(p.name)
        if s and int(s.group(1)) < now and not manifest_path(p).exists():
            shutil.rmtree(p, ignore_errors=True)


class SealedDcpReader(FileSystemReader):
    """DCP's `FileSystemReader` that verifies the signed manifest before reading anything, reads
    ``.metadata`` through the restricted unpickler, and hashes each shard before unsealing it."""

    def __init__(self, path: Path, keys: SealingKeys, verify: Verifier) -> None:
        super().__init__(path)
        self.fs: _SealedFileSystem = _SealedFileSystem(keys)
        self._verify = verify
        self.info: StepInfo | None = None
        self.refusal: str | None = None  # DCP turns read_metadata's exception into its own

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        try:
            return self._read_metadata()
        except _Refused as exc:
            self.refusal = self.refusal or str(exc)
            raise

    def _read_metadata(self) -> Metadata:
        folder = Path(self.path)
        if self.refusal is not None:  # DCP retries with the rank-local name: same answer
            raise _Refused(self.refusal)
        try:
            info = verify_step(folder, self._verify, hash_all=False)
        except CheckpointTampered as exc:
            raise _Refused(exc.message) from None
        self.info = info
        self.fs.folder = folder
        self.fs.expected = dict(info.files)
        with self.fs.create_stream(folder / _METADATA, "rb") as f:
            md = load_metadata(cast(IO[bytes], f))
        for sinfo in (md.storage_data or {}).values():
            if getattr(sinfo, "relative_path", None) not in info.files:
                raise _Refused(f"{folder.name}: metadata names a file that is not signed")
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> TorchFuture[None]:
        if self.fs.expected is None:
            raise _Refused("shards were requested before the manifest was verified")
        return super().read_data(plan, planner)


# ---- a folder of steps ------------------------------------------------------------------------


def _refusal(folder: Path, exc: BaseException, known: str | None = None) -> CheckpointTampered:
    """One `CheckpointTampered` for a failed load, however DCP wrapped the cause."""
    causes: list[BaseException] = [_Refused(known)] if known else [exc]
    if not known and isinstance(exc, CheckpointException):
        causes = [pair[0] if isinstance(pair, tuple) else pair for pair in exc.failures.values()]
    for cause in causes:
        if isinstance(cause, (_Refused, CheckpointTampered)):
            reason = cause.message if isinstance(cause, CheckpointTampered) else str(cause)
            return CheckpointTampered(f"checkpoint {folder.name}: {reason}".replace(
                f"checkpoint {folder.name}: checkpoint {folder.name}: ", f"checkpoint {folder.name}: "))
    name = type(causes[0]).__name__ if causes else type(exc).__name__
    return CheckpointTampered(f"checkpoint {folder.name}: cannot be unsealed or read ({name})")


class _ReusedCpuStager(AsyncStager):
    """Stages to CPU buffers kept between saves (DCP's own stager reallocates every time, or
    pins memory, which needs an accelerator). A save in flight is waited for before the next
    stage overwrites the buffers (`DcpCheckpoints.save`)."""

    _synchronize_after_execute = False

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None
        self._layout: object = None

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        layout = _layout(state_dict)
        if self._cache is None or layout != self._layout:
            self._cache = _create_cpu_state_dict(state_dict)
            self._layout = layout
        staged: dict[str, Any] = _copy_state_dict(state_dict, self._cache)
        return staged

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        self._cache = None


def _layout(obj: Any) -> object:
    """What must match for staged buffers to be reused: keys, types, shapes, dtypes."""
    if isinstance(obj, Mapping):
        return tuple((k, _layout(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_layout(v) for v in obj))
    if isinstance(obj, torch.Tensor):
        return (type(obj).__name__, tuple(obj.shape), obj.dtype, obj.device.type)
    return type(obj).__name__


class DcpCheckpoints:
    """Sealed, signed DCP checkpoints of one folder. Every rank calls every method (as DCP).

    Args:
        keys: data keys (the key service client); sign: signs manifests (coordinator only);
        verify: checks manifest signatures (`trust_verifier(ctx.trust)`).
        process_group: DCP's group; for `async_=True` a gloo group separate from training
            collectives is advisable (DCP's upload thread runs collectives on it).
    """

    def __init__(self, directory: Path, keys: SealingKeys, sign: Signer, verify: Verifier, *,
                 keep: int = 3, process_group: Any = None, sync_files: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._keys, self._sign, self._verify = keys, sign, verify
        self._keep, self._pg, self._sync, self._clock = keep, process_group, sync_files, clock
        self._pending: Future[Any] | None = None
        self._stager = _ReusedCpuStager()

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.dcp"

    def save(self, step: int, state: dict[str, Any], *, async_: bool = False) -> Future[Any] | None:
        """Write `state` (tensors, DTensors, Stateful objects) as step `step`.

        With `async_`, returns once the state is staged to CPU memory; the future completes
        after every rank's shards and the signed manifest are written (`.result()` raises what
        failed). A save in flight is waited for before the next one starts.
        """
        self.wait()
        if manifest_path(self.path_for(step)).exists():
            raise TrainerError(f"step {step} is already a signed checkpoint in {self.directory}",
                               tip="save under a new step number, or remove the old step first")
        writer = SealedDcpWriter(self.path_for(step), self._keys, self._sign,
                                 sync_files=self._sync, keep=self._keep, clock=self._clock)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if async_:
            fut = dcp_async_save(state, storage_writer=writer, process_group=self._pg,
                                 async_stager=self._stager)
            self._pending = cast(Future[Any], fut)
            return self._pending
        dcp_save(state, storage_writer=writer, process_group=self._pg)
        return None

    def wait(self) -> None:
        """Wait for an asynchronous save in flight (raises what it raised)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load(self, folder: Path, state: dict[str, Any]) -> StepInfo:
        """Verify and load one step into `state` in place (DCP resharding applies)."""
        reader = SealedDcpReader(folder, self._keys, self._verify)
        try:
            dcp_load(state, storage_reader=reader, process_group=self._pg)
        except (CheckpointException, _Refused, TrainguardError) as exc:
            raise _refusal(folder, exc, reader.refusal) from None
        except (RuntimeError, OSError, ValueError, EOFError, AssertionError) as exc:
            raise _refusal(folder, exc, reader.refusal) from exc
        assert reader.info is not None
        return reader.info

    def resume(self, state: dict[str, Any]) -> tuple[StepInfo | None, list[tuple[Path, str]]]:
        """Load the newest step that verifies into `state`; the refused newer ones with reasons.

        A refused step may have been partly read into `state` before its refusal; the older
        step that then loads overwrites every entry, and with none `state` must be rebuilt."""
        refused: list[tuple[Path, str]] = []
        for _step, folder in list_steps(self.directory):
            try:
                return self.load(folder, state), refused
            except CheckpointTampered as exc:
                log.warning("refusing %s: %s", folder, exc.message)
                refused.append((folder, exc.message))
        return None, refused

    def __repr__(self) -> str:
        return f"DcpCheckpoints({self.directory})"


class _ExportKeys:
    """`CheckpointStore`'s key object from separate data keys and signer."""

    def __init__(self, keys: SealingKeys, sign: Signer) -> None:
        self._keys, self._sign = keys, sign

    def data_key(self) -> DataKey:
        return self._keys.data_key()

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes:
        return self._keys.unwrap_dek(wrapped, what=what)

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._sign(body)


def export_single(folder: Path, out_dir: Path, keys: SealingKeys, sign: Signer,
                  verify: Verifier) -> Any:
    """Gather a verified sharded step into one sealed, signed single-file checkpoint
    (`trainguard.trainer.checkpoint` layout, ``{"step", "state"}``) in `out_dir`, in one
    process (no process group), e.g. for evaluation. Returns its `CheckpointInfo`.

    Every file is hashed against the manifest first; the full state is held in memory."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    from trainguard.trainer.checkpoint import CheckpointStore

    info = verify_step(folder, verify)
    state: dict[str, Any] = {}
    reader = SealedDcpReader(folder, keys, verify)
    try:
        _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)
    except (CheckpointException, _Refused, TrainguardError, RuntimeError, OSError,
            ValueError) as exc:
        raise _refusal(folder, exc, reader.refusal) from None
    store = CheckpointStore(out_dir, _ExportKeys(keys, sign), Trust(), keep=1 << 30)
    return store.save({"step": info.step, "state": state}, info.step)
