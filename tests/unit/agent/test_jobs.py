"""JobRegistry on a fake /proc: which launch events register a job, and which PIDs it covers."""

from __future__ import annotations

import os
from pathlib import Path

from trainguard.agent.jobs import JobRegistry

HZ = os.sysconf("SC_CLK_TCK")
BOOT = 1_700_000_000


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        (root / "stat").write_text(f"cpu  1 0 0 1 0 0 0 0\nbtime {BOOT}\n")

    def spawn(self, pid: int, ppid: int, started_s: float, uid: int = 1000) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        ticks = int(started_s * HZ)
        rest = " ".join(["0"] * 17)  # fields after ppid up to starttime
        (d / "stat").write_text(f"{pid} (python3 (w)) S {ppid} {rest} {ticks} 0 0\n")
        (d / "status").write_text(f"Name:\tpython3\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")

    def exit(self, pid: int) -> None:
        for f in (self.root / str(pid)).iterdir():
            f.unlink()
        (self.root / str(pid)).rmdir()


def _tree(proc: FakeProc) -> None:
    proc.spawn(1, 0, 0.0, uid=0)
    proc.spawn(100, 1, 50.0)  # the launcher (trainguard train)
    proc.spawn(101, 100, 60.0)  # torchrun
    proc.spawn(102, 101, 61.0)  # workers
    proc.spawn(103, 101, 61.0)
    proc.spawn(200, 1, 40.0)  # unrelated


def test_launcher_and_descendants_are_registered_until_it_exits(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    _tree(proc)
    jobs = JobRegistry(proc.root)
    job, why = jobs.launched(7, BOOT + 55.0, {"job": "j1", "launcher_pid": 100})
    assert job is not None and why == "registered"
    assert jobs.pids() == {100, 101, 102, 103}
    proc.spawn(104, 101, 90.0)  # torchrun restarts a worker
    assert 104 in jobs.pids()
    proc.exit(100)  # the launcher ends; its children are reparented
    proc.spawn(101, 1, 60.0)
    assert jobs.pids() == frozenset() and jobs.jobs == []


def test_finish_unregisters_only_from_the_launchs_submitter(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    _tree(proc)
    jobs = JobRegistry(proc.root)
    jobs.launched(7, BOOT + 55.0, {"job": "j1", "launcher_pid": 100, "submitted_by": "uid:1000"})
    # another trainer account (or node) cannot end this job's registration
    assert jobs.finished({"job": "j1", "submitted_by": "uid:1001"}) is None
    assert jobs.finished({"job": "j1"}) is None
    assert jobs.pids() == {100, 101, 102, 103}
    assert jobs.finished({"job": "j1", "submitted_by": "uid:1000"}) is not None
    assert jobs.pids() == frozenset()


def test_forged_and_stale_launch_events_are_refused(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    _tree(proc)
    jobs = JobRegistry(proc.root)
    cases = [
        ({"job": "a", "launcher_pid": 100, "submitted_by": "uid:1001"},
         "the launcher does not run under the submitting account"),
        ({"job": "b", "launcher_pid": 100, "submitted_by": "spiffe://lab/node/n2"},
         "submitted by another node: its PIDs are not this node's"),
        ({"job": "c", "launcher_pid": 999}, "the launcher is not running"),
        ({"job": "d", "launcher_pid": "100"}, "no launcher_pid"),
        ({"job": "e", "launcher_pid": True}, "no launcher_pid"),
        ({"launcher_pid": 100}, "no job id"),
    ]
    for data, reason in cases:
        assert jobs.launched(1, BOOT + 55.0, data) == (None, reason)
    # the PID was reused: the process holding it now started after the event was written
    assert jobs.launched(1, BOOT + 20.0, {"job": "f", "launcher_pid": 100}) == (
        None, "the PID was reused after the launch event")
    # from the same local account: accepted
    ok, _ = jobs.launched(1, BOOT + 55.0, {"job": "g", "launcher_pid": 100,
                                           "submitted_by": "uid:1000"})
    assert ok is not None and jobs.pids() == {100, 101, 102, 103}


def test_a_reused_launcher_pid_drops_the_job(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    _tree(proc)
    jobs = JobRegistry(proc.root)
    jobs.launched(7, BOOT + 55.0, {"job": "j1", "launcher_pid": 100})
    proc.exit(100)
    proc.spawn(100, 1, 500.0)  # another process got the PID
    proc.spawn(105, 100, 501.0)
    assert jobs.pids() == frozenset() and jobs.jobs == []


def test_a_child_older_than_its_parent_is_not_a_descendant(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    _tree(proc)
    proc.spawn(150, 101, 10.0)  # a racing read: a reused PID under torchrun
    jobs = JobRegistry(proc.root)
    jobs.launched(7, BOOT + 55.0, {"job": "j1", "launcher_pid": 100})
    assert 150 not in jobs.pids()


def test_no_jobs_no_proc_scan(tmp_path: Path) -> None:
    jobs = JobRegistry(tmp_path / "missing")
    assert jobs.pids() == frozenset()
    assert jobs.launched(1, 0.0, {"job": "x", "launcher_pid": 5}) == (
        None, "the launcher is not running")
