"""OSCAL 1.1 assessment results and the assessment plan they import (JSON model).

Two documents, written side by side:

* the **assessment plan** (``trainguard-report.oscal-plan.json``): the nodes in scope as
  inventory items and assessment subjects, the automated activity, the scoring method as the
  methodology, and every control of the mapping as reviewed controls. trainguard does not manage
  the system security plan, so ``import-ssp`` points at a back-matter resource of the plan that
  says so (an href that resolves inside the document, not a dangling one).
* the **assessment results**, whose ``import-ap`` is the plan's file name (a relative href that
  resolves next to the results). One ``result`` per report, ``start``/``end`` the first and last
  audit-entry time of the evidence; each evidence item is an observation (subject: its node,
  relevant evidence: its audit sequence numbers); each decided control is a finding on the
  control's objective; each not-satisfied finding has a related risk (status open, the
  remediation as its description and recommended response, ATLAS techniques as threat ids).
  Manual and not-applicable controls are reviewed without a finding.

UUIDs are v5 over the report id (itself v5 over the evidence) and stable names, so two reports
of the same evidence carry the same UUIDs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from trainguard.report.header import Header, header
from trainguard.report.model import (
    REPORT_NS,
    ControlAssessment,
    ControlStatus,
    EvidenceStatus,
    Report,
)

OSCAL_VERSION = "1.1.2"
NS = "https://trainguard.dev/ns/oscal"
BASENAME = "trainguard-report"
RESULTS_SUFFIX = "oscal.json"
PLAN_SUFFIX = "oscal-plan.json"
PLAN_FILE = f"{BASENAME}.{PLAN_SUFFIX}"
ATLAS = "https://atlas.mitre.org/"
_BAD = (EvidenceStatus.FAIL, EvidenceStatus.ERROR, EvidenceStatus.WARN)


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(REPORT_NS, "/".join(parts)))


def _prop(name: str, value: str) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": value}


def _metadata(report: Report, head: Header, title: str) -> dict[str, Any]:
    props = [_prop("report-id", head.report_id), _prop("tool", f"{head.tool} {head.tool_version}"),
             _prop("cluster", report.cluster)]
    props += [_prop("scope-node", n) for n in head.nodes]
    if head.evidence_from and head.evidence_to:
        props += [_prop("evidence-from", head.evidence_from), _prop("evidence-to", head.evidence_to)]
    return {
        "title": title,
        "last-modified": report.generated_at,
        "version": head.tool_version,
        "oscal-version": OSCAL_VERSION,
        "props": props,
        "remarks": f"Scoring method: {head.scoring_method} Synthetic incidents: {head.synthetic_text}.",
    }


def _node_uuid(rid: str, node: str) -> str:
    return _uuid(rid, "node", node)


def _reviewed(report: Report) -> dict[str, Any]:
    return {"control-selections": [
        {"include-controls": [{"control-id": a.control.oscal_id} for a in report.controls]}]}


def plan_dict(report: Report) -> dict[str, Any]:
    """The assessment plan the results import."""
    head = header(report)
    rid = head.report_id
    ssp = _uuid(rid, "ssp-resource")
    plan: dict[str, Any] = {
        "uuid": _uuid(rid, "assessment-plan"),
        "metadata": _metadata(report, head, f"trainguard assessment plan: {report.cluster}"),
        "import-ssp": {"href": f"#{ssp}"},
        "local-definitions": {
            "activities": [{
                "uuid": _uuid(rid, "activity"),
                "title": "Automated evidence collection by trainguard",
                "description": (
                    "Verify each node's hash-chained audit log (signed genesis and checkpoints, "
                    "rollback against earlier reports and witness copies), run the posture checks, "
                    "read key age and MFA coverage, and derive evidence from the verified log "
                    "(incidents and the hooks that ran, access decisions, dependency and artifact "
                    "checks, training and robustness events). Each control's status follows from "
                    "the evidence of the sources mapped to it."
                ),
                "props": [_prop("method", "TEST")],
            }],
        },
        "terms-and-conditions": {"parts": [
            {"name": "methodology", "title": "Scoring", "prose": head.scoring_method},
            {"name": "assessment-exclusions", "title": "Synthetic incidents",
             "prose": "Incidents fired by `trainguard hooks test` are marked synthetic in the audit "
                      f"log and left out of the evidence and the score. This report: {head.synthetic_text}."},
        ]},
        "reviewed-controls": _reviewed(report),
        "back-matter": {"resources": [{
            "uuid": ssp,
            "title": "System security plan (not managed by trainguard)",
            "description": (
                f"The system under assessment is the training cluster {report.cluster}; its "
                "nodes in scope are the inventory items of this plan. The system security plan "
                "itself is kept by the system owner outside trainguard."
            ),
        }]},
    }
    if head.nodes:
        plan["local-definitions"]["inventory-items"] = [
            {"uuid": _node_uuid(rid, n.name), "description": f"training node {n.name} ({n.source})",
             "props": [{"name": "asset-id", "value": n.name}]}
            for n in report.nodes
        ]
        plan["assessment-subjects"] = [{
            "type": "inventory-item",
            "include-subjects": [{"subject-uuid": _node_uuid(rid, n), "type": "inventory-item"}
                                 for n in head.nodes],
        }]
    return {"assessment-plan": plan}


def _risk(rid: str, a: ControlAssessment, obs_ids: dict[int, str]) -> dict[str, Any]:
    bad = [e for e in a.evidence if e.status in _BAD]
    statement = "; ".join(f"[{e.node}] {e.title}: {e.detail}" for e in bad) or \
        f"{a.control.id} is not satisfied."
    remediation = a.remediation or a.control.remediation
    risk: dict[str, Any] = {
        "uuid": _uuid(rid, "risk", a.control.id),
        "title": f"{a.control.id} not satisfied: {a.control.title}"[:250],
        "description": remediation,
        "statement": statement,
        "status": "open",
        "props": [_prop("severity", a.control.severity)],
        "remediations": [{
            "uuid": _uuid(rid, "remediation", a.control.id),
            "lifecycle": "recommendation",
            "title": f"Remediate {a.control.id}",
            "description": remediation,
        }],
    }
    if a.control.atlas:
        # OSCAL wants threat ids as URIs: the technique's page in the ATLAS matrix.
        risk["threat-ids"] = [{"system": ATLAS, "id": f"{ATLAS}techniques/{t}"}
                              for t in a.control.atlas]
    if bad:
        risk["related-observations"] = [{"observation-uuid": obs_ids[id(e)]} for e in bad]
    return risk


def oscal_dict(report: Report) -> dict[str, Any]:
    head = header(report)
    rid = head.report_id
    observations: list[dict[str, Any]] = []
    obs_ids: dict[int, str] = {}
    for a in report.controls:
        for e in a.evidence:
            key = id(e)
            if key in obs_ids:
                continue
            oid = _uuid(rid, "obs", e.node, e.source, e.title, str(len(observations)))
            obs_ids[key] = oid
            obs: dict[str, Any] = {
                "uuid": oid,
                "title": f"{e.source}: {e.title}"[:250],
                "description": e.detail or e.title,
                "props": [_prop("evidence-status", e.status.value), _prop("node", e.node)],
                "methods": ["TEST"],
                "subjects": [{"subject-uuid": _node_uuid(rid, e.node), "type": "inventory-item"}],
                "collected": e.collected,
            }
            if e.seqs:
                obs["relevant-evidence"] = [{
                    "description": f"audit log of node {e.node}, entries (seq) "
                                   + ", ".join(map(str, e.seqs)),
                }]
            observations.append(obs)
    findings, risks = [], []
    for a in report.controls:
        if a.status not in (ControlStatus.SATISFIED, ControlStatus.NOT_SATISFIED):
            continue
        finding: dict[str, Any] = {
            "uuid": _uuid(rid, "finding", a.control.id),
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
        if a.status is ControlStatus.NOT_SATISFIED:
            risk = _risk(rid, a, obs_ids)
            risks.append(risk)
            finding["related-risks"] = [{"risk-uuid": risk["uuid"]}]
        findings.append(finding)
    start = head.evidence_from or report.generated_at
    end = head.evidence_to or report.generated_at
    result: dict[str, Any] = {
        "uuid": _uuid(rid, "result"),
        "title": f"trainguard assessment of cluster {report.cluster}",
        "description": f"Automated assessment; score {report.score:.1f}/100. {head.scoring_method}",
        "start": start,
        "end": end,
        "props": [_prop("score", f"{report.score:.1f}")],
        "reviewed-controls": _reviewed(report),
    }
    if observations:
        result["observations"] = observations
    if risks:
        result["risks"] = risks
    if findings:
        result["findings"] = findings
    return {
        "assessment-results": {
            "uuid": _uuid(rid, "assessment-results"),
            "metadata": _metadata(report, head, f"trainguard assessment results: {report.cluster}"),
            "import-ap": {"href": PLAN_FILE,
                          "remarks": "The assessment plan written next to these results."},
            "results": [result],
        }
    }


class OscalFormatter:
    suffix = RESULTS_SUFFIX

    def render(self, report: Report) -> str:
        return json.dumps(oscal_dict(report), indent=2) + "\n"

    def render_plan(self, report: Report) -> str:
        return json.dumps(plan_dict(report), indent=2) + "\n"
