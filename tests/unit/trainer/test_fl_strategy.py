"""The federation's strategy and aggregator with fake site results (no processes, no network):
robust rules over site rows, flagging in successive rounds, exclusion, config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from trainguard.trainer.config import Aggregation, AggregationSection, Attack
from trainguard.trainer.errors import TrainConfigError
from trainguard.trainer.federated.aggregate import SiteAggregator, omniscient_attack
from trainguard.trainer.federated.config import load_fl_config
from trainguard.trainer.federated.strategy import TrainguardStrategy

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"
HONEST = {"site-1": np.array([1.0, 1.0, 1.0, 1.0]), "site-3": np.array([1.2, 0.9, 1.1, 1.0])}


def _rounds(method: str, n: int, *, flip: str | None = "site-2", **kw) -> SiteAggregator:
    agg = SiteAggregator(AggregationSection(method=Aggregation(method), flag_after=2, **kw))
    for r in range(1, n + 1):
        ups = dict(HONEST, **{"site-2": np.array([1.1, 1.0, 0.9, 1.0])})
        if flip:
            ups[flip] = -4.0 * ups[flip]
        agg.last = agg.aggregate(r, ups)  # type: ignore[attr-defined]
    return agg


def test_mean_is_dragged_by_a_sign_flipped_site_and_the_median_is_not() -> None:
    ups = dict(HONEST, **{"site-2": -4.0 * np.array([1.1, 1.0, 0.9, 1.0])})
    mean = SiteAggregator(AggregationSection(method=Aggregation.MEAN)).aggregate(1, ups).update
    median = SiteAggregator(AggregationSection(method=Aggregation.MEDIAN)).aggregate(1, ups).update
    assert (mean < 0).all()
    np.testing.assert_allclose(median, [1.0, 0.9, 1.0, 1.0])


def test_a_site_flagged_in_successive_rounds_is_reported_once_and_excluded() -> None:
    agg = _rounds("median", 1)
    assert agg.last.newly_flagged == [] and agg.last.stats[1].flagged  # type: ignore[attr-defined]
    agg = _rounds("median", 3)
    assert agg.reported == ["site-2"] and agg.excluded == {"site-2"}
    last = agg.last  # type: ignore[attr-defined]
    assert last.sites == ["site-1", "site-3"] and last.newly_flagged == []  # reported once
    assert last.excluded == ["site-2"]


def test_without_exclusion_a_flagged_site_keeps_contributing() -> None:
    agg = _rounds("mean", 3, exclude_flagged=False)
    assert agg.reported == ["site-2"] and agg.excluded == set()
    assert "site-2" in agg.last.sites  # type: ignore[attr-defined]


def test_honest_sites_are_never_flagged() -> None:
    agg = _rounds("mean", 5, flip=None)
    assert agg.reported == [] and not any(s.flagged for s in agg.last.stats)  # type: ignore[attr-defined]


def test_a_non_finite_row_cannot_poison_the_aggregate() -> None:
    ups = dict(HONEST, **{"site-2": np.array([np.nan, np.inf, -np.inf, 1.0])})
    out = SiteAggregator(AggregationSection(method=Aggregation.MEAN)).aggregate(1, ups)
    assert np.isfinite(out.update).all()


def test_alie_rows_replace_only_the_byzantine_site() -> None:
    ups = dict(HONEST, **{"site-2": np.array([1.1, 1.0, 0.9, 1.0])})
    out = omniscient_attack(ups, {"site-2"}, Attack.ALIE, 0.0)
    np.testing.assert_array_equal(out["site-1"], ups["site-1"])
    assert not np.allclose(out["site-2"], ups["site-2"])


class _Proxy(ClientProxy):
    def _no(self, *a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the strategy must not call sites directly")

    get_properties = get_parameters = fit = evaluate = reconnect = _no


def _fit(strategy: TrainguardStrategy, site: str, delta: float) -> FitRes:
    new = [w + delta for w in strategy.weights]
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 10, {"site": site})


def test_strategy_applies_the_rule_drops_unknown_sites_and_skips_excluded_ones() -> None:
    cfg = load_fl_config(FL, ['aggregation.method="median"', "aggregation.flag_after=1"])
    records: list[dict] = []
    s = TrainguardStrategy(cfg, records.append)
    before = [w.copy() for w in s.weights]
    proxies = {f"c{i}": _Proxy(f"c{i}") for i in range(1, 5)}
    results = [(proxies["c1"], _fit(s, "site-1", 0.01)), (proxies["c2"], _fit(s, "site-2", -0.5)),
               (proxies["c3"], _fit(s, "site-3", 0.012)), (proxies["c4"], _fit(s, "mallory", 9.0))]
    params, metrics = s.aggregate_fit(1, results, [])
    assert params is not None and 0.0 <= float(metrics["accuracy"]) <= 1.0
    moved = parameters_to_ndarrays(params)[0] - before[0]
    np.testing.assert_allclose(moved, 0.01, atol=1e-6)  # the median of +0.01, -0.5, +0.012
    rec = records[0]
    assert rec["round"] == 1 and rec["sites"] == ["site-1", "site-2", "site-3"]
    assert rec["dropped_unknown_sites"] == ["mallory"]
    assert rec["newly_flagged"] == ["site-2"] and rec["excluded"] == ["site-2"]
    assert rec["bytes_up"] > 0

    manager = SimpleClientManager()
    for p in proxies.values():
        manager.register(p)
    chosen = [c.cid for c, _ in s.configure_fit(2, params, manager)]
    assert "c2" not in chosen and {"c1", "c3"} <= set(chosen)


def test_config_errors_are_all_reported_together() -> None:
    with pytest.raises(TrainConfigError) as err:
        load_fl_config(FL, ['aggregation.method="krum"', 'simulate.byzantine_sites=["site-7"]',
                            "federation.rounds=0"])
    text = str(err.value)
    assert "krum" in text and "site-7" in text and "rounds" in text


def test_the_example_config_is_valid() -> None:
    cfg = load_fl_config(FL)
    assert cfg.sites == ["site-1", "site-2", "site-3"] and cfg.aggregation.method.value == "mean"
