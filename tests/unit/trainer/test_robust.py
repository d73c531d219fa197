"""The robust aggregation rules: sorting network, median, trimmed mean, centered clipping, Krum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.trainer.aggregation import aggregate_rows
from trainguard.trainer.config import Aggregation, AggregationSection
from trainguard.trainer.robust import (
    centered_clip,
    coordinate_median,
    krum,
    sort_rows,
    sorting_network,
    trimmed_mean,
)

rows_strategy = st.integers(1, 12).flatmap(
    lambda n: st.integers(1, 6).flatmap(
        lambda d: st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=n * d, max_size=n * d
        ).map(lambda xs: torch.tensor(xs, dtype=torch.float32).reshape(n, d))
    )
)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_sorting_network_sorts_every_zero_one_input(n: int) -> None:
    # The 0-1 principle: a comparator network that sorts every 0/1 input sorts everything.
    inputs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).T  # n x 2^n
    out = sort_rows(inputs)
    assert torch.equal(out, torch.sort(inputs, dim=0).values)
    assert len(sorting_network(n)) <= n * max(1, n.bit_length()) ** 2


@given(rows_strategy)
@settings(max_examples=150, deadline=None)
def test_sorted_rows_match_torch_sort(rows: torch.Tensor) -> None:
    assert torch.equal(sort_rows(rows), torch.sort(rows, dim=0).values)


@given(rows_strategy)
@settings(max_examples=150, deadline=None)
def test_median_matches_reference(rows: torch.Tensor) -> None:
    n = rows.shape[0]
    got = coordinate_median(rows)
    if n % 2:
        assert torch.equal(got, torch.median(rows, dim=0).values)
    else:
        ref = np.median(rows.numpy().astype(np.float64), axis=0)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-3)


@given(rows_strategy, st.integers(0, 5))
@settings(max_examples=100, deadline=None)
def test_trimmed_mean_matches_reference(rows: torch.Tensor, trim: int) -> None:
    n = rows.shape[0]
    t = min(trim, (n - 1) // 2)
    s = np.sort(rows.numpy().astype(np.float64), axis=0)[t : n - t]
    np.testing.assert_allclose(trimmed_mean(rows, trim).numpy(), s.mean(axis=0), rtol=1e-4, atol=1e-1)


@given(rows_strategy, st.randoms(use_true_random=False))
@settings(max_examples=80, deadline=None)
def test_median_and_trimmed_mean_ignore_row_order(rows: torch.Tensor, rnd) -> None:
    perm = list(range(rows.shape[0]))
    rnd.shuffle(perm)
    shuffled = rows[perm]
    assert torch.equal(coordinate_median(rows), coordinate_median(shuffled))
    assert torch.allclose(trimmed_mean(rows, 1), trimmed_mean(shuffled, 1), rtol=1e-5, atol=1e-2)


def _cluster(n_honest: int, n_bad: int, d: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    honest = torch.ones(d) + 0.1 * torch.randn(n_honest, d, generator=g)
    bad = -10 * torch.ones(d) + 0.1 * torch.randn(n_bad, d, generator=g)
    return torch.cat([honest, bad])


def test_krum_picks_a_row_of_the_honest_cluster() -> None:
    rows = _cluster(5, 2)
    agg, chosen = krum(rows, f=2, m=1)
    assert chosen[0] < 5
    assert torch.equal(agg, rows[chosen[0]])


def test_multi_krum_averages_only_honest_rows_whatever_the_order() -> None:
    rows = _cluster(5, 2, seed=1)
    perm = torch.tensor([6, 2, 0, 5, 1, 4, 3])
    _, chosen = krum(rows, f=2, m=3)
    _, chosen_perm = krum(rows[perm], f=2, m=3)
    assert all(c < 5 for c in chosen)
    assert sorted(int(perm[c]) for c in chosen_perm) == chosen


def test_mean_is_dragged_by_one_outlier_but_robust_rules_are_not() -> None:
    rows = _cluster(4, 1, d=8)
    honest_mean = rows[:4].mean(dim=0)
    cfg = AggregationSection
    assert torch.linalg.vector_norm(aggregate_rows(rows, cfg(method=Aggregation.MEAN)) - honest_mean) > 1
    for method in (Aggregation.MEDIAN, Aggregation.TRIMMED_MEAN, Aggregation.KRUM):
        agg = aggregate_rows(rows, cfg(method=method, krum_f=1))
        assert torch.linalg.vector_norm(agg - honest_mean) < 0.5, method


def test_centered_clip_bounds_the_pull_of_a_huge_update() -> None:
    center = torch.zeros(4)
    rows = torch.stack([torch.full((4,), 0.1)] * 4 + [torch.full((4,), 1e9)])
    out = centered_clip(rows, center, tau=1.0, iters=1)
    # the attacker moves the centre by at most tau / n
    assert torch.linalg.vector_norm(out - rows[:4].mean(dim=0) * 4 / 5) <= 1.0 / 5 + 1e-6


def test_non_finite_rows_do_not_poison_robust_rules() -> None:
    rows = _cluster(4, 0, d=6)
    bad = torch.cat([rows, torch.full((1, 6), float("nan"))])
    for method in (Aggregation.MEDIAN, Aggregation.CENTERED_CLIP, Aggregation.KRUM):
        sanitized = torch.nan_to_num(bad, nan=0.0)
        agg = aggregate_rows(sanitized, AggregationSection(method=method, krum_f=1))
        assert torch.isfinite(agg).all(), method
