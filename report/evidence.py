"""Gather evidence for the audit report from one node: the local home, or a remote agent.

A node's evidence starts with its audit log. The log is verified first (hash chain and signed
checkpoints, and against the checkpoint the previous report saved, which detects a rollback);
everything else derived from the log is only trusted when that passed. A node whose log fails is
still reported, with every log-derived item marked failed, never merged silently.

Sources (the names controls.toml uses) and where they come from:
  audit-chain, audit-rollback   the log verification
  check:<id>                    posture checks run now (local) or the last `posture.*` results
  key-rotation                  the keyring's current KEK age against [crypto] kek_rotation_days
  mfa-coverage                  the user store: privileged users without TOTP enrolment
  deps, artifacts               the newest dependency verification / artifact scan events
  training, byzantine           trainer events and byzantine-worker incidents
  robustness                    `robustness-eval` events
  (federated section)           `fl.launch` / `fl.round` / `fl.admission` / `fl.finish` events
  incidents                     `incident` events joined with the hooks and actions that ran
  access-decisions              `access-allowed` / `access-denied` events
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import TrainguardError
from trainguard.core.fs import write_private
from trainguard.report.model import EvidenceItem, EvidenceStatus

log = logging.getLogger(__name__)

# Event kinds written by the other areas (one place to keep in step with them).
INCIDENT_KIND = "incident"
HOOK_KINDS = ("hook.run", "hook.skipped")
ACTION_PREFIX = "action."
ACCESS_KINDS = ("access-allowed", "access-denied")
DEPS_KINDS = ("deps-verified",)
AUDIT_DEPS_KINDS = ("deps-audited",)
SCAN_KINDS = ("scan",)
TRAIN_PREFIXES = ("train.", "train-")
ROBUSTNESS_KINDS = ("robustness-eval",)
FL_KINDS = ("fl.launch", "fl.round", "fl.admission", "fl.finish")
PRIVILEGED_ROLES = ("admin", "ml-engineer")

Entry = Mapping[str, Any]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).isoformat(timespec="seconds")


@dataclass
class ReportState:
    """What the previous report saw of each node: its last signed checkpoint (for rollback
    detection) and the node's public key (pinned the first time a remote node is seen)."""

    path: Path
    nodes: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> ReportState:
        try:
            return cls(path, json.loads(path.read_text()).get("nodes", {}))
        except FileNotFoundError:
            return cls(path, {})
        except (json.JSONDecodeError, AttributeError) as exc:
            raise TrainguardError(
                f"report state {path} is corrupt", tip="move it aside; rollback detection restarts"
            ) from exc

    def save(self) -> None:
        write_private(self.path, json.dumps({"version": 1, "nodes": self.nodes}, indent=2).encode())


def _item(source: str, node: str, status: EvidenceStatus, title: str, detail: str,
          data: dict[str, Any] | None = None, remediation: str | None = None,
          now: float | None = None, seqs: Iterable[Any] = ()) -> EvidenceItem:
    return EvidenceItem(source, node, status, title, detail, iso(now if now is not None else time.time()),
                        data or {}, remediation, tuple(sorted({int(s) for s in seqs if s is not None})))


def _seq(e: Entry) -> int | None:
    s = e.get("seq")
    return int(s) if s is not None else None


def _latest(entries: Sequence[Entry], kinds: Iterable[str]) -> Entry | None:
    wanted = set(kinds)
    for e in reversed(entries):
        if e["kind"] in wanted:
            return e
    return None


def _data(e: Entry) -> dict[str, Any]:
    d = e.get("data")
    if isinstance(d, str):
        try:
            return dict(json.loads(d))
        except (json.JSONDecodeError, TypeError, ValueError):
            return {}
    return dict(d or {})


def is_synthetic(e: Entry) -> bool:
    """A test incident from `hooks test`: marked by the incident engine in the entry itself
    (never from the reporter's evidence, which another node or user controls)."""
    return e["kind"] == INCIDENT_KIND and _data(e).get("synthetic") is True


def synthetic_incidents(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """The test incidents the report leaves out of its evidence and score, to name them."""
    return [{"seq": _seq(e), "kind": _data(e).get("kind"), "time": iso(float(e["time"])),
             "node": _data(e).get("node", e.get("node"))}
            for e in entries if is_synthetic(e)]


def incidents_from(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Every real incident (synthetic ones left out) with its audit entry's seq and the hooks
    and actions that ran for it."""
    handled: dict[str, list[str]] = {}
    for e in entries:
        kind = e["kind"]
        if kind in HOOK_KINDS or kind.startswith(ACTION_PREFIX):
            d = _data(e)
            inc = str(d.get("incident") or d.get("incident_id") or "")
            name = str(d.get("hook") or d.get("action") or kind.removeprefix(ACTION_PREFIX))
            ok = d.get("ok", d.get("returncode", 0) == 0)
            handled.setdefault(inc, []).append(name if ok else f"{name} (failed)")
    out = []
    for e in entries:
        if e["kind"] != INCIDENT_KIND or is_synthetic(e):
            continue
        d = _data(e)
        out.append({
            "seq": _seq(e), "id": d.get("id"), "kind": d.get("kind"), "severity": d.get("severity"),
            "node": d.get("node", e.get("node")), "time": iso(float(d.get("time") or e["time"])),
            "evidence": d.get("evidence", {}), "hooks": handled.get(str(d.get("id")), []),
        })
    return out


def log_items(node: str, entries: Sequence[Entry], now: float) -> list[EvidenceItem]:
    """Evidence derived from a verified log."""
    items: list[EvidenceItem] = []
    incidents = incidents_from(entries)
    if incidents:
        unhandled = [i for i in incidents if not i["hooks"]]
        status = EvidenceStatus.WARN if unhandled else EvidenceStatus.PASS
        items.append(_item("incidents", node, status, f"{len(incidents)} incident(s) recorded",
                           f"{len(incidents) - len(unhandled)} handled by hooks or actions, "
                           f"{len(unhandled)} without a hook"
                           + (" (audit seq " + ", ".join(str(i["seq"]) for i in unhandled) + ")"
                              if unhandled else ""),
                           now=now, seqs=[i["seq"] for i in incidents]))
    decisions = [e for e in entries if e["kind"] in ACCESS_KINDS]
    if decisions:
        denied = sum(1 for e in decisions if e["kind"] == "access-denied")
        items.append(_item("access-decisions", node, EvidenceStatus.PASS,
                           f"{len(decisions)} access decisions audited",
                           f"{denied} denied, {len(decisions) - denied} allowed, audit seq "
                           f"{_seq(decisions[0])} to {_seq(decisions[-1])}", now=now,
                           seqs=[_seq(e) for e in decisions if e["kind"] == "access-denied"]))
    deps = _latest(entries, DEPS_KINDS)
    if deps is not None:
        d = _data(deps)
        clean = bool(d.get("clean", not d.get("drift")))
        items.append(_item("deps", node, EvidenceStatus.PASS if clean else EvidenceStatus.FAIL,
                           "dependency verification", f"{'no drift' if clean else 'drift'} at {iso(deps['time'])}: "
                           + json.dumps({k: v for k, v in d.items() if k in ('changed', 'missing', 'extra', 'distributions', 'files')})[:300],
                           remediation="review the drift named by `trainguard deps verify`, reinstall, re-lock", now=now,
                           seqs=[_seq(deps)]))
    vulns = _latest(entries, AUDIT_DEPS_KINDS)
    if vulns is not None:
        d = _data(vulns)
        n = int(d.get("vulnerable", 0))
        named = ", ".join(f"{f.get('package')} {f.get('version')} ({f.get('id')})"
                          for f in d.get("findings", [])[:10])
        items.append(_item("vulnerabilities", node,
                           EvidenceStatus.PASS if n == 0 else EvidenceStatus.FAIL,
                           "known vulnerabilities of the locked dependencies",
                           f"{d.get('distributions')} distributions checked against "
                           f"{d.get('source')} at {iso(vulns['time'])}: {n} vulnerable"
                           + (f": {named}" if named else ""),
                           remediation="upgrade to the fixed versions, re-lock, audit again",
                           now=now, seqs=[_seq(vulns)]))
    items.extend(artifact_items(node, entries, incidents, now))
    items.extend(training_items(node, entries, incidents, now))
    rob = [e for e in entries if e["kind"] in ROBUSTNESS_KINDS]
    if rob:
        d = _data(rob[-1])
        failed = list(d.get("failed_checks", []))
        worst = ", ".join(f"eps {p.get('eps')}: {float(p.get('accuracy', 0)):.1%}" for p in d.get("worst_case", []))
        items.append(_item("robustness", node, EvidenceStatus.FAIL if failed else EvidenceStatus.PASS,
                           f"robustness evaluation of {d.get('model', 'a model')}",
                           f"clean accuracy {float(d.get('clean_accuracy') or 0):.1%}; worst case {worst}; "
                           f"gradient-masking checks failed: {', '.join(failed) or 'none'}",
                           remediation="a failed gradient-masking check means the robust accuracy is not "
                                       "trustworthy; evaluate with stronger attacks (apgd, more restarts)", now=now,
                           seqs=[_seq(rob[-1])]))
    return items


def artifact_items(node: str, entries: Sequence[Entry], incidents: list[dict[str, Any]],
                   now: float) -> list[EvidenceItem]:
    """Scans and unsafe-artifact incidents: satisfied only when every unsafe file was moved aside."""
    scans = [e for e in entries if e["kind"] in SCAN_KINDS]
    unsafe_incidents = [i for i in incidents if i["kind"] == "unsafe-artifact"]
    if not scans and not unsafe_incidents:
        return []
    scanned_unsafe = sum(len(_data(e).get("unsafe", [])) for e in scans)
    contained = [i for i in unsafe_incidents if any(h.startswith("quarantine") and "failed" not in h for h in i["hooks"])]
    loose = len(unsafe_incidents) - len(contained)
    status = EvidenceStatus.FAIL if loose else EvidenceStatus.PASS
    return [_item("artifacts", node, status, "artifact scans",
                  f"{len(scans)} scan(s) recorded, {scanned_unsafe} unsafe file(s) found by them; "
                  f"{len(unsafe_incidents)} unsafe-artifact incident(s), {len(contained)} quarantined",
                  remediation="quarantine or delete the unsafe files named by `trainguard scan`; "
                              "map unsafe-artifact to the quarantine action in [hooks.actions]", now=now,
                  seqs=[*(_seq(e) for e in scans if _data(e).get("unsafe")),
                        *(i["seq"] for i in unsafe_incidents)])]


def training_items(node: str, entries: Sequence[Entry], incidents: list[dict[str, Any]], now: float) -> list[EvidenceItem]:
    items: list[EvidenceItem] = []
    runs = [e for e in entries if e["kind"].startswith(TRAIN_PREFIXES)]
    if runs:
        tampered = [i for i in incidents if i["kind"] in ("checkpoint-tampered", "membership-failure", "replica-divergence")]
        items.append(_item("training", node, EvidenceStatus.PASS, f"{len(runs)} training event(s)",
                           "authenticated membership, sealed and signed checkpoints; "
                           f"{len(tampered)} integrity incident(s) detected and refused", now=now,
                           seqs=[i["seq"] for i in tampered]))
    byz = [i for i in incidents if i["kind"] == "byzantine-worker"]
    if byz:
        items.append(_item("byzantine", node, EvidenceStatus.PASS, f"{len(byz)} Byzantine worker incident(s)",
                           "flagged by per-rank update statistics under robust aggregation", now=now,
                           seqs=[i["seq"] for i in byz]))
    return items


def robustness_points(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Accuracy against epsilon of the newest evaluation: the worst case across its attacks."""
    rob = [e for e in entries if e["kind"] in ROBUSTNESS_KINDS]
    if not rob:
        return []
    d = _data(rob[-1])
    label = f"worst case ({d.get('model', 'model')})"
    points: list[dict[str, Any]] = []
    if d.get("clean_accuracy") is not None:
        points.append({"eps": 0.0, "attack": label, "accuracy": float(d["clean_accuracy"])})
    points += [{"eps": float(p["eps"]), "attack": label, "accuracy": float(p["accuracy"])}
               for p in d.get("worst_case", []) if "eps" in p and "accuracy" in p]
    return points


def training_runs(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """One row per finished job, joined with its launch event (who launched it, aggregation)."""
    launches = {_data(e).get("job"): (e, _data(e)) for e in entries if e["kind"] == "train.launch"}
    out = []
    for e in entries:
        if e["kind"] != "train.finish":
            continue
        d = _data(e)
        launch_entry, launch = launches.get(d.get("job"), (None, {}))
        row = {**d, "aggregation": launch.get("aggregation"), "principal": launch.get("principal"),
               "simulate": bool(launch.get("simulate_test_facility")), "time": iso(float(e["time"]))}
        acc = d.get("final_accuracy")
        row["summary"] = (
            f"job {d.get('job')} launched by {launch.get('principal', '?')}: {d.get('status')}, "
            f"{d.get('steps')} steps, aggregation {launch.get('aggregation', '?')}, "
            f"final accuracy {float(acc):.1%}" if acc is not None else f"job {d.get('job')}: {d.get('status')}"
        ) + (f"; incidents: {', '.join(sorted(set(d.get('incidents', []))))}" if d.get("incidents") else "") + (
            " (fault injection enabled: test facility)" if row["simulate"] else "")
        out.append(row)
    return out


def federated_runs(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """One row per federation run (`trainguard fl run|server`), from its `fl.*` events and the
    incidents that name it: rounds, sites, excluded and refused sites, flagged incidents,
    epsilon per round and the hash of each round's sealed global checkpoint."""
    runs: dict[str, dict[str, Any]] = {}

    def row(run: Any) -> dict[str, Any]:
        return runs.setdefault(str(run), {
            "run": str(run), "principal": None, "aggregation": None, "sites": [], "status": "running",
            "rounds": 0, "final_accuracy": None, "excluded": [], "refused_sites": [],
            "incidents": [], "epsilon": None, "delta": None, "epsilon_per_round": [],
            "checkpoints": [], "seqs": [], "simulate": False})

    for e in entries:
        if e["kind"] not in FL_KINDS:
            continue
        d = _data(e)
        if d.get("run") is None:
            continue
        r = row(d["run"])
        r["seqs"].append(_seq(e))
        if e["kind"] == "fl.launch":
            r.update(principal=d.get("principal"), aggregation=d.get("aggregation"),
                     sites=list(d.get("sites", [])), simulate=bool(d.get("simulate_test_facility")),
                     started=iso(float(e["time"])))
        elif e["kind"] == "fl.round":
            r["rounds"] = max(r["rounds"], int(d.get("round", 0)))
            r["excluded"] = list(d.get("excluded", r["excluded"]))
            r["final_accuracy"] = d.get("accuracy", r["final_accuracy"])
            priv = d.get("privacy") or {}
            if d.get("epsilon") is not None:
                r["epsilon_per_round"].append([d.get("round"), d["epsilon"]])
                r["epsilon"], r["delta"] = d["epsilon"], priv.get("delta", r["delta"])
            cp = d.get("checkpoint")
            if isinstance(cp, dict) and cp.get("sha256"):
                r["checkpoints"].append({"round": cp.get("round"), "sha256": cp["sha256"]})
        elif e["kind"] == "fl.admission" and d.get("admission") == "refused":
            r["refused_sites"].append({"site": d.get("site"), "reason": d.get("reason")})
        elif e["kind"] == "fl.finish":
            r.update(status=d.get("status"), final_accuracy=d.get("final_accuracy", r["final_accuracy"]),
                     excluded=list(d.get("excluded", r["excluded"])))
    for inc in incidents_from(entries):
        ev = inc.get("evidence") or {}
        if isinstance(ev, dict) and str(ev.get("run")) in runs:
            runs[str(ev["run"])]["incidents"].append(
                {"kind": inc["kind"], "site": ev.get("site"), "round": ev.get("round"), "seq": inc["seq"]})
    for r in runs.values():
        acc = r["final_accuracy"]
        eps = (f", epsilon {float(r['epsilon']):.3g} at delta {r['delta']}" if r["epsilon"] is not None
               else ", no differential privacy")
        kinds = sorted({f"{i['kind']} ({i['site']})" for i in r["incidents"]})
        r["summary"] = (
            f"federation {r['run']} launched by {r['principal'] or '?'}: {r['status']}, "
            f"{r['rounds']} rounds, {len(r['sites'])} sites, aggregation {r['aggregation'] or '?'}"
            + (f", final accuracy {float(acc):.1%}" if acc is not None else "") + eps
            + f"; excluded: {', '.join(r['excluded']) or 'none'}"
            + f"; incidents: {', '.join(kinds) or 'none'}"
            + f"; {len(r['checkpoints'])} sealed global checkpoint(s)"
            + (" (fault injection enabled: test facility)" if r["simulate"] else ""))
    return list(runs.values())
