"""`trainguard demo`: the whole product on one machine, every step through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(2700)  # the whole product, two federations included, on a shared CPU
def test_demo_runs_every_step_and_writes_the_report(cli, tmp_path: Path) -> None:
    res = cli("demo", "--dir", tmp_path / "demo", "--format", "json", timeout=2400)
    assert res.code == 0, res.stderr[-3000:]
    data = res.json()
    titles = [s["title"] for s in data["steps"]]
    assert len(titles) == 12 and titles[0].startswith("Create a home") and titles[-1].startswith("Write the audit report")
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
    assert "[1] Create a home" in res.stderr and "[12] Write the audit report" in res.stderr
    # the federated step: the ALIE site flagged and excluded, within 5 points of the clean run
    fed = next(s for s in data["steps"] if s["title"].startswith("Federated learning"))
    assert "site-2 was flagged" in fed["summary"] and "excluded" in fed["summary"]
    (clean, attacked) = report["federated_runs"]
    assert attacked["excluded"] == ["site-2"] and clean["excluded"] == []
    assert clean["final_accuracy"] - attacked["final_accuracy"] <= 0.05
    # where the alert rules and the dashboard are (README: Operating trainguard)
    for path in data["operations"].values():
        assert Path(path).is_file(), path


def test_demo_refuses_a_non_empty_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep me")
    res = cli("demo", "--dir", tmp_path / "d")
    assert res.code == 2 and "not empty" in res.stderr
    assert (tmp_path / "d" / "x").read_text() == "keep me"
