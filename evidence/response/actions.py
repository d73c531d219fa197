"""Built-in incident actions: webhook, kill, quarantine, revoke, stop-training.

Which actions run for which incident kind is configured in ``[hooks.actions]``. Each action takes
what it needs from the incident's evidence and returns an `ActionResult`; none of them raises for
a bad or missing evidence field, so one action never stops the others or the agent.

Actions that change this node act only on what this agent verified itself
(`trainguard.evidence.response.verify`): for an incident reported by another node or a user
certificate (`Provenance.REMOTE`) they record ``refused: unverified`` and do nothing.

Evidence fields the actions read:

* ``kill``: ``pid`` (int), ``pids`` (list of int) or ``processes`` (list of {"pid": int}). Each
  PID is signalled only if the agent observed it on this node's GPUs, judged it foreign, and it
  is still the same process (start time, pidfd). pid 1 and the agent itself are refused.
* ``quarantine``: ``path``, an absolute path inside a configured artifact folder (``[checks]
  model_dirs`` and ``checkpoint_dirs``) that the agent's own scan calls unsafe right now; no
  symlink on the way, no ``..``, one link. It is moved to
  ``<home>/quarantine/<incident id>-<name>`` with mode 000; original path and sha256 are audited.
* ``revoke``: ``cert`` (a certificate name; optional ``cert_kind`` node|user), else ``user``,
  else ``node``. Revokes it in the cluster CA of this home (``pki/``) and rewrites the CRL.
* ``stop-training``: writes ``<home>/state/stop-training.json`` (atomic, 0600) with the incident
  id, kind, severity, time and ``job`` from the evidence; the trainer polls this file, checkpoints
  and stops. Removing the file clears the request.
* ``webhook``: queues a signed POST of the incident JSON (see `trainguard.evidence.response.queue`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.core.errors import TrainguardError
from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.evidence.response.quarantine import QuarantineRefused, quarantine_file
from trainguard.evidence.response.queue import DeliveryQueue
from trainguard.evidence.response.verify import (
    LocalVerifier,
    ObservedProcess,
    PidReused,
    Provenance,
    signal_exact,
)

__all__ = ["ActionContext", "ActionResult", "run_action"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    action: str
    ok: bool
    detail: str
    data: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "detail": self.detail, **dict(self.data)}


@dataclass
class ActionContext:
    home: Home
    webhook_url: str = ""
    queue: DeliveryQueue | None = None
    kill_signal: str = "SIGTERM"
    stop_training_file: str = "state/stop-training.json"
    own_pid: int = 0
    # the agent's own observations; None (no agent in this process): kill and quarantine refuse
    verifier: LocalVerifier | None = None
    send_signal: Callable[[ObservedProcess, int], None] = signal_exact


def _result(action: str, ok: bool, detail: str, **data: Any) -> ActionResult:
    return ActionResult(action, ok, detail, data)


def _webhook(ctx: ActionContext, incident: Mapping[str, Any]) -> ActionResult:
    if not ctx.webhook_url or ctx.queue is None:
        return _result("webhook", False, "no webhook_url configured")
    body = json.dumps(dict(incident), sort_keys=True, separators=(",", ":")).encode()
    key = f"{incident['id']}"
    fresh = ctx.queue.enqueue(key, ctx.webhook_url, body)
    return _result("webhook", True, "queued" if fresh else "already queued", key=key)


def _pids(evidence: Mapping[str, Any]) -> list[int]:
    raw = evidence.get("pids", [evidence["pid"]] if "pid" in evidence else [])
    if not isinstance(raw, list):
        raw = [raw]
    procs = evidence.get("processes")
    if isinstance(procs, list):
        raw = [*raw, *(p.get("pid") for p in procs if isinstance(p, Mapping))]
    out: list[int] = []
    for p in raw:
        if isinstance(p, int) and not isinstance(p, bool) and p not in out:
            out.append(p)
    return out


def _kill(ctx: ActionContext, incident: Mapping[str, Any]) -> ActionResult:
    pids = _pids(incident.get("evidence", {}))
    if not pids:
        return _result("kill", False, "evidence has no pid")
    own = ctx.own_pid or os.getpid()
    sig = getattr(signal, ctx.kill_signal, signal.SIGTERM)
    done: list[int] = []
    refused: dict[str, str] = {}
    for pid in pids:
        reason = _kill_refusal(ctx, pid, own)
        if isinstance(reason, str):
            refused[str(pid)] = reason
            continue
        try:
            ctx.send_signal(reason, int(sig))
            done.append(pid)
        except PidReused:
            refused[str(pid)] = "refused: the pid now belongs to another process"
        except ProcessLookupError:
            refused[str(pid)] = "no such process"
        except PermissionError:
            refused[str(pid)] = "permission denied"
    return _result(
        "kill",
        bool(done) and not refused,
        f"signalled {done}",
        signal=ctx.kill_signal,
        killed=done,
        refused=refused,
    )


def _kill_refusal(ctx: ActionContext, pid: int, own: int) -> ObservedProcess | str:
    """The verified process to signal, or why not."""
    if pid <= 1 or pid == own:
        return "refused: init or the agent itself"
    if ctx.verifier is None:
        return "refused: unverified (no GPU observation of this agent)"
    seen = ctx.verifier.gpu_process(pid)
    if seen is None:
        return "refused: unverified (not observed on this node's GPUs)"
    if not seen.foreign:
        return "refused: an allowed training process, not foreign"
    return seen


def _quarantine(ctx: ActionContext, incident: Mapping[str, Any]) -> ActionResult:
    raw = incident.get("evidence", {}).get("path")
    if not isinstance(raw, str) or not raw:
        return _result("quarantine", False, "evidence has no path")
    if ctx.verifier is None:
        return _result(
            "quarantine", False, "refused: unverified (no scanner in this process)", path=raw
        )
    try:
        data = quarantine_file(
            raw, str(incident["id"]), ctx.verifier, ctx.home.quarantine_dir, ctx.home.root
        )
    except QuarantineRefused as exc:
        return _result("quarantine", False, str(exc), path=raw)
    return _result("quarantine", True, f"moved to {data['quarantined_as']}", **data)


def _revoke(ctx: ActionContext, incident: Mapping[str, Any]) -> ActionResult:
    ev = incident.get("evidence", {})
    name, kind = ev.get("cert"), ev.get("cert_kind")
    if not name:
        name, kind = (ev.get("user"), "user") if ev.get("user") else (ev.get("node"), "node")
    if not isinstance(name, str) or not name:
        return _result("revoke", False, "evidence names no cert, user or node")
    try:
        from trainguard.crypto.pki import ClusterCA

        revoked = ClusterCA.open(ctx.home.pki_dir).revoke(name, kind)
    except TrainguardError as exc:
        return _result("revoke", False, exc.message, name=name)
    return _result(
        "revoke", True, f"revoked {name}", name=name, kind=kind, serials=[c.serial for c in revoked]
    )


def _stop_training(ctx: ActionContext, incident: Mapping[str, Any]) -> ActionResult:
    path = ctx.home.root / ctx.stop_training_file
    request = {
        "v": 1,
        "incident": incident["id"],
        "kind": incident["kind"],
        "severity": incident["severity"],
        "time": incident["time"],
        "job": incident.get("evidence", {}).get("job"),
        "reason": f"trainguard incident {incident['kind']}",
    }
    try:
        write_private(path, json.dumps(request, sort_keys=True).encode() + b"\n")
    except OSError as exc:
        return _result("stop-training", False, f"cannot write {path}: {exc.strerror}")
    return _result("stop-training", True, f"stop requested in {path}", file=str(path))


# Actions that change this node: never run for a remote report (webhook only notifies).
LOCAL_EFFECT = frozenset({"kill", "quarantine", "revoke", "stop-training"})

# `hooks test` fires synthetic incidents (evidence {"test": true}); these actions only report
# what they would do for them, so a test never kills, moves, revokes or stops anything.
DRY_RUN_FOR_TESTS = frozenset({"kill", "quarantine", "revoke", "stop-training"})

_ACTIONS: dict[str, Callable[[ActionContext, Mapping[str, Any]], ActionResult]] = {
    "webhook": _webhook,
    "kill": _kill,
    "quarantine": _quarantine,
    "revoke": _revoke,
    "stop-training": _stop_training,
}


def run_action(
    name: str,
    ctx: ActionContext,
    incident: Mapping[str, Any],
    *,
    provenance: Provenance = Provenance.AGENT,
) -> ActionResult:
    """Run built-in action `name`; every failure comes back as a result, never an exception.
    Actions that change this node refuse incidents of `Provenance.REMOTE`."""
    fn = _ACTIONS.get(name)
    if fn is None:
        return _result(name, False, "unknown action")
    if name in LOCAL_EFFECT and provenance is Provenance.REMOTE:
        return _result(name, False, "refused: unverified (reported by another node or user)")
    if name in DRY_RUN_FOR_TESTS and incident.get("evidence", {}).get("test") is True:
        return _result(name, True, "dry run: synthetic test incident (`hooks test`)", dry_run=True)
    try:
        return fn(ctx, incident)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("action %s failed: %s", name, exc)
        return _result(name, False, f"failed: {type(exc).__name__}: {exc}")
