"""Build the report: gather each node's evidence, verify its log, assess the controls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.config import Config
from trainguard.core.errors import TrainguardError
from trainguard.core.home import Home
from trainguard.crypto.config import CryptoConfig
from trainguard.report.assess import assess
from trainguard.report.evidence import (
    PRIVILEGED_ROLES,
    ReportState,
    _item,
    federated_runs,
    incidents_from,
    iso,
    log_items,
    robustness_points,
    synthetic_incidents,
    training_runs,
)
from trainguard.report.mapping import load_controls
from trainguard.report.model import EvidenceItem, EvidenceStatus, NodeEvidence, Report

log = logging.getLogger(__name__)

_CHECK_STATUS = {
    "pass": EvidenceStatus.PASS,
    "fail": EvidenceStatus.FAIL,
    "warn": EvidenceStatus.WARN,
    "not-applicable": EvidenceStatus.NOT_APPLICABLE,
    "error": EvidenceStatus.ERROR,
}


WitnessLookup = Callable[[str], "tuple[list[Any], list[str]]"]


@dataclass(frozen=True)
class RemoteNode:
    url: str
    cert: Path
    key: Path
    ca: Path


def _verify_log(name: str, segment: dict[str, Any], verify_key: Any, state: ReportState,
                now: float, config: Config,
                witnesses: WitnessLookup | None = None) -> tuple[list[EvidenceItem], bool, str, int | None, bool]:
    """Verify a log segment against the node key (signed genesis, checkpoint cadence), the
    checkpoint the last report saved, and the copies of its checkpoints kept by witnesses."""
    from trainguard.evidence.audit_log import AuditTampered, Checkpoint, verify_segment
    from trainguard.evidence.audit_witness import compare_with_copies
    from trainguard.evidence.embedded import audit_config

    saved = state.nodes.get(name, {}).get("checkpoint")
    trusted = Checkpoint.from_dict(saved) if saved else None
    entries = segment.get("entries", [])
    last_seq = int(entries[-1]["seq"]) if entries else 0
    rolled_back = trusted is not None and last_seq < trusted.seq
    items: list[EvidenceItem] = []
    copies, unreachable = witnesses(name) if witnesses is not None else ([], [])
    compared = 0
    try:
        rep = verify_segment(segment, verify_key, trusted_checkpoint=trusted, require_genesis=True,
                             cadence=audit_config(config).cadence())
        ok, detail = True, f"{rep.entries} entries, {rep.checkpoints} signed checkpoint(s), chain intact"
        hashes = {int(e["seq"]): str(e["hash"]) for e in entries}
        compared = compare_with_copies(copies, log_id=rep.genesis.log_id if rep.genesis else None,
                                       last_seq=rep.last_seq, hashes=hashes, verify_key=verify_key)
        if compared:
            detail += f"; matches {compared} checkpoint copies held off-node"
        cp = rep.last_checkpoint
        if cp is not None:
            state.nodes.setdefault(name, {})["checkpoint"] = cp.to_dict()
    except AuditTampered as exc:
        ok, detail, cp = False, exc.message, None
        low = exc.message.lower()
        rolled_back = rolled_back or "roll" in low or "rewritten" in low or "replaced" in low \
            or "forked" in low
    except TrainguardError as exc:
        ok, detail, cp = False, exc.message, None
    items.append(_item("audit-chain", name, EvidenceStatus.PASS if ok else EvidenceStatus.FAIL,
                       "audit log hash chain, signed genesis and checkpoints", detail,
                       remediation="investigate with `trainguard audit verify` on the node", now=now))
    if trusted is not None or copies:
        seen = [f"the previous report saw checkpoint at entry {trusted.seq}"] if trusted else []
        seen += [f"{c.source} holds {len(c.checkpoints)} checkpoint copies" for c in copies]
        items.append(_item("audit-rollback", name, EvidenceStatus.FAIL if rolled_back else EvidenceStatus.PASS,
                           "log did not go backwards or get rewritten since copies left the node",
                           "; ".join(seen) + f"; the log now ends at {last_seq}",
                           remediation="the node's log was rolled back, rewritten or replaced: treat as "
                                       "an audit-tampered incident", now=now))
    for source in unreachable:
        items.append(_item("audit-rollback", name, EvidenceStatus.WARN, "witness not compared", source,
                           remediation="bring the witness back and report again", now=now))
    return items, ok, detail, (cp.seq if cp is not None else None), rolled_back


def gather_local(home: Home, config: Config, state: ReportState, *, now: float,
                 run_checks: bool = True, witnesses: WitnessLookup | None = None) -> NodeEvidence:
    from trainguard.agent.api.witness import push_quietly
    from trainguard.crypto.signing import VerifyKey
    from trainguard.evidence.embedded import open_embedded_log

    name = config.node.name
    key = VerifyKey.load(home.node_verify_key)
    auditlog = open_embedded_log(home, config)
    try:
        segment = auditlog.export_segment()
        items, ok, detail, cp_seq, rolled = _verify_log(name, segment, key, state, now, config, witnesses)
        if ok:
            # Sign the verified tail (never an unverified one) and send it off-node, so what
            # this report relied on is covered by a signature and a copy.
            cp = auditlog.checkpoint(force=True)
            if cp is not None:
                state.nodes.setdefault(name, {})["checkpoint"] = cp.to_dict()
                cp_seq = cp.seq
            push_quietly(home, config, auditlog)
    finally:
        auditlog.close()
    entries = segment["entries"]
    if run_checks:
        items += check_items(home, config, name, now)
    items += key_items(home, config, name, now)
    items += mfa_items(home, name, now)
    return _node(name, "local", entries, items, ok, detail, cp_seq, rolled, now)


def gather_remote(node: RemoteNode, state: ReportState, *, now: float, config: Config,
                  witnesses: WitnessLookup | None = None) -> NodeEvidence:
    """Pull a remote agent's log over mTLS; pin its signing key the first time it is seen."""
    from trainguard.agent.api.client import AgentClient
    from trainguard.crypto.signing import VerifyKey

    with AgentClient.remote(node.url, node.cert, node.key, node.ca) as client:
        status = client.status()
        segment = client.export()
    name = str(segment.get("node") or status.get("node") or node.url)
    pinned = state.nodes.get(name, {}).get("verify_key")
    offered = status.get("verify_key")
    items: list[EvidenceItem] = []
    if pinned is None and offered:
        state.nodes.setdefault(name, {})["verify_key"] = offered
        pinned = offered
        items.append(_item("audit-chain", name, EvidenceStatus.WARN, "node key pinned on first sight",
                           f"key {str(offered)[:16]}... pinned; later reports require the same key", now=now))
    key = VerifyKey.from_bytes(bytes.fromhex(pinned)) if pinned else None
    if offered and pinned and offered != pinned:
        items.append(_item("audit-chain", name, EvidenceStatus.FAIL, "node signing key changed",
                           "the node presents a different signing key than the one pinned by earlier reports",
                           remediation="confirm the node was re-initialised on purpose, then remove its entry from the report state",
                           now=now))
    log_ev, ok, detail, cp_seq, rolled = _verify_log(name, segment, key, state, now, config, witnesses)
    items = items + log_ev
    for r in status.get("checks", []) or []:
        items.append(_check_item(name, r, now))
    return _node(name, node.url, segment["entries"], items, ok, detail, cp_seq, rolled, now)


def witness_lookup(home: Home, config: Config, remotes: Sequence[RemoteNode]) -> WitnessLookup:
    """Where the report finds copies of a node's checkpoints: this node's own witness store,
    the [audit] witness, and every --node agent (each may witness the others)."""
    from trainguard.agent.api.client import AgentClient
    from trainguard.agent.api.witness import WitnessStore
    from trainguard.evidence.audit_witness import WitnessCopies
    from trainguard.evidence.embedded import audit_config

    pki = home.pki_dir
    sources = [RemoteNode(u, pki / "node.crt", pki / "node.key", pki / "ca.crt")
               for u in [audit_config(config).witness] if u]
    seen = {s.url.removeprefix("tls://").rstrip("/") for s in sources}
    sources += [r for r in remotes if r.url.removeprefix("tls://").rstrip("/") not in seen]
    local_store = home.state_dir / "witness.db"

    def lookup(node: str) -> tuple[list[WitnessCopies], list[str]]:
        copies: list[WitnessCopies] = []
        unreachable: list[str] = []
        if node != config.node.name and local_store.exists():
            store = WitnessStore(local_store)
            try:
                copies.append(WitnessCopies.from_wire(store.copies(node), "the witness on this node"))
            finally:
                store.close()
        for src in sources:
            try:
                with AgentClient.remote(src.url, src.cert, src.key, src.ca, timeout=15.0) as client:
                    raw = client.call("witness-copies", node=node)
                copies.append(WitnessCopies.from_wire(raw, f"witness {src.url}"))
            except TrainguardError as exc:
                unreachable.append(f"witness {src.url}: {exc.message}")
        return [c for c in copies if c.log_id or c.checkpoints or c.conflicts], unreachable

    return lookup


def _node(name: str, source: str, entries: list[dict[str, Any]], items: list[EvidenceItem], ok: bool,
          detail: str, cp_seq: int | None, rolled: bool, now: float) -> NodeEvidence:
    first = last = None
    synthetic: list[dict[str, Any]] = []
    if ok:
        items += log_items(name, entries, now)
        incidents, rob, runs = incidents_from(entries), robustness_points(entries), training_runs(entries)
        federated = federated_runs(entries)
        synthetic = synthetic_incidents(entries)
        if entries:
            times = [float(e["time"]) for e in entries]
            first, last = iso(min(times)), iso(max(times))
    else:
        # An unverified log proves nothing: say so instead of deriving evidence from it.
        incidents, rob, runs, federated = [], [], [], []
        for source_name in ("incidents", "access-decisions", "deps", "artifacts", "training", "robustness"):
            items.append(_item(source_name, name, EvidenceStatus.FAIL, "evidence from an unverified log",
                               f"not derived: the node's audit log failed verification ({detail})", now=now))
    return NodeEvidence(name, source, ok, detail, len(entries), cp_seq, rolled, tuple(items),
                        tuple(incidents), tuple(rob), tuple(runs), first, last, tuple(synthetic),
                        tuple(federated))


def _check_item(node: str, r: dict[str, Any], now: float) -> EvidenceItem:
    return _item(f"check:{r['id']}", node, _CHECK_STATUS.get(str(r.get("status")), EvidenceStatus.ERROR),
                 str(r.get("title", r["id"])), str(r.get("summary", "")), dict(r.get("evidence") or {}),
                 remediation=r.get("remediation") or None, now=now)


def check_items(home: Home, config: Config, node: str, now: float) -> list[EvidenceItem]:
    from trainguard.agent.checks import run_checks

    return [_check_item(node, r.to_dict(), now) for r in run_checks(home, config)]


def key_items(home: Home, config: Config, node: str, now: float) -> list[EvidenceItem]:
    from trainguard.crypto.keyring import open_keyring

    days = config.section(CryptoConfig).kek_rotation_days
    info = open_keyring(home).current_info()
    age_days = (now - float(info.created_at)) / 86400
    ok = age_days <= days
    return [_item("key-rotation", node, EvidenceStatus.PASS if ok else EvidenceStatus.FAIL,
                  f"KEK v{info.version} age", f"{age_days:.1f} days old; policy rotates every {days} days",
                  remediation="run `trainguard key rotate` and `trainguard key rewrap` on sealed files", now=now)]


def mfa_items(home: Home, node: str, now: float) -> list[EvidenceItem]:
    if not home.users_db.exists():
        return []
    from trainguard.policy import UserStore

    users = UserStore(home.users_db).list_users()
    privileged = [u for u in users if any(str(r).split("@")[0].split(":")[0] in PRIVILEGED_ROLES for r in u.roles)]
    missing = [u.name for u in privileged if not u.mfa_enrolled]
    return [_item("mfa-coverage", node, EvidenceStatus.FAIL if missing else EvidenceStatus.PASS,
                  "MFA coverage of privileged users",
                  f"{len(privileged) - len(missing)}/{len(privileged)} privileged users enrolled"
                  + (f"; missing: {', '.join(missing)}" if missing else ""),
                  remediation="enrol them with `trainguard user enrol NAME`", now=now)]


def build_report(home: Home, config: Config, remotes: Sequence[RemoteNode] = (), *,
                 include_local: bool = True, clock: Callable[[], float] = time.time,
                 progress: Callable[[str], None] = lambda _m: None) -> Report:
    now = clock()
    state = ReportState.load(home.state_dir / "report-state.json")
    nodes: list[NodeEvidence] = []
    witnesses = witness_lookup(home, config, remotes)
    if include_local:
        progress(f"gathering evidence from the local node {config.node.name}")
        nodes.append(gather_local(home, config, state, now=now, witnesses=witnesses))
    for r in remotes:
        progress(f"gathering evidence from {r.url}")
        try:
            nodes.append(gather_remote(r, state, now=now, config=config, witnesses=witnesses))
        except TrainguardError as exc:
            item = _item("audit-chain", r.url, EvidenceStatus.FAIL, "node unreachable", exc.message, now=now)
            nodes.append(NodeEvidence(r.url, r.url, False, exc.message, 0, None, False, (item,)))
    evidence = [i for n in nodes for i in n.items]
    controls, score = assess(load_controls(), evidence)
    state.save()
    return Report(iso(now), config.node.cluster, tuple(nodes), controls, score)
