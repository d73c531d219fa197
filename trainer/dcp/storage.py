"""DCP's file-system writer and reader on sealed streams: every file sealed while written and
signed by their tag digests; nothing read before the step's manifest verified."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import shutil
import struct
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import torch
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future as TorchFuture
from trainguard.core.fs import atomic_output
from trainguard.crypto.manifest import FileEntry, Manifest
from trainguard.crypto.sealed.stream import (
    DEFAULT_SEGMENT_SIZE,
    TAGS_DIGEST,
    DataKey,
    EarlyWriteback,
    PositionedReader,
    SealedReader,
    SealedWriter,
)
from trainguard.trainer.dcp.metadata import load_metadata
from trainguard.trainer.dcp.signed import (
    _DIGESTS,
    _METADATA,
    _STEP,
    SealingKeys,
    Signer,
    StepInfo,
    Verifier,
    _hash,
    _Refused,
    list_steps,
    manifest_path,
    verify_step,
)
from trainguard.trainer.errors import CheckpointTampered

# ---- sealed streams on DCP's file system ------------------------------------------------------


class _SealingStream(io.RawIOBase):
    """What DCP writes into: seals into `raw` and reports plaintext offsets (DCP's tell()).

    DCP's thread serializes and encrypts; a background thread of the `SealedWriter` writes
    the ciphertext into `raw`. The manifest records the stream's tag digest (`TAGS_DIGEST`,
    from the segment tags: nothing hashes the body).
    """

    def __init__(self, raw: BinaryIO, key: DataKey, segment_size: int, sync: bool) -> None:
        super().__init__()
        self.raw = raw
        self.size = 0
        self.digest = ""
        # a durable save starts the disk writing while later segments are still sealed
        sink = cast(BinaryIO, EarlyWriteback(raw)) if sync else raw
        self._sealer = SealedWriter(sink, key, segment_size=segment_size)

    def write(self, data: Any) -> int:
        return self._sealer.write(data)

    def tell(self) -> int:
        return self._sealer.tell()

    def fileno(self) -> int:  # DCP fsyncs what is written so far; finish() syncs the rest
        self._sealer.flush()  # every sealed segment handed to `raw` first
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def finish(self, sync: bool) -> None:
        self._sealer.close()
        self.raw.flush()
        self.size, self.digest = self._sealer.tag_digest
        if self.size != self.raw.tell():
            raise OSError(f"{self.raw.name}: sealed {self.size} bytes but the file holds {self.raw.tell()}")
        if sync:
            os.fsync(self.raw.fileno())

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
        self.digests: dict[str, tuple[int, str]] = {}  # written: name -> (size, tag digest)
        self.expected: dict[str, FileEntry] | None = None  # read: the verified manifest
        self.folder: Path | None = None  # read: the verified step folder
        self._hashed: set[str] = set()

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[io.IOBase]:
        p = Path(path)
        if mode == "wb":
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(p, flags, 0o600), "wb") as raw:
                stream = _SealingStream(raw, self._keys.data_key(), self._segment_size, self._sync)
                try:
                    yield stream
                except BaseException:
                    stream.abort()
                    raise
                stream.finish(self._sync)
            with self._lock:
                self.digests[p.name] = (stream.size, stream.digest)
        elif mode == "rb":
            self._check(p)
            with p.open("rb") as src, SealedReader(cast(BinaryIO, src), self._keys,
                                                   what=p.name) as reader:
                yield reader
        else:
            raise ValueError(f"unsupported mode {mode!r}")

    def _check(self, p: Path) -> None:
        """Check a file's digest (header and tags) against the verified manifest before any of
        it is unsealed; the tags then authenticate every segment as it is read."""
        if self.expected is None or p.name not in self.expected or p.parent != self.folder:
            raise _Refused(f"{p.name} is not a signed file of this checkpoint")
        with self._lock:
            if p.name in self._hashed:
                return
        entry = self.expected[p.name]
        got = _hash(p, entry.digest)
        if got != (entry.size, entry.sha256):
            raise _Refused(f"{p.parent.name}/{p.name} does not match its signed manifest")
        with self._lock:
            self._hashed.add(p.name)

    def mark_hashed(self, name: str) -> None:
        with self._lock:
            self._hashed.add(name)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        super().rename(path, new_path)
        with self._lock:
            if Path(path).name in self.digests:
                self.digests[Path(new_path).name] = self.digests.pop(Path(path).name)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)



# ---- DCP storage writer and reader ------------------------------------------------------------


class SealedDcpWriter(FileSystemWriter):
    """DCP's `FileSystemWriter` with every file sealed and a signed manifest written last.

    Args:
        path: the step folder (``<dir>/step-NNNNNNNN.dcp``).
        keys: data keys (`SealingKeys`); sign: signs the manifest (`Signer`).
        keep: after signing, the coordinator keeps this many signed steps in the parent folder
            and removes unfinished older ones (0: prune nothing).
        binding: the job the step belongs to (`Trust.job`), signed into the manifest.
    """

    def __init__(self, path: Path, keys: SealingKeys, sign: Signer, *, sync_files: bool = True,
                 thread_count: int = 1, keep: int = 0, binding: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files,
                         thread_count=thread_count, overwrite=True)
        self.fs: _SealedFileSystem = _SealedFileSystem(keys, sync=sync_files)
        self._sign = sign
        self._keep = keep
        self._binding = binding
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
        entries = tuple(FileEntry(n, int(s), str(h), digest=TAGS_DIGEST)
                        for n, (s, h) in sorted(digests.items()))
        body = Manifest("directory", folder.name, entries, self._clock(),
                        self._binding).to_json()
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
    ``.metadata`` through the restricted unpickler, and checks each shard's digest before
    unsealing it."""

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
        self.fs.mark_hashed(_METADATA)  # verify_step hashed it
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
        """Each tensor whose stored layout is the destination's own (the common case: the same
        world size, contiguous CPU tensors) is decrypted straight into the destination's memory;
        the rest (resharded slices, other devices, dtypes or layouts, non-tensor entries) go
        through DCP's own reader (torch.load into a fresh tensor, then a copy)."""
        if self.fs.expected is None:
            raise _Refused("shards were requested before the manifest was verified")
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            if item.type == LoadItemType.TENSOR:
                per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        rest: list[ReadItem] = [item for item in plan.items if item.type != LoadItemType.TENSOR]
        for relative_path, items in per_file.items():
            with self.fs.create_stream(Path(self.path) / relative_path, "rb") as stream:
                for item in items:
                    if not _read_tensor_into(cast(SealedReader, stream), self.storage_data[item.storage_index],
                                             item, planner):
                        rest.append(item)
        if rest:
            return super().read_data(dataclasses.replace(plan, items=rest), planner)
        done: TorchFuture[None] = TorchFuture()
        done.set_result(None)
        return done


class _Slice(PositionedReader):
    """A read-only window [offset, offset + length) of a seekable stream, positions relative to
    it (DCP's own view resolves SEEK_END wrongly, which `zipfile` needs). Its first and last
    `edge` bytes are read once and served from memory: a zip reader makes dozens of small
    reads there (the pickle and record headers at the start, the index at the end)."""

    def __init__(self, base: SealedReader, offset: int, length: int, edge: int = 4096) -> None:
        super().__init__()
        self._base, self._offset, self._size, self._pos = base, offset, length, 0
        self._edge = min(edge, length)
        self._head: bytes | None = None
        self._tail: bytes | None = None

    def _read_at(self, pos: int, out: memoryview) -> int:
        self._base.seek(self._offset + pos)
        return self._base.readinto(out)

    def _edge_bytes(self, tail: bool) -> bytes:
        cached = self._tail if tail else self._head
        if cached is None:
            buf = bytearray(self._edge)
            n = self._read_at(self._size - self._edge if tail else 0, memoryview(buf))
            cached = bytes(buf[:n])
            if tail:
                self._tail = cached
            else:
                self._head = cached
        return cached

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")[: max(0, self._size - self._pos)]
        if not len(out):
            return 0
        end, tail_start = self._pos + len(out), self._size - self._edge
        if end <= self._edge or self._pos >= tail_start:
            at_tail = self._pos >= tail_start
            edge = self._edge_bytes(at_tail)
            start = self._pos - tail_start if at_tail else self._pos
            n = max(0, min(len(out), len(edge) - start))
            out[:n] = edge[start : start + n]
        else:
            n = self._read_at(self._pos, out)
        self._pos += n
        return n


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header (30 bytes)


def _stored_layout(view: _Slice) -> tuple[torch.Tensor, int] | None:
    """The tensor a DCP slice holds, as a meta tensor (torch's own weights-only load with
    ``map_location="meta"`` reads the pickle and the zip index, not the data), and the offset of
    its data record inside the slice; None unless the zip index agrees that the record is
    exactly that tensor's bytes, stored uncompressed, in this machine's byte order."""
    try:
        meta = torch.load(view, map_location="meta", weights_only=True)
        if type(meta) is not torch.Tensor:
            return None
        storage = meta.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        view.seek(0)
        with zipfile.ZipFile(view) as archive:
            names = archive.namelist()
            prefix = names[0].split("/", 1)[0] if names else ""
            order = archive.read(f"{prefix}/byteorder") if f"{prefix}/byteorder" in names else None
            record = archive.getinfo(f"{prefix}/data/0")
        view.seek(record.header_offset)
        header = view.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else None
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, struct.error,
            zipfile.BadZipFile, pickle.UnpicklingError):
        return None  # DCP's own reader decides (and fails with its own error if it must)
    nbytes = meta.numel() * meta.element_size()
    if (fields is None or fields[0] != b"PK\x03\x04" or fields[3] != zipfile.ZIP_STORED
            or offset != record.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            or order != sys.byteorder.encode() or record.compress_type != zipfile.ZIP_STORED
            or record.file_size != nbytes or storage.nbytes() != nbytes
            or meta.storage_offset() != 0 or not meta.is_contiguous()):
        return None
    return meta, offset


def _read_tensor_into(stream: SealedReader, stored: Any, item: ReadItem, planner: LoadPlanner) -> bool:
    """Decrypt one stored tensor straight into its destination if the two have the same layout;
    False (nothing written) if they do not. `SealedReader.readinto` authenticates every
    segment and zeroes what it wrote if a tag fails, so only verified bytes reach the state."""
    if stored.transform_descriptors:
        return False
    target = planner.resolve_tensor(item).detach()
    # the destination's own checks first: a CUDA or resharded target is not worth parsing for
    if (type(target) is not torch.Tensor or target.device.type != "cpu"
            or target.layout != torch.strided or not target.is_contiguous()
            or target.is_conj() or target.is_neg() or target.is_quantized
            or any(item.storage_offsets) or list(item.lengths) != list(target.shape)):
        return False
    found = _stored_layout(_Slice(stream, stored.offset, stored.length))
    if found is None:
        return False
    meta, offset = found
    if target.dtype != meta.dtype or target.shape != meta.shape:
        return False
    nbytes = meta.numel() * meta.element_size()
    if nbytes and offset + nbytes <= stored.length:
        out = memoryview(target.reshape(-1).view(torch.uint8).numpy())
        stream.seek(stored.offset + offset)
        if stream.readinto(out) != nbytes:
            raise _Refused("a checkpoint shard ends inside a tensor")
    elif nbytes:
        return False
    planner.commit_tensor(item, target)
    return True
