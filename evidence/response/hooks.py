"""Incident hooks: executables in ``<home>/hooks.d/`` run once per incident.

Contract with a hook (stable, version 1):

* stdin: ONE JSON object, then EOF::

    {"v": 1, "id": "inc-...", "kind": "gpu-misuse", "severity": "high", "node": "node-1",
     "time": 1700000000.0, "provenance": "agent", "evidence": {...}}

  ``provenance`` is ``agent`` (this agent's own detection), ``local`` (another process on this
  node) or ``remote`` (another node or a user certificate): evidence from a ``remote`` report is
  a claim, so a hook must not act on its paths or PIDs.

* environment (nothing else of the agent's environment is passed): ``PATH``,
  ``TRAINGUARD_HOME``, ``TRAINGUARD_INCIDENT_ID``, ``TRAINGUARD_INCIDENT_KIND``,
  ``TRAINGUARD_INCIDENT_SEVERITY``, ``TRAINGUARD_INCIDENT_TIME``,
  ``TRAINGUARD_INCIDENT_PROVENANCE``, ``TRAINGUARD_NODE``, ``TRAINGUARD_HOOK_TIMEOUT``.
* it runs in its own process group, with the home as working directory, and is killed (the whole
  group, SIGKILL) after the configured timeout. stdout and stderr are captured up to a bound and
  written to the audit log with the exit code; output beyond the bound is discarded.

Hooks are run in name order. A file is skipped (and the skip audited) unless it is a regular,
executable file that only its owner can write, owned by root or by the agent's user.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HookResult", "discover_hooks", "hook_env", "incident_payload", "run_hook"]

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 65536


@dataclass(frozen=True)
class HookResult:
    hook: str
    exit_code: int | None
    timed_out: bool
    duration: float
    stdout: str
    stderr: str
    truncated: bool
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.error

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration": round(self.duration, 3),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated": self.truncated,
            "error": self.error,
        }


def _unsafe_reason(path: Path) -> str | None:
    try:
        st = path.lstat()
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (symlinks are not followed)"
    if not st.st_mode & stat.S_IXUSR:
        return "not executable"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}; chmod 700 it)"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root or the agent's user"
    return None


def discover_hooks(hooks_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(hooks to run in name order, [(skipped file, why)]). Dotfiles and ``*.sample``,
    ``*~``, ``*.disabled`` are ignored silently."""
    if not hooks_dir.is_dir():
        return [], []
    run: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(hooks_dir.iterdir()):
        if path.name.startswith(".") or path.name.endswith(("~", ".sample", ".disabled")):
            continue
        reason = _unsafe_reason(path)
        if reason is None:
            run.append(path)
        else:
            skipped.append((path, reason))
    return run, skipped


def hook_env(incident: Mapping[str, Any], home_root: Path, timeout: float) -> dict[str, str]:
    return {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "TRAINGUARD_HOME": str(home_root),
        "TRAINGUARD_INCIDENT_ID": str(incident["id"]),
        "TRAINGUARD_INCIDENT_KIND": str(incident["kind"]),
        "TRAINGUARD_INCIDENT_SEVERITY": str(incident["severity"]),
        "TRAINGUARD_INCIDENT_TIME": repr(float(incident["time"])),
        "TRAINGUARD_INCIDENT_PROVENANCE": str(incident.get("provenance", "agent")),
        "TRAINGUARD_NODE": str(incident["node"]),
        "TRAINGUARD_HOOK_TIMEOUT": repr(float(timeout)),
    }


def run_hook(
    path: Path,
    payload: bytes,
    env: Mapping[str, str],
    *,
    cwd: Path,
    timeout: float,
    max_output: int,
    monotonic: Callable[[], float] = time.monotonic,
) -> HookResult:
    """Run one hook with `payload` on stdin; never raises for anything the hook does."""
    start = monotonic()
    try:
        proc = subprocess.Popen(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=str(cwd),
            close_fds=True,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as exc:
        return HookResult(
            path.name, None, False, 0.0, "", "", False, f"cannot start: {exc.strerror}"
        )
    deadline = start + timeout
    out, err, truncated, timed_out = _pump(proc, payload, deadline, max_output, monotonic)
    if not timed_out:
        try:  # it closed its output; it still has until the deadline to exit
            proc.wait(timeout=max(0.05, deadline - monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill_group(proc)
    code = proc.wait()
    _kill_group(proc)  # children left behind in its group do not outlive the hook
    return HookResult(
        path.name,
        None if timed_out else code,
        timed_out,
        monotonic() - start,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        truncated,
    )


def _pump(
    proc: subprocess.Popen[bytes],
    payload: bytes,
    deadline: float,
    max_output: int,
    monotonic: Callable[[], float],
) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin and drain stdout/stderr without blocking, keeping at most `max_output` bytes
    of each; returns (out, err, truncated, timed_out)."""
    assert proc.stdin and proc.stdout and proc.stderr
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    timed_out = False
    truncated = False
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    pending = memoryview(payload)
    if pending:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    try:
        while len(sel.get_map()):
            left = deadline - monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), pending[:_CHUNK])
                        pending = pending[n:]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BlockingIOError):
                            continue
                        pending = pending[len(pending) :]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                fd = key.fd
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[fd]
                room = max_output - len(buf)
                if room > 0:
                    buf.extend(chunk[:room])
                if len(chunk) > room:
                    truncated = True  # keep draining so the hook never blocks on a full pipe
    finally:
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if not f.closed:
                f.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), truncated, timed_out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def incident_payload(incident: Mapping[str, Any]) -> bytes:
    """The one JSON object a hook reads on stdin."""
    doc = {
        "v": 1,
        "id": incident["id"],
        "kind": incident["kind"],
        "severity": incident["severity"],
        "node": incident["node"],
        "time": incident["time"],
        "provenance": incident.get("provenance", "agent"),
        "evidence": incident["evidence"],
    }
    return json.dumps(doc, sort_keys=True).encode() + b"\n"
