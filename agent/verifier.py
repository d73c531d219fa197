"""The agent's own view of its node, which local response actions act on (and nothing else).

`AgentVerifier` implements `trainguard.evidence.response.verify.LocalVerifier`:

* ``gpu_process(pid)``: the processes NVML listed on this node's GPUs in the agent's latest
  telemetry sample (no older than `max_age_seconds`), each pinned by its start time and judged
  foreign unless its name is in ``[anomaly] allowed_processes`` (the GPU-misuse detector's rule);
* ``artifact_dirs()``: ``[checks] model_dirs`` and ``checkpoint_dirs``, the folders the agent
  scans itself (absolute paths only, resolved once);
* ``scan_verdict(f, size)``: `trainguard.integrity.scanner.scan_fileobj` on the open file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from trainguard.evidence.response.verify import ArtifactDir, ObservedProcess, process_start_ticks

__all__ = ["AgentVerifier"]

log = logging.getLogger(__name__)


class AgentVerifier:
    def __init__(
        self,
        *,
        allowed_processes: Iterable[str],
        artifact_dirs: Iterable[str],
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self._allowed = {p.lower() for p in allowed_processes}
        self._dirs = _resolve_dirs(artifact_dirs)
        self._max_age = max_age_seconds
        self._clock = clock
        self._proc = proc_root
        self._lock = threading.Lock()
        self._seen: dict[int, ObservedProcess] = {}
        self._at = float("-inf")

    def observe(self, sample: Any) -> None:
        """Record the GPU processes of one telemetry sample (called every agent cycle)."""
        seen: dict[int, ObservedProcess] = {}
        for gpu in getattr(sample, "gpus", ()):
            for proc in gpu.processes:
                ticks = process_start_ticks(proc.pid, self._proc)
                if ticks is None or proc.pid in seen:
                    continue  # already gone: nothing to pin
                seen[proc.pid] = ObservedProcess(
                    proc.pid, ticks, gpu.index, proc.name, foreign=self._foreign(proc.name)
                )
        with self._lock:
            self._seen, self._at = seen, self._clock()

    def _foreign(self, name: str) -> bool:
        # a process NVML names nothing is not judged foreign: kill only what is known to be
        base = name.rsplit("/", 1)[-1].lower()
        return bool(base) and base not in self._allowed

    def gpu_process(self, pid: int) -> ObservedProcess | None:
        with self._lock:
            if self._clock() - self._at > self._max_age:
                return None  # telemetry stalled: nothing counts as observed now
            return self._seen.get(pid)

    def artifact_dirs(self) -> Sequence[ArtifactDir]:
        return self._dirs

    def scan_verdict(self, f: IO[bytes], size: int) -> str:
        from trainguard.integrity.scanner import scan_fileobj

        return scan_fileobj(f, size).verdict.value


def _resolve_dirs(dirs: Iterable[str]) -> list[ArtifactDir]:
    out: list[ArtifactDir] = []
    for d in dirs:
        p = Path(d)
        if not p.is_absolute():
            log.warning("artifact folder %s is not absolute: quarantine will not act in it", d)
            continue
        normal = PurePosixPath(os.path.normpath(d))
        out.append(ArtifactDir(normal, p.resolve()))
    return out
