"""Robustness evaluation: accuracy per epsilon and attack, per-sample worst case, and the
gradient-masking checks of ``checks.py`` (Athalye, Carlini & Wagner 2018; Carlini et al. 2019).

Robust accuracy counts a sample as robust only if it is classified correctly both clean and
under the attack, so the worst case over attacks is never above any single attack. The
``auto`` kind is the AutoAttack standard sequence (``autoattack.py``); it reports one entry per
component (``auto/apgd-ce`` ... ``auto/square``: robust accuracy after that step) and its
final figure as ``auto``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial.apgd import APGD, APGDT
from trainguard.adversarial.attacks import FGSM, PGD, Attack, Norm, eval_mode
from trainguard.adversarial.autoattack import AUTO_COMPONENTS, BUDGETS, AutoAttack, Budget
from trainguard.adversarial.errors import AdversarialError
from trainguard.adversarial.fab import FAB, FABT
from trainguard.adversarial.losses import Loss
from trainguard.adversarial.square import Square

__all__ = [
    "AttackKind",
    "CheckResult",
    "EvalConfig",
    "RobustPoint",
    "RobustnessReport",
    "WorstCasePoint",
    "evaluate_robustness",
]

log = logging.getLogger(__name__)


class AttackKind(enum.StrEnum):
    FGSM = "fgsm"
    PGD = "pgd"
    APGD = "apgd"  # APGD-CE
    APGD_DLR = "apgd-dlr"
    APGD_T = "apgd-t"
    FAB = "fab"  # untargeted FAB (AutoAttack's "fab")
    FAB_T = "fab-t"
    SQUARE = "square"
    AUTO = "auto"  # the AutoAttack standard sequence


# gradient-based iterative attacks: none of them may be weaker than FGSM
ITERATIVE = (
    AttackKind.PGD,
    AttackKind.APGD,
    AttackKind.APGD_DLR,
    AttackKind.APGD_T,
    AttackKind.FAB,
    AttackKind.FAB_T,
    AttackKind.AUTO,
)


@dataclass(frozen=True)
class EvalConfig:
    """What to run. ``step_size`` None means 2.5 * eps / steps for PGD.

    ``steps`` is the iteration count of the single attacks (PGD, APGD, APGD-DLR, APGD-T,
    FAB, FAB-T); ``budget`` sets the AutoAttack sequence and the Square queries and APGD-T / FAB-T
    target classes of the single attacks.
    """

    eps: tuple[float, ...] = (0.1, 0.2, 0.3)
    attacks: tuple[AttackKind, ...] = (AttackKind.FGSM, AttackKind.PGD, AttackKind.APGD)
    steps: int = 50
    step_size: float | None = None
    restarts: int = 1
    norm: Norm = Norm.LINF
    batch_size: int = 256
    seed: int = 0
    clip: tuple[float, float] = (0.0, 1.0)
    large_eps: float | None = None  # default: half the input range (0.5 on [0, 1])
    large_eps_max_accuracy: float = 0.1
    zero_grad_max_share: float = 0.05
    budget: Budget = Budget.STANDARD
    square_gain_max_share: float = 0.02

    def validate(self) -> list[str]:
        errors = []
        if not self.eps or any(e <= 0 for e in self.eps):
            errors.append("eps values must be > 0")
        if not self.attacks:
            errors.append("at least one attack is needed")
        if self.steps < 1 or self.restarts < 1 or self.batch_size < 1:
            errors.append("steps, restarts and batch size must be >= 1")
        if self.step_size is not None and self.step_size <= 0:
            errors.append("step size must be > 0")
        return errors


@dataclass(frozen=True)
class RobustPoint:
    eps: float
    attack: str
    accuracy: float


@dataclass(frozen=True)
class WorstCasePoint:
    eps: float
    accuracy: float


@dataclass(frozen=True)
class CheckResult:
    """A gradient-masking check. ``passed`` is None when the check could not run."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class RobustnessReport:
    samples: int
    norm: str
    clean_accuracy: float
    robust: list[RobustPoint]
    worst_case: dict[str, Any]
    checks: list[CheckResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_case_at(self, eps: float) -> float:
        for point in self.worst_case["per_eps"]:
            if abs(point["eps"] - eps) < 1e-12:
                return float(point["accuracy"])
        raise KeyError(eps)

    @property
    def suspicious(self) -> bool:
        """True when any masking check failed."""
        return any(c.passed is False for c in self.checks)


def make_attack(
    kind: AttackKind, model: nn.Module, eps: float, cfg: EvalConfig
) -> Attack | AutoAttack:
    spec = BUDGETS[cfg.budget]
    norm, clip, seed, steps, restarts = cfg.norm, cfg.clip, cfg.seed, cfg.steps, cfg.restarts
    # evaluations stop on a sample once it is broken: same robust accuracy, less work
    if kind is AttackKind.AUTO:
        return AutoAttack(model, eps, norm=norm, clip=clip, seed=seed, budget=cfg.budget)
    if kind is AttackKind.FGSM:
        return FGSM(model, eps, norm=norm, clip=clip, seed=seed)
    if kind is AttackKind.PGD:
        return PGD(
            model,
            eps,
            cfg.step_size,
            steps,
            restarts,
            norm=norm,
            clip=clip,
            seed=seed,
            early_stop=True,
        )
    if kind in (AttackKind.APGD, AttackKind.APGD_DLR):
        loss = Loss.DLR if kind is AttackKind.APGD_DLR else Loss.CE
        return APGD(
            model, eps, steps, restarts, norm=norm, clip=clip, seed=seed, loss=loss, early_stop=True
        )
    if kind is AttackKind.APGD_T:
        return APGDT(
            model,
            eps,
            steps,
            restarts,
            target_classes=spec.target_classes,
            norm=norm,
            clip=clip,
            seed=seed,
            early_stop=True,
        )
    if kind is AttackKind.FAB:
        return FAB(model, eps, steps, restarts, norm=norm, clip=clip, seed=seed)
    if kind is AttackKind.FAB_T:
        return FABT(
            model,
            eps,
            steps,
            restarts,
            target_classes=spec.target_classes,
            norm=norm,
            clip=clip,
            seed=seed,
        )
    return Square(model, eps, spec.square_queries, restarts, norm=norm, clip=clip, seed=seed)


def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(x).argmax(1) == y
    return out


def robust_correct(
    model: nn.Module, x: Tensor, y: Tensor, kind: AttackKind, eps: float, cfg: EvalConfig
) -> Tensor:
    """Per-sample bool: still classified correctly under the attack."""
    out = []
    for xb, yb in _batches(x, y, cfg.batch_size):
        x_adv = make_attack(kind, model, eps, cfg)(xb, yb)
        out.append(_correct(model, x_adv, yb))
    return torch.cat(out)


def zero_gradient_share(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Share of samples whose loss gradient with respect to the input is exactly zero."""
    zero = 0
    for xb, yb in _batches(x, y, batch_size):
        xb = xb.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            if not loss.requires_grad:
                zero += xb.shape[0]  # the graph does not reach the input at all
                continue
            (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
        if grad is None:
            zero += xb.shape[0]
        else:
            zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return zero / max(1, x.shape[0])


def evaluate_robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: EvalConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> RobustnessReport:
    """Attack ``model`` on (x, y) at every eps with every attack and run the masking checks."""
    cfg = cfg or EvalConfig()
    if errors := cfg.validate():
        raise AdversarialError("bad evaluation settings: " + "; ".join(errors))
    if x.shape[0] == 0:
        raise AdversarialError("no samples to evaluate")
    eps_list = sorted(set(cfg.eps))
    n = x.shape[0]
    with eval_mode(model):
        clean = torch.cat([_correct(model, xb, yb) for xb, yb in _batches(x, y, cfg.batch_size)])
        per: dict[tuple[float, str], Tensor] = {}
        for eps in eps_list:
            for kind in cfg.attacks:
                if kind is AttackKind.AUTO:
                    per.update(_run_auto(model, x, y, eps, cfg, clean, progress))
                    continue
                per[(eps, kind.value)] = clean & robust_correct(model, x, y, kind, eps, cfg)
                if progress:
                    acc = per[(eps, kind.value)].float().mean().item()
                    progress(f"eps {eps:g} {kind.value}: robust accuracy {acc:.4f}")
        # checks.py builds on this module (configs, robust_correct): imported here, not above
        from trainguard.adversarial.checks import run_checks

        checks = run_checks(model, x, y, cfg, eps_list, clean, per)
    robust = [
        RobustPoint(eps, name, _frac(per[(eps, name)]))
        for eps in eps_list
        for kind in cfg.attacks
        for name in report_names(kind)
    ]
    worst = []
    for eps in eps_list:
        all_ok = clean.clone()
        for kind in cfg.attacks:
            all_ok &= per[(eps, kind.value)]
        worst.append(asdict(WorstCasePoint(eps, _frac(all_ok))))
    settings = {
        "steps": cfg.steps,
        "step_size": cfg.step_size,
        "restarts": cfg.restarts,
        "seed": cfg.seed,
        "clip": list(cfg.clip),
        "budget": cfg.budget.value,
        "budget_spec": asdict(BUDGETS[cfg.budget]),
    }
    return RobustnessReport(
        samples=n,
        norm=cfg.norm.value,
        clean_accuracy=_frac(clean),
        robust=robust,
        worst_case={"attacks": [k.value for k in cfg.attacks], "per_eps": worst},
        checks=checks,
        settings=settings,
    )


def report_names(kind: AttackKind) -> list[str]:
    """The ``robust`` entries an attack kind adds: auto adds one per component, then itself."""
    if kind is AttackKind.AUTO:
        return [f"auto/{c}" for c in AUTO_COMPONENTS] + [kind.value]
    return [kind.value]


def _run_auto(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    cfg: EvalConfig,
    clean: Tensor,
    progress: Callable[[str], None] | None,
) -> dict[tuple[float, str], Tensor]:
    """Robust masks of the AutoAttack sequence: after each component, and the final one."""
    after = {c: clean.clone() for c in AUTO_COMPONENTS}
    for start in range(0, x.shape[0], cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        attack = AutoAttack(
            model,
            eps,
            norm=cfg.norm,
            clip=cfg.clip,
            seed=cfg.seed,
            budget=cfg.budget,
            progress=progress if x.shape[0] <= cfg.batch_size else None,
        )
        result = attack.run(x[sl], y[sl])
        for c in AUTO_COMPONENTS:
            after[c][sl] &= result.robust_after[c]
    if progress and x.shape[0] > cfg.batch_size:
        for c in AUTO_COMPONENTS:
            progress(f"eps {eps:g} auto/{c}: robust accuracy {_frac(after[c]):.4f}")
    out = {(eps, f"auto/{c}"): after[c] for c in AUTO_COMPONENTS}
    out[(eps, AttackKind.AUTO.value)] = after[AUTO_COMPONENTS[-1]]
    return out


def _frac(t: Tensor) -> float:
    return round(float(t.float().mean()), 6)
