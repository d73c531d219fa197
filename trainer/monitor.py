"""Byzantine-rank flagging from per-rank update statistics.

The statistics (norm ratio and cosine of each rank's update to the aggregate) go to the anomaly
area's `trainguard.anomaly.training.UpdateMonitor` when that is installed; otherwise a fixed rule
flags a rank whose update points away from the aggregate or is far larger than it. A rank flagged
on `flag_after` consecutive observed steps is reported once as a byzantine-worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from trainguard.trainer.aggregation import StepStats

__all__ = ["RankMonitor", "ThresholdRule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdRule:
    """Flag cosine < min_cosine or a norm ratio (to the median norm) beyond max_ratio either
    way; the same rule as the anomaly area's default, used when that area is not installed."""

    min_cosine: float = 0.0
    max_ratio: float = 3.0
    name: str = "threshold"

    def flags(self, norm_ratio: np.ndarray, cosine: np.ndarray) -> list[int]:
        bad = (
            (cosine < self.min_cosine)
            | (norm_ratio > self.max_ratio)
            | (norm_ratio < 1.0 / self.max_ratio)
        )
        return [int(i) for i in np.flatnonzero(bad)]


class _AnomalyAdapter:
    """Wraps trainguard.anomaly.training.UpdateMonitor behind `flags()`."""

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor
        self.name = "anomaly.UpdateMonitor"

    def flags(self, norm_ratio: np.ndarray, cosine: np.ndarray) -> list[int]:
        out = self._monitor.observe(norm_ratio=norm_ratio, cosine=cosine)
        # `.flagged` is this step's outliers; RankMonitor counts the streaks itself.
        ranks = getattr(out, "flagged", out)
        return sorted(int(r) for r in ranks)


def default_rule(world_size: int) -> Any:
    try:
        from trainguard.anomaly.training import UpdateMonitor
    except ImportError:
        return ThresholdRule()
    return _AnomalyAdapter(UpdateMonitor(world_size))


@dataclass
class RankMonitor:
    """Counts consecutive flags per rank; `observe` returns ranks that just crossed the limit."""

    world_size: int
    flag_after: int
    rule: Any = None
    streak: dict[int, int] = field(default_factory=dict)
    reported: set[int] = field(default_factory=set)
    flag_counts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule is None:
            self.rule = default_rule(self.world_size)

    def observe(self, stats: StepStats) -> list[int]:
        flagged = set(self.rule.flags(np.asarray(stats.norm_ratio), np.asarray(stats.cosine)))
        newly = []
        for r in range(self.world_size):
            if r in flagged:
                self.flag_counts[r] = self.flag_counts.get(r, 0) + 1
                self.streak[r] = self.streak.get(r, 0) + 1
                if self.streak[r] >= self.flag_after and r not in self.reported:
                    self.reported.add(r)
                    newly.append(r)
            else:
                self.streak[r] = 0
        return newly
