"""Jump novelty (`trainguard.anomaly.transition`): a jump between levels larger than any seen
from that level scores once; causal, bounded, and the README's NAB numbers come from it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.anomaly import (
    AnomalyError,
    DetectorSpec,
    JumpNovelty,
    JumpNoveltyConfig,
    make_detector,
)
from trainguard.anomaly.config import selected_detector
from trainguard.anomaly.folds import FileCurve
from trainguard.anomaly.nab import load_nab
from trainguard.anomaly.selection import _evaluate, _objective, choose_threshold, score_file


def _scores(det, xs):
    return [det.score(60.0 * i, x) for i, x in enumerate(xs)]


def test_a_jump_no_level_was_ever_left_by_scores_and_the_same_jump_again_does_not():
    # probation: 0 <-> 5 and one visit to 10, so bins of width 1 (range 10, 10 bins) and the
    # largest jump up from 0 is 5
    probation = [0.0, 5.0] * 9 + [10.0, 0.0]
    det = JumpNovelty(JumpNoveltyConfig(bins=10, min_jump=4, tolerance=1.0),
                      probation=len(probation))
    assert _scores(det, probation) == [0.0] * len(probation)
    after = [9.0, 0.0, 9.0, 0.0, 3.0, 0.0, 5.0, 0.0]
    out = _scores(det, after)
    # 0 -> 9 exceeds the record +5 by 4 bins: 1 - exp(-4 / (1.0 * 4))
    assert out[0] == pytest.approx(1.0 - math.exp(-1.0))
    assert out[1] == 0.0  # 9 was never left before: min_count 1 not met, nothing to judge by
    assert out[2] == 0.0  # 0 -> 9 again: the record is now +9, not news twice
    assert out[4:] == [0.0] * 4  # +3 is under min_jump; +5 is the old record


def test_a_value_far_beyond_the_probation_range_shares_the_edge_bin():
    det = JumpNovelty(JumpNoveltyConfig(bins=10, min_jump=4, span=1), probation=4)
    _scores(det, [0.0, 10.0, 0.0, 10.0])
    # bins cover one probation range below and above it: 1e6 lands in the top bin (index 30),
    # a jump of +20 bins from 0's (index 10), 10 over the record +10
    assert det.score(0.0, 1e6) == pytest.approx(1.0 - math.exp(-10 / 4))
    assert det.score(0.0, 1e9) == 0.0  # the same (edge) bin: no jump at all


finite = st.floats(-1e6, 1e6, allow_nan=False)
values = st.lists(st.one_of(finite, finite, finite, st.sampled_from([math.nan, math.inf])),
                  max_size=120)
configs = st.builds(JumpNoveltyConfig, bins=st.integers(1, 12), min_jump=st.integers(1, 6),
                    tolerance=st.sampled_from([0.5, 1.0, 2.0]), min_count=st.integers(0, 3),
                    span=st.integers(0, 3))


@settings(max_examples=80, deadline=None)
@given(xs=values, config=configs, probation=st.integers(1, 40))
def test_scores_are_zero_in_probation_in_range_and_state_stays_bounded(xs, config, probation):
    det = JumpNovelty(config, probation=probation)
    bound = 3 * ((2 * config.span + 1) * config.bins + 1) + probation + 4
    for i, x in enumerate(xs):
        s = det.score(60.0 * i, x)
        assert 0.0 <= s <= 1.0
        if i < probation or not math.isfinite(x):
            assert s == 0.0
        assert det.state_size() <= bound


@settings(max_examples=80, deadline=None)
@given(past=values, future=values, other=values, config=configs, probation=st.integers(1, 40))
def test_a_score_reads_only_the_past(past, future, other, config, probation):
    a = _scores(JumpNovelty(config, probation=probation), past + future)
    b = _scores(JumpNovelty(config, probation=probation), past + other)
    assert a[:len(past)] == b[:len(past)]


@settings(max_examples=60, deadline=None)
@given(xs=st.lists(finite, min_size=1, max_size=80), where=st.lists(st.integers(0, 80)),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]), config=configs,
       probation=st.integers(1, 20))
def test_a_non_finite_value_after_probation_is_neither_scored_nor_learned(
        xs, where, bad, config, probation):
    head, tail = xs[:probation], xs[probation:]
    mixed, kept = list(head), []
    for i, x in enumerate(tail):
        if i in where:
            mixed.append(bad)
        mixed.append(x)
        kept.append(len(mixed) - 1)
    clean = _scores(JumpNovelty(config, probation=probation), xs)
    dirty = _scores(JumpNovelty(config, probation=probation), mixed)
    assert [dirty[i] for i in kept] == clean[len(head):]
    assert all(dirty[i] == 0.0 for i in range(len(mixed)) if not math.isfinite(mixed[i]))


def test_a_probation_without_one_finite_value_waits_for_one():
    det = JumpNovelty(JumpNoveltyConfig(bins=10, min_jump=1), probation=3)
    # bins fixed at the first 7.0, width from the relative floor (0.1 % of 7): 70 lands in the
    # top bin, 40 bins above 7's (span 3 x 10 bins above the probation range)
    assert _scores(det, [math.nan] * 5 + [7.0, 7.0, 70.0]) == [0.0] * 7 + [1.0 - math.exp(-40)]


def test_bad_settings_are_refused_with_a_tip():
    with pytest.raises(AnomalyError) as err:
        JumpNovelty(JumpNoveltyConfig(bins=0, tolerance=0.0))
    assert "bins" in str(err.value) and "tolerance" in str(err.value)
    assert err.value.tip
    with pytest.raises(AnomalyError, match="unknown setting"):
        make_detector(DetectorSpec("jump", 0.7, (("resolution", 3),)))
    assert isinstance(make_detector(DetectorSpec("jump", 0.7)), JumpNovelty)


JUMP = DetectorSpec("jump", 0.73, (("bins", 10), ("min_jump", 4), ("tolerance", 1.0),
                                   ("min_count", 2)), rest=400, rest_at=0.6)


@pytest.mark.slow
def test_beside_the_default_it_finds_two_more_aws_windows_but_not_htms_nab(nab_dir):
    """The README's numbers for the jump channel (not adopted): max(default, jump rested)."""
    files = load_nab(nab_dir)
    default = selected_detector()
    both = replace(default, members=(*default.members, JUMP), label="")
    curves = {f.name: FileCurve(f, score_file(both, f, {})) for f in files}
    loco, lofo = _evaluate(curves, choose_threshold)
    aws = next(g for g in loco if g.group == "realAWSCloudwatch")
    assert (aws.test.detected, aws.test.windows, aws.test.fp_rows) == (25, 30, 21)
    assert aws.test.nab == pytest.approx(72.8, abs=0.05)  # HTM, published: 73.4
    assert aws.test.f1 == pytest.approx(0.658, abs=5e-4)
    assert _objective(loco + lofo[:-1]) == pytest.approx(1.386, abs=5e-4)  # default: 1.341
    no_anomaly = next(g for g in loco if g.group == "artificialNoAnomaly")
    assert no_anomaly.test.fp_rows == 0
    alone = np.concatenate([score_file(JUMP, f, {}) for f in files])
    assert 0.0 < alone.max() < 1.0
