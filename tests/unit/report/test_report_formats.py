"""Report assessment and formats on hand-built evidence (the gathering is tested elsewhere)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from trainguard.core.errors import UsageError
from trainguard.report.assess import assess, assess_control
from trainguard.report.formats import ReportFormat, parse_formats
from trainguard.report.mapping import load_controls
from trainguard.report.model import (
    Control,
    ControlStatus,
    EvidenceItem,
    EvidenceStatus,
    NodeEvidence,
    Report,
)

T = "2026-11-22T10:00:00+00:00"


def _item(source: str, status: EvidenceStatus, node: str = "n1") -> EvidenceItem:
    return EvidenceItem(source, node, status, f"{source} title", f"{source} <detail> & more", T,
                        remediation=f"fix {source}" if status is EvidenceStatus.FAIL else None)


def _control(sources: tuple[str, ...], severity: str = "high") -> Control:
    return Control("SC-28", "Protection of Information at Rest", ("AML.T0025",), sources, "seal it", severity)


def test_control_status_rules() -> None:
    c = _control(("a", "b"))
    assert assess_control(c, []).status is ControlStatus.MANUAL
    assert assess_control(c, [_item("a", EvidenceStatus.PASS)]).status is ControlStatus.SATISFIED
    assert assess_control(c, [_item("a", EvidenceStatus.PASS), _item("b", EvidenceStatus.FAIL)]).status is ControlStatus.NOT_SATISFIED
    assert assess_control(c, [_item("b", EvidenceStatus.ERROR)]).status is ControlStatus.NOT_SATISFIED
    assert assess_control(c, [_item("a", EvidenceStatus.NOT_APPLICABLE)]).status is ControlStatus.NOT_APPLICABLE
    # a warning means the control could not be confirmed
    assert assess_control(c, [_item("a", EvidenceStatus.WARN)]).status is ControlStatus.NOT_SATISFIED
    assert assess_control(c, [_item("a", EvidenceStatus.PASS), _item("b", EvidenceStatus.NOT_APPLICABLE)]).status is ControlStatus.SATISFIED
    assert assess_control(c, [_item("zzz", EvidenceStatus.FAIL)]).status is ControlStatus.MANUAL


def test_remediation_only_when_not_satisfied_and_specific_first() -> None:
    c = _control(("a",))
    bad = assess_control(c, [_item("a", EvidenceStatus.FAIL)])
    assert bad.remediation == "fix a; seal it"
    assert assess_control(c, [_item("a", EvidenceStatus.PASS)]).remediation is None


def test_score_is_severity_weighted_and_ignores_manual() -> None:
    controls = [_control(("a",), "critical"), _control(("b",), "low"), _control(("none",), "high")]
    _, score = assess(controls, [_item("a", EvidenceStatus.PASS), _item("b", EvidenceStatus.FAIL)])
    assert score == pytest.approx(100 * 5 / 6, abs=0.1)
    _, zero = assess(controls, [])
    assert zero == 0.0


def test_shipped_mapping_is_valid_and_covers_threat_model() -> None:
    controls = load_controls()
    ids = {c.id for c in controls}
    assert {"SC-8", "SC-28", "AC-3", "IA-2(1)", "SI-7", "AU-9", "SI-4", "SR-11"} <= ids
    assert len(ids) == len(controls)
    for c in controls:
        assert re.fullmatch(r"[a-z]{2}-\d+(\.\d+)?", c.oscal_id)
        assert all(a.startswith("AML.T") for a in c.atlas)
    assert next(c for c in controls if c.id == "IA-2(1)").oscal_id == "ia-2.1"


def _report(log_ok: bool = True) -> Report:
    items = (
        _item("audit-chain", EvidenceStatus.PASS if log_ok else EvidenceStatus.FAIL),
        _item("check:plaintext-checkpoints", EvidenceStatus.FAIL),
        _item("mfa-coverage", EvidenceStatus.PASS),
        _item("robustness", EvidenceStatus.PASS),
    )
    node = NodeEvidence(
        name="n1", source="local", log_verified=log_ok, log_detail="ok" if log_ok else "entry 7 was modified",
        entries=42, checkpoint_seq=40, rolled_back=False, items=items,
        incidents=({"time": T, "node": "n1", "kind": "gpu-misuse", "severity": "high", "hooks": ["kill"]},
                   {"time": "2026-11-22T10:20:00+00:00", "node": "n1", "kind": "unsafe-artifact", "severity": "critical", "hooks": []}),
        robustness=({"eps": 0.0, "attack": "pgd", "accuracy": 0.97}, {"eps": 0.1, "attack": "pgd", "accuracy": 0.88},
                    {"eps": 0.3, "attack": "pgd", "accuracy": 0.12}),
        training_runs=({"summary": "digits: 3 workers, trimmed-mean, rank 2 flagged"},),
    )
    controls, score = assess(load_controls(), items)
    return Report(T, "demo", (node,), controls, score)


def test_json_report_has_controls_nodes_and_score() -> None:
    data = json.loads(ReportFormat.JSON.formatter().render(_report()))
    assert data["cluster"] == "demo"
    statuses = {c["id"]: c["status"] for c in data["controls"]}
    assert statuses["SC-28"] == "not-satisfied"
    assert statuses["AU-9"] == "satisfied"
    assert statuses["IR-8"] == "manual"
    assert 0 < data["score"] < 100
    assert data["nodes"][0]["log_verified"] is True


def test_failed_log_is_reported_never_merged_silently() -> None:
    md = ReportFormat.MD.formatter().render(_report(log_ok=False))
    assert "**FAILED**: entry 7 was modified" in md
    assert "AU-9 Protection of Audit Information: not-satisfied" in md


def test_html_is_self_contained_with_inline_svg_and_escaped_text() -> None:
    html = ReportFormat.HTML.formatter().render(_report())
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") == 2  # incidents over time, accuracy against epsilon
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "&lt;detail&gt; &amp; more" in html and "<detail>" not in html
    assert "pgd eps=0.1: 88.0%" in html


def test_oscal_is_valid_for_compliance_trestle() -> None:
    trestle = pytest.importorskip("trestle.oscal.assessment_results")
    doc = json.loads(ReportFormat.OSCAL.formatter().render(_report()))
    model = trestle.AssessmentResults.model_validate(doc["assessment-results"])
    result = model.results[0]
    reviewed = {c.control_id for c in result.reviewed_controls.control_selections[0].include_controls}
    assert {"sc-28", "ia-2.1", "au-9"} <= reviewed
    states = {f.target.target_id: getattr(f.target.status.state, "value", f.target.status.state) for f in result.findings}
    assert states["sc-28_obj"] == "not-satisfied"
    assert states["au-9_obj"] == "satisfied"
    obs_ids = {o.uuid for o in result.observations}
    for f in result.findings:
        assert {r.observation_uuid for r in f.related_observations} <= obs_ids
    # the plan the results import is valid too, and names the same controls
    plan_model = pytest.importorskip("trestle.oscal.assessment_plan")
    plan = ReportFormat.OSCAL.outputs(_report())["oscal-plan.json"]
    ap = plan_model.AssessmentPlan.model_validate(json.loads(plan)["assessment-plan"])
    assert {c.control_id for c in ap.reviewed_controls.control_selections[0].include_controls} == reviewed
    assert doc["assessment-results"]["import-ap"]["href"] == "trainguard-report.oscal-plan.json"


def test_parse_formats() -> None:
    assert parse_formats("html, md,json,oscal,md") == [ReportFormat.HTML, ReportFormat.MD, ReportFormat.JSON, ReportFormat.OSCAL]
    with pytest.raises(UsageError):
        parse_formats("docx")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, timeout=120)


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium; install with `apt-get install chromium`")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(ReportFormat.HTML.formatter().render(_report()))
    dom = _chromium(tmp_path, "--dump-dom", html.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert 'id="score"' in text and "/ 100" in text
    assert text.count("<svg") == 2 and "<polyline" in text  # incidents bars + accuracy line
    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a page with content, not blank
