"""TEST FACILITY: Byzantine attacks used to exercise the robust aggregators.

Nothing here runs unless the job config has a ``[simulate]`` section (every such launch is
audited). The attacks follow the literature: sign flipping, scaling, "A Little Is Enough"
(Baruch et al. 2019) and inner-product manipulation (Xie et al. 2020). ALIE and IPM are
omniscient: the attacker sees the honest updates of the step before it sends its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from trainguard.trainer.config import Attack, SimulateSection

__all__ = ["AttackPlan", "DEFAULT_STRENGTH", "alie_z"]

DEFAULT_STRENGTH = {Attack.SIGN_FLIP: 4.0, Attack.SCALE: 100.0, Attack.ALIE: 0.0, Attack.IPM: 0.1}


def alie_z(n: int, f: int) -> float:
    """The z of ALIE for n workers of which f are Byzantine (Baruch et al. 2019)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p)))


@dataclass(frozen=True)
class AttackPlan:
    attack: Attack
    ranks: frozenset[int]
    strength: float
    start_step: int

    @classmethod
    def from_config(cls, sim: SimulateSection) -> AttackPlan | None:
        if not sim.byzantine_ranks:
            return None
        strength = sim.strength or DEFAULT_STRENGTH[sim.attack]
        return cls(sim.attack, frozenset(sim.byzantine_ranks), strength, sim.start_step)

    @property
    def omniscient(self) -> bool:
        return self.attack in (Attack.ALIE, Attack.IPM)

    def step_active(self, state: object) -> bool:
        """Whether the attack runs at the hook state's current step."""
        return int(getattr(state, "step", 0)) >= self.start_step

    def local(self, own: torch.Tensor) -> torch.Tensor:
        """The update a Byzantine rank sends, from its own update only."""
        if self.attack is Attack.SIGN_FLIP:
            return -self.strength * own
        if self.attack is Attack.SCALE:
            return self.strength * own
        raise ValueError(f"{self.attack} needs the honest rows")

    def omniscient_row(self, rows: torch.Tensor) -> torch.Tensor:
        """The update a Byzantine rank sends, from all true rows of this step."""
        honest = [i for i in range(rows.shape[0]) if i not in self.ranks] or list(range(rows.shape[0]))
        h = rows[honest]
        mu = h.mean(dim=0)
        if self.attack is Attack.IPM:
            return -self.strength * mu
        z = self.strength or alie_z(rows.shape[0], len(self.ranks))
        sigma = h.std(dim=0, unbiased=False) if h.shape[0] > 1 else torch.zeros_like(mu)
        return mu - z * sigma
