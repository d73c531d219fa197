"""`trainguard deps audit --osv-dir` against a small OSV export made here: findings are exit 1,
`dependency-vulnerable` incidents in the audit log, and SI-2 / RA-5 evidence in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.integrity.deps.lock import write_lock

pytestmark = pytest.mark.integration


def _lock(home: Path, dists: dict[str, str]) -> Path:
    h = Home(home)
    lock = {"version": 1, "created": 0.0, "python": "3.11", "prefix": "/venv",
            "key_id": "", "startup": {},
            "distributions": {n: {"name": n, "version": v, "installer": "pip", "files": {},
                                  "record_mismatch": [], "dirs": []} for n, v in dists.items()}}
    key = SigningKey.load(h.node_signing_key)
    lock["key_id"] = key.key_id
    path = h.state_dir / "deps.lock.json"
    write_lock(lock, path, key)
    return path


def _osv(folder: Path) -> Path:
    folder.mkdir()
    records = {
        "PYSEC-2099-1": ("Requests", [{"introduced": "0"}, {"fixed": "2.20.0"}], "HIGH"),
        "GHSA-aaaa-bbbb-cccc": ("urllib3", [{"introduced": "1.0"}, {"fixed": "1.26.5"}], "MODERATE"),
        "PYSEC-2099-2": ("numpy", [{"introduced": "0"}, {"fixed": "1.0"}], "LOW"),
    }
    for vid, (name, events, sev) in records.items():
        (folder / f"{vid}.json").write_text(json.dumps({
            "id": vid, "summary": f"{name} flaw", "aliases": [f"CVE-{vid[-6:]}"],
            "database_specific": {"severity": sev},
            "affected": [{"package": {"ecosystem": "PyPI", "name": name},
                          "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}))
    return folder


def test_offline_audit_finds_vulnerable_versions_and_leaves_incidents_and_evidence(
    cli, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "root").code == 0
    _lock(home, {"requests": "2.19.1", "urllib3": "1.26.5", "numpy": "1.26.4"})
    osv = _osv(tmp_path / "osv")
    r = cli("deps", "audit", "--home", home, "--osv-dir", osv, "--format", "json")
    assert r.code == 1, r.stderr
    out = r.json()
    assert out["records"] == 3 and out["vulnerable"] == 1
    (finding,) = out["findings"]
    assert (finding["package"], finding["id"], finding["fixed_in"]) == (
        "requests", "PYSEC-2099-1", ["2.20.0"])
    text = cli("deps", "audit", "--home", home, "--osv-dir", osv)
    assert text.code == 1 and "requests" in text.stdout and "2.20.0" in text.stdout
    log = cli("audit", "log", "--home", home, "--kind", "incident", "--format", "json").json()
    kinds = [e["data"]["kind"] for e in log]
    assert "dependency-vulnerable" in kinds
    report = cli("audit", "report", "--home", home, "--out", tmp_path / "rep",
                 "--formats", "json", "--format", "json")
    assert report.code in (0, 1), report.stderr
    doc = json.loads(next((tmp_path / "rep").glob("*.json")).read_text())
    controls = {c["id"]: c for c in doc["controls"]}
    assert controls["SI-2"]["status"] == "not-satisfied"
    assert controls["RA-5"]["status"] == "not-satisfied"


def test_a_clean_environment_passes_and_a_bad_export_is_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    assert cli("init", "--home", home, "--admin", "root").code == 0
    _lock(home, {"requests": "2.32.0"})
    osv = _osv(tmp_path / "osv")
    r = cli("deps", "audit", "--home", home, "--osv-dir", osv, "--format", "json")
    assert r.code == 0 and r.json()["vulnerable"] == 0
    (osv / "broken.json").write_text("{")
    r = cli("deps", "audit", "--home", home, "--osv-dir", osv)
    assert r.code == 2 and "broken.json" in r.stderr and "Tip:" in r.stderr
