"""The report header every format carries: what wrote it, what it covers, how it scores.

An auditor reads these first: the report id (UUID v5 over the evidence, so two reports of the
same evidence carry the same id), the tool and its version, the scope (nodes and the time range
of their audit entries), the scoring method, and the synthetic `hooks test` incidents that were
left out of the evidence and the score (named, so nothing is dropped silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.report.assess import SCORING_METHOD
from trainguard.report.model import Report

TOOL = "trainguard"


@dataclass(frozen=True)
class Header:
    report_id: str
    tool: str
    tool_version: str
    generated_at: str
    cluster: str
    nodes: tuple[str, ...]
    evidence_from: str | None
    evidence_to: str | None
    scoring_method: str
    synthetic_incidents: tuple[dict[str, Any], ...]

    @property
    def time_range(self) -> str:
        if self.evidence_from is None or self.evidence_to is None:
            return "no verified audit entries"
        return f"{self.evidence_from} to {self.evidence_to}"

    @property
    def synthetic_text(self) -> str:
        if not self.synthetic_incidents:
            return "none"
        named = ", ".join(f"{i.get('node')} seq {i.get('seq')} ({i.get('kind')})"
                          for i in self.synthetic_incidents)
        return (f"{len(self.synthetic_incidents)} test incident(s) from `trainguard hooks test`, "
                f"left out of the evidence, the incident table and the score: {named}")

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) pairs in reading order, for the human formats."""
        return [
            ("Report id", self.report_id),
            ("Tool", f"{self.tool} {self.tool_version}"),
            ("Generated", self.generated_at),
            ("Cluster", self.cluster),
            ("Scope: nodes", ", ".join(self.nodes) or "none"),
            ("Scope: audit entries", self.time_range),
            ("Scoring method", self.scoring_method),
            ("Synthetic incidents", self.synthetic_text),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "tool": {"name": self.tool, "version": self.tool_version},
            "generated_at": self.generated_at,
            "cluster": self.cluster,
            "scope": {"nodes": list(self.nodes), "evidence_from": self.evidence_from,
                      "evidence_to": self.evidence_to},
            "scoring_method": self.scoring_method,
            "synthetic_incidents_excluded": list(self.synthetic_incidents),
        }


def header(report: Report) -> Header:
    span = report.evidence_range
    return Header(
        report_id=report.report_id,
        tool=TOOL,
        tool_version=report.tool_version,
        generated_at=report.generated_at,
        cluster=report.cluster,
        nodes=tuple(n.name for n in report.nodes),
        evidence_from=span[0] if span else None,
        evidence_to=span[1] if span else None,
        scoring_method=SCORING_METHOD,
        synthetic_incidents=tuple(report.synthetic_incidents),
    )
