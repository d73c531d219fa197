"""Differential privacy of a federation: the RDP accountant against the exact Gaussian
mechanism and its composition law, clipping, calibrated noise, and the strategy's per-round
epsilon."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy
from scipy.optimize import brentq
from scipy.stats import norm
from trainguard.trainer.federated.config import load_fl_config
from trainguard.trainer.federated.privacy import PrivacyAccountant, add_noise, clip_update, epsilon
from trainguard.trainer.federated.strategy import TrainguardStrategy

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"


def _exact_epsilon(z: float, delta: float) -> float:
    """The tight epsilon of one Gaussian mechanism of noise multiplier z (Balle & Wang 2018)."""
    def d(eps: float) -> float:
        return norm.cdf(0.5 / z - eps * z) - math.exp(eps) * norm.cdf(-0.5 / z - eps * z) - delta
    return brentq(d, 0.0, 500.0)


@pytest.mark.parametrize("z", [0.8, 1.0, 2.0, 5.0])
def test_rdp_epsilon_is_a_valid_and_close_upper_bound_of_the_exact_one(z: float) -> None:
    exact = _exact_epsilon(z, 1e-5)
    eps = epsilon(z, 1, 1e-5)
    assert exact <= eps <= 1.35 * exact + 0.05  # RDP conversion is an upper bound, not loose


def test_known_value_and_composition_of_full_participation_rounds() -> None:
    # one round at z = 1, delta = 1e-5: exact 4.38; the conversion of Balle et al. 2020 that
    # Opacus uses is tighter than Mironov's classic one, min over alpha of
    # alpha / 2 + log(1 / delta) / (alpha - 1), = 5.30 here
    classic = min(a / 2 + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 64, 100_000))
    assert classic == pytest.approx(5.30, abs=0.01)
    assert _exact_epsilon(1.0, 1e-5) == pytest.approx(4.38, abs=0.01)
    eps = epsilon(1.0, 1, 1e-5)
    assert _exact_epsilon(1.0, 1e-5) < eps < classic and eps == pytest.approx(4.73, abs=0.01)
    # Gaussian RDP composes linearly: T rounds at z equal one round at z / sqrt(T)
    for t in (2, 5, 10):
        assert epsilon(2.0, t, 1e-5) == pytest.approx(epsilon(2.0 / math.sqrt(t), 1, 1e-5), rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    per_round = [epsilon(1.0, t, 1e-5) for t in range(1, 9)]
    assert all(a < b for a, b in zip(per_round, per_round[1:], strict=False))
    assert epsilon(4.0, 5, 1e-5) < epsilon(1.0, 5, 1e-5)
    acc = PrivacyAccountant(1.0, 2.0, 1e-5)
    assert [acc.step()["epsilon"] for _ in range(8)] == per_round


def test_clipping_bounds_the_norm_and_keeps_small_updates() -> None:
    big = [np.full((3, 4), 10.0, np.float32), np.full(5, -10.0, np.float32)]
    clipped = clip_update(big, 1.5)
    assert math.sqrt(sum(float((a**2).sum()) for a in clipped)) == pytest.approx(1.5, rel=1e-5)
    assert big[0][0, 0] == 10.0  # the caller's arrays are not modified
    small = [np.full(4, 0.1, np.float32)]
    np.testing.assert_array_equal(clip_update(small, 1.5)[0], small[0])


def test_noise_has_the_calibrated_standard_deviation() -> None:
    noisy = add_noise(np.zeros(200_000, np.float32), 1.2, 2.0, 3, rng=np.random.default_rng(0))
    assert float(noisy.std()) == pytest.approx(1.2 * 2.0 / 3, rel=0.01)
    assert abs(float(noisy.mean())) < 0.01


class _Proxy(ClientProxy):
    def _no(self, *a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("not called")

    get_properties = get_parameters = fit = evaluate = reconnect = _no


def test_the_strategy_reclips_rows_adds_noise_and_reports_epsilon_each_round() -> None:
    cfg = load_fl_config(FL, ["privacy.dp=true", "privacy.noise_multiplier=1.0",
                              "privacy.clip_norm=0.5", "privacy.delta=1e-6"])
    records: list[dict] = []
    s = TrainguardStrategy(cfg, records.append)
    for rnd in (1, 2):
        # a site that did not clip (its update has norm >> 0.5) cannot move the model more
        results = [(_Proxy(f"c{i}"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
            [w + 5.0 for w in s.weights]), 10, {"site": f"site-{i}"})) for i in (1, 2, 3)]
        before = np.concatenate([w.ravel() for w in s.weights])
        s.aggregate_fit(rnd, results, [])
        moved = np.concatenate([w.ravel() for w in s.weights]) - before
        noise_std = 1.0 * 0.5 / 3
        # the clipped mean has norm 0.5; the rest is noise of the calibrated size
        assert np.linalg.norm(moved) == pytest.approx(math.hypot(0.5, noise_std * math.sqrt(moved.size)), rel=0.1)
    assert [r["privacy"]["epsilon"] for r in records] == [epsilon(1.0, 1, 1e-6), epsilon(1.0, 2, 1e-6)]
    assert records[-1]["privacy"]["delta"] == 1e-6 and records[-1]["privacy"]["clip_norm"] == 0.5
