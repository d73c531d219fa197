"""The audit report's records: evidence items, control assessments, nodes, and the report.

Evidence comes from sources (report/evidence.py); the control mapping
(report/controls.toml) decides which sources speak to which control; assessment
(report/assess.py) turns evidence into a status per control and a summary score.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

# Namespace of the report's UUID v5 identifiers (report id, OSCAL uuids).
REPORT_NS = uuid.UUID("5c3f7a0e-4b8e-4f6e-9a55-7d7c8b1f2a10")


def tool_version() -> str:
    """The installed trainguard's version (the report header names the tool that wrote it)."""
    try:
        return metadata.version("trainguard")
    except metadata.PackageNotFoundError:
        return "unknown"


class EvidenceStatus(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    WARN = "warn"
    NOT_APPLICABLE = "not-applicable"
    ERROR = "error"


class ControlStatus(enum.StrEnum):
    SATISFIED = "satisfied"
    NOT_SATISFIED = "not-satisfied"
    NOT_APPLICABLE = "not-applicable"
    MANUAL = "manual"


@dataclass(frozen=True)
class Control:
    """One row of controls.toml."""

    id: str
    title: str
    atlas: tuple[str, ...]
    sources: tuple[str, ...]
    remediation: str
    severity: str

    @property
    def oscal_id(self) -> str:
        """NIST id to OSCAL control-id: "IA-2(1)" -> "ia-2.1"."""
        base, _, enh = self.id.partition("(")
        cid = base.lower()
        return f"{cid}.{enh.rstrip(')')}" if enh else cid


@dataclass(frozen=True)
class EvidenceItem:
    """One observation: what a source found on one node."""

    source: str
    node: str
    status: EvidenceStatus
    title: str
    detail: str
    collected: str
    data: dict[str, Any] = field(default_factory=dict)
    remediation: str | None = None
    seqs: tuple[int, ...] = ()  # the audit entries (sequence numbers) this item derives from


@dataclass(frozen=True)
class ControlAssessment:
    control: Control
    status: ControlStatus
    evidence: tuple[EvidenceItem, ...]

    @property
    def remediation(self) -> str | None:
        if self.status is not ControlStatus.NOT_SATISFIED:
            return None
        bad = (EvidenceStatus.FAIL, EvidenceStatus.ERROR, EvidenceStatus.WARN)
        specific = [e.remediation for e in self.evidence if e.status in bad and e.remediation]
        return "; ".join(dict.fromkeys([*specific, self.control.remediation]))


@dataclass(frozen=True)
class NodeEvidence:
    """What was gathered from one node and whether its log could be trusted."""

    name: str
    source: str  # "local" or the agent URL
    log_verified: bool
    log_detail: str
    entries: int
    checkpoint_seq: int | None
    rolled_back: bool
    items: tuple[EvidenceItem, ...]
    incidents: tuple[dict[str, Any], ...] = ()
    robustness: tuple[dict[str, Any], ...] = ()
    training_runs: tuple[dict[str, Any], ...] = ()
    first_entry: str | None = None  # ISO time of the first and last audit entry read
    last_entry: str | None = None
    synthetic_incidents: tuple[dict[str, Any], ...] = ()  # `hooks test`: left out of evidence
    federated_runs: tuple[dict[str, Any], ...] = ()  # `fl run|server` runs, from fl.* events


@dataclass(frozen=True)
class Report:
    generated_at: str
    cluster: str
    nodes: tuple[NodeEvidence, ...]
    controls: tuple[ControlAssessment, ...]
    score: float
    tool_version: str = field(default_factory=tool_version)

    @property
    def evidence_range(self) -> tuple[str, str] | None:
        """First and last audit-entry time across the nodes (ISO 8601 UTC), None without any."""
        firsts = [n.first_entry for n in self.nodes if n.first_entry]
        lasts = [n.last_entry for n in self.nodes if n.last_entry]
        return (min(firsts), max(lasts)) if firsts and lasts else None

    @property
    def report_id(self) -> str:
        """UUID v5 over the evidence: the same evidence gives the same id, whenever it was
        gathered (collection and generation times are left out; everything observed is in)."""
        doc = {
            "cluster": self.cluster,
            "nodes": [
                [n.name, n.source, n.log_verified, n.log_detail, n.entries, n.checkpoint_seq,
                 n.rolled_back, n.first_entry, n.last_entry, list(n.incidents), list(n.robustness),
                 list(n.training_runs), list(n.synthetic_incidents), list(n.federated_runs),
                 [[e.source, e.node, e.status.value, e.title, e.detail, e.data, e.remediation,
                   list(e.seqs)] for e in n.items]]
                for n in self.nodes
            ],
            "controls": [[a.control.id, a.status.value] for a in self.controls],
            "score": self.score,
        }
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return str(uuid.uuid5(REPORT_NS, "report/" + hashlib.sha256(canonical.encode()).hexdigest()))

    @property
    def synthetic_incidents(self) -> list[dict[str, Any]]:
        return [i for n in self.nodes for i in n.synthetic_incidents]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in ControlStatus}
        for c in self.controls:
            out[c.status.value] += 1
        return out

    @property
    def incidents(self) -> list[dict[str, Any]]:
        return [i for n in self.nodes for i in n.incidents]

    @property
    def robustness(self) -> list[dict[str, Any]]:
        return [r for n in self.nodes for r in n.robustness]

    @property
    def training_runs(self) -> list[dict[str, Any]]:
        return [t for n in self.nodes for t in n.training_runs]

    @property
    def federated_runs(self) -> list[dict[str, Any]]:
        return [f for n in self.nodes for f in n.federated_runs]
