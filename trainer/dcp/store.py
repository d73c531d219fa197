"""A folder of sealed, signed DCP steps: save (sync or async), resume with fallback, export."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from trainguard.core.errors import TrainguardError
from trainguard.crypto.errors import SealedStreamError
from trainguard.crypto.keyring import WrappedDek
from trainguard.crypto.sealed.stream import (
    DataKey,
)
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp.signed import (
    SealingKeys,
    Signer,
    StepInfo,
    Verifier,
    _Refused,
    list_steps,
    manifest_path,
    verify_step,
)
from trainguard.trainer.dcp.storage import SealedDcpReader, SealedDcpWriter
from trainguard.trainer.errors import CheckpointTampered, TrainerError

log = logging.getLogger(__name__)

# ---- a folder of steps ------------------------------------------------------------------------


def _refusal(folder: Path, exc: BaseException, known: str | None = None) -> CheckpointTampered:
    """One `CheckpointTampered` for a failed load, however DCP wrapped the cause."""
    causes: list[BaseException] = [_Refused(known)] if known else [exc]
    if not known and isinstance(exc, CheckpointException):
        causes = [pair[0] if isinstance(pair, tuple) else pair for pair in exc.failures.values()]
    for cause in causes:
        if isinstance(cause, SealedStreamError):  # a body byte changed under the signed tags
            return CheckpointTampered(f"checkpoint {folder.name}: cannot be unsealed: its content "
                                      "does not match its manifest, or it was sealed under "
                                      "another keyring")
        if isinstance(cause, (_Refused, CheckpointTampered)):
            reason = cause.message if isinstance(cause, CheckpointTampered) else str(cause)
            return CheckpointTampered(f"checkpoint {folder.name}: {reason}".replace(
                f"checkpoint {folder.name}: checkpoint {folder.name}: ", f"checkpoint {folder.name}: "))
    name = type(causes[0]).__name__ if causes else type(exc).__name__
    return CheckpointTampered(f"checkpoint {folder.name}: cannot be unsealed or read ({name})")


def _load_plain_entry(value: Any) -> Any:
    """A non-tensor entry (an optimizer's hyper-parameters, a scheduler's counters): DCP's own
    planner unpickles it with ``weights_only=False``; here only after the scanner's allowlist
    and with ``weights_only=True``, like every other trainguard load."""
    from trainguard.integrity.scanner import UnsafeArtifact, require_safe_fileobj

    size = value.seek(0, 2)
    value.seek(0)
    try:
        require_safe_fileobj(value, size, "a non-tensor checkpoint entry")
    except UnsafeArtifact as exc:
        raise _Refused("a non-tensor entry is not plain data") from exc
    value.seek(0)
    return torch.load(value, weights_only=True)


def _set_loaded(planner: DefaultLoadPlanner, read_item: ReadItem, value: Any) -> None:
    """`DefaultLoadPlanner.load_bytes` with `_load_plain_entry` in place of its pickle load."""
    from torch.distributed.checkpoint._traverse import set_element

    obj = _load_plain_entry(value)
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], obj)
    else:
        planner.state_dict[read_item.dest_index.fqn] = obj


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner; non-tensor entries read by `_load_plain_entry`."""

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        _set_loaded(self, read_item, value)


class _WeightsOnlyEmptyPlanner(_EmptyStateDictLoadPlanner):
    """`export_single`'s planner (it builds the state from the metadata), same rule."""

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        _set_loaded(self, read_item, value)


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
        with _one_intra_op_thread():
            staged: dict[str, Any] = _copy_state_dict(state_dict, self._cache)
        return staged

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        self._cache = None


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """For the memory-bound copies of a save's staging (the training loop's whole stall) and of
    a load (DCP copies every loaded tensor into the caller's): one thread copies about as fast
    as several, while torch's OpenMP team spin-waits for any member the OS has descheduled
    (measured on a loaded 2-core machine: 256 MiB in 0.07 s on one thread, 0.26 s on two).
    Copies into CUDA tensors do not use these threads. The caller's setting comes back right
    after."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _layout(obj: Any) -> object:
    """What must match for staged buffers to be reused: keys, types, shapes, dtypes."""
    if isinstance(obj, Mapping):
        return tuple((k, _layout(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_layout(v) for v in obj))
    if isinstance(obj, torch.Tensor):
        return (type(obj).__name__, tuple(obj.shape), obj.dtype, obj.device.type)
    return type(obj).__name__


def _group_rank(group: Any) -> int:
    return torch.distributed.get_rank(group) if torch.distributed.is_initialized() else 0


class DcpCheckpoints:
    """Sealed, signed DCP checkpoints of one folder. Every rank calls every method (as DCP).

    Args:
        keys: data keys (the key service client); sign: signs manifests (coordinator only);
        verify: checks manifest signatures (`trust_verifier(ctx.trust)`, which inside a job also
            refuses a step signed for another job).
        binding: the job these steps belong to (`ctx.trust.job`), signed into every manifest.
        process_group: DCP's group; for `async_=True` a gloo group separate from training
            collectives is advisable (DCP's upload thread runs collectives on it).
    """

    def __init__(self, directory: Path, keys: SealingKeys, sign: Signer, verify: Verifier, *,
                 keep: int = 3, process_group: Any = None, sync_files: bool = True,
                 binding: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._keys, self._sign, self._verify = keys, sign, verify
        self._keep, self._pg, self._sync, self._clock = keep, process_group, sync_files, clock
        self._binding = binding
        self._pending: Future[Any] | None = None
        self._stager = _ReusedCpuStager()
        self._refused: set[Path] = set()  # steps whose load failed (a body byte under signed tags)

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.dcp"

    def save(self, step: int, state: dict[str, Any], *, async_: bool = False) -> Future[Any] | None:
        """Write `state` (tensors, DTensors, Stateful objects) as step `step`.

        With `async_`, returns once the state is staged to CPU memory; the future completes
        after every rank's shards and the signed manifest are written (`.result()` raises what
        failed). A save in flight is waited for before the next one starts.
        """
        self.wait()
        self._set_aside_refused(step)
        writer = SealedDcpWriter(self.path_for(step), self._keys, self._sign,
                                 sync_files=self._sync, keep=self._keep, binding=self._binding,
                                 clock=self._clock)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if async_:
            fut = dcp_async_save(state, storage_writer=writer, process_group=self._pg,
                                 async_stager=self._stager)
            self._pending = cast(Future[Any], fut)
            return self._pending
        dcp_save(state, storage_writer=writer, process_group=self._pg)
        return None

    def _set_aside_refused(self, step: int) -> None:
        """A step that verifies is never overwritten. One that does not (resume refused it and
        training came back to its step number) is renamed ``step-N.dcp.refused-T`` with its
        manifest, kept for forensics and never a candidate again. Every rank decides from the
        same files; the coordinator renames, and a barrier keeps writers out until it has."""
        folder = self.path_for(step)
        if manifest_path(folder).exists():
            try:
                if folder in self._refused:  # its manifest verifies, its content did not load
                    raise CheckpointTampered(f"checkpoint {folder.name} was refused on load")
                verify_step(folder, self._verify, hash_all=False)
            except CheckpointTampered:
                self._refused.discard(folder)  # the path is free for the new step
                if _group_rank(self._pg) == 0:
                    aside = folder.with_name(f"{folder.name}.refused-{int(self._clock())}")
                    log.warning("setting refused %s aside as %s", folder, aside.name)
                    if folder.exists():
                        folder.rename(aside)
                    manifest_path(folder).rename(manifest_path(aside))
            else:
                raise TrainerError(f"step {step} is already a signed checkpoint in {self.directory}",
                                   tip="save under a new step number, or remove the old step first")
        if torch.distributed.is_initialized():
            torch.distributed.barrier(group=self._pg)

    def wait(self) -> None:
        """Wait for an asynchronous save in flight (raises what it raised)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load(self, folder: Path, state: dict[str, Any]) -> StepInfo:
        """Verify and load one step into `state` in place (DCP resharding applies)."""
        reader = SealedDcpReader(folder, self._keys, self._verify)
        try:
            with _one_intra_op_thread():  # DCP copies each loaded tensor into `state`
                dcp_load(state, storage_reader=reader, planner=_WeightsOnlyLoadPlanner(),
                         process_group=self._pg)
        except (CheckpointException, _Refused, TrainguardError) as exc:
            self._refused.add(folder)
            raise _refusal(folder, exc, reader.refusal) from None
        except (RuntimeError, OSError, ValueError, EOFError, AssertionError) as exc:
            self._refused.add(folder)
            raise _refusal(folder, exc, reader.refusal) from exc
        assert reader.info is not None
        self._refused.discard(folder)
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

    Every file's digest is checked against the manifest first; the full state is held in
    memory."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    from trainguard.trainer.checkpoint import CheckpointStore

    info = verify_step(folder, verify)
    state: dict[str, Any] = {}
    reader = SealedDcpReader(folder, keys, verify)
    try:
        _load_state_dict(state, storage_reader=reader, planner=_WeightsOnlyEmptyPlanner(),
                         no_dist=True)
    except (CheckpointException, _Refused, TrainguardError, RuntimeError, OSError,
            ValueError) as exc:
        raise _refusal(folder, exc, reader.refusal) from None
    store = CheckpointStore(out_dir, _ExportKeys(keys, sign), Trust(), keep=1 << 30)
    return store.save({"step": info.step, "state": state}, info.step)
