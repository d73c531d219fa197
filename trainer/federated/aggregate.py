"""Robust aggregation of site updates, with per-site statistics and exclusion (no Flower here).

Each round the server holds one flat update row per participating site (the site's new weights
minus the global weights it was sent). The rows go through the trainer's rules
(`trainguard.trainer.robust`: the same functions the DDP hook uses), and the per-site statistics
(norm / median norm, cosine to the coordinate-wise median) go to the same flagging rule the DDP
hook's monitor uses (`trainguard.trainer.monitor.default_rule`: the anomaly area's
UpdateMonitor). The cosine is taken to the median, not to the aggregate: under FedAvg the mean
is dragged by the attacker, so a cosine to it says nothing about who is honest.

A site flagged in `flag_after` consecutive rounds is reported once and, with `exclude_flagged`,
dropped from every later round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from trainguard.trainer import robust
from trainguard.trainer.config import Aggregation, AggregationSection, Attack
from trainguard.trainer.config import SimulateSection as _TrainSimulate
from trainguard.trainer.monitor import default_rule
from trainguard.trainer.testing.simulate import AttackPlan

__all__ = ["RoundOutcome", "SiteAggregator", "SiteStats", "omniscient_attack"]


@dataclass(frozen=True)
class SiteStats:
    site: str
    norm: float
    norm_ratio: float
    cosine: float
    flagged: bool  # an outlier in this round


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    update: np.ndarray  # the aggregate update, added to the global weights
    sites: list[str]  # sites whose rows were aggregated, in row order
    stats: list[SiteStats]
    newly_flagged: list[str]  # crossed flag_after in this round (report once)
    excluded: list[str]  # every site excluded from the rounds after this one


@dataclass
class SiteAggregator:
    """Aggregates one round of site updates; remembers flag streaks and exclusions."""

    cfg: AggregationSection
    rule_factory: Callable[[int], Any] = default_rule
    monitor: bool = True  # off: statistics are still reported, nobody is flagged
    streak: dict[str, int] = field(default_factory=dict)
    reported: list[str] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    _center: torch.Tensor | None = None  # centered clipping: the previous aggregate

    def aggregate(self, rnd: int, updates: Mapping[str, np.ndarray]) -> RoundOutcome:
        """Aggregate the rows of the sites not excluded; raises ValueError if none is left."""
        sites = sorted(s for s in updates if s not in self.excluded)
        if not sites:
            raise ValueError("no site update left to aggregate (every site is excluded)")
        rows = torch.stack([torch.as_tensor(np.asarray(updates[s], dtype=np.float32).ravel())
                            for s in sites])
        rows = torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
        stats = self._statistics(sites, rows)
        agg = self._rule(rows)
        newly = self._track(stats)
        return RoundOutcome(rnd, agg.numpy().astype(np.float32), sites, stats, newly,
                            sorted(self.excluded))

    def _rule(self, rows: torch.Tensor) -> torch.Tensor:
        c, n = self.cfg, rows.shape[0]
        if c.method is Aggregation.MEAN:
            return robust.mean(rows)
        if c.method is Aggregation.MEDIAN:
            return robust.coordinate_median(rows)
        if c.method is Aggregation.TRIMMED_MEAN:
            return robust.trimmed_mean(rows, c.trim)
        if c.method is Aggregation.CENTERED_CLIP:
            center = self._center if self._center is not None else torch.zeros_like(rows[0])
            out = robust.centered_clip(rows, center, c.clip_tau, c.clip_iters)
            self._center = out
            return out
        if c.method is Aggregation.KRUM:
            f = min(c.krum_f, max(0, (n - 3) // 2))
            return robust.krum(rows, f, min(c.krum_m, n))[0]
        raise AssertionError(c.method)  # enum handled exhaustively

    def _statistics(self, sites: list[str], rows: torch.Tensor) -> list[SiteStats]:
        x = rows.to(torch.float64)
        norms = torch.linalg.vector_norm(x, dim=1)
        median_norm = float(norms.quantile(0.5))
        ratio = norms / median_norm if median_norm > 0 else torch.ones_like(norms)
        center = robust.coordinate_median(x)
        c_norm = float(torch.linalg.vector_norm(center))
        cosine = (x @ center) / torch.clamp(norms * c_norm, min=1e-30) if c_norm > 0 else torch.ones_like(norms)
        if len(sites) < 3 or not self.monitor:
            # With one or two rows the median says nothing about who is the outlier.
            flagged: set[int] = set()
        else:
            flagged = set(self.rule_factory(len(sites)).flags(ratio.numpy(), cosine.numpy()))
        return [SiteStats(s, float(norms[i]), float(ratio[i]), float(cosine[i]), i in flagged)
                for i, s in enumerate(sites)]

    def _track(self, stats: list[SiteStats]) -> list[str]:
        newly = []
        for st in stats:
            self.streak[st.site] = self.streak.get(st.site, 0) + 1 if st.flagged else 0
            if self.streak[st.site] >= self.cfg.flag_after and st.site not in self.reported:
                self.reported.append(st.site)
                newly.append(st.site)
                if self.cfg.exclude_flagged:
                    self.excluded.add(st.site)
        return newly


def attack_plan(attack: Attack, strength: float) -> AttackPlan:
    """The trainer's attack plan for one federation attack (ranks are unused here)."""
    sim = _TrainSimulate(byzantine_ranks=[0], attack=attack, strength=strength)
    plan = AttackPlan.from_config(sim)
    assert plan is not None
    return plan


def omniscient_attack(updates: dict[str, np.ndarray], byzantine: set[str],
                      attack: Attack, strength: float) -> dict[str, np.ndarray]:
    """TEST FACILITY: ALIE / IPM rows for the Byzantine sites, from the honest rows of this
    round (an omniscient, colluding attacker, as in trainer/testing/simulate.py)."""
    names = sorted(updates)
    rows = torch.stack([torch.as_tensor(np.asarray(updates[s], dtype=np.float32).ravel())
                        for s in names])
    idx = frozenset(i for i, s in enumerate(names) if s in byzantine)
    base = attack_plan(attack, strength)
    plan = AttackPlan(base.attack, idx, base.strength, 0)
    bad = plan.omniscient_row(rows).numpy()
    return {s: (bad.copy() if s in byzantine else updates[s]) for s in names}
