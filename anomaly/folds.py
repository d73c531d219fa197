"""NAB standard score and event metrics of score arrays at any threshold, fast enough for folds.

`FileCurve` precomputes, for one file's scores, everything NAB's sweeper needs (the same
weights as `trainguard.anomaly.nab.sweep_rows`, probation excluded), so the score of a set of
files at a threshold is a sum of per-file numbers: raw score, windows detected and
false-positive rows add up across files, and NAB's null detector (a constant score) is the
better of "alert everywhere" and "alert nowhere" over the set. `Totals` turns the sums into the
NAB standard score and event precision / recall / F1 exactly as `score_corpus` and
`event_metrics` do (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from trainguard.anomaly.nab import STANDARD_PROFILE, NabFile, sweep_rows

__all__ = ["FileCurve", "Totals", "totals"]


class FileCurve:
    """One file's scores, ready to be scored at any threshold."""

    def __init__(self, nab_file: NabFile, scores: Sequence[float]) -> None:
        rows = sweep_rows(len(scores), scores, nab_file.windows, nab_file.name)
        fn = STANDARD_PROFILE.fn_weight
        self.name = nab_file.name
        out = [(r.score, r.weight) for r in rows if r.window is None and not r.probationary]
        order = np.argsort([s for s, _ in out], kind="stable")
        self._fp_scores = np.array([out[i][0] for i in order], dtype=np.float64)
        w = np.array([out[i][1] for i in order], dtype=np.float64)
        self._fp_suffix = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
        self._windows: list[tuple[np.ndarray, np.ndarray]] = []
        by_window: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r.window is not None and not r.probationary:
                by_window.setdefault(r.window, []).append((r.score, r.weight))
        for seq in by_window.values():
            s = np.maximum.accumulate(np.array([a for a, _ in seq], dtype=np.float64))
            self._windows.append((s, np.array([b for _, b in seq] + [-fn], dtype=np.float64)))
        self.windows = len(self._windows)
        # NAB's null detector: the same sweep of a constant score
        everything = float(self._fp_suffix[0]) + sum(float(ws[0]) for _, ws in self._windows)
        self.null_all, self.null_none = everything, -fn * self.windows

    def thresholds(self) -> np.ndarray:
        """Every score value that changes this file's decisions (NAB's sweep points)."""
        return np.unique(np.concatenate([self._fp_scores, *(p for p, _ in self._windows)]))

    def at(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw NAB score, windows detected, false-positive rows) at each threshold."""
        t = np.asarray(thresholds, dtype=np.float64)
        k = np.searchsorted(self._fp_scores, t, side="left")
        raw = self._fp_suffix[k].copy()
        fp = len(self._fp_scores) - k
        detected = np.zeros(t.shape, dtype=np.int64)
        for prefix_max, weights in self._windows:
            j = np.searchsorted(prefix_max, t, side="left")
            raw += weights[j]
            detected += j < len(prefix_max)
        return raw, detected, fp


@dataclass(frozen=True)
class Totals:
    """Sums over a set of files at one threshold, and the metrics made from them."""

    files: int
    windows: int
    detected: int
    fp_rows: int
    raw: float
    null_all: float  # NAB's null detector alerting on every row ...
    null_none: float  # ... and on none; it scores the better of the two

    @property
    def null(self) -> float:
        return max(self.null_all, self.null_none)

    @property
    def nab(self) -> float | None:
        """NAB standard score (None without windows: NAB's normalisation is undefined)."""
        span = self.windows * STANDARD_PROFILE.tp_weight - self.null
        return 100.0 * (self.raw - self.null) / span if self.windows and span else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.windows if self.windows else None

    @property
    def precision(self) -> float | None:
        alerts = self.detected + self.fp_rows
        return self.detected / alerts if alerts else None

    @property
    def f1(self) -> float | None:
        """Event F1 (None without windows; such a set is judged by its false-positive rows)."""
        if not self.windows:
            return None
        p, r = self.precision or 0.0, self.recall or 0.0
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        def rnd(v: float | None, n: int) -> float | None:
            return None if v is None else round(v, n)

        return {
            "files": self.files, "windows": self.windows, "detected": self.detected,
            "fp_rows": self.fp_rows, "nab": rnd(self.nab, 2), "recall": rnd(self.recall, 4),
            "precision": rnd(self.precision, 4), "f1": rnd(self.f1, 4),
        }


def totals(curves: Iterable[FileCurve], thresholds: np.ndarray) -> list[Totals]:
    """`Totals` of a set of files at each threshold (one entry per threshold)."""
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    raw = np.zeros(t.shape)
    det = np.zeros(t.shape, dtype=np.int64)
    fp = np.zeros(t.shape, dtype=np.int64)
    files = windows = 0
    null_all = null_none = 0.0
    for c in curves:
        r, d, f = c.at(t)
        raw += r
        det += d
        fp += f
        files += 1
        windows += c.windows
        null_all += c.null_all
        null_none += c.null_none
    return [Totals(files, windows, int(d), int(f), float(r), null_all, null_none)
            for r, d, f in zip(raw, det, fp, strict=True)]
