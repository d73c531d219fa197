"""The audit report's records: evidence items, control assessments, nodes, and the report.

Evidence comes from sources (report/evidence.py); the control mapping
(report/controls.toml) decides which sources speak to which control; assessment
(report/assess.py) turns evidence into a status per control and a summary score.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Report:
    generated_at: str
    cluster: str
    nodes: tuple[NodeEvidence, ...]
    controls: tuple[ControlAssessment, ...]
    score: float

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
