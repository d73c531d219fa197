"""`trainguard demo`: the whole product, for real, on one machine, in a few minutes.

Every step runs the real `trainguard` CLI in a subprocess against a fresh home, exactly as a
user would, and reads its JSON output. Nothing is canned: if a step fails, the demo stops, says
which command failed and shows its error, and exits non-zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import TrainguardError, UsageError


class DemoError(TrainguardError):
    exit_code = 1


@dataclass
class Step:
    title: str
    summary: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise DemoError(f"expected JSON from the CLI, got: {self.stdout[:300]!r}") from exc


class DemoRunner:
    """Runs the CLI against `workdir/home`; collects one `Step` per stage."""

    def __init__(self, workdir: Path, *, progress: Callable[[str], None], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.progress = progress
        self.env = dict(env)
        self.env.pop("TRAINGUARD_HOME", None)
        # Login sessions live under the user's config dir: keep the demo's out of the real one.
        self.env["XDG_CONFIG_HOME"] = str(workdir / "config")
        self.steps: list[Step] = []
        self.agent: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str | Path, ok: Sequence[int] = (0,), json_out: bool = True,
            timeout: float = 900, input: str | None = None) -> CliResult:
        cmd = [sys.executable, "-m", "trainguard.cli.main", *map(str, args), "--home", str(self.home)]
        if json_out:
            cmd += ["--format", "json"]
        # cwd: `python -m` puts the working folder on sys.path; an empty one keeps a source
        # checkout out of the dependency lock.
        proc = subprocess.run(cmd, capture_output=True, env=self.env, timeout=timeout, cwd=self.workdir,
                              input=input.encode() if input is not None else None)
        res = CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if res.code not in ok:
            shown = " ".join(str(a) for a in args)
            raise DemoError(
                f"`trainguard {shown}` exited {res.code} (expected {', '.join(map(str, ok))}):\n"
                + (res.stderr.strip()[-2000:] or res.stdout.strip()[-2000:]),
                tip="re-run that command by hand with -v against the demo home to see more",
            )
        return res

    def step(self, title: str, fn: Callable[[], tuple[str, dict[str, Any]]]) -> None:
        n = len(self.steps) + 1
        self.progress(f"[{n}] {title} ...")
        t0 = time.monotonic()
        summary, data = fn()
        st = Step(title, summary, round(time.monotonic() - t0, 1), data)
        self.steps.append(st)
        self.progress(f"    {summary} ({st.seconds:.1f} s)")

    # -- the agent -----------------------------------------------------------------------------

    def start_agent(self) -> dict[str, Any]:
        log = (self.workdir / "agent.log").open("wb")
        cmd = [sys.executable, "-m", "trainguard.cli.main", "agent", "run", "--home", str(self.home)]
        self.agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise DemoError("the agent exited at start; see " + str(self.workdir / "agent.log"))
            res = self.cli("agent", "status", ok=(0, 1, 2, 3))
            if res.code == 0:
                return dict(res.json())
            time.sleep(0.5)
        raise DemoError("the agent did not answer within 60 s; see " + str(self.workdir / "agent.log"))

    def stop_agent(self) -> None:
        if self.agent is None or self.agent.poll() is not None:
            return
        self.agent.send_signal(signal.SIGTERM)
        try:
            self.agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()


def prepare_workdir(path: Path | None) -> Path:
    if path is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="trainguard-demo-"))
    path = path.expanduser().absolute()
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"{path} is not empty", tip="pass an empty or new folder to --dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
