"""OSCAL 1.1 assessment results (JSON model).

One `result` per report: reviewed controls are every control of the mapping; each evidence item
is an observation; each control that was decided (satisfied / not satisfied) is a finding whose
target is the control's objective with that status, tied to its observations. Manual and
not-applicable controls are reviewed without a finding. UUIDs are v5 over stable names, so two
reports of the same evidence are comparable.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from trainguard.report.model import ControlStatus, Report

OSCAL_VERSION = "1.1.2"
_NS = uuid.UUID("5c3f7a0e-4b8e-4f6e-9a55-7d7c8b1f2a10")


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def oscal_dict(report: Report) -> dict[str, Any]:
    stamp = report.generated_at
    observations: list[dict[str, Any]] = []
    obs_ids: dict[int, str] = {}
    for a in report.controls:
        for e in a.evidence:
            key = id(e)
            if key in obs_ids:
                continue
            oid = _uuid(stamp, "obs", e.node, e.source, e.title, str(len(observations)))
            obs_ids[key] = oid
            observations.append(
                {
                    "uuid": oid,
                    "title": f"{e.source}: {e.title}"[:250],
                    "description": e.detail or e.title,
                    "props": [
                        {"name": "evidence-status", "ns": "https://trainguard.dev/ns/oscal", "value": e.status.value},
                        {"name": "node", "ns": "https://trainguard.dev/ns/oscal", "value": e.node},
                    ],
                    "methods": ["TEST"],
                    "collected": e.collected,
                }
            )
    findings = []
    for a in report.controls:
        if a.status not in (ControlStatus.SATISFIED, ControlStatus.NOT_SATISFIED):
            continue
        finding: dict[str, Any] = {
            "uuid": _uuid(stamp, "finding", a.control.id),
            "title": f"{a.control.id} {a.control.title}"[:250],
            "description": (a.remediation or f"{a.control.id} is satisfied by automated evidence."),
            "target": {
                "type": "objective-id",
                "target-id": f"{a.control.oscal_id}_obj",
                "status": {"state": "satisfied" if a.status is ControlStatus.SATISFIED else "not-satisfied"},
            },
        }
        related = [{"observation-uuid": obs_ids[id(e)]} for e in a.evidence]
        if related:
            finding["related-observations"] = related
        findings.append(finding)
    result: dict[str, Any] = {
        "uuid": _uuid(stamp, "result"),
        "title": f"trainguard assessment of cluster {report.cluster}",
        "description": f"Automated assessment; score {report.score:.1f}/100.",
        "start": stamp,
        "end": stamp,
        "reviewed-controls": {
            "control-selections": [
                {"include-controls": [{"control-id": a.control.oscal_id} for a in report.controls]}
            ]
        },
    }
    if observations:
        result["observations"] = observations
    if findings:
        result["findings"] = findings
    return {
        "assessment-results": {
            "uuid": _uuid(stamp, "assessment-results"),
            "metadata": {
                "title": f"trainguard assessment results: {report.cluster}",
                "last-modified": stamp,
                "version": "1",
                "oscal-version": OSCAL_VERSION,
            },
            "import-ap": {"href": "#trainguard-assessment-plan"},
            "results": [result],
        }
    }


class OscalFormatter:
    suffix = "oscal.json"

    def render(self, report: Report) -> str:
        return json.dumps(oscal_dict(report), indent=2) + "\n"
