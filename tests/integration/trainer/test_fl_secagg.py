"""SecAgg+ on the deployment engine, over real processes: three sites mask their updates with
Flower's `secaggplus_mod`, the ServerApp runs `SecAggPlusWorkflow`, and the model it builds
matches plain FedAvg on the same sites within the protocol's quantisation error, while the
server never holds one site's update (every per-site row it records is the sum's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import make_home
from support.trainer_jobs import EXAMPLES
from trainguard.crypto.pki import ClusterCA
from trainguard.evidence.sink import NullSink
from trainguard.trainer.federated.run import launch_federation, prepare_federation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FL = EXAMPLES / "fl-digits.toml"
# SecAgg+ needs the mean and no per-site monitor; the plain run is the same federation without it
COMMON = ["federation.rounds=3", "federation.monitor=false", "federation.checkpoints=false"]


@pytest.fixture
def home(tmp_path: Path):
    home = make_home(tmp_path / "home")
    ClusterCA.create(home.pki_dir, "hospitals")
    return home


def _run(home, *overrides: str) -> tuple[dict, list[dict]]:  # type: ignore[no-untyped-def]
    sink = NullSink()
    plan = prepare_federation(home, FL, [*COMMON, *overrides], 3, sink)
    result = launch_federation(plan, sink, lambda *a: None, principal="test", timeout=400)
    logs = Path(result["run_dir"]) / "logs"
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                      for p in sorted(logs.glob("*.log")))
    assert result["status"] == "completed" and result["rounds"] == 3, (result, tails)
    rounds = [json.loads(x) for x in (plan.run_dir / "rounds.jsonl").read_text().splitlines()]
    return result, [r for r in rounds if "round" in r and "sites" in r]


def test_secagg_plus_matches_plain_fedavg_and_the_server_sees_only_the_sum(home) -> None:
    plain, plain_rounds = _run(home)
    secure, secure_rounds = _run(home, "federation.secure_aggregation=true")
    assert [s["rounds_joined"] for s in secure["sites"]] == [3, 3, 3]
    # same model, round after round: the test loss is a continuous function of the weights
    for p, s in zip(plain_rounds, secure_rounds, strict=True):
        assert s["loss"] == pytest.approx(p["loss"], rel=1e-3, abs=1e-4), (p["round"], p, s)
        assert abs(s["accuracy"] - p["accuracy"]) <= 2 / 450  # at most 2 of the 450 test digits
    assert secure["final_accuracy"] >= 0.85
    # plain FedAvg: the server held three different updates; SecAgg+: it held only their
    # (weighted) mean, so every site's recorded row is the same vector
    assert len(set(plain_rounds[-1]["update_norms"].values())) == 3
    for r in secure_rounds:
        norms = list(r["update_norms"].values())
        assert len(norms) == 3 and max(norms) - min(norms) <= 1e-6 * max(norms)
