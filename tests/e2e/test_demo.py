"""`trainguard demo`: the whole product on one machine, every step through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_step_and_writes_the_report(cli, tmp_path: Path) -> None:
    res = cli("demo", "--dir", tmp_path / "demo", "--format", "json", timeout=1500)
    assert res.code == 0, res.stderr[-3000:]
    data = res.json()
    titles = [s["title"] for s in data["steps"]]
    assert len(titles) == 11 and titles[0].startswith("Create a home") and titles[-1].startswith("Write the audit report")
    assert set(data["report"]) == {"html", "md", "json", "oscal"}
    report = json.loads(Path(data["report"]["json"]).read_text())
    incident_kinds = {i["kind"] for i in report["incidents"]}
    # what the demo provoked on purpose was detected and recorded
    assert {"byzantine-worker", "checkpoint-tampered", "unsafe-artifact"} <= incident_kinds
    assert report["nodes"][0]["log_verified"] is True
    assert any(p["accuracy"] is not None for p in report["robustness"])
    assert not (tmp_path / "demo" / "models" / "pretrained.pt").exists()  # quarantined
    assert any((tmp_path / "demo" / "home" / "quarantine").iterdir())
    # progress went to stderr, step by step
    assert "[1] Create a home" in res.stderr and "[11] Write the audit report" in res.stderr
    # where the alert rules and the dashboard are (README: Operating trainguard)
    for path in data["operations"].values():
        assert Path(path).is_file(), path


def test_demo_refuses_a_non_empty_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep me")
    res = cli("demo", "--dir", tmp_path / "d")
    assert res.code == 2 and "not empty" in res.stderr
    assert (tmp_path / "d" / "x").read_text() == "keep me"
