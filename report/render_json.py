"""JSON report: everything in the report, for scripts and for diffing two reports."""

from __future__ import annotations

import json
from typing import Any

from trainguard.report.header import header
from trainguard.report.model import Report


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "schema": "trainguard-report/1",
        "header": header(report).to_dict(),
        "generated_at": report.generated_at,
        "cluster": report.cluster,
        "score": report.score,
        "counts": report.counts(),
        "nodes": [
            {
                "name": n.name,
                "source": n.source,
                "log_verified": n.log_verified,
                "log_detail": n.log_detail,
                "entries": n.entries,
                "checkpoint_seq": n.checkpoint_seq,
                "rolled_back": n.rolled_back,
                "first_entry": n.first_entry,
                "last_entry": n.last_entry,
            }
            for n in report.nodes
        ],
        "controls": [
            {
                "id": a.control.id,
                "title": a.control.title,
                "status": a.status.value,
                "severity": a.control.severity,
                "atlas": list(a.control.atlas),
                "remediation": a.remediation,
                "evidence": [
                    {
                        "source": e.source,
                        "node": e.node,
                        "status": e.status.value,
                        "title": e.title,
                        "detail": e.detail,
                        "collected": e.collected,
                        "audit_seqs": list(e.seqs),
                    }
                    for e in a.evidence
                ],
            }
            for a in report.controls
        ],
        "incidents": report.incidents,
        "synthetic_incidents_excluded": report.synthetic_incidents,
        "training_runs": report.training_runs,
        "federated_runs": report.federated_runs,
        "robustness": report.robustness,
    }


class JsonFormatter:
    suffix = "json"

    def render(self, report: Report) -> str:
        return json.dumps(report_dict(report), indent=2, sort_keys=False, default=str) + "\n"
