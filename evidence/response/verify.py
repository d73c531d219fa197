"""What a local response action may act on: only what this agent verified itself.

An incident's evidence is data: a detector of this agent wrote it, or another process on this
node, or another node over mTLS. The built-in actions that change this node (`kill`,
`quarantine`, `revoke`, `stop-training`) never take their target on trust:

* every incident carries a `Provenance`; a ``remote`` report (another node, a user certificate)
  is recorded and sent to webhooks but no local action runs for it (``refused: unverified``);
* `kill` signals a PID only when the agent's own telemetry observed that process on one of this
  node's GPUs and judged it foreign (`LocalVerifier.gpu_process`). The process is pinned by its
  start time (``/proc/<pid>/stat`` field 22) and signalled through a pidfd opened *before* that
  start time is compared, so a PID reused since the observation is never signalled;
* `quarantine` moves a file only when it lies inside a configured artifact folder, is reached
  from that folder without following any symlink (each component opened with ``O_NOFOLLOW``
  relative to its parent), is a regular file with one link, and this agent's own scan of the
  opened file calls it unsafe right now (`LocalVerifier.scan_verdict`). The file that moves is
  the inode that was scanned; a swap between the scan and the move is detected and undone.

The verifier is injected (the agent builds it from its telemetry and the integrity scanner); an
engine without one (the CLI or trainer handling an incident while no agent runs) refuses `kill`
and `quarantine`.
"""

from __future__ import annotations

import enum
import errno
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

__all__ = [
    "ArtifactDir",
    "LocalVerifier",
    "ObservedProcess",
    "PidReused",
    "Provenance",
    "process_start_ticks",
    "signal_exact",
]


class Provenance(enum.StrEnum):
    """Who reported an incident, as the transport proved it."""

    AGENT = "agent"  # this agent's own detectors and checks
    LOCAL = "local"  # another process on this node (CLI, trainer) over the unix socket
    REMOTE = "remote"  # another node or a user certificate over mTLS


@dataclass(frozen=True)
class ObservedProcess:
    """A compute process the agent saw on one of its GPUs."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat starttime: tells a reused PID apart
    gpu: int
    name: str
    foreign: bool  # not an allowed training process (the agent's own judgement)


@dataclass(frozen=True)
class ArtifactDir:
    """A folder whose files `quarantine` may move: the path as configured (what evidence names)
    and as resolved at load (what is opened, so a symlink swapped in later is refused)."""

    configured: PurePosixPath
    resolved: Path


class LocalVerifier(Protocol):
    """The agent's own view of this node, for the actions that change it."""

    def gpu_process(self, pid: int) -> ObservedProcess | None:
        """The process as last observed on this node's GPUs, or None."""
        ...

    def artifact_dirs(self) -> Sequence[ArtifactDir]:
        """The absolute folders whose files `quarantine` may move."""
        ...

    def scan_verdict(self, f: IO[bytes], size: int) -> str:
        """This agent's scan of an open file: ``safe``, ``unsafe`` or ``error``."""
        ...


class PidReused(ProcessLookupError):
    """The PID now belongs to another process than the one observed."""


def process_start_ticks(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if there is no such process."""
    try:
        raw = (proc_root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ")"
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def signal_exact(proc: ObservedProcess, sig: int, proc_root: Path = Path("/proc")) -> None:
    """Send `sig` to exactly the observed process, never to a process that reused its PID.

    Raises:
        ProcessLookupError: the process is gone (`PidReused` when its PID was reused).
    """
    try:
        fd: int | None = os.pidfd_open(proc.pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessLookupError(proc.pid) from exc
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        fd = None  # kernel < 5.3: the start-time check below narrows the window to microseconds
    try:
        # the pidfd was opened first: if the start time still matches, it refers to that process
        if process_start_ticks(proc.pid, proc_root) != proc.start_ticks:
            raise PidReused(proc.pid)
        if fd is None:
            os.kill(proc.pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
    finally:
        if fd is not None:
            os.close(fd)
