"""The AutoAttack "standard" sequence (Croce & Hein, ICML 2020): APGD-CE, APGD-T, FAB-T, Square.

Each attack runs only on the points that every earlier one left classified correctly, and a
point counts as robust only if it survives all four: the per-sample worst case, at the cost
of roughly one strong attack on an undefended model. The APGD runs stop iterating on a
point once it is misclassified (only robust accuracy matters here), FAB-T once it has a
point within eps, and Square queries only points still classified correctly. Robust accuracy after each attack is
kept, so a report can say which attack found what. A gradient-free attack (Square) that
still breaks many points after three gradient-based ones is the signature of gradient
masking (see ``checks.py``).

Budgets (iterations per target and restart; queries for Square):

========  =======  =======================  =======================  ======
budget    APGD-CE  APGD-T                   FAB-T                    Square
========  =======  =======================  =======================  ======
standard  100      100 x 9 target classes   100 x 9 target classes   5000
fast      25       25 x 3 target classes    25 x 3 target classes    1000
========  =======  =======================  =======================  ======
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from trainguard.adversarial.apgd import APGD, APGDT
from trainguard.adversarial.attacks import Attack, Clip, Norm, eval_mode
from trainguard.adversarial.errors import AdversarialError
from trainguard.adversarial.fab import FABT
from trainguard.adversarial.square import Square

__all__ = ["AUTO_COMPONENTS", "AutoAttack", "AutoResult", "Budget", "BudgetSpec"]

AUTO_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


class Budget(enum.StrEnum):
    FAST = "fast"
    STANDARD = "standard"


@dataclass(frozen=True)
class BudgetSpec:
    apgd_steps: int
    target_steps: int
    target_classes: int
    square_queries: int


BUDGETS = {
    Budget.STANDARD: BudgetSpec(
        apgd_steps=100, target_steps=100, target_classes=9, square_queries=5000
    ),
    Budget.FAST: BudgetSpec(apgd_steps=25, target_steps=25, target_classes=3, square_queries=1000),
}


@dataclass(frozen=True)
class AutoResult:
    """Adversarial points and, per component, the per-sample bool "still robust after it"."""

    x_adv: Tensor
    clean: Tensor
    robust_after: dict[str, Tensor]

    @property
    def robust(self) -> Tensor:
        return self.robust_after[AUTO_COMPONENTS[-1]]


class AutoAttack:
    """APGD-CE -> APGD-T -> FAB-T -> Square, each on the points still robust.

    Calling it returns adversarial examples like any attack; ``run`` also returns the
    robust set after each component. ``progress`` receives one line per component.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        *,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        budget: Budget | str = Budget.STANDARD,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.eps = float(eps)
        self.norm = Norm(norm)
        self.clip = clip
        self.seed = seed
        self.budget = Budget(budget)
        self.progress = progress
        spec = BUDGETS[self.budget]
        common = {"norm": self.norm, "clip": clip, "seed": seed}
        self.components: list[tuple[str, Attack]] = [
            ("apgd-ce", APGD(model, eps, spec.apgd_steps, early_stop=True, **common)),  # type: ignore[arg-type]
            (
                "apgd-t",
                APGDT(
                    model,
                    eps,
                    spec.target_steps,
                    target_classes=spec.target_classes,
                    early_stop=True,
                    **common,
                ),  # type: ignore[arg-type]
            ),
            (
                "fab-t",
                FABT(model, eps, spec.target_steps, target_classes=spec.target_classes, **common),  # type: ignore[arg-type]
            ),
            ("square", Square(model, eps, spec.square_queries, **common)),  # type: ignore[arg-type]
        ]

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    def run(self, x: Tensor, y: Tensor) -> AutoResult:
        """Run the sequence on (x, y); see the class docstring."""
        if y.shape[0] != x.shape[0]:
            raise AdversarialError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        x_adv = x.detach().clone()
        with eval_mode(self.model):
            with torch.no_grad():
                logits = self.model(x)
            robust = logits.argmax(1) == y
            clean = robust.clone()
            after: dict[str, Tensor] = {}
            for name, attack in self.components:
                idx = robust.nonzero().squeeze(1)
                # the targeted DLR loss needs four classes; with fewer, APGD-T has nothing to add
                runs = not (name == "apgd-t" and logits.shape[1] < 4)
                if idx.numel() and self.eps > 0 and runs:
                    xa = attack(x[idx], y[idx])
                    with torch.no_grad():
                        still = self.model(xa).argmax(1) == y[idx]
                    broken = idx[~still]
                    x_adv[broken] = xa[~still]
                    robust[broken] = False
                after[name] = robust.clone()
                if self.progress:
                    share = float(robust.float().mean())
                    self.progress(
                        f"eps {self.eps:g} auto/{name}: robust accuracy {share:.4f} "
                        f"({int(robust.sum())}/{x.shape[0]})"
                    )
        return AutoResult(x_adv, clean, after)
