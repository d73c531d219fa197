"""The incident engine: a detection or failed check becomes an `Incident`, deduplicated and
rate-limited, written to the audit log, and handed to the hooks in hooks.d/ and the configured
built-in actions.

The same engine runs inside the agent and, when no agent runs, inside the CLI or the trainer
(`trainguard.agent.api.client.report_incident`). Dedup and rate-limit state is read back from the
audit log, so it holds across processes and restarts.

Every incident carries its `Provenance` (this agent, another local process, or a remote
report); the built-in actions that change this node refuse remote reports and otherwise act only
on targets the injected `LocalVerifier` confirms (`trainguard.evidence.response.verify`).

Audit kinds written here: ``incident``, ``incident.rate-limited``, ``hook.run``,
``hook.skipped``, ``action.<name>``, ``webhook.delivered``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainguard.core.config import Config
from trainguard.core.errors import TrainguardError
from trainguard.core.fs import read_private
from trainguard.core.home import Home
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.config import IncidentsConfig
from trainguard.evidence.incidents import (
    AGENT_ACTOR,
    LOG_LEVELS,
    Incident,
    IncidentKind,
    IncidentStatus,
    Severity,
    dedup_key,
    parse_kind,
    parse_severity,
)
from trainguard.evidence.response.actions import ActionContext, run_action
from trainguard.evidence.response.config import HooksConfig
from trainguard.evidence.response.hooks import (
    discover_hooks,
    hook_env,
    incident_payload,
    run_hook,
)
from trainguard.evidence.response.queue import (
    DeliveryQueue,
    Transport,
    WebhookSender,
    urllib_transport,
)
from trainguard.evidence.response.verify import LocalVerifier, Provenance

__all__ = ["IncidentEngine", "load_webhook_secret"]

log = logging.getLogger(__name__)


class IncidentEngine:
    """Gate, record and respond to incidents. Thread-safe as far as its parts are."""

    def __init__(
        self,
        home: Home,
        audit: AuditLog,
        *,
        node: str,
        limits: IncidentsConfig | None = None,
        hooks: HooksConfig | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: f"inc-{uuid.uuid4().hex[:20]}",
        transport: Transport = urllib_transport,
        queue: DeliveryQueue | None = None,
        secret: bytes | None = None,
        verifier: LocalVerifier | None = None,
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        """`verifier`: the agent's own view of this node (None: kill and quarantine refuse).
        `on_enqueue`: called after a webhook is queued instead of sending it inline (the agent
        wakes its delivery task with it)."""
        self.home = home
        self.audit = audit
        self.node = node
        self.limits = limits or IncidentsConfig()
        self.hooks = hooks or HooksConfig()
        self._clock = clock
        self._new_id = new_id
        self.queue = queue if queue is not None else DeliveryQueue(home.queue_db, clock=clock)
        self.sender = WebhookSender(
            self.queue,
            secret,
            transport=transport,
            clock=clock,
            base_seconds=self.hooks.retry_base_seconds,
            max_seconds=self.hooks.retry_max_seconds,
            timeout=self.hooks.webhook_timeout_seconds,
        )
        self.actions = ActionContext(
            home=home,
            webhook_url=self.hooks.webhook_url,
            queue=self.queue,
            kill_signal=self.hooks.kill_signal,
            stop_training_file=self.hooks.stop_training_file,
            verifier=verifier,
        )
        self.on_enqueue = on_enqueue

    @classmethod
    def from_config(
        cls, home: Home, config: Config, audit: AuditLog, **kwargs: Any
    ) -> IncidentEngine:
        hooks = config.section(HooksConfig)
        return cls(
            home,
            audit,
            node=config.node.name,
            limits=config.section(IncidentsConfig),
            hooks=hooks,
            secret=kwargs.pop("secret", None) or load_webhook_secret(home, hooks),
            **kwargs,
        )

    # ---- the gate ------------------------------------------------------------------------

    def _gate(self, key: str, actor: str, now: float) -> str:
        """Dedup and rate limit per reporter: another node's reports can neither exhaust the
        budget of this agent's own incidents nor pre-empt them as duplicates."""
        window = max(self.limits.dedup_seconds, self.limits.rate_window_seconds)
        in_window = 0
        for entry in self.audit.entries(since=now - window, kind="incident"):
            if entry.actor != actor:
                continue
            if entry.data.get("dedup_key") == key and entry.time >= now - self.limits.dedup_seconds:
                return IncidentStatus.DUPLICATE
            if entry.time >= now - self.limits.rate_window_seconds:
                in_window += 1
        return (
            IncidentStatus.RATE_LIMITED
            if in_window >= self.limits.rate_limit
            else IncidentStatus.NEW
        )

    def report(
        self,
        kind: IncidentKind | str,
        severity: Severity | str,
        evidence: Mapping[str, Any],
        *,
        actor: str = AGENT_ACTOR,
        respond: bool = True,
        provenance: Provenance = Provenance.AGENT,
        synthetic: bool = False,
    ) -> Incident:
        """Record an incident (unless it duplicates a recent one or the rate limit is reached)
        and run hooks and actions for it. Returns the incident with its status.

        `provenance` says who reported it, as the caller's transport proved; the API passes
        ``remote`` for other nodes and user certificates, ``local`` for other local processes.
        `synthetic` marks a test incident (`hooks test`) in the entry itself, outside the
        caller's evidence, so the report leaves it out of its evidence and score; only
        in-process callers can set it (the API never does).
        """
        k, sev = parse_kind(kind), parse_severity(severity)
        now = self._clock()
        key = dedup_key(k, evidence)
        status = self._gate(key, actor, now)
        incident = Incident(self._new_id(), k, sev, self.node, now, dict(evidence), status)
        if status == IncidentStatus.DUPLICATE:
            log.info("incident %s suppressed: duplicate of a recent one", key)
            return incident
        if status == IncidentStatus.RATE_LIMITED:
            self._note_rate_limited(incident, actor, now)
            return incident
        seq = self.audit.append(
            "incident",
            actor,
            {**incident.to_dict(), "dedup_key": key, "provenance": provenance.value}
            | ({"synthetic": True} if synthetic else {}),
        )
        # Kind, severity and where to look: never the evidence, which may name paths or users.
        log.log(LOG_LEVELS[sev], "incident %s: %s (%s) reported by %s; audit entry %d",
                incident.id, k.value, sev.value, actor, seq)
        if respond:
            self.respond(incident, provenance)
        return incident

    def _note_rate_limited(self, incident: Incident, actor: str, now: float) -> None:
        since = now - self.limits.rate_window_seconds
        noted = self.audit.entries(since=since, kind="incident.rate-limited")
        if not any(e.data.get("reporter", AGENT_ACTOR) == actor for e in noted):
            self.audit.append(
                "incident.rate-limited",
                AGENT_ACTOR,
                {
                    "reporter": actor,
                    "kind": incident.kind.value,
                    "limit": self.limits.rate_limit,
                    "window_seconds": self.limits.rate_window_seconds,
                },
            )
        log.warning("incident rate limit reached; %s not recorded", incident.kind.value)

    # ---- response ------------------------------------------------------------------------

    def action_names(self, kind: IncidentKind) -> list[str]:
        names: list[str] = []
        for key in ("*", kind.value):
            for name in self.hooks.actions.get(key, []):
                if name not in names:
                    names.append(name)
        return names

    def respond(
        self, incident: Incident, provenance: Provenance = Provenance.AGENT
    ) -> list[dict[str, Any]]:
        """Run every hook in hooks.d and every configured action; audit each outcome."""
        doc = {**incident.to_dict(), "provenance": provenance.value}
        outcomes: list[dict[str, Any]] = []
        hooks, skipped = discover_hooks(self.home.hooks_dir)
        for path, reason in skipped:
            self.audit.append(
                "hook.skipped",
                AGENT_ACTOR,
                {"incident": incident.id, "hook": path.name, "reason": reason},
            )
        payload = incident_payload(doc)
        env = hook_env(doc, self.home.root, self.hooks.timeout_seconds)
        for path in hooks:
            result = run_hook(
                path,
                payload,
                env,
                cwd=self.home.root,
                timeout=self.hooks.timeout_seconds,
                max_output=self.hooks.max_output_bytes,
            )
            out = {"incident": incident.id, **result.to_dict()}
            self.audit.append("hook.run", AGENT_ACTOR, out)
            outcomes.append(out)
        for name in self.action_names(incident.kind):
            action = run_action(name, self.actions, doc, provenance=provenance)
            out = {"incident": incident.id, "provenance": provenance.value, **action.to_dict()}
            self.audit.append(f"action.{name}", AGENT_ACTOR, out)
            outcomes.append(out)
        if any(o.get("action") == "webhook" for o in outcomes):
            if self.on_enqueue is not None:
                self.on_enqueue()
            else:
                self.deliver_webhooks()
        return outcomes

    def deliver_webhooks(self) -> int:
        """Send due webhook deliveries once; returns how many were delivered."""
        delivered, _failed = self.sender.drain()
        for key in delivered:
            self.audit.append("webhook.delivered", AGENT_ACTOR, {"key": key})
        return len(delivered)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest recorded incidents, newest first."""
        return [dict(e.data) for e in self.audit.latest("incident", limit)]

    def close(self) -> None:
        self.queue.close()


def load_webhook_secret(home: Home, hooks: HooksConfig) -> bytes | None:
    """The HMAC key from `webhook_secret_file` (0600; relative paths are under the home)."""
    if not hooks.webhook_secret_file:
        return None
    path = Path(hooks.webhook_secret_file)
    if not path.is_absolute():
        path = home.root / path
    try:
        return read_private(path).strip() or None
    except TrainguardError as exc:
        log.warning("webhook secret unusable (%s); deliveries are unsigned", exc.message)
        return None
