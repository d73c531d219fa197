"""Choosing a detector and its threshold so that the choice cannot overfit one series or category.

Protocol (`select`):

* Every candidate (`candidates()`, a small fixed grid: no value is set per series) scores every
  file of a NAB-layout folder once; each file's scores become a `FileCurve`.
* **Leave one category out (LOCO)**: for each category, the alert threshold is chosen on the
  *other* categories (the grid value that maximises ``event F1 + NAB / 100`` there, ties to the
  higher threshold), then the held-out category is scored at it.
* **Leave one file out (LOFO)**: each file is scored at the threshold chosen on all other files;
  the held-out decisions are pooled per category and over all files.
* **Objective**: the *worst* held-out group with windows (each LOCO fold and each LOFO category)
  of ``event F1 + NAB / 100``, minus ``0.01`` per false-positive row in held-out groups without
  windows (artificialNoAnomaly has no windows, so F1 and NAB's normalisation are undefined there:
  it is judged by its false-positive rows alone, fewer is better).
* **Winner**: the best objective among candidates within the streaming latency budget
  (`DetectorSpec.within_latency_budget`); the best overall is reported next to it. Its threshold
  is re-chosen on all files by the same rule; both are frozen in
  `trainguard.anomaly.config.SELECTED_DETECTOR`.
* Published detectors (`trainguard.anomaly.reference`) and the stream detector at the threshold
  it shipped with (when the stream is a candidate) are scored on the same held-out groups at
  their fixed thresholds, for the table.

Scores are cached per detector (without threshold, calibration, likelihood or rest period), so
calibration variants, likelihoods, rest periods and ensembles of cached members cost no second
pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

import numpy as np
from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.detectors import (
    DetectorSpec,
    calibrated,
    make_detector,
    probation_quantile,
    rested,
)
from trainguard.anomaly.folds import FileCurve, Totals, totals
from trainguard.anomaly.likelihood import likelihood_scores
from trainguard.anomaly.nab import NabFile, probationary_length

__all__ = [
    "THRESHOLDS", "CandidateResult", "FoldResult", "SelectionReport", "candidates",
    "choose_threshold", "score_file", "select",
]

# thresholds a fold may choose: a uniform grid plus a fine tail near 1 (conformal p-values)
THRESHOLDS = np.unique(np.round(np.concatenate([
    np.linspace(0.01, 1.0, 100), 1.0 - np.geomspace(1e-4, 1e-2, 13)]), 6))
FP_ROW_PENALTY = 0.01  # objective cost of one false-positive row on a series with no windows
# rest periods a candidate may take: (samples reported as 0, score that starts them)
REST_GRID = tuple((rest, at) for at in (0.7, 0.65) for rest in (50, 100, 200, 300))
RANGE_FLOORS = (0.005, 0.01, 0.02)  # stream candidates' resolution, a share of the range seen
# Numenta's anomaly likelihood on the stream: (past averages held, raw scores per average)
LIKELIHOOD_GRID = tuple((window, short) for window in (500, 2000, 8640) for short in (5, 10))
# a recall channel beside the floored pair: the stream without the floor, resting after it
# speaks, (samples reported as 0, score that starts them)
RECALL_REST_GRID = tuple((rest, at) for at in (0.6, 0.65) for rest in (200, 400, 800))
# a temporal-context channel beside the recall triple: jump novelty (`trainguard.anomaly.
# transition.JumpNovelty`, a jump between value levels larger than any seen from that level),
# resting after 0.6. (bins, min_jump, tolerance, rest): the best four of a 216-setting offline
# sweep on the shared NAB subset (bins 8/10/12, min_jump/tolerance 3/1.5, 4/1.0, 5/0.75, rest
# 400/800, min_count 1/2 and variants), a disclosed look at realAWSCloudwatch like the earlier
# channels; min_count 2 (the level left must have been left twice before) in all four
JUMP_GRID = ((10, 4, 1.0, 400), (10, 5, 0.75, 400), (8, 5, 0.75, 400), (8, 4, 1.0, 800))
# the jump channel with a hold (a jump reported only once the next `hold` values stayed beyond
# the value it left: a spike that falls straight back is the stream channels' news, a new level
# is the jump channel's) and its own quiet period started by any novel jump, held or not:
# (bins, min_jump, tolerance, hold), quiet 400 samples from 0.6. Added after reading the jump
# channel's AWS false positives (five spikes that fell back within two samples), a disclosed
# look at realAWSCloudwatch like the earlier channels'; the protocol chooses the hold
JUMP_HOLD_GRID = tuple((bins, min_jump, tol, hold)
                       for bins, min_jump, tol in ((10, 4, 1.0), (10, 5, 0.75), (8, 5, 0.75))
                       for hold in (1, 2, 3))


def candidates() -> list[DetectorSpec]:
    """The candidate grid (kept small: every candidate is one pass over the corpus)."""
    stream = DetectorSpec("stream", 0.72, label="stream (previous default)")
    cad = DetectorSpec("cad_ose", 0.77, label="cad_ose")
    cad_wide = DetectorSpec("cad_ose", 0.77, (("margin", 0.25),), label="cad_ose margin 0.25")
    re = DetectorSpec("relative_entropy", 0.5, label="relative_entropy")
    knn = DetectorSpec("knncad", 0.9965, label="knncad")
    out = [stream, cad, cad_wide, re, knn]
    out.append(replace(stream, calibrate=1.0, label="stream, probation-calibrated (max)"))
    out.append(replace(stream, calibrate=0.99, label="stream, probation-calibrated (q99)"))
    for combine in ("mean", "max"):
        for other in (cad, cad_wide):
            out.append(DetectorSpec("ensemble", 0.72, members=(stream, other), combine=combine,
                                    label=f"{combine}(stream, {other.label})"))
    # the range breakout that Numenta's HTM detector adds to its temporal score, beside ours
    spatial = {tol: DetectorSpec("spatial", 0.7, (("tolerance", tol),), label=f"spatial {tol}")
               for tol in (0.05, 0.1, 0.2)}
    out.append(spatial[0.1])
    for sp in spatial.values():
        out.append(DetectorSpec("ensemble", 0.7, members=(stream, sp), combine="max",
                                label=f"max(stream, {sp.label})"))
    out.append(DetectorSpec("ensemble", 0.7, members=(stream, re), combine="max",
                            label="max(stream, relative_entropy)"))
    out.append(DetectorSpec("ensemble", 0.7, members=(stream, cad, spatial[0.1]), combine="max",
                            label="max(stream, cad_ose, spatial 0.1)"))
    # a rest period after a detection (NAB's reference detectors' "one alert per event"), on
    # the stream + range ensembles: its length and the score that starts it
    for tol, sp in spatial.items():
        for rest, at in REST_GRID:
            if tol != 0.1 and at != 0.7:
                continue
            out.append(DetectorSpec("ensemble", 0.7, members=(stream, sp), combine="max",
                                    rest=rest, rest_at=at,
                                    label=f"max(stream, {sp.label}), rest {rest} @ {at}"))
    # the stream with a resolution floor (`StreamConfig.range_floor`: a step below that share
    # of the range seen so far is not news, as HTM's and CAD-OSE's quantisation of the range)
    for floor in RANGE_FLOORS:
        floored = DetectorSpec("stream", 0.72, (("range_floor", floor),),
                               label=f"stream range floor {floor}")
        for sp in spatial.values():
            for rest, at in ((0, 0.7), REST_GRID[1]):
                tail = f", rest {rest} @ {at}" if rest else ""
                out.append(DetectorSpec("ensemble", 0.7, members=(floored, sp), combine="max",
                                        rest=rest, rest_at=at,
                                        label=f"max({floored.label}, {sp.label}){tail}"))
    # Numenta's anomaly likelihood (what HTM's NAB entry reports) on the stream with the range
    # floor the previous round chose, max-combined with the range breakout as NAB's numenta
    # detector combines them
    floored = DetectorSpec("stream", 0.72, (("range_floor", 0.01),))
    for window, short in LIKELIHOOD_GRID:
        lik = replace(floored, likelihood=window, likelihood_short=short)
        out.append(DetectorSpec(
            "ensemble", 0.7, members=(lik, spatial[0.05]), combine="max",
            label=f"max(likelihood {window}/{short} of stream range floor 0.01, spatial 0.05)"))
    # a second, recall-oriented stream beside the floored pair: without the range floor (so
    # a jump across a range the series has crossed before still scores as news, what the
    # floor gives up), resting after it reaches `at` so it adds one alert per event
    sp05 = spatial[0.05]
    floored = DetectorSpec("stream", 0.72, (("range_floor", 0.01),),
                           label="stream range floor 0.01")
    for rest, at in RECALL_REST_GRID:
        recall = replace(stream, rest=rest, rest_at=at, label="")
        out.append(DetectorSpec(
            "ensemble", 0.7, members=(floored, sp05, recall), combine="max",
            label=f"max(stream range floor 0.01, spatial 0.05, stream rest {rest} @ {at})"))
    # the recall triple the previous round chose, with a jump-novelty channel as a fourth
    # member: what the stream's z cannot see, a known value reached from an unusual level
    triple = (floored, sp05, replace(stream, rest=400, rest_at=0.6, label=""))
    for bins, min_jump, tol, rest in JUMP_GRID:
        jump = DetectorSpec("jump", 0.73, (("bins", bins), ("min_jump", min_jump),
                                           ("tolerance", tol), ("min_count", 2)),
                            rest=rest, rest_at=0.6)
        out.append(DetectorSpec(
            "ensemble", 0.7, members=(*triple, jump), combine="max",
            label=f"max(stream range floor 0.01, spatial 0.05, stream rest 400 @ 0.6, jump "
                  f"{bins}/{min_jump}/{tol} rest {rest} @ 0.6)"))
    for bins, min_jump, tol, hold in JUMP_HOLD_GRID:
        out.append(DetectorSpec(
            "ensemble", 0.7, members=(*triple, held_jump(bins, min_jump, tol, hold)),
            combine="max",
            label=f"max(stream range floor 0.01, spatial 0.05, stream rest 400 @ 0.6, jump "
                  f"{bins}/{min_jump}/{tol} hold {hold} quiet 400 @ 0.6)"))
    return out


def held_jump(bins: int, min_jump: int, tol: float, hold: int) -> DetectorSpec:
    """A jump-novelty member with a hold and a quiet period of 400 samples from 0.6."""
    return DetectorSpec("jump", 0.73, (("bins", bins), ("min_jump", min_jump), ("tolerance", tol),
                                       ("min_count", 2), ("hold", hold), ("quiet", 400),
                                       ("quiet_at", 0.6)))


def score_file(
    spec: DetectorSpec, f: NabFile, cache: dict[tuple[str, str], np.ndarray] | None = None,
) -> np.ndarray:
    """The scores of `spec` on one file (NAB probation as the calibration period)."""
    cache = {} if cache is None else cache
    base = replace(spec, calibrate=0.0, likelihood=0, rest=0, threshold=1.0, label="")
    key = (base.key, f.name)
    probation = probationary_length(len(f.values))
    if key not in cache:
        if spec.name == "ensemble":
            parts = np.vstack([score_file(m, f, cache) for m in spec.members])
            cache[key] = parts.max(axis=0) if spec.combine == "max" else parts.mean(axis=0)
        else:
            det = make_detector(base, probation)
            cache[key] = np.array([
                det.score(t.replace(tzinfo=UTC).timestamp(), v)
                for t, v in zip(f.timestamps, f.values, strict=True)
            ])
    scores = cache[key]
    if spec.calibrate:
        q = probation_quantile(scores[:probation].tolist(), spec.calibrate)
        scores = np.array([calibrated(s, q) for s in scores])
        scores[:probation] = 0.0
    if spec.likelihood:
        scores = np.array(likelihood_scores(scores.tolist(), spec.likelihood,
                                            spec.likelihood_short))
    if spec.rest:
        scores = np.array(rested(scores.tolist(), spec.rest, spec.rest_at))
    return scores


def _objective_terms(group: Totals) -> float:
    return (group.f1 or 0.0) + (group.nab or 0.0) / 100.0


def choose_threshold(curves: Sequence[FileCurve]) -> float:
    """The grid threshold with the best ``event F1 + NAB / 100`` on `curves` (ties: higher)."""
    tot = totals(curves, THRESHOLDS)
    values = [_objective_terms(t) if t.windows else -FP_ROW_PENALTY * t.fp_rows for t in tot]
    best = max(range(len(values)), key=lambda i: (values[i], i))
    return float(THRESHOLDS[best])


@dataclass(frozen=True)
class FoldResult:
    """A held-out group: the threshold used and the held-out totals at it."""

    group: str
    threshold: float | None  # None: several thresholds (LOFO pools one per file)
    test: Totals

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "threshold": self.threshold, **self.test.as_dict()}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate (or reference) under both protocols."""

    name: str
    loco: tuple[FoldResult, ...]
    lofo: tuple[FoldResult, ...]  # per category, then "all"
    objective: float | None  # None for references (not selectable)
    threshold: float  # chosen on all files (candidates) or published (references)
    within_budget: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "objective": None if self.objective is None
            else round(self.objective, 4), "threshold": self.threshold,
            "within_latency_budget": self.within_budget,
            "loco": [f.as_dict() for f in self.loco], "lofo": [f.as_dict() for f in self.lofo],
        }


@dataclass(frozen=True)
class SelectionReport:
    """All candidates, the references and the winner."""

    candidates: tuple[CandidateResult, ...]
    references: tuple[CandidateResult, ...]
    chosen: DetectorSpec
    best_overall: DetectorSpec
    categories: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": "LOCO and LOFO; objective = worst held-out group of F1 + NAB/100, "
                        f"minus {FP_ROW_PENALTY} per FP row where a group has no windows",
            "chosen": {"name": self.chosen.label or self.chosen.key,
                       "threshold": self.chosen.threshold},
            "best_overall": {"name": self.best_overall.label or self.best_overall.key,
                             "threshold": self.best_overall.threshold},
            "candidates": [c.as_dict() for c in self.candidates],
            "references": [r.as_dict() for r in self.references],
        }


def _objective(groups: Sequence[FoldResult]) -> float:
    windowed = [_objective_terms(g.test) for g in groups if g.test.windows]
    penalty = FP_ROW_PENALTY * sum(g.test.fp_rows for g in groups if not g.test.windows)
    return (min(windowed) if windowed else 0.0) - penalty


def _evaluate(
    curves: dict[str, FileCurve], pick: Callable[[list[FileCurve]], float],
) -> tuple[tuple[FoldResult, ...], tuple[FoldResult, ...]]:
    cats = sorted({n.split("/", 1)[0] for n in curves})
    loco = []
    for cat in cats:
        train = [c for n, c in curves.items() if not n.startswith(cat + "/")]
        test = [c for n, c in curves.items() if n.startswith(cat + "/")]
        t = pick(train)
        loco.append(FoldResult(cat, t, totals(test, np.array([t]))[0]))
    per_file: dict[str, Totals] = {}
    for n, c in curves.items():
        t = pick([o for m, o in curves.items() if m != n])
        per_file[n] = totals([c], np.array([t]))[0]
    lofo = [FoldResult(cat, None, _pool([v for n, v in per_file.items()
                                          if n.startswith(cat + "/")])) for cat in cats]
    lofo.append(FoldResult("all", None, _pool(list(per_file.values()))))
    return tuple(loco), tuple(lofo)


def _pool(parts: Sequence[Totals]) -> Totals:
    """Held-out decisions of several files, each at its own threshold, summed."""
    return Totals(
        sum(p.files for p in parts), sum(p.windows for p in parts),
        sum(p.detected for p in parts), sum(p.fp_rows for p in parts),
        sum(p.raw for p in parts), sum(p.null_all for p in parts),
        sum(p.null_none for p in parts),
    )


def select(
    files: Sequence[NabFile],
    specs: Sequence[DetectorSpec] | None = None,
    references: dict[str, tuple[float, dict[str, np.ndarray]]] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    cache: dict[tuple[str, str], np.ndarray] | None = None,
) -> SelectionReport:
    """Run the protocol of the module docstring over `files`.

    ``cache`` maps ``(detector key, file name)`` to scores already computed by `score_file`
    (it is filled as candidates are scored), so a second run over the same files costs no pass.
    """
    specs = list(specs or candidates())
    cache = {} if cache is None else cache
    results = []
    for spec in specs:
        if progress:
            progress(f"scoring {spec.label or spec.key}")
        curves = {f.name: FileCurve(f, score_file(spec, f, cache)) for f in files}
        loco, lofo = _evaluate(curves, choose_threshold)
        final = choose_threshold(list(curves.values()))
        results.append(CandidateResult(spec.label or spec.key, loco, lofo,
                                       _objective(loco + lofo[:-1]), final,
                                       spec.within_latency_budget))
    refs = []
    shipped = DetectorSpec("stream", StreamConfig().threshold)
    if any(replace(sp, label="", threshold=shipped.threshold) == shipped for sp in specs):
        # the detector as it shipped before selection, at its own fixed threshold
        curves = {f.name: FileCurve(f, score_file(shipped, f, cache)) for f in files}
        loco, lofo = _evaluate(curves, lambda _train: shipped.threshold)
        refs.append(CandidateResult(f"stream as shipped ({shipped.threshold}, fixed)", loco,
                                    lofo, None, shipped.threshold))
    for name, (threshold, scores) in (references or {}).items():
        by_name = {f.name: f for f in files if f.name in scores}
        curves = {n: FileCurve(by_name[n], scores[n]) for n in by_name}
        loco, lofo = _evaluate(curves, lambda _train, t=threshold: t)
        refs.append(CandidateResult(name, loco, lofo, None, threshold))
    def best(pool: list[int]) -> DetectorSpec:
        i = max(pool, key=lambda i: (results[i].objective or 0.0, -i))
        return specs[i].with_threshold(results[i].threshold)

    everyone = list(range(len(results)))
    eligible = [i for i in everyone if results[i].within_budget] or everyone
    cats = tuple(sorted({f.category for f in files}))
    return SelectionReport(tuple(results), tuple(refs), best(eligible), best(everyone), cats)
