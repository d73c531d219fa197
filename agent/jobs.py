"""Registered training jobs: which GPU processes belong to a job that `trainguard train` launched.

The GPU-misuse detector does not flag the miner usage signature on a GPU that a registered job
holds. A job is registered by its launch event in the audit log (``train.launch``, written by
`trainguard train` after its preflight authorized ``train:launch`` with MFA), which names the
launcher's PID (``launcher_pid``). The job's PIDs are the launcher and every live descendant of
it (torchrun and its workers), read from /proc whenever the detector asks, so workers restarted
by torchrun are covered and a job's PIDs vanish the moment its processes exit.

What keeps a forged or stale launch event from hiding a miner:

* the PID is pinned by its start time: a launcher that started after the launch event was
  written (its PID was reused) is refused, and a job whose launcher's start time changes is
  dropped;
* an event submitted through the agent API by a local account (``submitted_by: uid:N``) counts
  only when that launcher runs under uid N, so an account can register only its own processes;
  one submitted by another node (a SPIFFE identity) names a PID on that node and is ignored here;
  one written straight into the home's log (no ``submitted_by``) came from an account that holds
  the home and is trusted;
* the launcher exiting unregisters the job; ``train.finish`` does too, but only from whoever
  submitted the launch (else any trainer could unregister another user's job and have its
  GPUs flagged).

A descendant whose parent chain reaches the launcher is included only if it started after the
launcher (PIDs are never reused while the process holding them lives).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JobRegistry", "RegisteredJob"]

log = logging.getLogger(__name__)

LAUNCH_KIND = "train.launch"
FINISH_KIND = "train.finish"
PID_FIELD = "launcher_pid"
_START_SLACK_S = 2.0  # boot time is whole seconds and start times are ticks: allow the rounding
MAX_JOBS = 256  # more live launch events than this on one node is an attack, not a workload


@dataclass(frozen=True)
class _Proc:
    ppid: int
    start_ticks: int
    uid: int | None = None


@dataclass(frozen=True)
class RegisteredJob:
    """A live job: its id, the launcher's PID pinned by start time, and the audit seq."""

    job: str
    launcher_pid: int
    start_ticks: int
    seq: int
    submitter: str | None = None  # `submitted_by` of the launch (None: written in the home)


class JobRegistry:
    """The registered jobs of this node and their live PIDs (`pids()`)."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self._proc = proc_root
        self._jobs: dict[str, RegisteredJob] = {}
        self._hz = os.sysconf("SC_CLK_TCK")

    @property
    def jobs(self) -> list[RegisteredJob]:
        return list(self._jobs.values())

    def launched(
        self, seq: int, time: float, data: Mapping[str, Any]
    ) -> tuple[RegisteredJob | None, str]:
        """Register the job of one ``train.launch`` entry; returns (the job or None, why)."""
        job, pid = data.get("job"), data.get(PID_FIELD)
        if not isinstance(job, str) or not job:
            return None, "no job id"
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            return None, f"no {PID_FIELD}"
        submitted = data.get("submitted_by")
        want_uid: int | None = None
        if isinstance(submitted, str):
            if not submitted.startswith("uid:"):
                return None, "submitted by another node: its PIDs are not this node's"
            try:
                want_uid = int(submitted[4:])
            except ValueError:
                return None, "unreadable submitter"
        proc = self._read(pid, with_uid=True)
        if proc is None:
            return None, "the launcher is not running"
        if want_uid is not None and proc.uid != want_uid:
            return None, "the launcher does not run under the submitting account"
        boot = self._boot_time()
        if boot is None:
            return None, "cannot read the boot time to pin the launcher's PID"
        if boot + proc.start_ticks / self._hz > time + _START_SLACK_S:
            return None, "the PID was reused after the launch event"
        if job not in self._jobs and len(self._jobs) >= MAX_JOBS:
            return None, f"more than {MAX_JOBS} live jobs"
        registered = RegisteredJob(job, pid, proc.start_ticks, seq,
                                   submitted if isinstance(submitted, str) else None)
        self._jobs[job] = registered
        return registered, "registered"

    def finished(self, data: Mapping[str, Any]) -> RegisteredJob | None:
        """Unregister the job of a ``train.finish`` entry when the same submitter launched
        it; returns the job when it was unregistered."""
        job = data.get("job")
        registered = self._jobs.get(job) if isinstance(job, str) else None
        if registered is None:
            return None
        submitted = data.get("submitted_by")
        if registered.submitter != (submitted if isinstance(submitted, str) else None):
            return None
        return self._jobs.pop(registered.job)

    def pids(self) -> frozenset[int]:
        """The PIDs of every live registered job: each launcher and its descendants. Jobs whose
        launcher exited (or whose PID now belongs to another process) are dropped."""
        if not self._jobs:
            return frozenset()
        table = self._table()
        live: dict[int, int] = {}  # launcher pid -> start ticks
        for job in list(self._jobs.values()):
            proc = table.get(job.launcher_pid)
            if proc is None or proc.start_ticks != job.start_ticks:
                log.info("training job %s ended (launcher %d gone)", job.job, job.launcher_pid)
                del self._jobs[job.job]
                continue
            live[job.launcher_pid] = job.start_ticks
        out: set[int] = set()
        for pid, proc in table.items():
            if self._descends(pid, proc, table, live):
                out.add(pid)
        return frozenset(out)

    @staticmethod
    def _descends(
        pid: int, proc: _Proc, table: Mapping[int, _Proc], live: Mapping[int, int]
    ) -> bool:
        seen = 0
        while True:
            start = live.get(pid)
            if start is not None:
                return proc.start_ticks >= start
            parent = table.get(proc.ppid)
            if parent is None or seen > 64:  # reached init, or a loop in a racing read
                return False
            pid, seen = proc.ppid, seen + 1
            # the child must not predate its ancestor (a reused PID in the chain)
            if parent.start_ticks > proc.start_ticks:
                return False
            proc = parent

    def _table(self) -> dict[int, _Proc]:
        table: dict[int, _Proc] = {}
        try:
            names = os.listdir(self._proc)
        except OSError:
            return table
        for name in names:
            if name.isdigit():
                proc = self._read(int(name))
                if proc is not None:
                    table[int(name)] = proc
        return table

    def _read(self, pid: int, *, with_uid: bool = False) -> _Proc | None:
        try:
            raw = (self._proc / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = raw[raw.rfind(b")") + 2 :].split()
        try:
            ppid, start = int(fields[1]), int(fields[19])
        except (IndexError, ValueError):
            return None
        uid = None
        if with_uid:
            try:
                status = (self._proc / str(pid) / "status").read_text(errors="replace")
            except OSError:
                return None
            for line in status.splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    break
        return _Proc(ppid, start, uid)

    def _boot_time(self) -> float | None:
        try:
            for line in (self._proc / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    return float(line.split()[1])
        except (OSError, ValueError):
            return None
        return None
