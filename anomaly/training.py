"""Training-run detectors: loss spikes, gradient-norm outliers and Byzantine ranks.

`UpdateMonitor` is the API the trainer uses (no torch here: it takes numpy arrays or floats).
Each step it gets every rank's update (a flat vector) or the precomputed statistics
``(norms, cosines)``; a rank is an outlier in a step when its norm is more than ``ratio`` times
the median norm (or less than 1/ratio of it) or its cosine to the aggregate (the coordinate
median of the updates, so the attacker cannot steer it) is below ``min_cosine``. A rank that is
an outlier in ``patience`` consecutive steps is flagged, once per streak.

`SpikeDetector` watches one scalar per step (loss, global gradient norm) with the robust
streaming detector and reports spikes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.streaming import StreamDetector

__all__ = [
    "RankFlag", "SpikeDetector", "StepFlags", "TrainingSpike", "UpdateMonitor", "update_statistics",
]


@dataclass(frozen=True)
class RankFlag:
    """A rank whose updates were outliers `streak` steps in a row, ending at `step`."""

    rank: int
    step: int
    norm_ratio: float
    cosine: float
    streak: int
    reason: str


def update_statistics(updates: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Norms of each rank's flat update and its cosine to the coordinate-wise median update."""
    stacked = np.stack([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    norms = np.linalg.norm(stacked, axis=1)
    aggregate = np.median(stacked, axis=0)
    agg_norm = float(np.linalg.norm(aggregate))
    if agg_norm == 0.0:
        cosines = np.ones(len(updates))
    else:
        denom = np.where(norms > 0, norms, 1.0) * agg_norm
        cosines = stacked @ aggregate / denom
    return norms, cosines


class UpdateMonitor:
    """Flags ranks whose per-step updates are repeatedly out of line with the others.

    Args:
        n_ranks: world size.
        patience: consecutive outlier steps before a rank is flagged.
        ratio: a norm beyond ``ratio`` x median (or below median / ratio) is an outlier.
        min_cosine: a cosine to the aggregate below this is an outlier.
    """

    def __init__(
        self, n_ranks: int, patience: int = 3, *, ratio: float = 3.0, min_cosine: float = 0.0
    ) -> None:
        if n_ranks < 1 or patience < 1 or ratio <= 1.0:
            raise ValueError("need n_ranks >= 1, patience >= 1 and ratio > 1")
        self.n_ranks = n_ranks
        self.patience = patience
        self.ratio = ratio
        self.min_cosine = min_cosine
        self._streak = [0] * n_ranks
        self._step = -1

    def observe(
        self,
        step: int | None = None,
        updates: Sequence[np.ndarray] | tuple[Sequence[float], Sequence[float]] | None = None,
        *,
        norm_ratio: Sequence[float] | None = None,
        cosine: Sequence[float] | None = None,
    ) -> StepFlags:
        """Record one step; returns the ranks that just reached `patience` outlier steps.

        Give either `updates`: a **list** with one flat numpy vector per rank, or a **tuple**
        ``(norms, cosines)`` with one float per rank; or the keywords `norm_ratio` (norm / median
        norm, already divided) and `cosine` (to the aggregate the trainer used). `step` defaults
        to a counter. The result also carries ``.flagged``: the ranks that are outliers in this
        step alone (for callers that count streaks themselves).
        """
        self._step = self._step + 1 if step is None else step
        if norm_ratio is not None and cosine is not None:
            ratios = np.asarray(norm_ratio, dtype=np.float64)
            cosines = np.asarray(cosine, dtype=np.float64)
        elif isinstance(updates, tuple):
            norms, cosines = (np.asarray(v, dtype=np.float64) for v in updates)
            ratios = _ratios(norms)
        elif updates is not None:
            norms, cosines = update_statistics(list(updates))
            ratios = _ratios(norms)
        else:
            raise ValueError("give updates, or norm_ratio and cosine")
        if len(ratios) != self.n_ranks or len(cosines) != self.n_ranks:
            raise ValueError(f"expected statistics for {self.n_ranks} ranks, got {len(ratios)}")
        flags = StepFlags()
        for rank in range(self.n_ranks):
            ratio, cos = float(ratios[rank]), float(cosines[rank])
            reasons = []
            if ratio > self.ratio or ratio < 1.0 / self.ratio:
                reasons.append("norm")
            if cos < self.min_cosine:
                reasons.append("direction")
            if not reasons:
                self._streak[rank] = 0
                continue
            flags.flagged.append(rank)
            self._streak[rank] += 1
            if self._streak[rank] == self.patience:
                flags.append(RankFlag(
                    rank, self._step, ratio, cos, self._streak[rank], "+".join(reasons)
                ))
        return flags


def _ratios(norms: np.ndarray) -> np.ndarray:
    median = float(np.median(norms))
    return norms / median if median > 0 else np.ones_like(norms)


class StepFlags(list[RankFlag]):
    """The ranks flagged at `patience` (the list) plus `.flagged`: this step's outliers."""

    def __init__(self) -> None:
        super().__init__()
        self.flagged: list[int] = []


@dataclass(frozen=True)
class TrainingSpike:
    """A loss or gradient-norm value far outside its recent range."""

    metric: str
    step: int
    value: float
    expected: float
    z: float


class SpikeDetector:
    """Spikes in per-step scalars (loss, gradient norm), one robust stream per metric."""

    def __init__(self, z: float = 6.0, warmup: int = 20) -> None:
        # steps are not wall-clock time: no seasonality, fast-adapting level
        self._cfg = StreamConfig(
            warmup=warmup, daily_buckets=1, weekly_buckets=0, level_alpha=0.05,
            spread_alpha=0.05, refractory=0,
        )
        self._z = z
        self._streams: dict[str, StreamDetector] = {}

    def observe(self, step: int, **metrics: float) -> list[TrainingSpike]:
        """Feed this step's values (e.g. ``loss=..., grad_norm=...``); returns the spikes."""
        out = []
        for name, value in metrics.items():
            det = self._streams.setdefault(name, StreamDetector(self._cfg))
            warmed = det.n >= self._cfg.warmup
            if not np.isfinite(value):
                out.append(TrainingSpike(name, step, float(value), det.level, float("inf")))
                continue
            res = det.update(float(step), float(value))
            if warmed and abs(res.z) >= self._z:
                out.append(TrainingSpike(name, step, float(value), res.expected, res.z))
        return out
