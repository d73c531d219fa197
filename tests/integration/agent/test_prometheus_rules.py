"""The shipped Prometheus rules and Grafana dashboard: valid for promtool, and every metric they
name is one the agent really exports (a renamed metric would silently never alert)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import make_home
from trainguard.agent.metrics import AgentMetrics
from trainguard.agent.telemetry.collector import TelemetryCollector
from trainguard.agent.telemetry.nvml import FakeNvml
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "deploy" / "prometheus" / "trainguard.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "trainguard.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "trainguard.json"
# Series Prometheus itself adds, or functions/keywords in expressions.
_NOT_OURS = {"up", "time", "increase", "sum", "by", "rate", "on", "without", "and", "or"}
_NAME = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*(?=\{|\)|\s*[-+*/<>=!]|$)")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (`apt-get install prometheus`; .ci/run does it)")
    return found


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 rules found" in out.stdout


def test_promtool_unit_tests_the_alerts() -> None:
    out = subprocess.run([_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, timeout=60, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _exported(tmp_path: Path) -> set[str]:
    home = make_home(tmp_path / "home")
    log = AuditLog.open(home.audit_db, "n", SigningKey.load(home.node_signing_key))
    log.append("x", "t", {})
    log.checkpoint(force=True)
    from trainguard.crypto.pki import ClusterCA

    ca = ClusterCA.create(home.pki_dir, "lab")
    cert, key = ca.issue("n", kind="node")
    (home.pki_dir / "node.crt").write_bytes(cert)
    metrics = AgentMetrics("n", audit=log, home=home)
    fake = FakeNvml(1)
    metrics.update(TelemetryCollector(nvml=fake).sample())
    from trainguard.agent.checks import CheckResult, Severity, Status

    metrics.update_checks([CheckResult("kek-age", "t", Severity.HIGH, (), (), Status.FAIL, "s",
                                       {}, "", 1.0)])
    text = metrics.render().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
    return names


def _names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    return {n for n in _NAME.findall(expr) if n not in _NOT_OURS and not n.isdigit()}


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    rules = re.findall(r"^\s+expr:\s*(.+)$", RULES.read_text(), re.M)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = rules + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    missing = {n for e in exprs for n in _names(e)} - exported
    assert not missing, f"rules or dashboard name metrics the agent does not export: {missing}"
