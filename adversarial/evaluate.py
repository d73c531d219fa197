"""Robustness evaluation: accuracy per epsilon and attack, per-sample worst case, and checks
that flag likely gradient masking (Athalye, Carlini & Wagner 2018; Carlini et al. 2019).

Robust accuracy counts a sample as robust only if it is classified correctly both clean and
under the attack, so the worst case over attacks is never above any single attack.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial.apgd import APGD
from trainguard.adversarial.attacks import FGSM, PGD, Attack, Norm, eval_mode
from trainguard.adversarial.errors import AdversarialError

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
    APGD = "apgd"


ITERATIVE = (AttackKind.PGD, AttackKind.APGD)


@dataclass(frozen=True)
class EvalConfig:
    """What to run. ``step_size`` None means 2.5 * eps / steps for PGD."""

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


def make_attack(kind: AttackKind, model: nn.Module, eps: float, cfg: EvalConfig) -> Attack:
    if kind is AttackKind.FGSM:
        return FGSM(model, eps, norm=cfg.norm, clip=cfg.clip, seed=cfg.seed)
    if kind is AttackKind.PGD:
        # early_stop leaves robust accuracy unchanged and skips work on fooled samples
        return PGD(
            model,
            eps,
            cfg.step_size,
            cfg.steps,
            cfg.restarts,
            norm=cfg.norm,
            clip=cfg.clip,
            seed=cfg.seed,
            early_stop=True,
        )
    return APGD(model, eps, cfg.steps, cfg.restarts, norm=cfg.norm, clip=cfg.clip, seed=cfg.seed)


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
        per: dict[tuple[float, AttackKind], Tensor] = {}
        for eps in eps_list:
            for kind in cfg.attacks:
                per[(eps, kind)] = clean & robust_correct(model, x, y, kind, eps, cfg)
                if progress:
                    acc = per[(eps, kind)].float().mean().item()
                    progress(f"eps {eps:g} {kind.value}: robust accuracy {acc:.4f}")
        checks = _checks(model, x, y, cfg, eps_list, clean, per)
    robust = [
        RobustPoint(eps, kind.value, _frac(per[(eps, kind)]))
        for eps in eps_list
        for kind in cfg.attacks
    ]
    worst = []
    for eps in eps_list:
        all_ok = clean.clone()
        for kind in cfg.attacks:
            all_ok &= per[(eps, kind)]
        worst.append(asdict(WorstCasePoint(eps, _frac(all_ok))))
    settings = {
        "steps": cfg.steps,
        "step_size": cfg.step_size,
        "restarts": cfg.restarts,
        "seed": cfg.seed,
        "clip": list(cfg.clip),
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


def _frac(t: Tensor) -> float:
    return round(float(t.float().mean()), 6)


def _checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: EvalConfig,
    eps_list: Sequence[float],
    clean: Tensor,
    per: dict[tuple[float, AttackKind], Tensor],
) -> list[CheckResult]:
    n = x.shape[0]
    tol = max(2 / n, 0.005)
    acc = {key: _frac(v) for key, v in per.items()}
    return [
        _check_monotone(cfg, eps_list, _frac(clean), acc, tol),
        _check_iterative_beats_single(cfg, eps_list, acc, tol),
        _check_large_eps(model, x, y, cfg, clean),
        _check_gradients(model, x, y, cfg),
    ]


def _check_monotone(
    cfg: EvalConfig,
    eps_list: Sequence[float],
    clean_acc: float,
    acc: dict[tuple[float, AttackKind], float],
    tol: float,
) -> CheckResult:
    problems = []
    for kind in cfg.attacks:
        curve = [clean_acc] + [acc[(e, kind)] for e in eps_list]
        grid = [0.0, *eps_list]
        for i in range(1, len(curve)):
            if curve[i] > curve[i - 1] + tol:
                problems.append(
                    f"{kind.value}: {curve[i - 1]:.3f} at eps {grid[i - 1]:g} rises to "
                    f"{curve[i]:.3f} at eps {grid[i]:g}"
                )
        if clean_acc > 0 and curve[-1] >= clean_acc - tol:
            problems.append(
                f"{kind.value}: accuracy at eps {eps_list[-1]:g} ({curve[-1]:.3f}) is no lower "
                f"than clean ({clean_acc:.3f})"
            )
    detail = "; ".join(problems) or "robust accuracy falls as eps grows for every attack"
    return CheckResult("accuracy-falls-with-eps", not problems, detail)


def _check_iterative_beats_single(
    cfg: EvalConfig,
    eps_list: Sequence[float],
    acc: dict[tuple[float, AttackKind], float],
    tol: float,
) -> CheckResult:
    iterative = [k for k in cfg.attacks if k in ITERATIVE]
    if AttackKind.FGSM not in cfg.attacks or not iterative:
        return CheckResult(
            "iterative-beats-single-step",
            None,
            "not run: needs fgsm and an iterative attack (pgd or apgd); use --attack all",
        )
    problems = []
    for eps in eps_list:
        single = acc[(eps, AttackKind.FGSM)]
        for kind in iterative:
            if acc[(eps, kind)] > single + tol:
                problems.append(
                    f"eps {eps:g}: fgsm {single:.3f} beats {kind.value} {acc[(eps, kind)]:.3f}"
                )
    detail = "; ".join(problems) or "iterative attacks are at least as strong as FGSM at every eps"
    return CheckResult("iterative-beats-single-step", not problems, detail)


def _check_large_eps(
    model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, clean: Tensor
) -> CheckResult:
    width = cfg.clip[1] - cfg.clip[0]
    eps = cfg.large_eps if cfg.large_eps is not None else 0.5 * width
    if cfg.norm is Norm.L2:
        eps = cfg.large_eps if cfg.large_eps is not None else 0.5 * width * x[0].numel() ** 0.5
    limit = min(x.shape[0], 512)
    xs, ys = x[:limit], y[:limit]
    probe = EvalConfig(
        eps=(eps,),
        attacks=(AttackKind.PGD,),
        steps=cfg.steps,
        restarts=1,
        norm=cfg.norm,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        clip=cfg.clip,
    )
    ok = clean[:limit] & robust_correct(model, xs, ys, AttackKind.PGD, eps, probe)
    acc = _frac(ok)
    passed = acc <= cfg.large_eps_max_accuracy
    verdict = (
        "as expected" if passed else "an attack this large should win: gradients may be masked"
    )
    return CheckResult(
        "large-eps-accuracy-near-zero",
        passed,
        f"PGD-{cfg.steps} at eps {eps:g}: accuracy {acc:.3f} on {limit} samples "
        f"(threshold {cfg.large_eps_max_accuracy:g}); {verdict}",
    )


def _check_gradients(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig) -> CheckResult:
    share = zero_gradient_share(model, x, y, cfg.batch_size)
    passed = share <= cfg.zero_grad_max_share
    return CheckResult(
        "nonzero-input-gradients",
        passed,
        f"{share:.1%} of samples have an exactly zero input gradient "
        f"(threshold {cfg.zero_grad_max_share:.0%})",
    )
