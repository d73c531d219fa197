"""Where a `Guard`'s checkpoints go: one sealed file for replicated state, a sealed DCP step
for sharded state, and resume from the newest of either kind that verifies.

The kind is decided per save from the state itself (`trainguard.trainer.dcp.sharding`, a
collective), never from names. Every rank calls every method, like DCP: rank 0 writes single
files and picks the checkpoint to resume (refused candidates are reported as
``checkpoint-tampered``), every rank writes its DCP shards and loads what rank 0 picked.
Keys and signatures come from the key service client; this process holds no KEK.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from trainguard.core.fs import hash_file
from trainguard.trainer.checkpoint import CheckpointStore
from trainguard.trainer.context import Trust
from trainguard.trainer.dcp import (
    DcpCheckpoints,
    list_steps,
    manifest_path,
    trust_verifier,
    verify_step,
)
from trainguard.trainer.dcp.sharding import is_sharded_state
from trainguard.trainer.errors import CheckpointTampered, TrainerError
from trainguard.trainer.rundir import RunDir

__all__ = ["GuardCheckpoints", "Resumed"]

log = logging.getLogger(__name__)

_FILE, _DCP = 1, 2  # checkpoint kinds, as rank 0 broadcasts them on resume

Refusal = Callable[[Path, str], None]  # reports a refused checkpoint (rank 0)


@dataclass(frozen=True)
class Resumed:
    step: int
    path: Path
    signer: str


class GuardCheckpoints:
    """The checkpoints of one job folder for one rank (see the module docstring)."""

    def __init__(self, directory: Path, keys: Any, trust: Trust, *, keep: int, is_main: bool,
                 device: torch.device, run: RunDir, refused: Refusal) -> None:
        self.directory = directory
        self._keys, self._keep, self._is_main, self._device = keys, keep, is_main, device
        self._run, self._report = run, refused
        self._verify = trust_verifier(trust)
        self._job = trust.job
        self._files = CheckpointStore(directory, keys, trust, keep=keep)
        self._dcp: DcpCheckpoints | None = None  # built at the first sharded save or resume
        self._pending: tuple[int, Future[Any]] | None = None  # an asynchronous save in flight
        self._writer: ThreadPoolExecutor | None = None  # rank 0's thread for async file saves

    # -- resume -------------------------------------------------------------------------------

    def resume(self, state: MutableMapping[str, Any], *, may_resume: bool) -> Resumed | None:
        """Load the newest checkpoint of either kind that verifies into `state` in place.

        Rank 0 picks the candidate and broadcasts its step and kind; every rank then verifies
        and loads it itself (a DCP step collectively, resharded to this world size). A DCP
        step refused while loading is reported and the next older one is tried."""
        refused: set[Path] = set()
        while True:
            chosen = torch.zeros(2, dtype=torch.int64, device=self._device)
            if self._is_main and may_resume:
                found = self._newest_candidate(refused)
                if found is not None:
                    chosen[0], chosen[1] = found
            dist.broadcast(chosen, src=0)
            step, kind = int(chosen[0]), int(chosen[1])
            if step <= 0:
                return None
            if kind == _FILE:
                payload, info = self._files.load(self._files.path_for(step))
                _load_in_place(state, payload["state"])
                signer, path, sha = info.signer, info.path, info.sha256
            else:
                store = self._dcp_store()
                path = store.path_for(step)
                try:
                    signer = store.load(path, state).signer  # type: ignore[arg-type]
                except CheckpointTampered as exc:  # DCP raises it on every rank together
                    self._refuse(path, exc.message, refused)
                    continue
                sha = _manifest_sha256(path)
            if self._is_main:
                self._run.append("events", {"kind": "resume", "step": step, "checkpoint": str(path),
                                            "sha256": sha, "signer": signer})
            return Resumed(step, path, signer)

    def _newest_candidate(self, refused: set[Path]) -> tuple[int, int] | None:
        """Rank 0: (step, kind) of the newest checkpoint of either kind that verifies here."""
        candidates = [(step, _DCP, folder) for step, folder in list_steps(self.directory)]
        candidates += [(step, _FILE, path) for step, path in self._files.list()]
        for step, kind, path in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
            if path in refused:
                continue
            try:
                if kind == _FILE:
                    self._files.load(path)
                else:  # signature, file set, sizes, .metadata; each shard's digest on load
                    verify_step(path, self._verify, hash_all=False)
            except CheckpointTampered as exc:
                self._refuse(path, exc.message, refused)
                continue
            return step, kind
        return None

    def _refuse(self, path: Path, reason: str, refused: set[Path]) -> None:
        refused.add(path)
        if self._is_main:
            log.warning("refusing %s: %s", path, reason)
            self._report(path, reason)

    def _dcp_store(self) -> DcpCheckpoints:
        """Sealed DCP steps of the folder (collective on first use: DCP runs on a gloo group
        of its own, so an asynchronous save never shares the training group)."""
        if self._dcp is None:
            group = dist.new_group(backend="gloo")
            self._dcp = DcpCheckpoints(self.directory, self._keys, self._keys.sign, self._verify,
                                       keep=self._keep, process_group=group, binding=self._job)
        return self._dcp

    # -- save ---------------------------------------------------------------------------------

    def save(self, step: int, state: MutableMapping[str, Any], *, async_: bool = False) -> None:
        """Replicated state: one file that rank 0 writes. Sharded state (DTensors, or ranks
        holding different entries): a DCP step that every rank writes, the signed manifest
        last. With `async_`, returns once the state is copied off the live tensors."""
        self.settle(block=True)
        if is_sharded_state(state, self._device):
            future = self._dcp_store().save(step, state, async_=async_)  # type: ignore[arg-type]
            if future is None:
                self._record(step, self._dcp_store().path_for(step), None)
            else:
                self._pending = (step, future)
        elif self._is_main:
            payload = {"step": step, "state": _state_dict(state)}
            if async_:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="trainguard-save")
                self._pending = (step, self._writer.submit(self._files.save, _cpu_copy(payload), step))
            else:
                info = self._files.save(payload, step)
                self._record(step, info.path, info.sha256)

    def settle(self, *, block: bool) -> None:
        """Record an asynchronous save that finished (with `block`, wait for it first); raises
        what the save raised."""
        if self._pending is None or (not block and not self._pending[1].done()):
            return
        (step, future), self._pending = self._pending, None
        result = future.result()
        if hasattr(result, "sha256"):  # a single file (CheckpointInfo)
            self._record(step, result.path, result.sha256)
        else:
            self._record(step, self._dcp_store().path_for(step), None)

    def _record(self, step: int, path: Path, sha256: str | None) -> None:
        if self._is_main:
            self._run.append("events", {"kind": "checkpoint", "step": step, "path": str(path),
                                        "sha256": sha256 or _manifest_sha256(path),
                                        "format": "file" if sha256 else "dcp"})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"GuardCheckpoints({self.directory})"


def _manifest_sha256(folder: Path) -> str:
    return hash_file(manifest_path(folder)).sha256


def _cpu_copy(obj: Any) -> Any:
    """A copy that the training loop cannot change: tensors copied to CPU, the rest deep-copied."""
    from torch.utils._pytree import tree_map

    def one(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            return leaf.detach().to("cpu", copy=True)
        return copy.deepcopy(leaf)

    return tree_map(one, obj)


def _state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach()
        elif hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            out[key] = value.state_dict()
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        else:
            raise TrainerError(f"state[{key!r}] is a {type(value).__name__}: neither a tensor nor "
                               "Stateful (state_dict/load_state_dict)",
                               tip="pass tensors, modules, optimizers, schedulers or plain numbers")
    return out


def _load_in_place(state: MutableMapping[str, Any], saved: Mapping[str, Any]) -> None:
    missing = sorted(set(state) - set(saved))
    if missing:
        raise CheckpointTampered(f"the checkpoint has no entry for {missing}",
                                 tip="resume with the same state keys the job saved")
    for key, value in state.items():
        loaded = saved[key]
        if isinstance(value, torch.Tensor):
            with torch.no_grad():
                value.copy_(loaded)
        elif hasattr(value, "load_state_dict"):
            value.load_state_dict(loaded)
        else:
            state[key] = loaded
