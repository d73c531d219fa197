"""The agent follows its own audit log and feeds what it reads to the detectors.

Every cycle `AuditFollower.poll()` reads the entries appended since the last one (by sequence
number, so nothing is read twice or skipped, whoever wrote them: the policy code, the CLI, a
trainer through the API) and routes them:

* access decisions and failed logins (`ACCESS_KINDS`) -> `Scorer.observe_access`, whose
  `AccessDetector` raises ``access-anomaly`` on a burst of failures for one user in an hour, or
  an export outside working hours;
* ``train.launch`` / ``train.finish`` -> the `JobRegistry`, whose live PIDs the GPU-misuse
  detector treats as registered training work (see `trainguard.agent.jobs` for what keeps a
  forged launch event from hiding a miner). The agent records what it did with each launch
  event: ``agent.job-registered`` or ``agent.job-refused`` with the reason;
* ``train.telemetry`` (the trainer's per-step loss, gradient norm and, when it sends them, the
  per-rank update statistics) -> `Scorer.observe_training`.

`AgentFeeds` is what the daemon holds: the follower, the job registry (whose PIDs it hands to the
scorer's GPU-misuse detector) and the node certificate renewer (`trainguard.agent.renewal`), run
once per cycle by `AgentFeeds.cycle`.

On start the follower reads back ``lookback_s`` (one hour: the access detector's window), so a
restart in the middle of a burst still sees all of it; incidents it already raised before the
restart come out identical and the incident engine drops them as duplicates. Older launch
events are read too, for jobs that are still running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from trainguard.agent.detection import Detection, Scorer
from trainguard.agent.jobs import FINISH_KIND, LAUNCH_KIND, MAX_JOBS, JobRegistry
from trainguard.agent.renewal import NodeCertRenewer
from trainguard.anomaly.domain import AccessEvent
from trainguard.core.home import Home
from trainguard.evidence.audit_chain import AuditEntry
from trainguard.evidence.incidents import AGENT_ACTOR

__all__ = ["ACCESS_KINDS", "AgentFeeds", "AuditFollower", "access_event"]

log = logging.getLogger(__name__)

TELEMETRY_KIND = "train.telemetry"

# audit event kind -> AccessEvent kind ("denied" and "mfa-failure" count as failures)
ACCESS_KINDS: Mapping[str, str] = {
    "login-failed": "denied",
    "session-refused": "denied",
    "access-denied": "denied",
    "api.denied": "denied",  # the agent API refused a caller
    "mfa-failed": "mfa-failure",
    "mfa-refused": "mfa-failure",  # second factor locked after repeated failures
    "login": "allowed",
    "access-allowed": "allowed",
    "access-what-if": "allowed",  # an admin asking about another user: not that user's attempt
    "train.export": "export",
}
_EXPORT_ACTIONS = frozenset({"checkpoint:export"})


class _Log(Protocol):
    def entries(
        self, since: float | None = None, kind: str | None = None, *, after_seq: int = 0,
        limit: int | None = None,
    ) -> Any: ...

    def latest(self, kind: str, limit: int = 50) -> list[AuditEntry]: ...

    def last_seq(self) -> int: ...

    def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int: ...


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def access_event(entry: AuditEntry) -> AccessEvent | None:
    """The access decision an audit entry records, or None when it records none.

    The user is the one the decision was about: ``data.user`` where the writer names one, else
    the name the CLI claimed (kept as ``claimed_actor`` when it came through the agent API; only
    the node's operators may submit these kinds), else the entry's actor.
    """
    kind = ACCESS_KINDS.get(entry.kind)
    if kind is None:
        return None
    data = entry.data
    if entry.kind == "mfa-failed" and data.get("purpose") == "login":
        return None  # the same attempt is recorded as login-failed: count it once
    if entry.kind == "access-what-if":
        user = _text(data.get("claimed_actor")) or entry.actor
    else:
        user = _text(data.get("user")) or _text(data.get("claimed_actor")) or entry.actor
    if entry.kind == "access-allowed" and data.get("action") in _EXPORT_ACTIONS:
        kind = "export"
    return AccessEvent(entry.time, user, kind)


class AuditFollower:
    """Reads the audit log forward by seq and feeds the scorer and the job registry."""

    def __init__(
        self,
        audit: _Log,
        scorer: Scorer | None,
        jobs: JobRegistry,
        *,
        after_seq: int,
        max_per_poll: int = 20000,
    ) -> None:
        self.audit = audit
        self.scorer = scorer
        self.jobs = jobs
        self.after_seq = after_seq
        self.max_per_poll = max_per_poll

    @classmethod
    def start(
        cls,
        audit: _Log,
        scorer: Scorer | None,
        jobs: JobRegistry,
        *,
        clock: Callable[[], float],
        lookback_s: float = 3600.0,
    ) -> AuditFollower:
        """A follower that begins `lookback_s` back, with the still-running jobs of older
        launch events registered."""
        last = audit.last_seq()
        first = next(iter(audit.entries(since=clock() - lookback_s, limit=1)), None)
        after = first.seq - 1 if first is not None else last
        for entry in sorted(audit.latest(LAUNCH_KIND, MAX_JOBS), key=lambda e: e.seq):
            if entry.seq <= after:  # newer ones are read by the first poll
                jobs.launched(entry.seq, entry.time, entry.data)  # dead launchers: no-op
        return cls(audit, scorer, jobs, after_seq=after)

    def poll(self) -> list[Detection]:
        """Read what was appended since the last poll; returns the detections it led to."""
        found: list[Detection] = []
        read = 0
        while read < self.max_per_poll:
            batch = list(self.audit.entries(after_seq=self.after_seq, limit=2000))
            if not batch:
                break
            for entry in batch:
                try:
                    found += self._route(entry)
                except Exception:  # noqa: BLE001 - one odd entry is skipped, never retried forever
                    log.exception("audit entry %d (%s) not fed to the detectors",
                                  entry.seq, entry.kind)
                self.after_seq = entry.seq
            read += len(batch)
        return found

    def _route(self, entry: AuditEntry) -> list[Detection]:
        if entry.kind == LAUNCH_KIND:
            self._launched(entry)
            return []
        if entry.kind == FINISH_KIND:
            job = entry.data.get("job")
            if self.jobs.finished(entry.data) is not None:
                log.info("training job %s finished", job)
            if self.scorer is not None and isinstance(job, str):
                self.scorer.forget_job(job)
            return []
        if self.scorer is None:
            return []
        if entry.kind == TELEMETRY_KIND:
            job = _text(entry.data.get("job"))
            return self.scorer.observe_training(job, entry.data, entry.time) if job else []
        event = access_event(entry)
        return self.scorer.observe_access(event) if event is not None else []

    def _launched(self, entry: AuditEntry) -> None:
        before = {j.job: j for j in self.jobs.jobs}
        job, why = self.jobs.launched(entry.seq, entry.time, entry.data)
        if job is not None and before.get(job.job) == job:
            return  # read again (the start-up look-back): already registered
        data: dict[str, Any] = {"job": entry.data.get("job"), "launch_seq": entry.seq}
        if job is None:
            self.audit.append("agent.job-refused", AGENT_ACTOR, {**data, "reason": why})
            log.warning("training job %s not registered: %s", data["job"], why)
        else:
            self.audit.append("agent.job-registered", AGENT_ACTOR,
                              {**data, "launcher_pid": job.launcher_pid})


class AgentFeeds:
    """What the daemon runs each cycle besides telemetry: the audit follower (access, jobs,
    training) and the node certificate renewal."""

    def __init__(
        self, follower: AuditFollower, jobs: JobRegistry, renewer: NodeCertRenewer | None
    ) -> None:
        self.follower = follower
        self.jobs = jobs
        self.renewer = renewer

    @classmethod
    def start(
        cls,
        home: Home,
        node: str,
        audit: _Log,
        scorer: object,
        *,
        clock: Callable[[], float],
        on_renewed: Callable[[], object] | None = None,
        jobs: JobRegistry | None = None,
    ) -> AgentFeeds:
        """Feeds for the daemon. A real `Scorer` gets the job registry's PIDs (unless it was
        given its own) and the audit stream; any other scorer (a test's fake) gets neither."""
        jobs = jobs or JobRegistry()
        real = scorer if isinstance(scorer, Scorer) else None
        if real is not None and real.registered_pids is None:
            real.registered_pids = jobs.pids
        follower = AuditFollower.start(audit, real, jobs, clock=clock)
        renewer = NodeCertRenewer(home.pki_dir, node, audit, clock=clock, on_renewed=on_renewed)
        return cls(follower, jobs, renewer)

    def cycle(self, errors: list[str]) -> list[Detection]:
        """Follow the audit log and check the certificate; a failure of either is appended to
        `errors` and never stops the cycle."""
        found: list[Detection] = []
        try:
            found = self.follower.poll()
        except Exception as exc:  # noqa: BLE001 - a bad entry must not stop the agent
            log.exception("following the audit log failed")
            errors.append(f"audit follower: {type(exc).__name__}: {exc}")
        if self.renewer is not None:
            try:
                self.renewer.check()
            except Exception as exc:  # noqa: BLE001 - retried next cycle
                log.exception("node certificate renewal check failed")
                errors.append(f"certificate renewal: {type(exc).__name__}: {exc}")
        return found
