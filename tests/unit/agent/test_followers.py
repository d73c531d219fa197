"""The audit follower: what each audit entry means to the access detector, reading forward by
seq exactly once, and an odd entry skipped instead of stopping the feed."""

from __future__ import annotations

from pathlib import Path

from support import make_home
from trainguard.agent.detection import Scorer
from trainguard.agent.followers import AuditFollower, access_event
from trainguard.agent.jobs import JobRegistry
from trainguard.anomaly.config import AnomalyConfig
from trainguard.anomaly.domain import AccessEvent
from trainguard.core.config import load_config
from trainguard.evidence.audit_chain import AuditEntry
from trainguard.evidence.embedded import open_embedded_log
from trainguard.evidence.incidents import IncidentKind


class BrokenTraining(Scorer):
    def observe_training(self, job: str, record: object, time: float) -> list:  # type: ignore[override]
        raise ValueError("a detector bug")


def _entry(kind: str, actor: str, data: dict, t: float = 100.0) -> AuditEntry:
    return AuditEntry(1, t, "n", actor, kind, data, "", "")


def test_access_entries_map_to_access_events() -> None:
    cases = {
        ("login-failed", "alice", ()): AccessEvent(100.0, "alice", "denied"),
        # through the agent API the actor is the caller's uid; the CLI's claim names the user
        ("login-failed", "uid:0(root)", (("claimed_actor", "bob"),)):
            AccessEvent(100.0, "bob", "denied"),
        ("mfa-failed", "carol", (("user", "carol"), ("purpose", "step-up"))):
            AccessEvent(100.0, "carol", "mfa-failure"),
        ("mfa-refused", "carol", (("user", "carol"),)): AccessEvent(100.0, "carol", "mfa-failure"),
        ("access-denied", "dave", (("action", "train:launch"),)):
            AccessEvent(100.0, "dave", "denied"),
        ("api.denied", "uid:1000(eve)", (("op", "export"),)):
            AccessEvent(100.0, "uid:1000(eve)", "denied"),
        ("access-allowed", "dave", (("action", "checkpoint:export"),)):
            AccessEvent(100.0, "dave", "export"),
        ("access-allowed", "dave", (("action", "train:launch"),)):
            AccessEvent(100.0, "dave", "allowed"),
        ("train.export", "dave", (("job", "j"),)): AccessEvent(100.0, "dave", "export"),
        # an admin asking about another user is the admin's query, not that user's attempt
        ("access-what-if", "root", (("user", "frank"), ("allowed", False))):
            AccessEvent(100.0, "root", "allowed"),
    }
    for (kind, actor, data), want in cases.items():
        assert access_event(_entry(kind, actor, dict(data))) == want, kind
    # the failed code of a login is recorded twice (mfa-failed, login-failed): counted once
    assert access_event(_entry("mfa-failed", "a", {"user": "a", "purpose": "login"})) is None
    assert access_event(_entry("train.telemetry", "a", {})) is None
    assert access_event(_entry("posture.checks", "a", {})) is None


def test_follows_by_seq_once_and_skips_an_odd_entry(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", keyring=False)
    audit = open_embedded_log(home, load_config(home.config_path, {}))
    try:
        follower = AuditFollower(audit, BrokenTraining(AnomalyConfig(), clock=lambda: 1000.0),
                                 JobRegistry(tmp_path / "noproc"), after_seq=audit.last_seq())
        assert follower.poll() == []
        for _ in range(5):
            audit.append("login-failed", "mallory", {"reason": "x"})
        # an entry a detector chokes on is skipped (logged), never retried every cycle
        audit.append("train.telemetry", "t", {"job": "j", "step": 7, "loss": 1.0})
        assert follower.poll() == []  # five failures: within the hourly allowance
        assert follower.poll() == []  # nothing new: nothing read twice
        audit.append("login-failed", "mallory", {"reason": "x"})
        found = follower.poll()
        assert [d.kind for d in found] == [IncidentKind.ACCESS_ANOMALY]
        assert found[0].evidence["failures_this_hour"] == 6
        assert follower.after_seq == audit.last_seq()
    finally:
        audit.close()


def test_start_reads_back_the_last_hour(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", keyring=False)
    audit = open_embedded_log(home, load_config(home.config_path, {}))
    try:
        for _ in range(6):
            audit.append("mfa-failed", "mallory", {"user": "mallory", "purpose": "step-up"})
        entries = list(audit.entries())
        now = entries[-1].time
        scorer = Scorer(AnomalyConfig(), clock=lambda: now)
        jobs = JobRegistry(tmp_path / "noproc")
        # an agent (re)started within the hour still sees the whole burst
        found = AuditFollower.start(audit, scorer, jobs, clock=lambda: now + 60).poll()
        assert [d.evidence["user"] for d in found] == ["mallory"]
        # one started long after reads nothing old
        late = AuditFollower.start(audit, Scorer(None), jobs, clock=lambda: now + 7200)
        assert late.after_seq == audit.last_seq() and late.poll() == []
    finally:
        audit.close()
