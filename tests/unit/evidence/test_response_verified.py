"""Local response actions act only on what this agent verified itself (issue 21 §4).

Classes covered: a PID or path taken from a remote report; a PID not on this node's GPUs, not
judged foreign, or reused since it was observed; a path outside the artifact folders, with
``..``, through a symlink (final or intermediate), a hard link to a file elsewhere, a file the
agent's own scan does not call unsafe, a file swapped between scan and move.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.response.actions import ActionContext, run_action
from trainguard.evidence.response.config import HooksConfig
from trainguard.evidence.response.engine import IncidentEngine
from trainguard.evidence.response.verify import (
    ArtifactDir,
    ObservedProcess,
    Provenance,
    process_start_ticks,
)
from trainguard.integrity.scanner import scan_fileobj

UNSAFE = b"cos\nsystem\n(S'echo pwned'\ntR."  # protocol-0 pickle calling os.system
SAFE = pickle.dumps({"weights": [1, 2, 3]})


@dataclass
class Verifier:
    """The agent's view, typed like `LocalVerifier`; the real scanner judges files."""

    procs: dict[int, ObservedProcess] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)

    def gpu_process(self, pid: int) -> ObservedProcess | None:
        return self.procs.get(pid)

    def artifact_dirs(self) -> list[ArtifactDir]:
        return [ArtifactDir(PurePosixPath(d), d) for d in self.dirs]

    def scan_verdict(self, f: IO[bytes], size: int) -> str:
        return scan_fileobj(f, size).verdict.value


def _incident(**evidence: object) -> dict[str, object]:
    return {
        "id": "inc-1",
        "kind": "gpu-misuse",
        "severity": "high",
        "node": "node-1",
        "time": 1.0,
        "evidence": evidence,
    }


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _observed(proc: subprocess.Popen[bytes], *, foreign: bool = True) -> ObservedProcess:
    ticks = process_start_ticks(proc.pid)
    assert ticks is not None
    return ObservedProcess(proc.pid, ticks, 0, "xmrig" if foreign else "python", foreign)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(timeout=0.3)
    except subprocess.TimeoutExpired:
        return True
    return False


# ---- kill ----------------------------------------------------------------------------------


def test_kill_terminates_an_observed_foreign_gpu_process(home: Home, sleeper) -> None:  # type: ignore[no-untyped-def]
    ctx = ActionContext(home=home, verifier=Verifier({sleeper.pid: _observed(sleeper)}))
    res = run_action("kill", ctx, _incident(processes=[{"pid": sleeper.pid, "name": "xmrig"}]))
    assert res.ok and res.data["killed"] == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_kill_refuses_a_pid_not_observed_on_this_nodes_gpus(home: Home, sleeper) -> None:  # type: ignore[no-untyped-def]
    ctx = ActionContext(home=home, verifier=Verifier())
    res = run_action("kill", ctx, _incident(pid=sleeper.pid))
    assert (
        not res.ok and "not observed on this node's GPUs" in res.data["refused"][str(sleeper.pid)]
    )
    assert _alive(sleeper)


def test_kill_refuses_an_allowed_training_process(home: Home, sleeper) -> None:  # type: ignore[no-untyped-def]
    ctx = ActionContext(
        home=home, verifier=Verifier({sleeper.pid: _observed(sleeper, foreign=False)})
    )
    res = run_action("kill", ctx, _incident(pid=sleeper.pid))
    assert not res.ok and "not foreign" in res.data["refused"][str(sleeper.pid)]
    assert _alive(sleeper)


def test_kill_refuses_a_pid_reused_since_it_was_observed(home: Home, sleeper) -> None:  # type: ignore[no-untyped-def]
    seen = _observed(sleeper)
    earlier = ObservedProcess(seen.pid, seen.start_ticks - 1, 0, "xmrig", True)  # another process
    ctx = ActionContext(home=home, verifier=Verifier({sleeper.pid: earlier}))
    res = run_action("kill", ctx, _incident(pid=sleeper.pid))
    assert not res.ok and "another process" in res.data["refused"][str(sleeper.pid)]
    assert _alive(sleeper)


def test_kill_without_an_agent_verifier_refuses(home: Home, sleeper) -> None:  # type: ignore[no-untyped-def]
    res = run_action("kill", ActionContext(home=home), _incident(pid=sleeper.pid))
    assert not res.ok and "unverified" in res.data["refused"][str(sleeper.pid)]
    assert _alive(sleeper)


def test_kill_refuses_init_and_self(home: Home) -> None:
    ctx = ActionContext(home=home, own_pid=999, verifier=Verifier())
    res = run_action("kill", ctx, _incident(pids=[1, 999]))
    assert set(res.data["refused"]) == {"1", "999"} and not res.ok


_PID_CASES = ("foreign", "allowed", "unobserved", "reused", "gone", "init", "self")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cases=st.lists(st.sampled_from(_PID_CASES), min_size=1, max_size=6),
    provenance=st.sampled_from(list(Provenance)),
)
def test_property_kill_signals_only_verified_foreign_gpu_processes(
    home: Home, cases: list[str], provenance: Provenance
) -> None:
    """Whatever PIDs an incident names and whoever reports it, a signal reaches only a process
    the agent observed on its GPUs, judged foreign and that is still the same process, and
    never for a remote report."""
    me = os.getpid()
    my_ticks = process_start_ticks(me)
    assert my_ticks is not None
    procs: dict[int, ObservedProcess] = {}
    pids: list[int] = []
    expect: set[int] = set()
    for i, case in enumerate(cases):
        pid = 10_000_000 + i  # never a real pid: signals are recorded, not sent
        if case == "init":
            pid = 1
        elif case == "self":
            pid = 999
        elif case != "unobserved":
            ticks = my_ticks + {"reused": 1, "gone": 2}.get(case, 0)
            procs[pid] = ObservedProcess(pid, ticks, 0, "x", case != "allowed")
        pids.append(pid)
        if case == "foreign" and provenance is not Provenance.REMOTE:
            expect.add(pid)
    sent: list[int] = []

    def send(p: ObservedProcess, sig: int) -> None:
        # the real pinning rule, with this test process standing in for every observed one
        from trainguard.evidence.response.verify import PidReused

        if p.start_ticks == my_ticks + 1:
            raise PidReused(p.pid)
        if p.start_ticks == my_ticks + 2:
            raise ProcessLookupError(p.pid)
        sent.append(p.pid)

    ctx = ActionContext(home=home, own_pid=999, verifier=Verifier(procs), send_signal=send)
    res = run_action("kill", ctx, _incident(pids=pids), provenance=provenance)
    assert set(sent) == expect
    assert res.ok == (bool(expect) and set(pids) <= expect)


# ---- quarantine ----------------------------------------------------------------------------


@dataclass
class Layout:
    models: Path
    outside: Path
    verifier: Verifier


def _layout(base: Path) -> Layout:
    models, outside = base / "models", base / "outside"
    (models / "sub").mkdir(parents=True)
    outside.mkdir()
    (models / "bad.pkl").write_bytes(UNSAFE)
    (models / "sub" / "bad.pkl").write_bytes(UNSAFE)
    (models / "ok.pkl").write_bytes(SAFE)
    (outside / "bad.pkl").write_bytes(UNSAFE)
    (outside / "victim.pkl").write_bytes(UNSAFE)
    (models / "link.pkl").symlink_to(outside / "bad.pkl")
    (models / "dirlink").symlink_to(outside)
    os.link(outside / "victim.pkl", models / "hard.pkl")
    return Layout(models, outside, Verifier(dirs=[models.resolve()]))


def _quarantine(home: Home, lay: Layout, path: str, provenance: Provenance = Provenance.AGENT):  # type: ignore[no-untyped-def]
    ctx = ActionContext(home=home, verifier=lay.verifier)
    return run_action("quarantine", ctx, _incident(path=path), provenance=provenance)


def test_quarantine_moves_a_verified_unsafe_artifact_mode_000(home: Home, tmp_path: Path) -> None:
    import hashlib

    lay = _layout(tmp_path)
    res = _quarantine(home, lay, str(lay.models / "sub" / "bad.pkl"))
    assert res.ok and not (lay.models / "sub" / "bad.pkl").exists()
    dst = Path(res.data["quarantined_as"])
    assert dst.parent == home.quarantine_dir and dst.stat().st_mode & 0o777 == 0
    assert res.data["sha256"] == hashlib.sha256(UNSAFE).hexdigest()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ok.pkl", "scan calls it safe"),
        ("link.pkl", "symlink"),
        ("dirlink/bad.pkl", "symlink or non-folder"),
        ("hard.pkl", "hard links"),
        ("sub/../../outside/bad.pkl", "'..'"),
        ("missing.pkl", "cannot open"),
    ],
)
def test_quarantine_refuses_what_it_cannot_verify(
    home: Home, tmp_path: Path, name: str, why: str
) -> None:
    lay = _layout(tmp_path)
    res = _quarantine(home, lay, f"{lay.models}/{name}")
    assert not res.ok and why in res.detail, res.detail
    assert (lay.outside / "bad.pkl").read_bytes() == UNSAFE
    assert (lay.outside / "victim.pkl").stat().st_mode & 0o777 != 0
    assert not home.quarantine_dir.exists() or not list(home.quarantine_dir.iterdir())


def test_quarantine_refuses_paths_outside_the_artifact_folders_and_in_the_home(
    home: Home, tmp_path: Path
) -> None:
    lay = _layout(tmp_path)
    assert (
        "not inside a configured artifact folder"
        in _quarantine(home, lay, str(lay.outside / "bad.pkl")).detail
    )
    assert "absolute" in _quarantine(home, lay, "models/bad.pkl").detail
    in_home = home.root / "models"
    in_home.mkdir()
    (in_home / "bad.pkl").write_bytes(UNSAFE)
    lay.verifier.dirs.append(in_home.resolve())
    assert not _quarantine(home, lay, str(in_home / "bad.pkl")).ok
    assert (in_home / "bad.pkl").exists()


def test_quarantine_from_a_remote_report_is_refused_even_for_an_unsafe_file(
    home: Home, tmp_path: Path
) -> None:
    lay = _layout(tmp_path)
    res = _quarantine(home, lay, str(lay.models / "bad.pkl"), Provenance.REMOTE)
    assert not res.ok and "unverified" in res.detail
    assert (lay.models / "bad.pkl").exists()


def test_quarantine_puts_back_a_file_swapped_in_during_the_move(home: Home, tmp_path: Path) -> None:
    lay = _layout(tmp_path)
    target = lay.models / "bad.pkl"
    real_scan = lay.verifier.scan_verdict

    def scan_then_swap(f: IO[bytes], size: int) -> str:
        verdict = real_scan(f, size)
        target.rename(lay.models / "scanned.pkl")  # the scanned inode moves away...
        target.write_bytes(SAFE)  # ...and another file takes its name
        return verdict

    lay.verifier.scan_verdict = scan_then_swap  # type: ignore[method-assign]
    res = _quarantine(home, lay, str(target))
    assert not res.ok and "changed" in res.detail
    assert target.read_bytes() == SAFE


_COMPONENTS = ["..", ".", "sub", "dirlink", "link.pkl", "hard.pkl", "bad.pkl", "ok.pkl", "x"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    root=st.sampled_from(["models", "outside", "home", "/"]),
    parts=st.lists(st.sampled_from(_COMPONENTS), min_size=0, max_size=5),
    provenance=st.sampled_from(list(Provenance)),
)
def test_property_quarantine_never_touches_anything_but_a_verified_file_in_its_folder(
    home: Home, root: str, parts: list[str], provenance: Provenance
) -> None:
    """Whatever path an incident names (traversal, symlinks, hard links, other folders) and
    whoever reports it: nothing outside the artifact folder changes, and only the unsafe files
    reached without a symlink from the folder are ever moved."""
    with tempfile.TemporaryDirectory() as d:
        lay = _layout(Path(d))
        base = {"models": str(lay.models), "outside": str(lay.outside), "home": str(home.root)}
        path = "/".join([base.get(root, ""), *parts]) or "/"
        before = {p: (p.read_bytes(), p.stat().st_mode) for p in lay.outside.iterdir()}
        res = _quarantine(home, lay, path, provenance)
        after = {p: (p.read_bytes(), p.stat().st_mode) for p in lay.outside.iterdir()}
        assert after == before
        legit = {f"{lay.models}/bad.pkl", f"{lay.models}/sub/bad.pkl"}
        if res.ok:
            assert path in legit and provenance is not Provenance.REMOTE
            assert not Path(path).exists()
        else:
            assert all(Path(p).read_bytes() == UNSAFE for p in legit)


# ---- the engine: a remote report is recorded, never acted on ------------------------------


def test_remote_incident_is_recorded_but_its_pid_and_path_are_never_acted_on(
    home: Home, signer: SigningKey, tmp_path: Path, sleeper
) -> None:  # type: ignore[no-untyped-def]
    lay = _layout(tmp_path)
    lay.verifier.procs[sleeper.pid] = _observed(sleeper)
    log = AuditLog.open(home.audit_db, "node-1", signer)
    hooks = HooksConfig(actions={"checkpoint-tampered": ["kill", "quarantine", "stop-training"]})
    engine = IncidentEngine(home, log, node="node-1", hooks=hooks, verifier=lay.verifier)
    try:
        evidence = {"pid": sleeper.pid, "path": str(lay.models / "bad.pkl")}
        inc = engine.report(
            "checkpoint-tampered",
            "critical",
            evidence,
            actor="spiffe://c/node/n2",
            provenance=Provenance.REMOTE,
        )
        recorded = next(e for e in log.entries(kind="incident"))
        assert recorded.data["id"] == inc.id and recorded.data["provenance"] == "remote"
        assert recorded.data["evidence"]["pid"] == sleeper.pid  # the claim is kept as evidence
        for name in ("kill", "quarantine", "stop-training"):
            out = next(e for e in log.entries(kind=f"action.{name}")).data
            assert out["ok"] is False and out["detail"].startswith("refused: unverified"), out
        assert _alive(sleeper) and (lay.models / "bad.pkl").exists()
        assert not (home.state_dir / "stop-training.json").exists()
        # the same report made by this agent's own detection is acted on
        engine.report("checkpoint-tampered", "critical", {**evidence, "again": 1})
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert not (lay.models / "bad.pkl").exists()
    finally:
        engine.close()
        log.close()


def test_remote_reports_cannot_exhaust_or_preempt_the_agents_own_incidents(
    home: Home, signer: SigningKey
) -> None:
    """A node flooding incidents up to the rate limit, or reusing this agent's dedup key, must
    not stop this agent's own incident from being recorded and acted on."""
    from trainguard.evidence.config import IncidentsConfig

    log = AuditLog.open(home.audit_db, "node-1", signer)
    limits = IncidentsConfig(dedup_seconds=600, rate_limit=3, rate_window_seconds=600)
    hooks = HooksConfig(actions={"byzantine-worker": ["stop-training"]})
    engine = IncidentEngine(home, log, node="node-1", limits=limits, hooks=hooks)
    try:
        peer = "spiffe://c/node/n2"
        own = {"rank": 1, "dedup_key": "rank-1"}
        assert (
            engine.report(
                "byzantine-worker", "high", own, actor=peer, provenance=Provenance.REMOTE
            ).status
            == "new"
        )
        for i in range(5):
            engine.report(
                "byzantine-worker",
                "high",
                {"rank": 10 + i},
                actor=peer,
                provenance=Provenance.REMOTE,
            )
        assert (
            engine.report(
                "byzantine-worker", "high", {"rank": 99}, actor=peer, provenance=Provenance.REMOTE
            ).status
            == "rate-limited"
        )
        mine = engine.report("byzantine-worker", "high", own)
        assert mine.status == "new"
        assert (home.state_dir / "stop-training.json").exists()
        notes = [e.data["reporter"] for e in log.entries(kind="incident.rate-limited")]
        assert notes == [peer]
    finally:
        engine.close()
        log.close()


def test_quarantine_refuses_when_the_artifact_folder_was_swapped_for_a_symlink(
    home: Home, tmp_path: Path
) -> None:
    lay = _layout(tmp_path)
    lay.models.rename(tmp_path / "models-real")
    lay.models.symlink_to(lay.outside)  # the configured (resolved) folder now points elsewhere
    res = _quarantine(home, lay, str(lay.models / "bad.pkl"))
    assert not res.ok and "artifact folder unusable" in res.detail
    assert (lay.outside / "bad.pkl").read_bytes() == UNSAFE


def test_quarantine_accepts_the_folder_as_configured_through_an_admins_symlink(
    home: Home, tmp_path: Path
) -> None:
    """`[checks] model_dirs` may name a folder through a symlink the admin set up (/data ->
    /mnt/data); the check's evidence names files that way. The resolved folder is what opens."""
    lay = _layout(tmp_path / "real")
    alias = tmp_path / "data"
    alias.symlink_to(lay.models)
    ctx = ActionContext(home=home, verifier=Verifier())
    ctx.verifier.artifact_dirs = lambda: [ArtifactDir(PurePosixPath(alias), lay.models.resolve())]  # type: ignore[union-attr, method-assign]
    res = run_action("quarantine", ctx, _incident(path=str(alias / "sub" / "bad.pkl")))
    assert res.ok, res.detail
    assert not (lay.models / "sub" / "bad.pkl").exists()


def test_without_an_agent_quarantine_refuses_as_unverified(home: Home, tmp_path: Path) -> None:
    """The CLI or trainer handling an incident while no agent runs has no verifier."""
    lay = _layout(tmp_path)
    res = run_action(
        "quarantine", ActionContext(home=home), _incident(path=str(lay.models / "bad.pkl"))
    )
    assert not res.ok and res.detail.startswith("refused: unverified")
    assert (lay.models / "bad.pkl").read_bytes() == UNSAFE
