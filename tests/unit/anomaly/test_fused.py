"""The fused default: the same scores as the ensemble of its members, bit for bit, at half the cost."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from trainguard.anomaly import DetectorSpec, Ensemble, FusedStreamMax, make_detector
from trainguard.anomaly.config import selected_detector
from trainguard.anomaly.nab import load_nab, probationary_length


def _unfused(spec: DetectorSpec, probation: int) -> Ensemble:
    """The composition make_detector built before fusing: one detector per member."""
    return Ensemble([make_detector(m, probation) for m in spec.members], spec.combine)


def _same(a: list[float], b: list[float]) -> bool:
    """Equal bit for bit (NaN equal to NaN, 0.0 not equal to -0.0)."""
    return np.array(a).tobytes() == np.array(b).tobytes()


def _run(det, ts, xs) -> list[float]:
    return [det.score(t, x) for t, x in zip(ts, xs, strict=True)]


def test_make_detector_fuses_the_selected_default_and_nothing_else():
    spec = selected_detector()
    assert isinstance(make_detector(spec), FusedStreamMax)
    # other ensembles keep the generic path
    assert isinstance(make_detector(replace(spec, combine="mean")), Ensemble)
    assert isinstance(make_detector(replace(spec, members=spec.members[:2])), Ensemble)
    assert isinstance(make_detector(replace(spec, members=spec.members[:3])), FusedStreamMax)
    two_jumps = replace(spec, members=(*spec.members, spec.members[3]))
    assert isinstance(make_detector(two_jumps), Ensemble)
    unlike = replace(spec.members[2], params=(("clip", 4.0),))
    assert isinstance(make_detector(replace(spec, members=(*spec.members[:2], unlike))), Ensemble)
    calibrated = replace(spec.members[0], calibrate=0.9)
    assert isinstance(make_detector(replace(spec, members=(calibrated, *spec.members[1:]))),
                      Ensemble)


def test_every_score_on_every_nab_file_equals_the_ensemble(nab_dir):
    spec = selected_detector()
    parted = 0
    for f in load_nab(nab_dir):
        ts = [t.replace(tzinfo=UTC).timestamp() for t in f.timestamps]
        for probation in (750, probationary_length(len(f.values))):
            fused = make_detector(spec, probation)
            ours = _run(fused, ts, list(f.values))
            theirs = _run(_unfused(spec, probation), ts, list(f.values))
            assert _same(ours, theirs), f.name
            assert [s >= spec.threshold for s in ours] == [s >= spec.threshold for s in theirs]
        parted += not fused.fused
    assert parted >= 1  # some files shift one channel's level only: the parted path is checked


def _shifts(draw) -> list[float]:
    """A series with seasonality, noise, level shifts (some inside the range: they part the
    channels), spikes, flat stretches, NaN and infinities."""
    n = draw(st.integers(1, 1500))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.0, 1e-9, 0.01, 1.0, 1e3, 1e12]))
    xs = 10 * np.sin(np.arange(n) / draw(st.floats(1.0, 300.0))) + rng.normal(0, 1, n)
    # a wide swing first: later shifts may then fall under one channel's range floor only
    swing = draw(st.sampled_from([0.0, 300.0, 3000.0]))
    xs[:10] += swing * (np.arange(min(n, 10)) % 2)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, n - 1))
        xs[at:] += draw(st.floats(-40.0, 40.0))
    xs *= scale
    out = [float(v) for v in xs]
    odd = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300])
    for _ in range(draw(st.integers(0, 5))):
        out[draw(st.integers(0, n - 1))] = draw(odd)
    return out


def _spec(draw, floor: float, jump: bool) -> DetectorSpec:
    """The default's shape (two stream channels apart in range_floor only, spatial, perhaps the
    jump channel) with drawn settings, rests and member order."""
    shared = draw(st.sampled_from([
        (), (("weekly_buckets", 0),), (("drift_weight", 0.0),), (("z_gate", 0.0),),
        (("log_z", True),), (("tail_decay", 0.0),), (("shift_run", 2), ("shift_z", 1.5)),
        (("tail_start", 2), ("refractory", 3)),
    ]))
    shared += (("warmup", draw(st.sampled_from([5, 60, 300]))),)
    members = [
        DetectorSpec("stream", 0.73, (*shared, ("range_floor", floor)),
                     rest=draw(st.sampled_from([0, 1, 50])), rest_at=0.7),
        DetectorSpec("spatial", 0.73, (("tolerance", draw(st.sampled_from([0.01, 0.05]))),),
                     rest=draw(st.sampled_from([0, 3]))),
        DetectorSpec("stream", 0.73, shared, rest=draw(st.sampled_from([0, 10, 400])),
                     rest_at=draw(st.sampled_from([0.3, 0.6, 1.0]))),
    ]
    if jump:  # the default's jump channel, inline in the fused detector
        members.append(DetectorSpec(
            "jump", 0.73, (("bins", draw(st.sampled_from([1, 10]))),
                           ("min_jump", draw(st.sampled_from([1, 4]))), ("min_count", 2),
                           ("hold", draw(st.sampled_from([0, 1, 2]))),
                           ("quiet", draw(st.sampled_from([0, 5, 400]))), ("quiet_at", 0.6)),
            rest=draw(st.sampled_from([0, 5, 400])), rest_at=draw(st.sampled_from([0.3, 0.6]))))
    return DetectorSpec("ensemble", 0.73, members=tuple(draw(st.permutations(members))),
                        combine="max")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_fused_detector_equals_the_ensemble_on_any_series_and_settings(data):
    draw = data.draw
    xs = _shifts(draw)
    step = draw(st.sampled_from([1.0, 60.0, 300.0, 3600.0, 7 * 86400.0 + 17.0]))
    ts = [1.4e9 + step * i for i in range(len(xs))]
    spec = _spec(draw, draw(st.sampled_from([0.0, 0.001, 0.01, 0.2])), draw(st.booleans()))
    probation = draw(st.sampled_from([1, 20, 300]))
    fused = make_detector(spec, probation)
    assert isinstance(fused, FusedStreamMax)
    assert _same(_run(fused, ts, xs), _run(_unfused(spec, probation), ts, xs))
    event(f"parted: {not fused.fused}")


# a wide swing, then a step under 1 % of it: a shift for the unfloored channel only (the bench's
# parting prefix); on its own the test above parts the channels in under a tenth of its cases
_PARTING = [100.0 * (i % 2) for i in range(10)] + [0.0] * 400 + [0.5] * 40


@pytest.mark.parametrize("jump", [False, True], ids=["no jump", "jump"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_after_the_channels_part_every_score_still_equals_the_ensemble(data, jump):
    draw = data.draw
    xs = _PARTING + _shifts(draw)
    step = draw(st.sampled_from([1.0, 60.0, 300.0, 3600.0, 7 * 86400.0 + 17.0]))
    ts = [1.4e9 + 60.0 * i for i in range(len(_PARTING))]  # a minute apart, as in the bench
    ts += [ts[-1] + step * i for i in range(1, len(xs) - len(ts) + 1)]
    spec = _spec(draw, draw(st.sampled_from([0.01, 0.2])), jump)
    probation = draw(st.sampled_from([1, 20, 300]))
    fused = make_detector(spec, probation)
    ours = _run(fused, ts[:len(_PARTING)], xs[:len(_PARTING)])
    assert not fused.fused
    ours += _run(fused, ts[len(_PARTING):], xs[len(_PARTING):])
    assert _same(ours, _run(_unfused(spec, probation), ts, xs))


def test_a_shift_inside_the_range_parts_the_channels_and_scores_stay_equal():
    # the series has spanned 0..100; a step of 0.5 is below 1 % of that range for the floored
    # channel (no level shift there) but a clear shift for the unfloored one
    xs = [100.0 * (i % 2) for i in range(10)] + [0.0] * 400 + [0.5] * 200
    ts = [60.0 * i for i in range(len(xs))]
    spec = selected_detector()
    fused = make_detector(spec, 100)
    ours = _run(fused, ts, xs)
    assert not fused.fused
    assert _same(ours, _run(_unfused(spec, 100), ts, xs))


def test_channels_with_other_settings_are_refused():
    from trainguard.anomaly.config import StreamConfig
    from trainguard.anomaly.interface import AnomalyError
    from trainguard.anomaly.spatial import SpatialRangeConfig

    with pytest.raises(AnomalyError) as err:
        FusedStreamMax((StreamConfig(), 0, 0.7), (StreamConfig(clip=4.0), 0, 0.7),
                       (SpatialRangeConfig(), 0, 0.7))
    assert "range_floor" in str(err.value) and err.value.tip


def test_update_still_returns_a_stream_score_equal_to_score():
    from trainguard.anomaly import StreamDetector, StreamScore

    a, b = StreamDetector(), StreamDetector()
    for i in range(400):
        x = float(i % 7) + (50.0 if i == 350 else 0.0)
        got = a.update(60.0 * i, x)
        assert isinstance(got, StreamScore) and got._fields == ("score", "alert", "z", "expected")
        assert got.score == b.score(60.0 * i, x)
    assert got.z < 3.0 and a.update(400 * 60.0, 500.0).alert is True
