"""What an auditor needs from the report: a header (tool version, scope, scoring method, report
id) in every format, every finding's evidence visible on screen and in print, incidents tied to
audit sequence numbers, charts that read on paper, and OSCAL whose plan resolves."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest
from trainguard.report import svg
from trainguard.report.assess import SCORING_METHOD, WEIGHTS, assess
from trainguard.report.formats import DEFAULT_FORMATS, ReportFormat, parse_formats
from trainguard.report.mapping import load_controls
from trainguard.report.model import (
    ControlStatus,
    EvidenceItem,
    EvidenceStatus,
    NodeEvidence,
    Report,
)
from trainguard.report.render_oscal import PLAN_FILE, PLAN_SUFFIX
from trainguard.report.render_pdf import PdfUnavailable, require_chromium

T0, T1 = "2026-11-22T09:00:00+00:00", "2026-11-22T11:30:00+00:00"
SVG = "{http://www.w3.org/2000/svg}"


def _items(collected: str = T1, detail: str = "1 handled by hooks or actions, 1 without a hook") -> tuple[EvidenceItem, ...]:
    return (
        EvidenceItem("audit-chain", "n1", EvidenceStatus.PASS, "audit log hash chain",
                     "57 entries, 3 signed checkpoint(s), chain intact", collected),
        EvidenceItem("check:plaintext-checkpoints", "n1", EvidenceStatus.FAIL, "no plaintext checkpoints",
                     "2 unsealed checkpoint files under /data/ckpt <script>", collected,
                     remediation="seal them with `trainguard seal`"),
        EvidenceItem("incidents", "n1", EvidenceStatus.WARN, "2 incident(s) recorded", detail, collected,
                     seqs=(12, 31)),
        EvidenceItem("deps", "n2", EvidenceStatus.PASS, "dependency verification", "no drift", collected,
                     seqs=(7,)),
    )


def _report(*, generated: str = T1, collected: str = T1, detail: str | None = None,
            synthetic: tuple[dict[str, object], ...] = ()) -> Report:
    items = _items(collected, *(() if detail is None else (detail,)))
    n1 = NodeEvidence("n1", "local", True, "ok", 57, 55, False, items[:3],
                      incidents=({"seq": 12, "time": "2026-11-22T09:10:00+00:00", "node": "n1",
                                  "kind": "gpu-misuse", "severity": "high", "hooks": ["kill"]},
                                 {"seq": 31, "time": "2026-11-22T10:40:00+00:00", "node": "n1",
                                  "kind": "unsafe-artifact", "severity": "critical", "hooks": []}),
                      robustness=({"eps": 0.0, "attack": "pgd", "accuracy": 0.97},
                                  {"eps": 0.1, "attack": "pgd", "accuracy": 0.6},
                                  {"eps": 0.0, "attack": "fgsm", "accuracy": 0.97},
                                  {"eps": 0.1, "attack": "fgsm", "accuracy": 0.7}),
                      first_entry=T0, last_entry="2026-11-22T11:00:00+00:00",
                      synthetic_incidents=synthetic)
    n2 = NodeEvidence("n2", "tls://10.0.0.2:7443", True, "ok", 9, 8, False, items[3:],
                      first_entry="2026-11-22T09:30:00+00:00", last_entry="2026-11-22T11:20:00+00:00")
    controls, score = assess(load_controls(), items)
    return Report(generated, "c1", (n1, n2), controls, score, tool_version=metadata.version("trainguard"))


def _render(fmt: ReportFormat, report: Report | None = None) -> str:
    """The format's own file (the first of its outputs)."""
    return next(iter(fmt.outputs(report or _report()).values())).decode()


# ---- header ----------------------------------------------------------------------------------


def test_every_format_carries_version_scope_scoring_method_and_report_id() -> None:
    report = _report()
    version = metadata.version("trainguard")
    rid = report.report_id
    for fmt in (ReportFormat.HTML, ReportFormat.MD):
        text = _render(fmt, report)
        assert f"trainguard {version}" in text
        assert rid in text
        assert "n1, n2" in text  # nodes in scope
        assert f"{T0} to 2026-11-22T11:20:00+00:00" in text  # first and last audit entry, all nodes
        assert SCORING_METHOD.replace("`", "") in text.replace("`", "")
    head = json.loads(_render(ReportFormat.JSON, report))["header"]
    assert head["report_id"] == rid and head["tool"] == {"name": "trainguard", "version": version}
    assert head["scope"] == {"nodes": ["n1", "n2"], "evidence_from": T0,
                             "evidence_to": "2026-11-22T11:20:00+00:00"}
    assert head["scoring_method"] == SCORING_METHOD
    meta = json.loads(_render(ReportFormat.OSCAL, report))["assessment-results"]["metadata"]
    props = {(p["name"], p["value"]) for p in meta["props"]}
    assert ("report-id", rid) in props and ("tool", f"trainguard {version}") in props
    assert {("scope-node", "n1"), ("scope-node", "n2"), ("evidence-from", T0)} <= props
    assert SCORING_METHOD in meta["remarks"]


def test_scoring_method_states_the_rule_assess_applies() -> None:
    # the sentence names each weight assess() uses, and the exclusions
    for sev, w in WEIGHTS.items():
        assert f"{sev} {w:g}" in SCORING_METHOD
    assert "warning" in SCORING_METHOD and "manual and not-applicable" in SCORING_METHOD
    # and the rule it states: a warning counts against, manual is left out
    report = _report()
    statuses = {a.control.id: a.status for a in report.controls}
    decided = [a for a in report.controls if a.status in (ControlStatus.SATISFIED, ControlStatus.NOT_SATISFIED)]
    good = sum(WEIGHTS[a.control.severity] for a in decided if a.status is ControlStatus.SATISFIED)
    assert report.score == round(100 * good / sum(WEIGHTS[a.control.severity] for a in decided), 1)
    assert ControlStatus.MANUAL in statuses.values()


def test_report_id_is_stable_for_identical_evidence_and_changes_with_it() -> None:
    a = _report(generated=T1, collected=T1)
    b = _report(generated="2026-12-01T00:00:00+00:00", collected="2026-12-01T00:00:00+00:00")
    assert a.report_id == b.report_id  # gathered again later, same evidence
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", a.report_id)
    assert _report(detail="2 handled by hooks or actions, 0 without a hook").report_id != a.report_id
    moved = dataclasses.replace(a, nodes=(dataclasses.replace(a.nodes[0], last_entry=T1), a.nodes[1]))
    assert moved.report_id != a.report_id
    # OSCAL uuids follow the report id, so two reports of the same evidence compare
    assert json.loads(_render(ReportFormat.OSCAL, a))["assessment-results"]["uuid"] == \
        json.loads(_render(ReportFormat.OSCAL, b))["assessment-results"]["uuid"]


# ---- evidence visible, incidents tied to audit entries -----------------------------------------


def test_html_shows_every_evidence_item_without_collapsed_toggles() -> None:
    report = _report()
    html = _render(ReportFormat.HTML, report)
    assert "<details" not in html or all("open" in tag for tag in re.findall(r"<details[^>]*>", html))
    assert "@media print" in html and "break-inside:avoid" in html and "display:table-header-group" in html
    for a in report.controls:
        for e in a.evidence:
            assert f"{_esc(e.title)}: {_esc(e.detail)}" in html
    assert "&lt;script&gt;" in html and "<script" not in html


def _esc(text: str) -> str:
    from html import escape

    return escape(text)


def test_incident_rows_carry_audit_seq_and_evidence_links_to_them() -> None:
    html = _render(ReportFormat.HTML, _report())
    rows = re.findall(r"<tr id='(incident-n1-\d+)'><td>(\d+)</td>", html)
    assert rows == [("incident-n1-12", "12"), ("incident-n1-31", "31")]
    assert '<a href="#incident-n1-12">12</a>' in html and '<a href="#incident-n1-31">31</a>' in html
    assert "(audit seq 7)" in html  # a non-incident entry is named, not linked
    md = _render(ReportFormat.MD, _report())
    assert "| audit seq | time |" in md and "| 12 | 2026-11-22T09:10:00+00:00 |" in md
    assert "(audit seq 12, 31)" in md
    data = json.loads(_render(ReportFormat.JSON, _report()))
    assert [i["seq"] for i in data["incidents"]] == [12, 31]
    ev = [e for c in data["controls"] for e in c["evidence"] if e["source"] == "incidents"]
    assert ev and all(e["audit_seqs"] == [12, 31] for e in ev)


def test_synthetic_incidents_are_named_in_the_header_not_in_the_table() -> None:
    synthetic = ({"seq": 40, "kind": "gpu-misuse", "time": T1, "node": "n1"},)
    report = _report(synthetic=synthetic)
    html = _render(ReportFormat.HTML, report)
    assert "n1 seq 40 (gpu-misuse)" in html and "incident-n1-40" not in html
    assert json.loads(_render(ReportFormat.JSON, report))["synthetic_incidents_excluded"] == list(synthetic)


# ---- charts --------------------------------------------------------------------------------------


def _svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def _texts(root: ET.Element, cls: str) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def test_accuracy_chart_has_axes_ticks_titles_and_one_legend_entry_per_series() -> None:
    root = _svg(svg.accuracy_vs_epsilon(list(_report().robustness)))
    assert len(list(root.iter(f"{SVG}line"))) >= 2  # axis lines
    assert _texts(root, "tick")[:5] == ["0%", "25%", "50%", "75%", "100%"]
    assert {"0", "0.1"} <= set(_texts(root, "tick"))  # epsilon ticks
    assert _texts(root, "axis-title") == ["epsilon (perturbation budget)", "accuracy"]
    legend = [g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g") if g.get("class") == "legend-entry"]  # type: ignore[union-attr]
    assert legend == ["fgsm", "pgd"] == sorted({str(p["attack"]) for p in _report().robustness})
    assert len(list(root.iter(f"{SVG}polyline"))) == 2


def test_incident_chart_has_count_and_time_ticks_and_a_legend_per_severity() -> None:
    incidents = _report().incidents
    root = _svg(svg.incidents_over_time(incidents))
    ticks = _texts(root, "tick")
    assert "0" in ticks and "1" in ticks  # counts
    assert "09:10" in ticks  # the first bucket starts at the first incident
    assert any("time (UTC" in t for t in _texts(root, "axis-title"))
    legend = [g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g") if g.get("class") == "legend-entry"]  # type: ignore[union-attr]
    assert legend == ["severity high", "severity critical"]
    empty = _svg(svg.incidents_over_time([]))
    assert "No incidents recorded." in "".join(empty.itertext())


# ---- OSCAL -----------------------------------------------------------------------------------------


def test_oscal_plan_resolves_risks_are_open_and_times_are_the_evidence_range(tmp_path: Path) -> None:
    trestle_ar = pytest.importorskip("trestle.oscal.assessment_results")
    trestle_ap = pytest.importorskip("trestle.oscal.assessment_plan")
    report = _report()
    files = ReportFormat.OSCAL.outputs(report)
    assert list(files) == ["oscal.json", PLAN_SUFFIX]
    for suffix, content in files.items():
        (tmp_path / f"trainguard-report.{suffix}").write_bytes(content)
    ar_doc = json.loads((tmp_path / "trainguard-report.oscal.json").read_text())["assessment-results"]
    href = ar_doc["import-ap"]["href"]
    assert href == PLAN_FILE and (tmp_path / href).is_file()  # relative to the results: resolves
    plan = trestle_ap.AssessmentPlan.model_validate(json.loads((tmp_path / href).read_text())["assessment-plan"])
    ssp_href = plan.import_ssp.href
    assert ssp_href.startswith("#") and ssp_href[1:] in {str(r.uuid) for r in plan.back_matter.resources}
    items = {str(i.uuid): i for i in plan.local_definitions.inventory_items}
    subjects = {str(s.subject_uuid) for s in plan.assessment_subjects[0].include_subjects}
    assert subjects == set(items) and len(items) == 2
    reviewed = {c.control_id for c in plan.reviewed_controls.control_selections[0].include_controls}
    assert reviewed == {a.control.oscal_id for a in report.controls}

    model = trestle_ar.AssessmentResults.model_validate(ar_doc)
    result = model.results[0]
    assert result.start.isoformat() == T0 and result.end.isoformat() == "2026-11-22T11:20:00+00:00"
    risks = {str(r.uuid): r for r in result.risks}
    not_satisfied = [a for a in report.controls if a.status is ControlStatus.NOT_SATISFIED]
    assert len(not_satisfied) >= 2 and len(risks) == len(not_satisfied)
    for f in result.findings:
        state = getattr(f.target.status.state, "value", f.target.status.state)
        related = [str(r.risk_uuid) for r in (f.related_risks or [])]
        if state == "not-satisfied":
            (rid,) = related
            a = next(a for a in not_satisfied if f.target.target_id == f"{a.control.oscal_id}_obj")
            assert risks[rid].status.root.root == "open"
            assert risks[rid].description == a.remediation
        else:
            assert related == []
    # observations name their node as a subject of the plan and their audit entries
    for o in result.observations:
        assert {str(s.subject_uuid) for s in o.subjects} <= set(items)
    deps = next(o for o in ar_doc["results"][0]["observations"] if o["title"].startswith("deps:"))
    assert "entries (seq) 7" in deps["relevant-evidence"][0]["description"]


# ---- PDF -------------------------------------------------------------------------------------------


def test_pdf_is_a_format_but_not_a_default() -> None:
    assert ReportFormat.PDF in parse_formats("html,pdf")
    assert ReportFormat.PDF not in parse_formats(DEFAULT_FORMATS)


def test_pdf_without_chromium_is_a_usage_error_naming_the_package(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PdfUnavailable) as err:
        require_chromium()
    assert err.value.exit_code == 2 and "apt-get install chromium" in (err.value.tip or "")
    with pytest.raises(PdfUnavailable):
        ReportFormat.PDF.outputs(_report())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PDFTOTEXT = shutil.which("pdftotext")


def squash(text: str) -> str:
    """Whitespace removed: the PDF wraps lines (and long tokens) wherever the page needs."""
    return re.sub(r"\s+", "", text)


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None or PDFTOTEXT is None,
                    reason="needs Chromium and pdftotext (apt-get install chromium poppler-utils)")
def test_printed_pdf_contains_every_findings_evidence(tmp_path: Path) -> None:
    report = _report()
    pdf = ReportFormat.PDF.outputs(report)["pdf"]
    assert pdf.startswith(b"%PDF-")
    (tmp_path / "r.pdf").write_bytes(pdf)
    text = subprocess.run([PDFTOTEXT, "-enc", "UTF-8", str(tmp_path / "r.pdf"), "-"],
                          capture_output=True, check=True, timeout=60).stdout.decode()
    printed = squash(text)
    decided = [a for a in report.controls if a.status in (ControlStatus.SATISFIED, ControlStatus.NOT_SATISFIED)]
    assert decided
    for a in decided:  # every finding's evidence, and the remediation of those not satisfied
        for e in a.evidence:
            assert squash(f"{e.title}: {e.detail}") in printed, e.title
        if a.remediation:
            assert squash(a.remediation) in printed
    assert squash(report.report_id) in printed and squash(SCORING_METHOD) in printed


# ---- synthetic incidents in the log ------------------------------------------------------------


def _entry(seq: int, kind: str, data: dict[str, object], t: float = 1_700_000_000.0) -> dict[str, object]:
    return {"seq": seq, "time": t + seq, "node": "n1", "actor": "agent", "kind": kind, "data": data}


def test_only_the_engines_mark_makes_an_incident_synthetic() -> None:
    from trainguard.report.evidence import incidents_from, log_items, synthetic_incidents

    real = {"id": "a", "kind": "gpu-misuse", "severity": "high", "node": "n1", "time": 1_700_000_003.0,
            # a reporter cannot hide a real incident by calling its own evidence a test
            "evidence": {"test": True, "synthetic": True}}
    test = {"id": "b", "kind": "exfiltration", "severity": "low", "node": "n1", "time": 1_700_000_005.0,
            "evidence": {"test": True}, "synthetic": True}
    entries = [_entry(3, "incident", real), _entry(4, "hook.run", {"incident": "a", "hook": "kill", "returncode": 0}),
               _entry(5, "incident", test), _entry(6, "hook.run", {"incident": "b", "hook": "page", "returncode": 0})]
    incidents = incidents_from(entries)
    assert [(i["seq"], i["id"], i["hooks"]) for i in incidents] == [(3, "a", ["kill"])]
    assert [(s["seq"], s["kind"]) for s in synthetic_incidents(entries)] == [(5, "exfiltration")]
    (item,) = [i for i in log_items("n1", entries, 1_700_000_010.0) if i.source == "incidents"]
    assert item.title == "1 incident(s) recorded" and item.seqs == (3,)
    only_test = log_items("n1", entries[2:], 1_700_000_010.0)
    assert not [i for i in only_test if i.source == "incidents"]  # no evidence, no score change
