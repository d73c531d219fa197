"""Detectors and banks that report given scores, for tests of wrappers around a detector."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class Replay:
    """A detector that reports given scores, and counts the samples it was shown."""

    def __init__(self, scores: Iterable[float]) -> None:
        self.it, self.seen = iter(scores), 0

    def score(self, t: float, x: float) -> float:
        self.seen += 1
        return next(self.it)

    def state_size(self) -> int:
        return 1


class ReplayBank:
    """A bank of ``m`` series that reports the given rows of scores, one row per step."""

    def __init__(self, rows: np.ndarray) -> None:
        self.m, self.rows = rows.shape[1], iter(rows)

    def score(self, t: float, values: object) -> np.ndarray:
        return next(self.rows)

    def state_size(self) -> int:
        return self.m
