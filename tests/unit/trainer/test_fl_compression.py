"""8-bit site updates: the quantiser's error bound and unbiasedness (Hypothesis), the wire form
the server checks, and the strategy dequantising before it aggregates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from trainguard.trainer.federated.compression import (
    CompressionError,
    dequantize,
    from_arrays,
    quantize,
    to_arrays,
)
from trainguard.trainer.federated.config import load_fl_config
from trainguard.trainer.federated.strategy import TrainguardStrategy

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"
floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=12), elements=floats)


@settings(max_examples=200, deadline=None)
@given(arrays, st.booleans(), st.integers(0, 2**32 - 1))
def test_every_value_is_within_one_step_and_half_a_step_when_rounded_to_nearest(
        a: np.ndarray, stochastic: bool, seed: int) -> None:
    q, scale = quantize(a, stochastic=stochastic, rng=np.random.default_rng(seed))
    assert q.dtype == np.int8 and q.shape == a.shape and int(np.abs(q).max(initial=0)) <= 127
    err = np.abs(dequantize(q, scale).astype(np.float64) - a.astype(np.float64))
    bound = float(scale) * (1.0 if stochastic else 0.5) * (1 + 1e-5) + 1e-30
    assert float(err.max(initial=0.0)) <= bound
    # the smallest float32 scale that covers the peak (subnormal peaks included)
    peak = float(np.abs(a).max(initial=0.0))
    assert not a.any() or (float(scale) * 127 >= peak
                           and float(np.nextafter(scale, np.float32(0))) * 127 < peak)


@pytest.mark.parametrize("peak", [1.266498e-39, 1e-44, 1.4e-45, 3.4e38])
def test_tiny_and_huge_peaks_get_a_nonzero_scale_that_covers_them(peak: float) -> None:
    a = np.asarray([peak, -peak / 3, 0.0], np.float32)
    q, scale = quantize(a, stochastic=False)
    assert float(scale) > 0 and float(scale) * 127 >= float(a[0])
    back = dequantize(q, scale)  # below 127 x the smallest subnormal, q[0] < 127: still exact
    assert np.isfinite(back).all() and abs(float(back[0]) - float(a[0])) <= float(scale) / 2


def test_stochastic_rounding_is_unbiased_and_nearest_is_not() -> None:
    a = np.full(200_000, 0.3, np.float32)
    a[0] = 127.0  # scale 1: every 0.3 sits between 0 and 1
    q, s = quantize(a, stochastic=True, rng=np.random.default_rng(1))
    assert float(dequantize(q, s)[1:].mean()) == pytest.approx(0.3, abs=0.005)
    q, s = quantize(a, stochastic=False)
    assert float(dequantize(q, s)[1:].mean()) == 0.0


def test_non_finite_updates_are_refused_and_a_zero_update_round_trips() -> None:
    with pytest.raises(CompressionError):
        quantize(np.array([1.0, np.nan], np.float32), stochastic=False)
    q, s = quantize(np.zeros(5, np.float32), stochastic=True)
    assert not dequantize(q, s).any()


def test_the_wire_form_is_checked_against_the_model_and_is_a_quarter_of_float32() -> None:
    like = [np.zeros((64, 32), np.float32), np.zeros(32, np.float32)]
    upd = [np.random.default_rng(0).normal(size=x.shape).astype(np.float32) for x in like]
    wire = to_arrays(upd, stochastic=False)
    out = from_arrays(wire, like)
    assert all(np.abs(o - u).max() <= np.abs(u).max() / 127 for o, u in zip(out, upd, strict=True))
    raw = sum(len(t) for t in ndarrays_to_parameters(upd).tensors)
    packed = sum(len(t) for t in ndarrays_to_parameters(wire).tensors)
    assert packed < 0.3 * raw
    for bad in (wire[1:], [wire[0].astype(np.int16), *wire[1:]], [*wire[:2], wire[2].astype(np.float64)],
                [*wire[:2], np.array([1.0, np.inf], np.float32)], [w.copy() for w in upd]):
        with pytest.raises(CompressionError):
            from_arrays(bad, like)


class _Proxy(ClientProxy):
    def _no(self, *a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("not called")

    get_properties = get_parameters = fit = evaluate = reconnect = _no


def test_the_strategy_dequantises_int8_updates_and_measures_both_sizes() -> None:
    cfg = load_fl_config(FL, ['federation.compress="int8"'])
    records: list[dict] = []
    s = TrainguardStrategy(cfg, records.append)
    before = [w.copy() for w in s.weights]
    results = []
    for i, d in ((1, 0.01), (2, 0.012), (3, 0.011)):
        wire = to_arrays([np.full_like(w, d) for w in s.weights], stochastic=True)
        results.append((_Proxy(f"c{i}"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(wire), 10,
                                                 {"site": f"site-{i}"})))
    results.append((_Proxy("c4"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(s.weights), 10,
                                         {"site": "site-1"})))  # a duplicate, dropped
    s.aggregate_fit(1, results, [])
    np.testing.assert_allclose(s.weights[0] - before[0], 0.011, atol=1e-4)
    rec = records[0]
    assert rec["compress"] == "int8" and rec["sites"] == ["site-1", "site-2", "site-3"]
    assert 0 < rec["bytes_up"] < 0.3 * rec["bytes_up_uncompressed"]


@pytest.mark.slow
def test_a_federation_with_int8_updates_learns_as_well_as_float32() -> None:
    """Three in-process sites (the real SiteClient) and the real strategy, 8 rounds."""
    from trainguard.trainer.federated.client import SiteClient

    def run(overrides: list[str]) -> float:
        cfg = load_fl_config(FL, overrides)
        s = TrainguardStrategy(cfg, lambda r: None)
        sites = {n: SiteClient(cfg, n) for n in cfg.sites}
        for rnd in range(1, cfg.federation.rounds + 1):
            arrays = [w.copy() for w in s.weights]
            results = []
            for i, (name, site) in enumerate(sites.items()):
                out, n, metrics = site.fit([a.copy() for a in arrays], {"round": rnd})
                results.append((_Proxy(f"c{i}"), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out),
                                                         n, metrics)))
            s.aggregate_fit(rnd, results, [])
        assert s.accuracy is not None
        return s.accuracy

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a site process runs (federation.threads); the CPU is shared
    try:
        plain, int8 = run([]), run(['federation.compress="int8"'])
    finally:
        torch.set_num_threads(threads)
    assert plain >= 0.90 and int8 >= 0.90 and abs(plain - int8) <= 0.02
