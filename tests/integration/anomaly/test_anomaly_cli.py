"""`trainguard anomaly detect|eval|fit|score` through the real CLI."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
NAB_DIR = REPO.parent / "shared" / "data" / "nab"
NAB_FILE = NAB_DIR / "data" / "realAWSCloudwatch" / "ec2_cpu_utilization_825cc2.csv"


def _needs_nab() -> None:
    if not NAB_FILE.is_file():
        pytest.skip("the shared NAB subset is not present")


def test_detect_writes_one_row_per_input_row(cli, tmp_path):
    _needs_nab()
    res = cli("anomaly", "detect", NAB_FILE, "--home", tmp_path / "h")
    assert res.code in (0, 1), res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    src = list(csv.DictReader(NAB_FILE.open()))
    assert len(rows) == len(src)
    assert list(rows[0]) == ["timestamp", "value", "score", "alert"]
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in src]
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["alert"] in ("0", "1") for r in rows)
    assert res.code == (1 if any(r["alert"] == "1" for r in rows) else 0)


def test_detect_decisions_do_not_depend_on_later_rows(cli, tmp_path):
    _needs_nab()
    lines = NAB_FILE.read_text().splitlines()
    head = tmp_path / "head.csv"
    head.write_text("\n".join(lines[:1500]) + "\n")
    full = cli("anomaly", "detect", NAB_FILE, "--home", tmp_path / "h").stdout.splitlines()
    part = cli("anomaly", "detect", head, "--home", tmp_path / "h").stdout.splitlines()
    assert part == full[:1500]


def test_detect_json_and_a_spike(cli, tmp_path):
    src = tmp_path / "s.csv"
    rng = np.random.default_rng(0)
    vals = rng.normal(10, 1, 600)
    vals[500] = 60
    src.write_text("timestamp,value\n" + "".join(  # one row per second
        f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{v}\n" for i, v in enumerate(vals)))
    res = cli("anomaly", "detect", src, "--format", "json", "--home", tmp_path / "h")
    assert res.code == 1
    data = res.json()
    assert data["rows"] == 600 and data["data"][500]["alert"] == 1


def test_detect_rejects_a_file_without_the_nab_header(cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = cli("anomaly", "detect", bad, "--home", tmp_path / "h")
    assert res.code == 2 and "timestamp,value" in res.stderr


@pytest.mark.slow
def test_eval_on_the_nab_subset(cli, tmp_path):
    _needs_nab()
    res = cli("anomaly", "eval", "--nab", NAB_DIR, "--format", "json", "--home", tmp_path / "h")
    assert res.code == 0, res.stderr
    nab = res.json()["nab"]
    assert set(nab["categories"]) == {
        "artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch"}
    total = nab["total"]
    assert total["windows"] == 36 and total["files"] == 28
    # better than the null detector, finds a good share of the events, and stays quiet on the
    # series without anomalies
    assert total["nab_score"] > 0
    assert total["detected"] >= total["windows"] // 3
    assert nab["categories"]["artificialNoAnomaly"]["fp_rows"] <= 2
    # the published detectors, scored on the same rows (Numenta HTM: 30 of 36 windows, 41 FP)
    htm = nab["references"]["numenta"]["total"]
    assert (htm["detected"], htm["windows"], htm["fp_rows"]) == (30, 36, 41)
    text = cli("anomaly", "eval", "--nab", NAB_DIR, "--home", tmp_path / "h")
    assert "realAWSCloudwatch" in text.stdout and "pooled" in text.stdout
    assert "numenta" in text.stdout


def _table(path: Path, rows: np.ndarray) -> None:
    with path.open("w") as fh:
        fh.write("timestamp,util,power,net\n")
        for i, r in enumerate(rows):
            fh.write(f"{i},{r[0]},{r[1]},{r[2]}\n")


def test_fit_then_score_a_multivariate_csv(cli, tmp_path):
    rng = np.random.default_rng(1)
    base = np.column_stack([rng.normal(80, 5, 2000), rng.normal(300, 10, 2000),
                            rng.normal(1e6, 1e5, 2000)])
    _table(tmp_path / "base.csv", base)
    model = tmp_path / "m.skops"
    res = cli("anomaly", "fit", tmp_path / "base.csv", "--out", model, "--target-fpr", "0.01",
              "--format", "json", "--home", tmp_path / "h")
    assert res.code == 0, res.stderr
    assert res.json()["columns"] == ["util", "power", "net"] and model.is_file()
    new = base[:300].copy()
    new[200:210, 2] = 5e8  # an exfiltration-sized burst
    _table(tmp_path / "new.csv", new)
    res = cli("anomaly", "score", tmp_path / "new.csv", "--model", model, "--format", "json",
              "--home", tmp_path / "h")
    assert res.code == 1
    alerts = [r["row"] for r in res.json()["data"] if r["alert"]]
    assert set(range(200, 210)) <= set(alerts)
    assert len(alerts) < 40


def test_score_refuses_a_model_with_untrusted_types(cli, tmp_path):
    model = tmp_path / "evil.skops"
    sio.dump({"format": "trainguard-iforest/1", "model": os.system}, model)
    (tmp_path / "x.csv").write_text("a\n1\n")
    res = cli("anomaly", "score", tmp_path / "x.csv", "--model", model, "--home", tmp_path / "h")
    assert res.code == 1
    assert "allow-list" in res.stderr and "Traceback" not in res.stderr
