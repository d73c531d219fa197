"""The univariate detectors behind `UnivariateDetector`: reference behaviour and stream rules."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainguard.anomaly import (
    AnomalyError,
    CadOse,
    CadOseConfig,
    DetectorSpec,
    Ensemble,
    KnnCad,
    RelativeEntropy,
    RelativeEntropyConfig,
    StreamDetector,
    UnivariateDetector,
    make_bank,
    make_detector,
)
from trainguard.anomaly.detectors import DETECTOR_NAMES, ProbationCalibrated
from trainguard.anomaly.nab import probationary_length

PROBATION = 60  # short, so the generated series reach the post-calibration code

SPECS = [
    DetectorSpec("stream", 0.72),
    DetectorSpec("cad_ose", 0.77),
    DetectorSpec("relative_entropy", 0.5, (("window", 20),)),
    DetectorSpec("knncad", 0.99, (("dim", 5), ("k", 7))),
    DetectorSpec("ensemble", 0.7, members=(DetectorSpec("stream", 0.72),
                                           DetectorSpec("cad_ose", 0.77)), combine="max"),
    DetectorSpec("stream", 0.72, calibrate=0.99),
    DetectorSpec("spatial", 0.7, (("tolerance", 0.1),)),
    DetectorSpec("ensemble", 0.7, members=(DetectorSpec("stream", 0.72),
                                           DetectorSpec("spatial", 0.7)), combine="max"),
]
IDS = [s.key for s in SPECS]

series = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=PROBATION + 5,
    max_size=PROBATION + 90,
)


def _run(spec: DetectorSpec, values: list[float]) -> list[float]:
    det = make_detector(spec, PROBATION)
    return [det.score(60.0 * i, v) for i, v in enumerate(values)]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(values=series, cut=st.integers(min_value=1, max_value=200))
def test_a_score_never_depends_on_later_samples(spec, values, cut):
    cut = min(cut, len(values))
    assert _run(spec, values[:cut]) == _run(spec, values)[:cut]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(values=series)
def test_scores_are_in_unit_range_and_repeat_exactly(spec, values):
    first = _run(spec, values)
    assert all(0.0 <= s <= 1.0 for s in first)
    assert _run(spec, values) == first


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_detector_satisfies_the_interface_and_is_quiet_in_probation(spec):
    det = make_detector(spec, PROBATION)
    assert isinstance(det, UnivariateDetector)
    rng = np.random.default_rng(3)
    early = [det.score(60.0 * i, float(v)) for i, v in enumerate(rng.normal(0, 1, PROBATION - 1))]
    if "stream" not in spec.key or spec.calibrate:  # the stream has its own warm-up instead
        assert early == [0.0] * (PROBATION - 1)


def test_stream_detector_is_a_univariate_detector_with_constant_state():
    det = StreamDetector()
    assert isinstance(det, UnivariateDetector)
    size = det.state_size()
    for i in range(2000):
        det.score(60.0 * i, math.sin(i / 10))
    assert det.state_size() == size


def test_cad_ose_memory_stops_growing_at_its_bound():
    det = CadOse(CadOseConfig(max_contexts=200), probation=50)
    rng = np.random.default_rng(0)
    sizes = []
    for i, v in enumerate(rng.uniform(0, 1, 3000)):
        det.score(i, float(v))
        sizes.append(det.state_size())
    assert len(det._mem.contexts) == 200  # random input would otherwise add contexts forever
    assert sizes[-1] == sizes[-500]


def test_relative_entropy_keeps_at_most_its_hypotheses():
    det = RelativeEntropy(RelativeEntropyConfig(window=10, max_hypotheses=8), probation=20)
    rng = np.random.default_rng(1)
    for i, v in enumerate(rng.uniform(0, 1, 5000) ** rng.uniform(0.1, 5, 5000)):
        det.score(i, float(v))
    assert len(det._hyp) == 8


def test_cad_ose_learns_a_pattern_then_flags_its_break():
    det = CadOse(probation=200)
    pattern = [0, 2, 4, 6, 7, 5, 3, 1]
    scores = [det.score(i, float(pattern[i % 8])) for i in range(1200)]
    assert max(scores[600:]) == 0.0  # a learned pattern is fully predicted
    broken = [det.score(1200 + i, float(v)) for i, v in enumerate([7, 0, 7, 0, 7, 0])]
    assert max(broken) >= 0.5


def test_knncad_flags_a_spike_once_then_rests():
    det = KnnCad(probation=300)
    rng = np.random.default_rng(2)
    values = list(np.sin(np.arange(900) / 8) + rng.normal(0, 0.05, 900))
    values[700] = 6.0
    scores = [det.score(i, float(v)) for i, v in enumerate(values)]
    assert scores[700] >= 0.99
    assert set(scores[701:760]) == {0.5}  # the quiet period after an alert


def test_ensemble_combines_member_scores():
    class Fixed:
        def __init__(self, s: float) -> None:
            self.s = s

        def score(self, t: float, x: float) -> float:
            return self.s

        def state_size(self) -> int:
            return 1

    assert Ensemble([Fixed(0.2), Fixed(0.8)], "max").score(0, 0) == 0.8
    assert Ensemble([Fixed(0.2), Fixed(0.8)], "mean").score(0, 0) == pytest.approx(0.5)
    with pytest.raises(AnomalyError):
        Ensemble([])


def test_probation_calibration_asks_more_of_a_series_that_was_already_spiky():
    class Replay:
        def __init__(self, scores: list[float]) -> None:
            self.it = iter(scores)

        def score(self, t: float, x: float) -> float:
            return next(self.it)

        def state_size(self) -> int:
            return 0

    quiet = ProbationCalibrated(Replay([0.1] * 10 + [0.8]), 10, 1.0)
    spiky = ProbationCalibrated(Replay([0.1] * 9 + [0.7] + [0.8]), 10, 1.0)
    last_quiet = [quiet.score(i, 0) for i in range(11)][-1]
    last_spiky = [spiky.score(i, 0) for i in range(11)][-1]
    assert last_quiet == pytest.approx((0.8 - 0.1) / 0.9)
    assert last_spiky == pytest.approx((0.8 - 0.7) / 0.3) and last_spiky < last_quiet


@pytest.mark.parametrize("spec", [
    DetectorSpec("nope", 0.5), DetectorSpec("stream", 0.5, (("no_such_setting", 1),)),
    DetectorSpec("stream", 1.5), DetectorSpec("ensemble", 0.5),
])
def test_bad_specs_are_refused_with_the_reason(spec):
    with pytest.raises(AnomalyError) as err:
        make_detector(spec)
    assert err.value.exit_code == 2 and err.value.message


def _published(nab_dir: Path, detector: str, rel: str) -> tuple[list[float], list[float]]:
    cat, name = rel.split("/")
    with (nab_dir / "results" / detector / cat / f"{detector}_{name}").open() as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["value"]) for r in rows], [float(r["anomaly_score"]) for r in rows]


@pytest.mark.parametrize("rel", ["realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv",
                                 "artificialWithAnomaly/art_daily_jumpsup.csv"])
def test_knncad_reproduces_nabs_published_scores_row_for_row(nab_dir, rel):
    values, published = _published(nab_dir, "knncad", rel)
    det = KnnCad(probation=probationary_length(len(values)))
    ours = [det.score(i, v) for i, v in enumerate(values)]
    assert ours == pytest.approx(published, abs=1e-9)


@pytest.mark.parametrize("rel", ["realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv",
                                 "artificialWithAnomaly/art_daily_jumpsup.csv"])
def test_relative_entropy_reproduces_nabs_published_scores_given_its_range(nab_dir, rel):
    values, published = _published(nab_dir, "relativeEntropy", rel)
    # NAB hands the detector the whole file's range; with it, every row matches
    det = RelativeEntropy(probation=probationary_length(len(values)),
                          value_range=(min(values), max(values)))
    assert [det.score(i, v) for i, v in enumerate(values)] == published
    # the causal default learns its range from the probation rows only, and differs
    causal = RelativeEntropy(probation=probationary_length(len(values)))
    assert [causal.score(i, v) for i, v in enumerate(values)] != published


@pytest.mark.slow
def test_cad_ose_given_nabs_range_reproduces_its_published_nab_result(nab_dir):
    """With the whole-file range NAB hands it, our CAD-OSE scores realAWSCloudwatch as the
    published contextOSE does (NAB 71.5, 25 of 30 windows at threshold 0.7655): the algorithm
    is the reference's; the causal default differs only in where the range comes from."""
    from trainguard.anomaly import load_nab, load_references
    from trainguard.anomaly.folds import FileCurve, totals

    files = [f for f in load_nab(nab_dir) if f.category == "realAWSCloudwatch"]
    threshold, published = load_references(nab_dir, files, ["contextOSE"])["contextOSE"]
    ours, theirs = [], []
    for f in files:
        det = CadOse(probation=probationary_length(len(f.values)),
                     value_range=(min(f.values), max(f.values)))
        ours.append(FileCurve(f, [det.score(0.0, v) for v in f.values]))
        theirs.append(FileCurve(f, published[f.name]))
    a, b = (totals(c, np.array([threshold]))[0] for c in (ours, theirs))
    assert a.nab == pytest.approx(b.nab, abs=1.0)
    assert abs(a.detected - b.detected) <= 1 and abs(a.fp_rows - b.fp_rows) <= 3


def _reference_statistic(p: list[float], q: tuple[float, ...], window: int) -> float:
    kl = 0.0
    for pk, qk in zip(p, q, strict=True):
        if pk > 0.0:
            if qk == 0.0:
                kl = math.inf
                break
            kl += pk * math.log(pk / qk)
    return 2.0 * window * kl


class _ReferenceRelativeEntropy:
    """`RelativeEntropy` as it was before its memo and tabulated KL terms (18-19 us a sample),
    frozen here: the fast detector must give its scores, bit for bit, on every input."""

    def __init__(self, c: RelativeEntropyConfig, probation: int,
                 value_range: tuple[float, float] | None = None) -> None:
        from collections import deque

        self.cfg = c
        self.probation = max(int(probation), 1)
        self._buffer: list[float] | None = []
        self._n = 0
        self._levels: deque[int] = deque(maxlen=c.window)
        self._counts = [0] * c.bins
        self._hyp: list[tuple[float, ...]] = []
        self._seen: list[int] = []
        self._lo, self._step = 0.0, 0.0
        if value_range is not None:
            self._set_range(*value_range)
            self._buffer = None

    def score(self, t: float, x: float) -> float:
        # the non-finite policy every detector has (skipped, counted towards probation), on
        # the frozen algorithm (which raised on them)
        finite = math.isfinite(x)
        if self._buffer is not None:
            self._n += 1
            if finite:
                self._buffer.append(x)
            if self._n >= self.probation and self._buffer:
                values, self._buffer = self._buffer, None
                self._set_range(min(values), max(values))
                for v in values:
                    self._step_value(v)
            return 0.0
        return self._step_value(x) if finite else 0.0

    def _set_range(self, lo: float, hi: float) -> None:
        self._lo, self._step = lo, (hi - lo) / self.cfg.bins

    def _step_value(self, x: float) -> float:
        if self._step == 0.0:
            return 0.0
        c = self.cfg
        top = c.bins - 1
        q = (x - self._lo) / self._step  # beyond float range: an end bin, not an error
        level = 0 if not q > 0.0 else top if q > top else math.ceil(q)
        levels, counts = self._levels, self._counts
        if len(levels) == c.window:
            counts[levels[0]] -= 1
        levels.append(level)
        counts[level] += 1
        if len(levels) < c.window:
            return 0.0
        p = [k / c.window for k in counts]
        if not self._hyp:
            self._hyp.append(tuple(p))
            self._seen.append(1)
            return 0.0
        best, index = math.inf, -1
        for i, q in enumerate(self._hyp):
            stat = _reference_statistic(p, q, c.window)
            if stat < c.threshold and stat < best:
                best, index = stat, i
        if index >= 0:
            self._seen[index] += 1
            return 1.0 if self._seen[index] <= c.min_count else 0.0
        if len(self._hyp) < c.max_hypotheses:
            self._hyp.append(tuple(p))
            self._seen.append(1)
        return 1.0


def _outcomes(det, xs) -> list[float | str]:
    """Each sample's score, or the error it raised (none should: a NaN or infinity is skipped,
    a value beyond float range lands in an end bin)."""
    out: list[float | str] = []
    for i, x in enumerate(xs):
        try:
            out.append(det.score(60.0 * i, x))
        except (ValueError, OverflowError, ZeroDivisionError) as exc:
            out.append(type(exc).__name__)
    return out


def _assert_same_as_reference(cfg, probation, xs, value_range=None):
    ref = _ReferenceRelativeEntropy(cfg, probation, value_range)
    det = RelativeEntropy(cfg, probation=probation, value_range=value_range)
    ours = _outcomes(det, xs)
    assert ours == _outcomes(ref, xs)
    assert all(isinstance(o, float) for o in ours)  # no input makes it raise
    # the same hypotheses (stored as counts, the reference's as fractions), seen as often
    assert [tuple(k / cfg.window for k in h) for h in det._hyp] == ref._hyp
    assert det._seen == ref._seen


_finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
_segments = st.one_of(
    st.lists(_finite, min_size=1, max_size=40),  # noise
    st.tuples(_finite, st.integers(1, 80)).map(lambda s: [s[0]] * s[1]),  # a constant stretch
    # a level shift among few values: histograms repeat, hypotheses are accepted again
    st.tuples(st.sampled_from([0.0, 3.0, 10.0]), st.lists(
        st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=60)).map(
        lambda s: [s[0] + v for v in s[1]]),
    st.sampled_from([[math.nan], [math.inf], [-math.inf], [1e300], [-1e300]]),
)
_re_configs = st.builds(
    RelativeEntropyConfig, bins=st.integers(1, 7),
    window=st.one_of(st.integers(1, 3), st.integers(4, 24)),  # tiny windows: few histograms
    threshold=st.sampled_from([13.276704135987625, 0.0, 0.5, 4.0, 40.0, math.inf]),
    min_count=st.integers(0, 3), max_hypotheses=st.integers(1, 12))


@settings(max_examples=300, deadline=None)
@given(cfg=_re_configs, probation=st.integers(1, 60),
       segments=st.lists(_segments, min_size=1, max_size=14),
       ranged=st.sampled_from([None, (0.0, 10.0), (-1e3, 1e3)]))
def test_relative_entropy_scores_as_the_reference_implementation_on_any_input(
        cfg, probation, segments, ranged):
    _assert_same_as_reference(cfg, probation, [x for s in segments for x in s], ranged)


def _histogram(bins: int, window: int):
    """Counts in ``bins`` bins summing to ``window`` (many empty bins, as real windows have)."""
    cuts = st.lists(st.integers(0, window), min_size=bins - 1, max_size=bins - 1).map(sorted)
    return cuts.map(lambda c: tuple(b - a for a, b in zip([0, *c], [*c, window], strict=True)))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), bins=st.integers(1, 7), window=st.integers(1, 60))
def test_relative_entropy_statistic_is_the_references_bit_for_bit(data, bins, window):
    # the tabulated terms summed in bin order give the reference's 2 * window * KL exactly
    # (a last-bit difference would flip a test right at the threshold, rarely but surely)
    from trainguard.anomaly.relative_entropy import _kl_rows, _rows_for, _stats, _stats5

    counts = data.draw(_histogram(bins, window))
    hyps = data.draw(st.lists(_histogram(bins, window), min_size=1, max_size=8))
    p = [k / window for k in counts]
    expected = [_reference_statistic(p, tuple(k / window for k in h), window) for h in hyps]
    rows = _rows_for(_kl_rows(window), list(counts))
    assert _stats(rows, hyps, 2.0 * window) == expected
    if bins == 5:
        assert _stats5(rows, hyps, 2.0 * window) == expected


def test_relative_entropy_scores_as_the_reference_past_its_memo_of_histograms():
    # white noise in 7 bins: tens of thousands of distinct histograms, so the memo of test
    # results fills and starts over several times
    from trainguard.anomaly.relative_entropy import _MEMO_SIZE

    rng = np.random.default_rng(5)
    xs = [float(v) for v in rng.normal(0, 1, 12_000)]
    cfg = RelativeEntropyConfig(bins=7, window=30, threshold=8.0)
    ref = _ReferenceRelativeEntropy(cfg, 200)
    distinct = set()
    for i, x in enumerate(xs):
        ref.score(i, x)
        distinct.add(tuple(ref._counts))
    assert len(distinct) > 3 * _MEMO_SIZE
    _assert_same_as_reference(cfg, 200, xs)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [RelativeEntropyConfig(), RelativeEntropyConfig(max_hypotheses=6)],
                         ids=["nab", "6-hypotheses"])
def test_relative_entropy_scores_as_the_reference_on_every_nab_file(nab_dir, cfg):
    from trainguard.anomaly import load_nab

    files = load_nab(nab_dir)
    assert len(files) == 28
    for f in files:
        values = list(f.values)
        probation = probationary_length(len(values))
        _assert_same_as_reference(cfg, probation, values)
        _assert_same_as_reference(cfg, probation, values, (min(values), max(values)))


def test_relative_entropy_skips_a_non_finite_value_and_its_bank_refuses_the_step():
    rng = np.random.default_rng(2)
    xs = [float(v) for v in rng.normal(0, 1, 400)]
    det, plain = RelativeEntropy(probation=100), RelativeEntropy(probation=100)
    clean = [plain.score(60.0 * i, x) for i, x in enumerate(xs)]
    dirty = []
    for i, x in enumerate(xs):
        if i == 250:
            assert det.score(0.0, math.nan) == 0.0 and det.score(0.0, math.inf) == 0.0
        dirty.append(det.score(60.0 * i, x))
    assert dirty == clean  # after probation: neither scored nor learned
    bank = make_bank(DetectorSpec("relative_entropy", 0.5), 2, 100)
    with pytest.raises(AnomalyError, match="series 1") as err:
        bank.score(0.0, [1.0, math.nan])
    assert err.value.tip


@pytest.mark.parametrize("name", [n for n in DETECTOR_NAMES if n != "ensemble"])
def test_every_detector_skips_nan_and_infinities_after_probation(name):
    # a gap in a series is not news and must not poison what comes after: the bad samples
    # score 0, and every other sample scores as if they were not there
    rng = np.random.default_rng(4)
    xs = [float(v) for v in 10 + np.sin(np.arange(600) / 9) + rng.normal(0, 0.3, 600)]
    xs[500:530] = [x + 8.0 for x in xs[500:530]]  # something to score (after the warm-up)
    spec = DetectorSpec(name, 0.7)
    plain = make_detector(spec, 100)
    clean = [plain.score(60.0 * i, x) for i, x in enumerate(xs)]
    det, kept = make_detector(spec, 100), []
    for i, x in enumerate(xs):
        if i in (350, 499, 501):
            for bad in (math.nan, math.inf, -math.inf):
                assert det.score(60.0 * i, bad) == 0.0
        kept.append(det.score(60.0 * i, x))
    assert kept == clean
    # the shift is not rare against a sine that spends a quarter of its time near the top,
    # so the dwell channel stays quiet here (test_transition.py covers its NaN handling)
    assert max(clean) > 0.0 or name == "dwell"


@pytest.mark.parametrize("name", ["cad_ose", "relative_entropy", "jump", "dwell", "stream"])
def test_a_probation_with_nan_still_ends_on_time_and_without_an_error(name):
    xs = [math.nan if i % 3 == 0 else float(i % 7) for i in range(200)]
    det = make_detector(DetectorSpec(name, 0.7), 60)
    scores = [det.score(60.0 * i, x) for i, x in enumerate(xs)]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[:60] == [0.0] * 60
