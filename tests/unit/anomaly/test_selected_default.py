"""The frozen default: what its recall and jump channels add, and that it stays a bounded
streaming detector."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.anomaly import DetectorSpec, make_bank, make_detector
from trainguard.anomaly.config import selected_detector
from trainguard.anomaly.nab import load_nab, probationary_length


def _scores(spec: DetectorSpec, ts: list[float], xs: list[float], probation: int) -> np.ndarray:
    det = make_detector(spec, probation)
    return np.array([det.score(t, x) for t, x in zip(ts, xs, strict=True)])


def test_the_recall_channel_finds_a_jump_the_floored_pair_misses_at_one_more_false_alert(nab_dir):
    # ec2_cpu_utilization_77c1ca: flat near 0.1, then a jump to ~90 across the range it has
    # crossed before; the range floor makes that jump ordinary, the unfloored stream does not
    spec = selected_detector()
    pair = replace(spec, members=spec.members[:2], label="")
    (f,) = [f for f in load_nab(nab_dir) if f.name.endswith("ec2_cpu_utilization_77c1ca.csv")]
    ts = [t.replace(tzinfo=UTC).timestamp() for t in f.timestamps]
    probation = probationary_length(len(f.values))
    ((lo, hi),) = f.windows
    outside = np.ones(len(f.values), dtype=bool)
    outside[lo:hi + 1] = False
    outside[:probation] = False
    found = {}
    for name, s in (("default", spec), ("pair", pair)):
        alerts = _scores(s, ts, list(f.values), probation) >= spec.threshold
        found[name] = (bool(alerts[lo:hi + 1].any()), int(alerts[outside].sum()))
    assert found["pair"] == (False, 1)
    assert found["default"] == (True, 2)


def _found(spec: DetectorSpec, f, threshold: float) -> tuple[list[bool], int]:
    """Which windows of `f` alert at `threshold`, and the alerts outside them after probation."""
    ts = [t.replace(tzinfo=UTC).timestamp() for t in f.timestamps]
    probation = probationary_length(len(f.values))
    alerts = _scores(spec, ts, list(f.values), probation) >= threshold
    outside = np.ones(len(alerts), dtype=bool)
    outside[:probation] = False
    for lo, hi in f.windows:
        outside[lo:hi + 1] = False
    return [bool(alerts[lo:hi + 1].any()) for lo, hi in f.windows], int(alerts[outside].sum())


def test_the_jump_channel_finds_two_aws_windows_the_triple_misses(nab_dir):
    # fe7f93's first window (a dip to a known low, then a rise no dip there was followed by)
    # and cc0c53's second (a two-sample spike on a level whose changes were all small): the
    # stream's z calls both ordinary; with its hold the jump channel costs no alert outside
    spec = selected_detector()
    assert spec.members[3].name == "jump"
    triple = replace(spec, members=spec.members[:3], label="")
    files = {f.name.split("/")[-1]: f for f in load_nab(nab_dir)}
    fe, cc = files["ec2_cpu_utilization_fe7f93.csv"], files["rds_cpu_utilization_cc0c53.csv"]
    assert _found(triple, fe, spec.threshold) == ([False, True, False], 0)
    assert _found(spec, fe, spec.threshold) == ([True, True, False], 0)
    assert _found(triple, cc, spec.threshold) == ([True, False], 2)
    assert _found(spec, cc, spec.threshold) == ([True, True], 2)


def test_the_hold_drops_the_jump_channels_spikes_and_keeps_every_window(nab_dir):
    # the jump channel without its hold (resting 400 samples after 0.6, the default before)
    # alerted outside the windows on five spikes that fell back within two samples: a burst
    # reaching a new height on fe7f93 (row 1268), 1ef3de (3038, 3728) and 5abac7 (1802, 4112)
    spec = selected_detector()
    jump = spec.members[3]
    assert dict(jump.params)["hold"] == 2
    unheld = DetectorSpec("jump", jump.threshold, tuple(
        (k, v) for k, v in jump.params if k not in ("hold", "quiet", "quiet_at")),
        rest=400, rest_at=0.6)
    before = replace(spec, members=(*spec.members[:3], unheld), label="")
    aws = [f for f in load_nab(nab_dir) if f.category == "realAWSCloudwatch"]
    changed = {}
    for f in aws:
        a, b = _found(before, f, spec.threshold), _found(spec, f, spec.threshold)
        if a != b:
            changed[f.name.split("/")[-1]] = (a, b)
    assert changed == {
        "ec2_cpu_utilization_fe7f93.csv": (([True, True, False], 1), ([True, True, False], 0)),
        "ec2_disk_write_bytes_1ef3de.csv": (([True], 4), ([True], 2)),
        "ec2_network_in_5abac7.csv": (([True, True], 3), ([True, True], 1)),
    }


finite = st.floats(-1e6, 1e6, allow_nan=False)
values = st.one_of(finite, st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=40, deadline=None)
@given(head=st.lists(finite, min_size=1, max_size=30), tail=st.lists(values, max_size=400),
       flat=st.floats(-1e3, 1e3), n_flat=st.integers(0, 400))
def test_scores_stay_in_range_and_state_stays_bounded_on_any_input(head, tail, flat, n_flat):
    xs = head + [flat] * n_flat + tail  # constant stretches, NaN and infinities included
    det = make_detector(selected_detector(), 100)
    # the jump channel keeps its probation values (<= 100) until it fixes its bins, then three
    # records per bin (71 bins: 10 across the probation range, 3 ranges either side, 1 edge)
    bound = det.state_size() + 100 + 3 * 71
    for i, x in enumerate(xs):
        s = det.score(60.0 * i, x)
        assert 0.0 <= s <= 1.0
        if x != x or x in (float("inf"), float("-inf")):
            assert s == 0.0  # not scored
        assert det.state_size() <= bound


@settings(max_examples=20, deadline=None)
@given(data=st.data(), m=st.integers(1, 4), n=st.integers(310, 700))
def test_the_frozen_default_in_a_bank_scores_each_series_as_alone(data, m, n):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.normal(0, 1, (n, m)).cumsum(axis=0) * data.draw(st.sampled_from([0.0, 0.01, 5.0]))
    spikes = data.draw(st.lists(st.integers(300, n - 1), max_size=4))
    x[spikes] += 50.0
    spec = selected_detector()
    bank = make_bank(spec, m, 100)
    ours = np.array([bank.score(60.0 * i, row) for i, row in enumerate(x)])
    for j in range(m):
        theirs = _scores(spec, [60.0 * i for i in range(n)], x[:, j].tolist(), 100)
        np.testing.assert_allclose(ours[:, j], theirs, atol=1e-9)
