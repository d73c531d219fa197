"""The Numenta Anomaly Benchmark (NAB) scorer, standard profile, and event-level metrics.

How this follows NAB (numenta/NAB, `nab/sweeper.py`, `nab/optimizer.py`, `nab/runner.py`):

* Probation: the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of each file are labelled
  "probationary" and take no part in scoring (no TP, FP or FN; a window lying entirely inside
  the probation period is not counted).
* Per-row sweep score (`Sweeper.calcSweepScore`): a row inside a window scores
  ``A_TP * scaledSigmoid(-(right - i + 1) / width) / scaledSigmoid(-1)``; a row outside every
  window scores ``A_FP * scaledSigmoid(|prev_right - i| / (prev_width - 1))`` relative to the
  previous window (``scaledSigmoid(3.0) = -1`` when there is none), with
  ``scaledSigmoid(x) = 2 / (1 + exp(5x)) - 1`` (and -1 for ``x >= 3``). Standard profile:
  ``A_TP = 1.0``, ``A_FP = 0.11`` (applied to a negative sigmoid, so -0.11 per distant FP),
  ``A_FN = 1.0`` (each missed window costs -1.0).
* Threshold sweep (`Sweeper.calcScoreByThreshold`): rows sorted by anomaly score, highest
  first; every threshold equal to a score value is evaluated; a window scores the best (that
  is the earliest) alerting row in it, or -A_FN when none alerts; false positives add up.
  An alert is ``score >= threshold``.
* Threshold optimisation (`optimizer.optimizeThreshold`): one threshold for the whole corpus,
  the one with the highest summed raw score over all files.
* Normalisation (`runner.normalize`): ``100 * (raw - null) / (perfect - null)`` where
  *perfect* is ``A_TP`` per counted window and *null* is the raw score of the null detector
  (a constant score, swept the same way, which here equals missing every window).

Event-level metrics are not part of NAB; they are reported next to it: a window with at least
one alert is a detected event, every alerting row outside all windows (after probation) is a
false-positive row, precision = events / (events + FP rows), F1 from that precision and recall.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = [
    "STANDARD_PROFILE",
    "CostProfile",
    "EventMetrics",
    "NabFile",
    "NabResult",
    "ScoredRow",
    "event_metrics",
    "load_nab",
    "probationary_length",
    "scaled_sigmoid",
    "score_corpus",
    "sweep_rows",
]


@dataclass(frozen=True)
class CostProfile:
    """NAB application profile (weights are positive, as in NAB's profiles.json)."""

    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0


STANDARD_PROFILE = CostProfile()
PROBATION_PERCENT = 0.15


@dataclass(frozen=True)
class NabFile:
    """One NAB data file: parsed timestamps, values and its labelled windows (as row indices)."""

    name: str
    timestamps: tuple[datetime, ...]
    values: tuple[float, ...]
    windows: tuple[tuple[int, int], ...]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class ScoredRow:
    """A row after the sweep: its detector score, NAB weight and window (None: outside)."""

    score: float
    weight: float
    window: str | None
    probationary: bool


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid of the relative position in (or past) a window."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probationary_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are not scored (NAB: 15%, at most 750)."""
    return int(min(math.floor(percent * n_rows), percent * 5000))


def sweep_rows(
    n_rows: int,
    scores: Sequence[float],
    windows: Sequence[tuple[int, int]],
    name: str,
    profile: CostProfile = STANDARD_PROFILE,
) -> list[ScoredRow]:
    """Per-row NAB weights of one file (`Sweeper.calcSweepScore`)."""
    if len(scores) != n_rows:
        raise ValueError("one score per row is required")
    max_tp = scaled_sigmoid(-1.0)
    probation = probationary_length(n_rows)
    pending = sorted(windows)
    cur: tuple[int, int] | None = None
    prev_right: int | None = None
    prev_width = 0.0
    rows: list[ScoredRow] = []
    for i in range(n_rows):
        if cur is None and pending and pending[0][0] == i:
            cur = pending.pop(0)
        if cur is not None:
            width = float(cur[1] - cur[0] + 1)
            weight = scaled_sigmoid(-(cur[1] - i + 1) / width) * profile.tp_weight / max_tp
            wname: str | None = f"{name}|{cur[0]}"
        else:
            past = 3.0 if prev_right is None else abs(prev_right - i) / max(prev_width - 1, 1.0)
            weight = scaled_sigmoid(past) * profile.fp_weight
            wname = None
        rows.append(ScoredRow(float(scores[i]), weight, wname, i < probation))
        if cur is not None and i == cur[1]:
            prev_right, prev_width, cur = i, float(cur[1] - cur[0] + 1), None
    return rows


def _threshold_curve(
    rows: Iterable[ScoredRow], profile: CostProfile
) -> list[tuple[float, float]]:
    """(threshold, raw score) for every distinct score, highest threshold first."""
    scorable = sorted((r for r in rows if not r.probationary), key=lambda r: -r.score)
    parts: dict[str, float] = {r.window: -profile.fn_weight for r in scorable if r.window}
    fp_total = 0.0
    curve = [(math.inf, sum(parts.values()))]  # no alert at all
    for k, row in enumerate(scorable):
        if row.window is None:
            fp_total += row.weight
        else:
            parts[row.window] = max(parts[row.window], row.weight)
        last_of_level = k + 1 == len(scorable) or scorable[k + 1].score != row.score
        if last_of_level:
            curve.append((row.score, fp_total + sum(parts.values())))
    return curve


@dataclass(frozen=True)
class EventMetrics:
    """Event-level detection counts at one threshold."""

    events: int
    detected: int
    fp_rows: int

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else 1.0

    @property
    def precision(self) -> float:
        alerts = self.detected + self.fp_rows
        return self.detected / alerts if alerts else (1.0 if not self.events else 0.0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: EventMetrics) -> EventMetrics:
        return EventMetrics(
            self.events + other.events, self.detected + other.detected,
            self.fp_rows + other.fp_rows,
        )


def event_metrics(rows: Sequence[ScoredRow], threshold: float) -> EventMetrics:
    """Windows detected and false-positive rows at `threshold` (probation excluded)."""
    windows = {r.window for r in rows if r.window and not r.probationary}
    hit = {r.window for r in rows if r.window and not r.probationary and r.score >= threshold}
    fp = sum(1 for r in rows if r.window is None and not r.probationary and r.score >= threshold)
    return EventMetrics(len(windows), len(hit), fp)


@dataclass(frozen=True)
class NabResult:
    """NAB standard score of a set of files, plus event metrics."""

    files: int
    windows: int
    raw: float
    null: float
    perfect: float
    threshold: float
    events: EventMetrics
    per_file: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "files": self.files, "windows": self.windows, "nab_score": round(self.score, 2),
            "raw": round(self.raw, 4), "threshold": self.threshold,
            "events": self.events.events, "detected": self.events.detected,
            "recall": round(self.events.recall, 4), "fp_rows": self.events.fp_rows,
            "precision": round(self.events.precision, 4), "f1": round(self.events.f1, 4),
        }


def _best(curve: list[tuple[float, float]]) -> tuple[float, float]:
    return max(curve, key=lambda ts: (ts[1], ts[0]))


def score_corpus(
    swept: dict[str, list[ScoredRow]],
    *,
    threshold: float | None = None,
    profile: CostProfile = STANDARD_PROFILE,
) -> NabResult:
    """NAB score of files already swept; `threshold=None` optimises it over the corpus as NAB
    does, a number scores at that fixed threshold. Event metrics use the same threshold."""
    everything = [r for rows in swept.values() for r in rows]
    curve = _threshold_curve(everything, profile)
    if threshold is None:
        threshold, raw = _best(curve)
    else:
        raw = next((s for t, s in reversed(curve) if t >= threshold), curve[0][1])
    windows = len({r.window for r in everything if r.window and not r.probationary})
    null_rows = [ScoredRow(0.5, r.weight, r.window, r.probationary) for r in everything]
    null = _best(_threshold_curve(null_rows, profile))[1]
    events = EventMetrics(0, 0, 0)
    per_file: dict[str, float] = {}
    for name, rows in swept.items():
        events = events + event_metrics(rows, threshold)
        file_curve = _threshold_curve(rows, profile)
        per_file[name] = next((s for t, s in reversed(file_curve) if t >= threshold), 0.0)
    return NabResult(
        len(swept), windows, raw, null, windows * profile.tp_weight, threshold, events, per_file
    )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def load_nab(root: Path) -> list[NabFile]:
    """Read a NAB-layout folder: ``data/<category>/*.csv`` and ``labels/combined_windows.json``."""
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    files: list[NabFile] = []
    for path in sorted((root / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        stamps: list[datetime] = []
        values: list[float] = []
        with path.open(newline="") as fh:
            for rec in csv.DictReader(fh):
                stamps.append(_parse_time(rec["timestamp"]))
                values.append(float(rec["value"]))
        index = {t: i for i, t in enumerate(stamps)}
        windows = []
        for start, end in labels.get(name, []):
            a, b = index.get(_parse_time(start)), index.get(_parse_time(end))
            if a is None or b is None:
                raise ValueError(f"{name}: window {start}..{end} does not match a row timestamp")
            windows.append((a, b))
        files.append(NabFile(name, tuple(stamps), tuple(values), tuple(windows)))
    return files
