"""`trainguard audit report` as an auditor receives it, on real homes: `hooks test` incidents
are marked synthetic in the log and change neither the evidence nor the score; `--formats pdf`
prints through headless Chromium (or exits 2 naming the package); OSCAL's plan resolves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PDFTOTEXT = shutil.which("pdftotext")


def _home(cli, path: Path) -> Path:  # type: ignore[no-untyped-def]
    assert cli("init", "--home", path, "--cluster", "c1", "--node", "n1", "--admin", "alice").code == 0
    return path


def _report(cli, home: Path, out: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return cli("audit", "report", "--home", home, "--out", out, "--format", "json", *extra, env=env)


@pytest.mark.slow
def test_hooks_test_incident_is_synthetic_and_does_not_move_the_score(cli, tmp_path: Path) -> None:
    plain, tested = _home(cli, tmp_path / "plain"), _home(cli, tmp_path / "tested")
    fired = cli("hooks", "test", "gpu-misuse", "--severity", "critical", "--home", tested, "--format", "json")
    assert fired.code == 0, fired.stderr
    log = cli("audit", "log", "--home", tested, "--kind", "incident", "--format", "json").json()
    assert len(log) == 1 and log[0]["data"]["synthetic"] is True  # marked as a test in the log
    seq = log[0]["seq"]

    base = _report(cli, plain, tmp_path / "r-plain")
    res = _report(cli, tested, tmp_path / "r-tested")
    assert res.code == base.code, res.stderr
    assert res.json()["score"] == base.json()["score"]
    assert res.json()["controls"] == base.json()["controls"]
    full = json.loads((tmp_path / "r-tested" / "trainguard-report.json").read_text())
    plain_full = json.loads((tmp_path / "r-plain" / "trainguard-report.json").read_text())
    assert full["incidents"] == []  # the incident table omits it ...
    assert {c["id"]: c["status"] for c in full["controls"]} == {c["id"]: c["status"] for c in plain_full["controls"]}
    assert not any(e["source"] == "incidents" for c in full["controls"] for e in c["evidence"])
    # ... and the header names it, so nothing is dropped silently
    assert [(i["seq"], i["kind"]) for i in full["synthetic_incidents_excluded"]] == [(seq, "gpu-misuse")]
    html = (tmp_path / "r-tested" / "trainguard-report.html").read_text()
    assert f"n1 seq {seq} (gpu-misuse)" in html and f"incident-n1-{seq}" not in html


def test_pdf_without_chromium_exits_2_naming_the_package_before_gathering(cli, tmp_path: Path) -> None:
    home = _home(cli, tmp_path / "home")
    empty = tmp_path / "no-bin"
    empty.mkdir()
    res = _report(cli, home, tmp_path / "r", "--formats", "html,pdf", env={"PATH": str(empty)})
    assert res.code == 2
    assert "Chromium" in res.stderr and "apt-get install chromium" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()  # nothing half written
    before = cli("audit", "log", "--home", home, "--kind", "audit-report", "--format", "json").json()
    assert before == []  # refused before any evidence was gathered


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or PDFTOTEXT is None,
                    reason="needs Chromium and pdftotext (apt-get install chromium poppler-utils)")
def test_pdf_and_oscal_plan_from_a_real_home(cli, tmp_path: Path) -> None:
    home = _home(cli, tmp_path / "home")
    assert cli("pki", "issue", "bob", "--kind", "user", "--out", tmp_path / "c", "--home", home).code == 0
    out = tmp_path / "r"
    res = _report(cli, home, out, "--formats", "json,oscal,pdf")
    assert res.code in (0, 1), res.stderr
    data = res.json()
    assert set(data["report"]) == {"json", "oscal", "pdf"}
    assert sorted(Path(p).name for p in data["files"]) == [
        "trainguard-report.json", "trainguard-report.oscal-plan.json",
        "trainguard-report.oscal.json", "trainguard-report.pdf"]
    pdf = Path(data["report"]["pdf"])
    assert pdf.read_bytes().startswith(b"%PDF-")
    text = _squash(subprocess.run([PDFTOTEXT, "-enc", "UTF-8", str(pdf), "-"], capture_output=True,
                                  check=True, timeout=60).stdout.decode())
    full = json.loads((out / "trainguard-report.json").read_text())
    assert full["header"]["report_id"] == data["report_id"] and _squash(data["report_id"]) in text
    findings = [c for c in full["controls"] if c["status"] in ("satisfied", "not-satisfied")]
    assert findings
    for c in findings:
        for e in c["evidence"]:
            assert _squash(f"{e['title']}: {e['detail']}") in text, (c["id"], e["title"])
    # OSCAL: the plan the results import is the file written next to them
    ar = json.loads((out / "trainguard-report.oscal.json").read_text())["assessment-results"]
    assert (out / ar["import-ap"]["href"]).is_file()
    result = ar["results"][0]
    assert result["start"] == full["header"]["scope"]["evidence_from"]
    assert result["end"] == full["header"]["scope"]["evidence_to"]
    assert result["start"] <= result["end"]  # second resolution: equal when the evidence is that recent
    trestle_ap = pytest.importorskip("trestle.oscal.assessment_plan")
    plan = json.loads((out / ar["import-ap"]["href"]).read_text())["assessment-plan"]
    trestle_ap.AssessmentPlan.model_validate(plan)
