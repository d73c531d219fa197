"""Univariate detectors by name: the registry, the ensemble and probation calibration.

A `DetectorSpec` names a detector, its settings and its alert threshold; `make_detector`
builds a fresh `UnivariateDetector` for one series from it. Specs are frozen values, so the
selected default (`trainguard.anomaly.config.SELECTED_DETECTOR`) and the candidate grid of
`trainguard.anomaly.selection` are plain data.

* ``stream``: `StreamDetector` (robust level/spread/seasonal z, this project's own).
* ``cad_ose``: `CadOse` (Smirnov 2016, NAB winner).
* ``relative_entropy``: `RelativeEntropy` (Wang et al. 2011).
* ``knncad``: `KnnCad` (Burnaev and Ishimtsev 2016).
* ``spatial``: `SpatialRange` (the range-breakout rule of Numenta's NAB detectors, graded).
* ``jump``: `JumpNovelty` (a jump between value levels larger than any seen from that level).
* ``dwell``: `DwellNovelty` (a stay at a rare level longer than any stay there before).
* ``ensemble``: the mean or the max of its members' scores (stateless on top of them).

Any spec may set ``calibrate`` (a quantile in (0, 1]): the detector's scores over the
probation period are kept (bounded by the probation length), and afterwards a score ``s`` is
reported as ``max(0, (s - q) / (1 - q))`` with ``q`` that quantile of the probation scores. A
series whose normal life already scores high needs a higher score to alert; nothing but the
series' own probation is used.

Any spec may also set ``rest`` (a number of samples) and ``rest_at`` (a score): once the
reported score reaches ``rest_at``, the next ``rest`` scores are reported as 0 (`Rested`, the
"rest period" after a detection that NAB's reference detectors apply when they report:
CAD-OSE silences itself for probation / 5 samples after a raw score of 0.75, KNN-CAD after an
alert). One event then raises one alert instead of a burst of them, and a detector's own
after-shocks are not counted as false positives. ``rest_at`` is a fixed level, not the alert
threshold, so a detector's scores stay one array that can be judged at any threshold (as NAB's
sweep and `trainguard.anomaly.selection` do); the selection chooses both from a small grid.

Any spec may set ``likelihood`` (a window of samples) and ``likelihood_short``: its scores are
replaced by Numenta's anomaly likelihood of them (`trainguard.anomaly.likelihood`: the Gaussian
tail of the short-term mean of the scores against the mean and spread of the last ``likelihood``
such means, log-scaled to [0, 1]). Order: detector, probation calibration, likelihood, rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trainguard.anomaly.interface import AnomalyError, DetectorBank, UnivariateDetector
from trainguard.anomaly.likelihood import Likelihood, LikelihoodBank

__all__ = [
    "BANKED", "DETECTOR_NAMES", "WITHIN_LATENCY_BUDGET", "DetectorSpec", "Ensemble",
    "EnsembleBank", "ProbationCalibrated", "Rested", "RestedBank", "make_bank", "make_detector",
    "rested",
]

DETECTOR_NAMES = ("stream", "cad_ose", "relative_entropy", "knncad", "spatial", "jump",
                  "dwell", "ensemble")

# Detectors within the streaming budget (<= 5 us per sample per series on one core), as
# tests/bench/bench_anomaly.py measures them: the stream detector (2-3 us scalar, well under 1 us
# per series in a `StreamBank`) and Relative Entropy in a `RelativeEntropyBank` (about 1.5 us
# per series at 256 series; 0.4-1.3 us scalar, a memo of test results per histogram).
# KNN-CAD (~90 us scalar; its 19-d distances to every training vector alone cost ~11 us per
# series batched) and CAD-OSE (1-3 ms, a pass over its context memory) are outside it and have
# no bank: reference candidates for the selection, not detectors to stream with.
# `SpatialRange` is two comparisons; `JumpNovelty` a quantisation and three table look-ups
# (~0.7 us scalar, held and quiet).
WITHIN_LATENCY_BUDGET = frozenset({"stream", "relative_entropy", "spatial", "jump"})
BANKED = frozenset({"stream", "relative_entropy", "spatial", "jump"})


@dataclass(frozen=True)
class DetectorSpec:
    """A detector by name, its settings (overrides of its config class) and threshold."""

    name: str
    threshold: float
    params: tuple[tuple[str, Any], ...] = ()
    members: tuple[DetectorSpec, ...] = ()  # ensemble only
    combine: str = "mean"  # ensemble only: mean | max
    calibrate: float = 0.0  # probation quantile that rescales the score (0: off)
    rest: int = 0  # samples reported as 0 after a score >= rest_at (0: off)
    rest_at: float = 0.7  # the score that starts a rest period
    likelihood: int = 0  # Numenta's anomaly likelihood over this many past averages (0: off)
    likelihood_short: int = 10  # raw scores in the short-term average it judges
    label: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """A readable identity: the label, or name and settings."""
        if self.label:
            return self.label
        inner = ",".join(f"{k}={v}" for k, v in self.params)
        if self.members:
            inner = f"{self.combine}:" + "+".join(m.key for m in self.members)
        cal = f"|cal{self.calibrate}" if self.calibrate else ""
        lik = f"|lik{self.likelihood}/{self.likelihood_short}" if self.likelihood else ""
        rest = f"|rest{self.rest}@{self.rest_at}" if self.rest else ""
        return f"{self.name}({inner}){cal}{lik}{rest}"

    @property
    def within_latency_budget(self) -> bool:
        """Whether every detector this spec runs meets the 5 us per sample budget."""
        if self.name == "ensemble":
            return all(m.within_latency_budget for m in self.members)
        return self.name in WITHIN_LATENCY_BUDGET

    def with_threshold(self, threshold: float) -> DetectorSpec:
        return replace(self, threshold=threshold)

    def validate(self) -> list[str]:
        problems = []
        if self.name not in DETECTOR_NAMES:
            problems.append(f"unknown detector {self.name!r} (known: {', '.join(DETECTOR_NAMES)})")
        if not 0.0 < self.threshold <= 1.0:
            problems.append(f"{self.key}: threshold must be in (0, 1]")
        if not 0.0 <= self.calibrate <= 1.0:
            problems.append(f"{self.key}: calibrate must be a quantile in [0, 1] (0: off)")
        if self.rest < 0 or int(self.rest) != self.rest:
            problems.append(f"{self.key}: rest must be a whole number of samples >= 0 (0: off)")
        if not 0.0 < self.rest_at <= 1.0:
            problems.append(f"{self.key}: rest_at must be a score in (0, 1]")
        if self.likelihood < 0 or int(self.likelihood) != self.likelihood:
            problems.append(f"{self.key}: likelihood must be a whole number of samples >= 0 "
                            "(0: off)")
        if self.likelihood_short < 1 or int(self.likelihood_short) != self.likelihood_short:
            problems.append(f"{self.key}: likelihood_short must be a whole number >= 1")
        if self.name == "ensemble":
            if not self.members:
                problems.append("an ensemble needs at least one member")
            if self.combine not in ("mean", "max"):
                problems.append(f"ensemble combine must be mean or max, not {self.combine!r}")
            for m in self.members:
                problems.extend(m.validate())
        return problems


class Ensemble:
    """Mean or max of member detectors' scores; each member sees every sample."""

    def __init__(self, members: Sequence[UnivariateDetector], combine: str = "mean") -> None:
        if not members:
            raise AnomalyError("an ensemble needs at least one member")
        self.members = tuple(members)
        self._max = combine == "max"

    def score(self, t: float, x: float) -> float:
        if self._max:  # a loop, not max() of a list: this is every sample of a default stream
            best = 0.0  # scores are in [0, 1]
            for m in self.members:
                s = m.score(t, x)
                if s > best:
                    best = s
            return best
        scores = [m.score(t, x) for m in self.members]
        return sum(scores) / len(scores)

    def state_size(self) -> int:
        return sum(m.state_size() for m in self.members)


def calibrated(score: float, q: float) -> float:
    """The rescaling of `ProbationCalibrated` (also used on cached score arrays)."""
    if q >= 1.0:
        return 1.0 if score >= 1.0 else 0.0
    return max(0.0, (score - q) / (1.0 - q))


class ProbationCalibrated:
    """Rescale a detector's scores by a quantile of its own scores during probation."""

    def __init__(self, inner: UnivariateDetector, probation: int, quantile: float) -> None:
        self.inner, self.quantile = inner, quantile
        self.probation = max(int(probation), 1)
        self._seen: list[float] | None = []
        self._q = 0.0

    def score(self, t: float, x: float) -> float:
        s = self.inner.score(t, x)
        if self._seen is not None:
            self._seen.append(s)
            if len(self._seen) >= self.probation:
                self._q = probation_quantile(self._seen, self.quantile)
                self._seen = None
            return 0.0
        return calibrated(s, self._q)

    def state_size(self) -> int:
        return self.inner.state_size() + len(self._seen or ()) + 1


class Rested:
    """Report 0 for ``rest`` samples after a detector's score reached ``rest_at``.

    The inner detector still sees (and learns from) every sample; a score reached during a
    rest period does not extend it. State: one counter.
    """

    __slots__ = ("_at", "_left", "_rest", "inner")

    def __init__(self, inner: UnivariateDetector, rest: int, at: float) -> None:
        self.inner, self._rest, self._at = inner, int(rest), float(at)
        self._left = 0  # samples of the current rest period still to report as 0

    def score(self, t: float, x: float) -> float:
        s = self.inner.score(t, x)
        if self._left:
            self._left -= 1
            return 0.0
        if s >= self._at:
            self._left = self._rest
        return s

    def state_size(self) -> int:
        return self.inner.state_size() + 1


def rested(scores: Sequence[float], rest: int, at: float) -> list[float]:
    """`Rested` applied to a detector's score sequence (the selection's cached scores)."""
    out, left = [], 0
    for s in scores:
        if left:
            left -= 1
            out.append(0.0)
            continue
        if s >= at:
            left = rest
        out.append(float(s))
    return out


def probation_quantile(scores: Sequence[float], quantile: float) -> float:
    """The `quantile` of `scores` (nearest rank, lower), as `ProbationCalibrated` uses it."""
    ordered = sorted(scores)
    return ordered[min(int(quantile * (len(ordered) - 1)), len(ordered) - 1)]


def make_detector(spec: DetectorSpec, probation: int = 750) -> UnivariateDetector:
    """A fresh detector for one series.

    Raises:
        AnomalyError: the spec names an unknown detector or setting.
    """
    problems = spec.validate()
    if problems:
        raise AnomalyError("; ".join(problems), tip="see trainguard.anomaly.detectors")
    det = _base(spec, probation)
    if spec.calibrate:
        det = ProbationCalibrated(det, probation, spec.calibrate)
    if spec.likelihood:
        det = Likelihood(det, spec.likelihood, spec.likelihood_short)
    if spec.rest:
        det = Rested(det, spec.rest, spec.rest_at)
    return det


def _base(spec: DetectorSpec, probation: int) -> UnivariateDetector:
    params = dict(spec.params)
    try:
        if spec.name == "stream":
            from trainguard.anomaly.config import StreamConfig
            from trainguard.anomaly.streaming import StreamDetector

            return StreamDetector(replace(StreamConfig(), **params))
        if spec.name == "cad_ose":
            from trainguard.anomaly.cad_ose import CadOse, CadOseConfig

            return CadOse(CadOseConfig(**params), probation=probation)
        if spec.name == "relative_entropy":
            from trainguard.anomaly.relative_entropy import RelativeEntropy, RelativeEntropyConfig

            return RelativeEntropy(RelativeEntropyConfig(**params), probation=probation)
        if spec.name == "knncad":
            from trainguard.anomaly.knncad import KnnCad, KnnCadConfig

            return KnnCad(KnnCadConfig(**params), probation=probation)
        if spec.name == "spatial":
            from trainguard.anomaly.spatial import SpatialRange, SpatialRangeConfig

            return SpatialRange(SpatialRangeConfig(**params), probation=probation)
        if spec.name == "jump":
            from trainguard.anomaly.transition import JumpNovelty, JumpNoveltyConfig

            return JumpNovelty(JumpNoveltyConfig(**params), probation=probation)
        if spec.name == "dwell":
            from trainguard.anomaly.transition import DwellNovelty, DwellNoveltyConfig

            return DwellNovelty(DwellNoveltyConfig(**params), probation=probation)
        fused = _fused_stream_max(spec, probation)
        if fused is not None:
            return fused
    except TypeError as exc:
        raise AnomalyError(f"{spec.key}: unknown setting ({exc})") from exc
    return Ensemble([make_detector(m, probation) for m in spec.members], spec.combine)


def _fused_stream_max(spec: DetectorSpec, probation: int) -> UnivariateDetector | None:
    """`FusedStreamMax` for a max of two stream members differing at most in range_floor, one
    spatial member and at most one jump member (the selected default's shape: one shared
    update instead of two, no wrappers), or None for any other ensemble. Same scores bit for
    bit as the `Ensemble` of the members."""
    if spec.combine != "max" or len(spec.members) not in (3, 4) or any(
            m.calibrate or m.likelihood or m.members for m in spec.members):
        return None
    streams = [m for m in spec.members if m.name == "stream"]
    spatial = [m for m in spec.members if m.name == "spatial"]
    jumps = [m for m in spec.members if m.name == "jump"]
    if len(streams) != 2 or len(spatial) != 1 or len(jumps) != len(spec.members) - 3:
        return None
    from trainguard.anomaly.config import StreamConfig
    from trainguard.anomaly.fused import FusedStreamMax
    from trainguard.anomaly.spatial import SpatialRangeConfig

    a, b = (replace(StreamConfig(), **dict(m.params)) for m in streams)
    if replace(a, range_floor=0.0) != replace(b, range_floor=0.0):
        return None
    sp = spatial[0]
    jump = None
    if jumps:
        from trainguard.anomaly.transition import JumpNoveltyConfig

        jump = (JumpNoveltyConfig(**dict(jumps[0].params)), jumps[0].rest, jumps[0].rest_at)
    return FusedStreamMax(
        (a, streams[0].rest, streams[0].rest_at), (b, streams[1].rest, streams[1].rest_at),
        (SpatialRangeConfig(**dict(sp.params)), sp.rest, sp.rest_at), probation=probation,
        jump=jump)


class EnsembleBank:
    """`Ensemble` over banks: the mean or max of member banks' scores, per series."""

    def __init__(self, members: Sequence[DetectorBank], combine: str = "mean") -> None:
        if not members:
            raise AnomalyError("an ensemble needs at least one member")
        self.members = tuple(members)
        self.m = self.members[0].m
        self._max = combine == "max"

    def score(self, t: float, values: Any) -> Any:
        import numpy as np

        parts = np.vstack([b.score(t, values) for b in self.members])
        return parts.max(axis=0) if self._max else parts.mean(axis=0)

    def state_size(self) -> int:
        return sum(b.state_size() for b in self.members)


class RestedBank:
    """`Rested` over a bank: each series rests on its own (one counter per series)."""

    def __init__(self, inner: DetectorBank, rest: int, at: float) -> None:
        import numpy as np

        self._np, self.inner, self.m = np, inner, inner.m
        self._rest, self._at = int(rest), float(at)
        self._left = np.zeros(self.m, dtype=np.int64)

    def score(self, t: float, values: Any) -> Any:
        np = self._np
        s = self.inner.score(t, values)
        resting = self._left > 0
        start = ~resting & (s >= self._at)
        self._left = np.where(resting, self._left - 1, np.where(start, self._rest, 0))
        return np.where(resting, 0.0, s)

    def state_size(self) -> int:
        return self.inner.state_size() + self.m


def make_bank(spec: DetectorSpec, m: int, probation: int = 750) -> DetectorBank:
    """``m`` detectors of `spec` advanced together (one numpy step per time step).

    Raises:
        AnomalyError: the spec is invalid, or names a detector without a bank (CAD-OSE,
            KNN-CAD) or probation calibration (not banked yet).
    """
    problems = spec.validate()
    if problems:
        raise AnomalyError("; ".join(problems), tip="see trainguard.anomaly.detectors")
    unbanked = _unbanked(spec)
    if unbanked:
        raise AnomalyError(
            f"{spec.key}: no bank for {', '.join(unbanked)}",
            tip=f"banks exist for {', '.join(sorted(BANKED))}; use make_detector per series")
    if spec.rest:
        inner = make_bank(replace(spec, rest=0), m, probation)
        return RestedBank(inner, spec.rest, spec.rest_at)
    if spec.likelihood:
        inner = make_bank(replace(spec, likelihood=0), m, probation)
        return LikelihoodBank(inner, spec.likelihood, spec.likelihood_short)
    params = dict(spec.params)
    try:
        if spec.name == "stream":
            from trainguard.anomaly.config import StreamConfig
            from trainguard.anomaly.streaming import StreamBank

            return StreamBank(m, replace(StreamConfig(), **params))
        if spec.name == "relative_entropy":
            from trainguard.anomaly.relative_entropy import (
                RelativeEntropyBank,
                RelativeEntropyConfig,
            )

            return RelativeEntropyBank(m, RelativeEntropyConfig(**params), probation=probation)
        if spec.name == "spatial":
            from trainguard.anomaly.spatial import SpatialRangeBank, SpatialRangeConfig

            return SpatialRangeBank(m, SpatialRangeConfig(**params), probation=probation)
        if spec.name == "jump":
            from trainguard.anomaly.transition import JumpNoveltyBank, JumpNoveltyConfig

            return JumpNoveltyBank(m, JumpNoveltyConfig(**params), probation=probation)
    except TypeError as exc:
        raise AnomalyError(f"{spec.key}: unknown setting ({exc})") from exc
    return EnsembleBank([make_bank(s, m, probation) for s in spec.members], spec.combine)


def _unbanked(spec: DetectorSpec) -> list[str]:
    if spec.calibrate:
        return ["probation calibration"]
    if spec.name == "ensemble":
        return [u for s in spec.members for u in _unbanked(s)]
    return [] if spec.name in BANKED else [spec.name]
