"""Site admission over the real processes: a site holding a foreign-CA certificate, or a revoked
one, is refused before it gets any round (membership-failure incident), and the other sites
still train. Library-level launch (the CLI adds only login and MFA, tested in test_fl_run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import EXAMPLES
from trainguard.core.fs import write_private
from trainguard.crypto.pki import ClusterCA
from trainguard.evidence.sink import NullSink
from trainguard.trainer.federated.run import launch_federation, prepare_federation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FL = EXAMPLES / "fl-digits.toml"


@pytest.fixture
def home(tmp_path: Path):
    home = make_home(tmp_path / "home")
    ClusterCA.create(home.pki_dir, "hospitals")
    return home


def _run(home, tamper) -> tuple[dict, list, NullSink]:  # type: ignore[no-untyped-def]
    sink = NullSink()
    plan = prepare_federation(home, FL, ["federation.rounds=4"], 3, sink)
    tamper(plan)
    reported: list = []
    result = launch_federation(plan, sink, lambda k, s, e: reported.append((k, e)),
                               principal="test", timeout=240)
    return result, reported, sink


def _logs(result: dict) -> str:
    """The tails of the run's process logs, so a failure says why."""
    logs = Path(result["run_dir"]) / "logs"
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(logs.glob("*.log")))


def _assert_site2_refused(result: dict, reported: list, sink: NullSink, reason: str) -> None:
    assert result["status"] == "completed" and result["rounds"] == 4, (result, _logs(result))
    assert [(k, e["site"], e["reason"]) for k, e in reported] == [("membership-failure", "site-2", reason)]
    sites = {s["name"]: s for s in result["sites"]}
    assert sites["site-2"]["rounds_joined"] == 0 and sites["site-2"]["admitted"] is False
    assert sites["site-2"]["excluded"] is True
    assert sites["site-1"]["rounds_joined"] == 4 and sites["site-3"]["rounds_joined"] == 4
    assert result["final_accuracy"] >= 0.8  # two honest sites still learn
    admissions = [e for kind, _, e in sink.events if kind == "fl.admission"]
    assert sorted((e["site"], e["admission"]) for e in admissions) == [
        ("site-1", "admitted"), ("site-2", "refused"), ("site-3", "admitted")]


def test_a_site_with_a_foreign_ca_certificate_is_refused_before_round_one(home, tmp_path) -> None:
    def foreign(plan) -> None:  # type: ignore[no-untyped-def]
        rogue = ClusterCA.create(tmp_path / "rogue-pki", "hospitals")
        cert, key = rogue.issue("site-2", "node")
        pki = plan.run_dir / "sites" / "site-2" / "pki"
        write_private(pki / "node.crt", cert)
        write_private(pki / "node.key", key)

    _assert_site2_refused(*_run(home, foreign), "foreign-ca")


def test_a_site_whose_certificate_was_revoked_is_refused_before_round_one(home) -> None:
    def revoke(plan) -> None:  # type: ignore[no-untyped-def]
        ca = ClusterCA.open(home.pki_dir)
        ca.revoke("site-2")
        ca.write_crl()

    _assert_site2_refused(*_run(home, revoke), "revoked")
