"""`trainguard anomaly eval --nab DIR [--select]` through the real CLI, on a small NAB folder."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

START = datetime(2024, 1, 1)


def _stamp(i: int) -> str:
    return (START + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S")


def _nab_folder(root: Path) -> Path:
    """Three small categories: two with one spike inside a labelled window, one with none.
    A fake published detector `oracle` scores 1 exactly on the spikes."""
    rng = np.random.default_rng(0)
    labels: dict[str, list[list[str]]] = {}
    spikes = {"catA/a1.csv": 500, "catA/a2.csv": 520, "catB/b1.csv": 480, "catC/c1.csv": None}
    for name, spike in spikes.items():
        values = rng.normal(10, 1, 700)
        if spike is not None:
            values[spike] = 45.0
            labels[name] = [[_stamp(spike - 20), _stamp(spike + 20)]]
        else:
            labels[name] = []
        cat, base = name.split("/")
        (root / "data" / cat).mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_text("timestamp,value\n" + "".join(
            f"{_stamp(i)},{v:.4f}\n" for i, v in enumerate(values)))
        res = root / "results" / "oracle" / cat
        res.mkdir(parents=True, exist_ok=True)
        (res / f"oracle_{base}").write_text("timestamp,value,anomaly_score,label\n" + "".join(
            f"{_stamp(i)},{v:.4f},{1.0 if i == spike else 0.0},0\n"
            for i, v in enumerate(values)))
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    (root / "config").mkdir()
    (root / "config" / "thresholds.json").write_text(json.dumps(
        {"oracle": {"standard": {"score": 0, "threshold": 0.5}}}))
    return root


def test_eval_reports_both_metrics_per_category_and_pooled_with_references(cli, tmp_path):
    nab = _nab_folder(tmp_path / "nab")
    res = cli("anomaly", "eval", "--nab", nab, "--format", "json", "--home", tmp_path / "h")
    assert res.code == 0, res.stderr
    out = res.json()["nab"]
    assert set(out["categories"]) == {"catA", "catB", "catC"}
    for group in [*out["categories"].values(), out["total"]]:
        assert {"nab_score", "nab_score_at_threshold", "precision", "recall", "f1",
                "fp_rows", "detected", "windows"} <= set(group)
    assert out["categories"]["catC"]["f1"] is None  # no windows: judged by FP rows only
    oracle = out["references"]["oracle"]["total"]
    assert (oracle["detected"], oracle["windows"], oracle["fp_rows"]) == (3, 3, 0)
    assert oracle["f1"] == 1.0 and oracle["nab_score"] > 90
    text = cli("anomaly", "eval", "--nab", nab, "--home", tmp_path / "h")
    assert "oracle" in text.stdout and "pooled" in text.stdout


@pytest.mark.slow
def test_select_prints_every_fold_for_every_candidate_and_the_choice(cli, tmp_path):
    nab = _nab_folder(tmp_path / "nab")
    res = cli("anomaly", "eval", "--nab", nab, "--select", "--format", "json",
              "--home", tmp_path / "h")
    assert res.code == 0, res.stderr
    sel = res.json()["selection"]
    names = [c["name"] for c in sel["candidates"]]
    assert "stream (previous default)" in names and "cad_ose" in names
    for c in sel["candidates"]:
        assert [f["group"] for f in c["loco"]] == ["catA", "catB", "catC"]
        assert [f["group"] for f in c["lofo"]] == ["catA", "catB", "catC", "all"]
    chosen = next(c for c in sel["candidates"] if c["name"] == sel["chosen"]["name"])
    assert chosen["within_latency_budget"]
    refs = [r["name"] for r in sel["references"]]
    assert refs == ["stream as shipped (0.72, fixed)", "oracle"]
    oracle = sel["references"][1]["loco"]
    assert [(f["detected"], f["windows"], f["fp_rows"]) for f in oracle] == [
        (2, 2, 0), (1, 1, 0), (0, 0, 0)]
    text = cli("anomaly", "eval", "--nab", nab, "--select", "--home", tmp_path / "h")
    assert text.code == 0
    assert "LOCO catA" in text.stdout and "chosen" in text.stdout
    assert f"| {sel['chosen']['name']} |" in text.stdout


def test_select_without_a_nab_folder_is_a_usage_error(cli, tmp_path):
    res = cli("anomaly", "eval", "--select", "--gpu", "--home", tmp_path / "h")
    assert res.code == 2 and "--nab" in res.stderr


def test_detect_alerts_at_the_frozen_selected_threshold(cli, tmp_path):
    from trainguard.anomaly.config import selected_detector

    nab = _nab_folder(tmp_path / "nab")
    res = cli("anomaly", "detect", nab / "data" / "catA" / "a1.csv", "--format", "json",
              "--home", tmp_path / "h")
    data = res.json()
    assert data["threshold"] == selected_detector().threshold
    assert res.code == (1 if data["alerts"] else 0)
    assert all((r["score"] >= data["threshold"]) == bool(r["alert"]) for r in data["data"])
